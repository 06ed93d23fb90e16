"""Shares: list (with the service's filters), show, export locations, create, delete. The
built-in shares' handlers and rules (core/handlers/shares.py) do the work: the same database,
policy (`attachfs:os-filesystem:*`) and namespaces as /os-filesystem."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, Response
from starlette.datastructures import QueryParams

import attachfs.shareservice.views as views
from attachfs.api import deps
from attachfs.core.commands import CreateShare, DeleteShare, ShareRef
from attachfs.core.context import RequestContext
from attachfs.core.handlers import queries, shares
from attachfs.core.model import ShareScope
from attachfs.core.ports import BuiltinShareRecord
from attachfs.errors import BadRequest, NotFound
from attachfs.shareservice.create import parse_create
from attachfs.shareservice.versions import PREFIX, ShareRoute

router = APIRouter(prefix=PREFIX, route_class=ShareRoute)
_YES = ("1", "true", "yes")


def _ref(share_id: str) -> ShareRef:
    return ShareRef(id=share_id, label=f"Share {share_id}")


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


def _matches(sh: BuiltinShareRecord, q: QueryParams, ctx: RequestContext,
             all_tenants: bool) -> bool:
    """The service's list filters (a project sees its own and the public shares)."""
    own_or_public = sh.project_id == ctx.project_id or sh.scope == ShareScope.GLOBAL
    checks = (
        all_tenants or own_or_public,
        not ("project_id" in q and ctx.is_admin and sh.project_id != q["project_id"]),
        "name" not in q or sh.name == q["name"],
        "name~" not in q or q["name~"].lower() in sh.name.lower(),
        "status" not in q or sh.status == q["status"].lower(),
        "share_proto" not in q or q["share_proto"].upper() == sh.protocol,
        not ("is_public" in q and q["is_public"].lower() in _YES and not own_or_public),
        # nothing here is ever soft-deleted (kept in a recycle bin)
        q.get("is_soft_deleted", "false").lower() not in _YES,
    )
    return all(checks)


def _listed(request: Request) -> list[BuiltinShareRecord]:
    ctx, q = deps.context(request), request.query_params
    all_tenants = ctx.is_admin and q.get("all_tenants", q.get("all_projects", "0")).lower() \
        in ("1", "true", "yes")
    rows = queries.list_shares(deps.uow(request), deps.env(request), ctx, order="newest")
    out = [sh for sh in rows if _matches(sh, q, ctx, all_tenants)]
    offset = _int_param(q.get("offset"), "offset")
    limit = _int_param(q.get("limit"), "limit")
    out = out[offset or 0:]
    return out[:limit] if limit is not None else out


@router.get("/v2/shares")
def list_shares(request: Request) -> dict[str, Any]:
    return {"shares": [views.summary(request, sh) for sh in _listed(request)]}


@router.get("/v2/shares/detail")
def list_shares_detail(request: Request) -> dict[str, Any]:
    admin = deps.context(request).is_admin
    return {"shares": [views.detail(request, sh, admin) for sh in _listed(request)]}


def _shown(request: Request, share_id: str) -> BuiltinShareRecord:
    return queries.show_share(deps.uow(request), deps.env(request), deps.context(request),
                              _ref(share_id))


@router.get("/v2/shares/{share_id}")
def show_share(share_id: str, request: Request) -> dict[str, Any]:
    share = _shown(request, share_id)
    return {"share": views.detail(request, share, deps.context(request).is_admin)}


@router.get("/v2/shares/{share_id}/export_locations")
def list_export_locations(share_id: str, request: Request) -> dict[str, Any]:
    share = _shown(request, share_id)
    return {"export_locations": views.export_locations(request, share,
                                                       deps.context(request).is_admin)}


@router.get("/v2/shares/{share_id}/export_locations/{export_id}")
def show_export_location(share_id: str, export_id: str, request: Request) -> dict[str, Any]:
    share = _shown(request, share_id)
    for location in views.export_locations(request, share, deps.context(request).is_admin):
        if location["id"] == export_id:
            return {"export_location": location}
    raise NotFound(f"Export location {export_id} could not be found.")


@router.post("/v2/shares", status_code=200)
def create_share(request: Request, body: Any = Body(None)) -> dict[str, Any]:
    ctx = deps.context(request)
    name, size, public, protocol = parse_create(body)
    where = "among the public shares" if public else "in this project"
    cmd = CreateShare(
        ctx, name=name or "", size_gib=size, project_id=ctx.project_id,
        scope=ShareScope.GLOBAL if public else ShareScope.INSTANCE,
        taken_message=f"A share named {name} already exists {where} (attachfs keeps share "
                      "names unique per project, and among public shares)",
        protocol=protocol)
    share = shares.create_share(cmd, deps.uow(request), deps.env(request))
    return {"share": views.detail(request, share, ctx.is_admin)}


@router.delete("/v2/shares/{share_id}", status_code=202)
def delete_share(share_id: str, request: Request) -> Response:
    shares.delete_share(DeleteShare(deps.context(request), _ref(share_id)), deps.uow(request),
                        deps.env(request))
    return Response(status_code=202)
