"""Version discovery, flavors and the guest images this host can boot.

For the openstack CLI without Keystone (auth_type none) two small documents more: the identity
service's version document at /identity (commands such as `server list` insist on an identity
v3 client before doing anything; no identity call is served), and the image service's view of
the guest images at /image/v2 (`server show` names the image from there).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from attachfs.api import deps, views
from attachfs.api.adapters import find_image
from attachfs.api.deps import base_url
from attachfs.api.microversion import MAX_VERSION, MIN_VERSION, Version, fmt
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import NO_QUERY, check_query
from attachfs.core.flavors import FLAVORS, find_flavor
from attachfs.core.validation import name_filter
from attachfs.errors import BadRequest
from attachfs.virt.base import BootImage

router = APIRouter(route_class=JsonRoute)


def _v21(request: Request) -> dict[str, Any]:
    return {
        "id": "v2.1", "status": "CURRENT", "version": fmt(MAX_VERSION),
        "min_version": fmt(MIN_VERSION), "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": f"{base_url(request)}/v2.1/"},
                  {"rel": "describedby", "type": "text/html",
                   "href": "https://docs.openstack.org/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }


@router.get("/")
def versions(request: Request) -> dict[str, Any]:
    return {"versions": [_v21(request)]}


@router.get("/v2.1")
@router.get("/v2.1/")
def version_v21(request: Request) -> dict[str, Any]:
    return {"version": _v21(request)}


# The flavor list's query (nova/api/openstack/compute/schemas/flavors.py): unknown parameters
# are ignored below 2.75 and a 400 from it; 2.102 adds the `name` filter.
_MULTI = {"type": "array", "items": {"type": "string"}}
_FLAVOR_QUERY = {"limit", "marker", "is_public", "minRam", "minDisk", "sort_key", "sort_dir"}


def _flavor_query(version: Version) -> dict[str, Any]:
    names = _FLAVOR_QUERY | ({"name"} if version.at_least("2.102") else set())
    return {"type": "object", "properties": {n: _MULTI for n in sorted(names)},
            "additionalProperties": False}


def _at_least(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise BadRequest(f"Invalid {name} filter [{raw}]") from exc


@router.get("/v2.1/flavors")
@router.get("/v2.1/flavors/detail")
def list_flavors(request: Request) -> dict[str, Any]:
    version = deps.version(request)
    if version.at_least("2.75"):
        check_query(_flavor_query(version), request.query_params)
    detailed = request.url.path.endswith("/detail")
    base = base_url(request)
    min_ram, min_disk = _at_least(request, "minRam"), _at_least(request, "minDisk")
    name = request.query_params.get("name") if version.at_least("2.102") else None
    matches = name_filter(name) if name is not None else None
    out = [views.flavor(f, base, version) if detailed else
           {"id": f.id, "name": f.name, "links": views.link(base, "flavors", f.id)}
           for f in FLAVORS.values()
           if (min_ram is None or f.ram_mib >= min_ram)
           and (min_disk is None or f.disk_gib >= min_disk)
           and (matches is None or matches(f.name))]
    return {"flavors": out}


@router.get("/v2.1/flavors/{flavor_id}")
def show_flavor(flavor_id: str, request: Request) -> dict[str, Any]:
    version = deps.version(request)
    if version.at_least("2.102"):
        check_query(NO_QUERY, request.query_params)
    return {"flavor": views.flavor(find_flavor(flavor_id), base_url(request), version)}


def host_images(request: Request) -> list[BootImage]:
    return deps.api(request).images.all()


def _image_view(image: BootImage, base: str) -> dict[str, Any]:
    return {"id": image.id, "name": image.name, "status": "ACTIVE", "progress": 100,
            "minDisk": 0, "minRam": 0, "metadata": {"kernel_cmdline": image.cmdline},
            "created": None, "updated": None, "links": views.link(base, "images", image.id)}


@router.get("/v2.1/images")
@router.get("/v2.1/images/detail")
def list_images(request: Request) -> dict[str, Any]:
    base = base_url(request)
    detailed = request.url.path.endswith("/detail")
    return {"images": [_image_view(i, base) if detailed else
                       {"id": i.id, "name": i.name, "links": views.link(base, "images", i.id)}
                       for i in host_images(request)]}


@router.get("/v2.1/images/{image_id}")
def show_image(image_id: str, request: Request) -> dict[str, Any]:
    return {"image": _image_view(find_image(host_images(request), image_id), base_url(request))}


# ---- for the openstack CLI under noauth (see the module docstring) --------------------------
def _identity_v3(request: Request) -> dict[str, Any]:
    return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{base_url(request)}/identity/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}


@router.get("/identity")
@router.get("/identity/")
@router.get("/identity/v3")
@router.get("/identity/v3/")
def identity_version(request: Request) -> dict[str, Any]:
    if request.url.path.rstrip("/").endswith("/v3"):
        return {"version": _identity_v3(request)}
    return {"versions": {"values": [_identity_v3(request)]}}


def _glance_image(image: BootImage) -> dict[str, Any]:
    return {"id": image.id, "name": image.name, "status": "active", "visibility": "public",
            "protected": True, "os_hidden": False, "container_format": "bare",
            "disk_format": "raw", "min_disk": 0, "min_ram": 0, "size": None,
            "checksum": None, "owner": None, "tags": [], "created_at": None,
            "updated_at": None, "kernel_cmdline": image.cmdline,
            "self": f"/v2/images/{image.id}", "file": f"/v2/images/{image.id}/file",
            "schema": "/v2/schemas/image"}


@router.get("/image")
@router.get("/image/")
@router.get("/image/v2")
@router.get("/image/v2/")
def image_versions(request: Request) -> dict[str, Any]:
    return {"versions": [{"id": "v2.16", "status": "CURRENT", "links": [
        {"rel": "self", "href": f"{base_url(request)}/image/v2/"}]}]}


@router.get("/image/v2/images")
def glance_images(request: Request) -> dict[str, Any]:
    return {"images": [_glance_image(i) for i in host_images(request)],
            "first": "/v2/images", "schema": "/v2/schemas/images"}


@router.get("/image/v2/images/{image_id}")
def glance_image(image_id: str, request: Request) -> dict[str, Any]:
    return _glance_image(find_image(host_images(request), image_id))
