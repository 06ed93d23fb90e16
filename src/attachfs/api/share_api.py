"""The shared-file-system API subset the openstack CLI and openstacksdk use, served for the
built-in shares at /share/v2 (point clouds.yaml's `shared_file_system_endpoint_override` here).

Same database, policy (`attachfs:os-filesystem:*`) and authentication as the compute API; a
project sees its own shares and the global ones (admins: all with `all_tenants=1`).
Bodies and faults are the shared-file-system service's, microversions 2.0 … 2.98 through
`X-OpenStack-Manila-API-Version` (echoed in the response, as that service does).

What is honestly different from that service:
- The only protocol is `LOCAL`: a directory on this host, handed to guests over virtio-fs.
  A create asking for NFS, CEPHFS, … is refused (400) rather than recorded as something the
  share is not.
- Names are required to be unique in their namespace (the project's shares; the global ones)
  and of the os-filesystem form `[A-Za-z0-9][A-Za-z0-9._-]*` (the same share is also
  `/v2.1/os-filesystem/{name}`); a share created without a name is named after its id.
  `is_public: true` creates a share of global scope (admins only).
- Descriptions, metadata, snapshots, share networks, groups and access rules are not kept:
  a create asking for them is refused (400); the views show them empty.
- One share type, `default` (driver_handles_share_servers False).
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from attachfs.api import deps
from attachfs.api.views import iso
from attachfs.core import services
from attachfs.core.model import ShareScope
from attachfs.core.rules import BUILTIN_PROTOCOL
from attachfs.db.tables import Share
from attachfs.errors import BadRequest, Conflict, NotAcceptable, NotFound
from attachfs.storage.local import export_location, share_visible

PREFIX = "/share"
MIN_VERSION = (2, 0)
MAX_VERSION = (2, 98)
VERSION_HEADER = "X-OpenStack-Manila-API-Version"
PROTOCOL = BUILTIN_PROTOCOL
RULE = "attachfs:os-filesystem:%s"  # the built-in shares' rules, as /os-filesystem uses them
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_VERSION = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")
# A fixed id for the one share type, and for each share's one export location.
_NS = uuidlib.UUID("6b0f4f9e-7a0c-4d51-9a36-3f1f6c1d2a10")
DEFAULT_TYPE_ID = str(uuidlib.uuid5(_NS, "share-type:default"))


def _fmt(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def parse_version(headers: Any) -> tuple[int, int]:
    """The microversion asked for: the legacy header, else `OpenStack-API-Version:
    shared-file-system X.Y` (what keystoneauth also sends); none means 2.0, as the service."""
    text: str | None = headers.get(VERSION_HEADER)
    if not text:
        for part in (headers.get("OpenStack-API-Version") or "").split(","):
            service, _, value = part.strip().partition(" ")
            if service.lower() in ("shared-file-system", "share", "sharev2"):
                text = value.strip()
    text = (text or "").strip()
    if not text:
        return MIN_VERSION
    if text.lower() == "latest":
        return MAX_VERSION
    m = _VERSION.match(text)
    if not m:
        raise BadRequest(f"API Version String {text} is of invalid format. Must be of format "
                         "MajorNum.MinorNum.")
    version = (int(m.group(1)), int(m.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise NotAcceptable(f"Version {text} is not supported by the API. Minimum is "
                            f"{_fmt(MIN_VERSION)} and maximum is {_fmt(MAX_VERSION)}.")
    return version


class ShareRoute(APIRoute):
    """Reads the share microversion before the handler and echoes it on the answer."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            version = parse_version(request.headers)
            request.state.share_version = version
            response = await handler(request)
            response.headers[VERSION_HEADER] = _fmt(version)
            return response

        return route


router = APIRouter(prefix=PREFIX, route_class=ShareRoute)


def _version(request: Request) -> tuple[int, int]:
    v: tuple[int, int] = request.state.share_version
    return v


def _at_least(request: Request, minor: int) -> bool:
    return _version(request) >= (2, minor)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX


