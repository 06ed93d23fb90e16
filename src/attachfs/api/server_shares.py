"""Share attachments, compute API microversion 2.97: /servers/{id}/shares.

Each route checks in the compute service's order: the microversion, the query or body against
2.97's JSON Schema, then the core handler (server, policy, server state, share)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from attachfs.api import deps, views
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import NO_QUERY, check_body, check_query
from attachfs.core.commands import AttachShare, DetachShare
from attachfs.core.guest_mount import guest_mount
from attachfs.core.handlers import attachments, queries
from attachfs.core.ports import AttachedShare
from attachfs.core.rules import TAG_CHARS, Transport

router = APIRouter(prefix="/v2.1/servers/{server_id}/shares", route_class=JsonRoute)
MICROVERSION = "2.97"

# attachfs extensions (OpenStack-API-Version: compute 2.97, attachfs X.Y):
READ_ONLY_EXT = "1.1"  # `read_only` in the attach body and in the views
RETRY_EXT = "1.2"  # `retry`: drive an attachment in `error` again (else 409 already attached)
TRANSPORT_EXT = "1.3"  # `transport` in the attach body and the views; mount_info

# 2.97's schema (nova/api/openstack/compute/schemas/server_shares.py), built from our rules.
SHARE_ID = {"type": "string", "format": "uuid"}
TAG = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": f"^[{TAG_CHARS}]*$"}


TRANSPORT = {"type": "string", "enum": [t.value for t in Transport]}


def attach_schema(read_only: bool = False, retry: bool = False,
                  transport: bool = False) -> dict[str, Any]:
    share: dict[str, Any] = {"share_id": SHARE_ID, "tag": TAG}
    if read_only:
        share["read_only"] = {"type": "boolean"}
    if retry:
        share["retry"] = {"type": "boolean"}
    if transport:
        share["transport"] = TRANSPORT
    return {"type": "object",
            "properties": {"share": {"type": "object", "properties": share,
                                     "required": ["share_id"], "additionalProperties": False}},
            "required": ["share"], "additionalProperties": False}


ATTACH = attach_schema()
ATTACH_READ_ONLY = attach_schema(read_only=True)
ATTACH_RETRY = attach_schema(read_only=True, retry=True)
ATTACH_TRANSPORT = attach_schema(read_only=True, retry=True, transport=True)


def mapping_view(request: Request, mapping: AttachedShare, admin: bool) -> dict[str, Any]:
    view = views.share_mapping(mapping, admin)
    if deps.extension(request, READ_ONLY_EXT):
        view["read_only"] = mapping.read_only
    if deps.extension(request, TRANSPORT_EXT):
        view["transport"] = mapping.transport
    return view


@router.get("")
def list_shares(server_id: str, request: Request) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    check_query(NO_QUERY, request.query_params)
    mappings = queries.list_attachments(deps.uow(request), deps.env(request),
                                        deps.context(request), server_id)
    return {"shares": [mapping_view(request, m, admin=False) for m in mappings]}


@router.post("", status_code=201)
async def create_share(server_id: str, request: Request) -> Response:
    deps.require_version(request, MICROVERSION)
    body = deps.parsed_json(await request.body())
    return JSONResponse(await run_in_threadpool(_create_share, server_id, request, body),
                        status_code=201)


def _create_share(server_id: str, request: Request, body: Any) -> dict[str, Any]:
    ctx = deps.context(request)
    schema = (ATTACH_TRANSPORT if deps.extension(request, TRANSPORT_EXT) else
              ATTACH_RETRY if deps.extension(request, RETRY_EXT) else
              ATTACH_READ_ONLY if deps.extension(request, READ_ONLY_EXT) else ATTACH)
    check_body(schema, body)
    spec = body["share"]
    cmd = AttachShare(ctx, server_id, spec["share_id"], spec.get("tag"), None,
                      spec.get("read_only", False), spec.get("retry", False),
                      spec.get("transport"))
    mapping = attachments.attach_share(cmd, deps.uow(request), deps.env(request))
    return {"share": mapping_view(request, mapping, ctx.is_admin)}


@router.get("/{share_id}")
def show_share(server_id: str, share_id: str, request: Request) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    check_query(NO_QUERY, request.query_params)
    ctx = deps.context(request)
    mapping = queries.show_attachment(deps.uow(request), deps.env(request), ctx, server_id,
                                      share_id)
    return {"share": mapping_view(request, mapping, ctx.is_admin)}


@router.get("/{share_id}/mount_info")
def show_mount_info(server_id: str, share_id: str, request: Request) -> dict[str, Any]:
    """attachfs's extension (seed 000's "get share info"): how the workload mounts it. A path
    of its own, so it needs no extension header (no compute service body changes)."""
    deps.require_version(request, MICROVERSION)
    check_query(NO_QUERY, request.query_params)
    env = deps.env(request)
    m = queries.show_attachment(deps.uow(request), env, deps.context(request), server_id,
                                share_id)
    mount = guest_mount(m.transport, m.tag, m.read_only, m.mount_point, m.instance_uuid, env.nfs_link,
                        m.share_id, env.container_layout)
    return {"mount_info": {**mount.as_dict(), "command": mount.command}}


@router.delete("/{share_id}", status_code=200)
def delete_share(server_id: str, share_id: str, request: Request) -> Response:
    deps.require_version(request, MICROVERSION)
    attachments.detach_share(DetachShare(deps.context(request), server_id, share_id),
                             deps.uow(request), deps.env(request))
    return Response(status_code=200, media_type="application/json")
