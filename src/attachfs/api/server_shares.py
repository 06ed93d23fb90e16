"""Share attachments, compute API microversion 2.97: /servers/{id}/shares."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict

from attachfs.api import deps, views
from attachfs.core import services
from attachfs.core.model import validate_uuid
from attachfs.core.validation import validate_mount_point
from attachfs.db.tables import ShareMapping

router = APIRouter(prefix="/v2.1/servers/{server_id}/shares")
MICROVERSION = "2.97"
RULE = "os_compute_api:os-server-shares:%s"


class ShareAttach(BaseModel):
    model_config = ConfigDict(extra="forbid")
    share_id: str
    tag: str | None = None


class ShareAttachBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    share: ShareAttach


class ShareAttachExt(ShareAttach):
    """attachfs extension 1.1: read-only attachments, enforced on the host."""

    read_only: bool = False


class ShareAttachExtBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    share: ShareAttachExt


READ_ONLY_EXT = "1.1"


def mapping_view(request: Request, mapping: ShareMapping, admin: bool) -> dict[str, Any]:
    view = views.share_mapping(mapping, admin)
    if deps.extension(request, READ_ONLY_EXT):
        view["read_only"] = mapping.read_only
    return view


def do_attach(request: Request, server_id: str, share_id: str, tag: str | None,
              mount_point: str | None, read_only: bool = False) -> ShareMapping:
    """Shared by POST /shares and the legacy share_attach action: same rules, same states."""
    state, ctx = deps.api(request), deps.context(request)
    share_id = validate_uuid(share_id, "share_id")
    validate_mount_point(mount_point)
    with state.db.read() as s:
        server = services.get_server(s, server_id, ctx)
        state.policy.authorize(RULE % "create", ctx, server.project_id)
    share = state.provider.get_share(share_id, ctx)  # 404 when missing or not visible
    with state.db.session() as s:
        server = services.get_server(s, server_id, ctx, lock=True)
        rules = services.AttachRules(state.config.api.hot_plug,
                                     state.config.api.max_attachments_per_server)
        mapping = services.attach_share(s, ctx, server, share, tag, mount_point, rules,
                                        read_only)
    state.wake_agent()
    return mapping


def do_detach(request: Request, server_id: str, share_id: str) -> None:
    state, ctx = deps.api(request), deps.context(request)
    share_id = validate_uuid(share_id, "share_id")
    with state.db.session() as s:
        server = services.get_server(s, server_id, ctx, lock=True)
        state.policy.authorize(RULE % "delete", ctx, server.project_id)
        services.detach_share(s, ctx, server, share_id, state.config.api.hot_plug)
    state.wake_agent()


@router.get("")
def list_shares(server_id: str, request: Request) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        server = services.get_server(s, server_id, ctx)
        state.policy.authorize(RULE % "index", ctx, server.project_id)
        return {"shares": [mapping_view(request, m, admin=False)
                           for m in services.list_mappings(s, server.uuid)]}


@router.post("", status_code=201)
def create_share(server_id: str, request: Request, body: Any = Body(None)) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    if deps.extension(request, READ_ONLY_EXT):
        ext = deps.parse(ShareAttachExtBody, body).share
        mapping = do_attach(request, server_id, ext.share_id, ext.tag, None, ext.read_only)
    else:
        spec = deps.parse(ShareAttachBody, body).share  # exactly 2.97's schema
        mapping = do_attach(request, server_id, spec.share_id, spec.tag, None)
    return {"share": mapping_view(request, mapping, deps.context(request).is_admin)}


@router.get("/{share_id}")
def show_share(server_id: str, share_id: str, request: Request) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    state, ctx = deps.api(request), deps.context(request)
    share_id = validate_uuid(share_id, "share_id")
    with state.db.read() as s:
        server = services.get_server(s, server_id, ctx)
        state.policy.authorize(RULE % "show", ctx, server.project_id)
        mapping = services.get_mapping(s, server.uuid, share_id)
        return {"share": mapping_view(request, mapping, ctx.is_admin)}


@router.delete("/{share_id}", status_code=200)
def delete_share(server_id: str, share_id: str, request: Request) -> Response:
    deps.require_version(request, MICROVERSION)
    do_detach(request, server_id, share_id)
    return Response(status_code=200)