# ---- version discovery ---------------------------------------------------------------------
def _v2(request: Request) -> dict[str, Any]:
    return {
        "id": "v2.0", "status": "CURRENT", "version": _fmt(MAX_VERSION),
        "min_version": _fmt(MIN_VERSION), "updated": "2015-08-27T11:33:21Z",
        "links": [{"rel": "describedby", "type": "text/html",
                   "href": "https://docs.openstack.org/"},
                  {"rel": "self", "href": f"{_base(request)}/v2/"}],
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
    if _at_least(request, 41):
        view["description"] = "The built-in shares: a directory on the host (protocol LOCAL)"
    if _at_least(request, 46):
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


# ---- shares ------------------------------------------------------------------------------------
def _links(request: Request, share_id: str) -> list[dict[str, str]]:
    base = _base(request)
    return [{"rel": "self", "href": f"{base}/v2/shares/{share_id}"},
            {"rel": "bookmark", "href": f"{base}/shares/{share_id}"}]


def _export_id(share_id: str) -> str:
    return str(uuidlib.uuid5(_NS, f"export:{share_id}"))


def _export_location(request: Request, share: Share, admin: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"id": _export_id(share.uuid),
                            "path": export_location(deps.api(request).builtin.storage_root,
                                                    share.uuid)}
    if _at_least(request, 14):
        view["preferred"] = True
    if admin:
        view["share_instance_id"] = share.uuid
        view["is_admin_only"] = False
    if _at_least(request, 87):
        view["metadata"] = {}
    return view


def _summary(request: Request, share: Share) -> dict[str, Any]:
    return {"id": share.uuid, "name": share.name, "links": _links(request, share.uuid)}


def _detail(request: Request, share: Share, admin: bool) -> dict[str, Any]:
    path = export_location(deps.api(request).builtin.storage_root, share.uuid)
    view: dict[str, Any] = {
        "id": share.uuid, "name": share.name, "size": share.size_gib, "status": share.status,
        "availability_zone": "nova", "created_at": iso(share.created_at), "description": None,
        "project_id": share.project_id, "snapshot_id": None, "share_network_id": None,
        "share_proto": PROTOCOL, "metadata": {}, "share_type": DEFAULT_TYPE_ID,
        "volume_type": "default", "is_public": share.scope == ShareScope.GLOBAL,
        "links": _links(request, share.uuid),
    }
    if not _at_least(request, 9):  # later microversions moved these to export_locations
        view["export_location"] = path
        view["export_locations"] = [path]
    if admin:
        view["host"] = "attachfs@local#local"
        view["share_server_id"] = None
    extra: list[tuple[int, dict[str, Any]]] = [
        (2, {"snapshot_support": False}),
        (5, {"task_state": None}),
        (6, {"share_type_name": "default"}),
        (10, {"access_rules_status": "active"}),
        (11, {"replication_type": None, "has_replicas": False}),
        (16, {"user_id": share.user_id}),
        (24, {"create_share_from_snapshot_support": False}),
        (27, {"revert_to_snapshot_support": False}),
        (31, {"share_group_id": None, "source_share_group_snapshot_member_id": None}),
        (32, {"mount_snapshot_support": False}),
        (54, {"progress": "100%"}),
        (69, {"is_soft_deleted": False, "scheduled_to_be_deleted_at": None}),
        (84, {"mount_point_name": None}),
        (90, {"encryption_key_ref": None}),
    ]
    for minor, fields in extra:
        if _at_least(request, minor):
            view.update(fields)
    if _at_least(request, 4) and not _at_least(request, 31):
        view.update({"consistency_group_id": None, "source_cgsnapshot_member_id": None})
    return view


def _scope_project(share: Share, project_id: str) -> str:
    """The project a policy check is made against: a global share is everyone's to read."""
    return project_id if share.scope == ShareScope.GLOBAL else share.project_id


def _get(s: Any, request: Request, share_id: str) -> Share:
    share = s.get(Share, share_id)
    if share is None or not share_visible(share, deps.context(request)):
        raise NotFound(f"Share {share_id} could not be found.")
    return share


def _listed(request: Request) -> list[Share]:
    state, ctx = deps.api(request), deps.context(request)
    state.policy.authorize(RULE % "index", ctx, ctx.project_id)
    q = request.query_params
    all_tenants = ctx.is_admin and q.get("all_tenants", q.get("all_projects", "0")).lower() in (
        "1", "true", "yes")
    with state.db.read() as s:
        shares = list(s.scalars(select(Share).order_by(Share.created_at.desc(), Share.uuid)))
    out = []
    for sh in shares:
        if not (all_tenants or sh.project_id == ctx.project_id or sh.scope == ShareScope.GLOBAL):
            continue
        if "project_id" in q and ctx.is_admin and sh.project_id != q["project_id"]:
            continue
        if "name" in q and sh.name != q["name"]:
            continue
        if "name~" in q and q["name~"].lower() not in sh.name.lower():
            continue
        if "status" in q and sh.status != q["status"].lower():
            continue
        if "share_proto" in q and q["share_proto"].upper() != PROTOCOL:
            continue
        if "is_public" in q and q["is_public"].lower() in ("1", "true", "yes") and not (
                sh.scope == ShareScope.GLOBAL or sh.project_id == ctx.project_id):
            continue
        if q.get("is_soft_deleted", "false").lower() in ("1", "true", "yes"):
            continue  # nothing here is ever soft-deleted (kept in a recycle bin)
        out.append(sh)
    offset = _int_param(q.get("offset"), "offset")
    limit = _int_param(q.get("limit"), "limit")
    out = out[offset or 0:]
    return out[:limit] if limit is not None else out


def _int_param(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a non-negative integer") from exc
    if number < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return number


@router.get("/v2/shares")
def list_shares(request: Request) -> dict[str, Any]:
    return {"shares": [_summary(request, sh) for sh in _listed(request)]}


@router.get("/v2/shares/detail")
def list_shares_detail(request: Request) -> dict[str, Any]:
    admin = deps.context(request).is_admin
    return {"shares": [_detail(request, sh, admin) for sh in _listed(request)]}


@router.get("/v2/shares/{share_id}")
def show_share(share_id: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        share = _get(s, request, share_id)
    state.policy.authorize(RULE % "show", ctx, _scope_project(share, ctx.project_id))
    return {"share": _detail(request, share, ctx.is_admin)}


@router.get("/v2/shares/{share_id}/export_locations")
def list_export_locations(share_id: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        share = _get(s, request, share_id)
    state.policy.authorize(RULE % "show", ctx, _scope_project(share, ctx.project_id))
    return {"export_locations": [_export_location(request, share, ctx.is_admin)]}


@router.get("/v2/shares/{share_id}/export_locations/{export_id}")
def show_export_location(share_id: str, export_id: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        share = _get(s, request, share_id)
    state.policy.authorize(RULE % "show", ctx, _scope_project(share, ctx.project_id))
    if export_id != _export_id(share.uuid):
        raise NotFound(f"Export location {export_id} could not be found.")
    return {"export_location": _export_location(request, share, ctx.is_admin)}


# Keys a create may carry (the CLI sends most of them, as null); those the built-in provider
# cannot honour are refused when given a value.
_CREATE_KEYS = {"share_proto", "size", "name", "display_name", "description",
                "display_description", "snapshot_id", "metadata", "share_network_id",
                "share_type", "volume_type", "is_public", "availability_zone",
                "share_group_id", "consistency_group_id", "scheduler_hints", "mount_point_name",
                "encryption_key_ref"}
_UNSUPPORTED = ("description", "display_description", "snapshot_id", "share_network_id",
                "share_group_id", "consistency_group_id", "mount_point_name",
                "encryption_key_ref")


def _parse_create(body: Any) -> tuple[str | None, int, bool]:
    if not isinstance(body, dict) or not isinstance(body.get("share"), dict):
        raise BadRequest("The request body must be {\"share\": {...}}")
    spec: dict[str, Any] = body["share"]
    unknown = sorted(set(spec) - _CREATE_KEYS)
    if unknown:
        raise BadRequest(f"Unknown keys in the share: {', '.join(unknown)}")
    proto = spec.get("share_proto")
    if not isinstance(proto, str) or proto.upper() != PROTOCOL:
        raise BadRequest(f"Invalid share protocol {proto!r}: attachfs's built-in shares are "
                         f"protocol {PROTOCOL} (a directory on the host, handed to guests over "
                         f"virtio-fs); create them with share_proto {PROTOCOL}")
    size = spec.get("size")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    if isinstance(size, bool) or not isinstance(size, int | str) \
            or not (str(size).isascii() and str(size).isdigit()) or int(size) < 1:
        raise BadRequest(f"Share size must be an integer >= 1, not {size!r}")
    for key in _UNSUPPORTED:
        if spec.get(key) not in (None, ""):
            raise BadRequest(f"{key} is not supported by attachfs's built-in shares")
    if spec.get("metadata") not in (None, {}):
        raise BadRequest("metadata is not supported by attachfs's built-in shares")
    if spec.get("scheduler_hints") not in (None, {}):
        raise BadRequest("scheduler_hints are not supported by attachfs's built-in shares")
    if spec.get("share_type") not in (None, "", "default", DEFAULT_TYPE_ID) or \
            spec.get("volume_type") not in (None, "", "default", DEFAULT_TYPE_ID):
        raise BadRequest("Share type not found: attachfs has one share type, 'default'")
    if spec.get("availability_zone") not in (None, "", "nova"):
        raise BadRequest("Availability zone not found: attachfs has one, 'nova'")
    name = spec.get("name") or spec.get("display_name")
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise BadRequest("Share name must be 1-255 characters of [A-Za-z0-9._-], starting "
                         "with a letter or digit")
    public = spec.get("is_public")
    if isinstance(public, str):
        public = public.lower() in ("1", "true", "yes")
    return name, int(size), bool(public)


@router.post("/v2/shares", status_code=200)
def create_share(request: Request, body: Any = Body(None)) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    name, size, public = _parse_create(body)
    state.policy.authorize(RULE % "create", ctx, ctx.project_id)
    if public:
        state.policy.authorize(RULE % "global", ctx, ctx.project_id)
    share_id = str(uuidlib.uuid4())
    name = name or share_id
    scope = ShareScope.GLOBAL if public else ShareScope.INSTANCE
    # Only the namespace the share goes to is checked: another project's names stay unseen.
    same_name = select(Share.uuid).where(Share.name == name)
    same_name = same_name.where(Share.scope == ShareScope.GLOBAL) if public else same_name.where(
        Share.scope != ShareScope.GLOBAL, Share.project_id == ctx.project_id)
    taken = Conflict(f"A share named {name} already exists " + (
        "among the public shares" if public else "in this project") + " (attachfs keeps share "
        "names unique per project, and among public shares)")
    state.builtin.create_dir(share_id, size)
    try:
        with state.db.session() as s:
            if s.scalar(same_name) is not None:
                raise taken
            share = Share(uuid=share_id, name=name, project_id=ctx.project_id,
                          user_id=ctx.user_id, size_gib=size, scope=scope, status="available")
            s.add(share)
            s.flush()
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        state.builtin.delete_dir(share_id)
        raise taken from exc
    except BaseException:
        state.builtin.delete_dir(share_id)  # nothing half-done
        raise
    return {"share": _detail(request, share, ctx.is_admin)}


@router.delete("/v2/shares/{share_id}", status_code=202)
def delete_share(share_id: str, request: Request) -> Response:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.session() as s:
        share = _get(s, request, share_id)
        state.policy.authorize(RULE % "delete", ctx, share.project_id)
        share_id = services.delete_builtin_share(s, share, f"Share {share_id}")
    state.builtin.delete_dir(share_id)
    return Response(status_code=202)
