"""Version discovery and the one share type (`default`, driver_handles_share_servers False)."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from fastapi import APIRouter, Request

from attachfs.core.rules import BUILTIN_PROTOCOL
from attachfs.errors import NotFound
from attachfs.shareservice.versions import (
    MAX_VERSION,
    MIN_VERSION,
    PREFIX,
    ShareRoute,
    at_least,
    base,
    fmt,
)

router = APIRouter(prefix=PREFIX, route_class=ShareRoute)
# A fixed id for the one share type, and (views.py) for each share's one export location.
NAMESPACE = uuidlib.UUID("6b0f4f9e-7a0c-4d51-9a36-3f1f6c1d2a10")
DEFAULT_TYPE_ID = str(uuidlib.uuid5(NAMESPACE, "share-type:default"))


def _v2(request: Request) -> dict[str, Any]:
    return {
        "id": "v2.0", "status": "CURRENT", "version": fmt(MAX_VERSION),
        "min_version": fmt(MIN_VERSION), "updated": "2015-08-27T11:33:21Z",
        "links": [{"rel": "describedby", "type": "text/html",
                   "href": "https://docs.openstack.org/"},
                  {"rel": "self", "href": f"{base(request)}/v2/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.share+json;version=1"}],
    }


@router.get("")
@router.get("/")
@router.get("/v2")
@router.get("/v2/")
def versions(request: Request) -> dict[str, Any]:
    """The service answers both its root and its version root with a `versions` list."""
    return {"versions": [_v2(request)]}


# ---- share types -----------------------------------------------------------------------------
def _share_type(request: Request) -> dict[str, Any]:
    specs = {"driver_handles_share_servers": "False"}
    view: dict[str, Any] = {
        "id": DEFAULT_TYPE_ID, "name": "default", "extra_specs": {
            **specs, "snapshot_support": "False", "create_share_from_snapshot_support": "False",
            "revert_to_snapshot_support": "False", "mount_snapshot_support": "False"},
        "required_extra_specs": specs, "share_type_access:is_public": True,
    }
    if at_least(request, 41):
        view["description"] = (
            f"The built-in shares: a directory on the host (protocol {BUILTIN_PROTOCOL})")
    if at_least(request, 46):
        view["is_default"] = True
    return view


@router.get("/v2/types")
@router.get("/v2/types/default")
@router.get("/v2/types/{type_id}")
def share_types(request: Request, type_id: str | None = None) -> dict[str, Any]:
    if type_id is not None and type_id not in (DEFAULT_TYPE_ID, "default"):
        raise NotFound(f"Share type {type_id} could not be found.")
    if request.url.path.rstrip("/").endswith("/types"):
        return {"share_types": [_share_type(request)]}
    return {"share_type": _share_type(request)}
