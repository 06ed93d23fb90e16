"""Seed 003's filesystem API for the built-in provider: /v2.1/os-filesystem/{name}.

Scopes: `instance` (attachable by its project's servers, one at a time by request), `project`
(attached to every server of the project, including servers created later), `global`
(attachable from every project; only an admin may create one).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from attachfs.api import deps
from attachfs.api.routing import JsonRoute
from attachfs.core.commands import AttachShare, CreateShare, DeleteShare, DetachShare, ShareRef
from attachfs.core.handlers import attachments, queries, shares
from attachfs.core.model import ShareScope
from attachfs.core.ports import BuiltinShareRecord
from attachfs.core.validation import validate_mount_point
from attachfs.errors import BadRequest

router = APIRouter(prefix="/v2.1/os-filesystem", route_class=JsonRoute)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_SIZE = re.compile(r"^\s*(\d+)\s*(g|gb|gib)?\s*$", re.IGNORECASE)


class FsEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int | str
    scope: ShareScope = ShareScope.INSTANCE
    project: str | None = Field(default=None, min_length=1, max_length=255)
    mount_point: str | None = None  # checked by core.validation.validate_mount_point

    @field_validator("size")
    @classmethod
    def _gib(cls, value: int | str) -> int:
        m = _SIZE.match(str(value))
        if not m or int(m.group(1)) < 1:
            raise ValueError("size must be a whole number of GiB >= 1, e.g. 4 or '4Gb'")
        return int(m.group(1))


class FsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fs_entry: FsEntry


def _view(share: BuiltinShareRecord, usage: int | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": share.uuid, "name": share.name, "size": f"{share.size_gib}Gb",
                            "size_gib": share.size_gib, "scope": share.scope,
                            "project": share.project_id, "status": share.status,
                            "mount_point": share.mount_point}
    if usage is not None:
        view["used_bytes"] = usage
        view["used_percent"] = round(100.0 * usage / (share.size_gib << 30), 3)
    return view


def _ref(request: Request, name: str) -> ShareRef:
    """A name means the caller's project's share, else the global share of that name. An
    admin may name another project's share with `?project=ID` (names are per project)."""
    return ShareRef(name=name, project=request.query_params.get("project"),
                    label=f"Filesystem {name}")


@router.get("")
def list_filesystems(request: Request) -> dict[str, Any]:
    shares = queries.list_shares(deps.uow(request), deps.env(request), deps.context(request))
    return {"fs_entries": [_view(sh) for sh in shares]}


@router.get("/{name}")
def show_filesystem(name: str, request: Request) -> dict[str, Any]:
    share = queries.show_share(deps.uow(request), deps.env(request), deps.context(request),
                               _ref(request, name))
    return {"fs_entry": _view(share, deps.env(request).builtin.usage_bytes(share.uuid))}


@router.put("/{name}", status_code=201)
def create_filesystem(name: str, request: Request, body: Any = Depends(deps.json_body)) -> dict[str, Any]:
    ctx = deps.context(request)
    if not _NAME.match(name):
        raise BadRequest("name must be 1-255 characters of [A-Za-z0-9._-]")
    spec = deps.parse(FsBody, body).fs_entry
    validate_mount_point(spec.mount_point)
    cmd = CreateShare(ctx, name=name, size_gib=int(spec.size), scope=spec.scope,
                      project_id=spec.project or ctx.project_id, mount_point=spec.mount_point,
                      taken_message=f"Filesystem {name} already exists" + (
                          " (global scope)" if spec.scope == ShareScope.GLOBAL else ""))
    share = shares.create_share(cmd, deps.uow(request), deps.env(request))
    return {"fs_entry": _view(share, 0)}


@router.delete("/{name}", status_code=202)
def delete_filesystem(name: str, request: Request) -> Response:
    shares.delete_share(DeleteShare(deps.context(request), _ref(request, name)),
                        deps.uow(request), deps.env(request))
    return Response(status_code=202)


@router.get("/{name}/instances")
def list_instances(name: str, request: Request) -> dict[str, Any]:
    rows = queries.share_servers(deps.uow(request), deps.env(request), deps.context(request),
                                 _ref(request, name))
    return {"instances": [{"id": server_id, "status": status} for server_id, status in rows]}


@router.put("/{name}/instances/{server_id}", status_code=202)
def connect_instance(name: str, server_id: str, request: Request) -> dict[str, Any]:
    ctx = deps.context(request)
    share_id = queries.share_id(deps.uow(request), ctx, _ref(request, name))
    attachments.attach_share(AttachShare(ctx, server_id, share_id, retry=True), deps.uow(request),
                             deps.env(request))
    return {"id": server_id}


@router.delete("/{name}/instances/{server_id}", status_code=202)
def disconnect_instance(name: str, server_id: str, request: Request) -> Response:
    ctx = deps.context(request)
    share_id = queries.share_id(deps.uow(request), ctx, _ref(request, name))
    attachments.detach_share(DetachShare(ctx, server_id, share_id), deps.uow(request),
                             deps.env(request))
    return Response(status_code=202)
