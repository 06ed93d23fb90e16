"""Share attachments, compute API microversion 2.97: /servers/{id}/shares."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict

from attachfs.api import deps, views
from attachfs.core.commands import AttachShare, DetachShare
from attachfs.core.handlers import attachments, queries
from attachfs.core.model import validate_uuid
from attachfs.core.ports import AttachmentRecord

router = APIRouter(prefix="/v2.1/servers/{server_id}/shares")
MICROVERSION = "2.97"


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


def mapping_view(request: Request, mapping: AttachmentRecord, admin: bool) -> dict[str, Any]:
    view = views.share_mapping(mapping, admin)
    if deps.extension(request, READ_ONLY_EXT):
        view["read_only"] = mapping.read_only
    return view


@router.get("")
def list_shares(server_id: str, request: Request) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    mappings = queries.list_attachments(deps.uow(request), deps.env(request),
                                        deps.context(request), server_id)
    return {"shares": [mapping_view(request, m, admin=False) for m in mappings]}


@router.post("", status_code=201)
def create_share(server_id: str, request: Request, body: Any = Body(None)) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    ctx = deps.context(request)
    if deps.extension(request, READ_ONLY_EXT):
        ext = deps.parse(ShareAttachExtBody, body).share
        cmd = AttachShare(ctx, server_id, ext.share_id, ext.tag, None, ext.read_only)
    else:
        spec = deps.parse(ShareAttachBody, body).share  # exactly 2.97's schema
        cmd = AttachShare(ctx, server_id, spec.share_id, spec.tag)
    mapping = attachments.attach_share(cmd, deps.uow(request), deps.env(request))
    return {"share": mapping_view(request, mapping, ctx.is_admin)}


@router.get("/{share_id}")
def show_share(server_id: str, share_id: str, request: Request) -> dict[str, Any]:
    deps.require_version(request, MICROVERSION)
    ctx = deps.context(request)
    mapping = queries.show_attachment(deps.uow(request), deps.env(request), ctx, server_id,
                                      validate_uuid(share_id, "share_id"))
    return {"share": mapping_view(request, mapping, ctx.is_admin)}


@router.delete("/{share_id}", status_code=200)
def delete_share(server_id: str, share_id: str, request: Request) -> Response:
    deps.require_version(request, MICROVERSION)
    attachments.detach_share(DetachShare(deps.context(request), server_id, share_id),
                             deps.uow(request), deps.env(request))
    return Response(status_code=200)
