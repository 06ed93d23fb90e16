"""Seed 003's filesystem API for the built-in provider: /v2.1/os-filesystem/{name}.

Scopes: `instance` (attachable by its project's servers, one at a time by request), `project`
(attached to every server of the project, including servers created later), `global`
(attachable from every project; only an admin may create one).
"""

from __future__ import annotations

import re
import uuid as uuidlib
from typing import Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from attachfs.api import deps
from attachfs.api.server_shares import do_attach, do_detach
from attachfs.core import services
from attachfs.core.model import ShareScope
from attachfs.core.validation import validate_mount_point
from attachfs.db.tables import Server, Share, ShareMapping
from attachfs.errors import BadRequest, Conflict, Forbidden, NotFound
from attachfs.storage.local import share_info, share_visible

router = APIRouter(prefix="/v2.1/os-filesystem")
RULE = "attachfs:os-filesystem:%s"
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


def _view(share: Share, usage: int | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": share.uuid, "name": share.name, "size": f"{share.size_gib}Gb",
                            "size_gib": share.size_gib, "scope": share.scope,
                            "project": share.project_id, "status": share.status,
                            "mount_point": share.mount_point}
    if usage is not None:
        view["used_bytes"] = usage
        view["used_percent"] = round(100.0 * usage / (share.size_gib << 30), 3)
    return view


def _get(s: Any, request: Request, name: str) -> Share:
    """A name means the caller's project's share, else the global share of that name. An
    admin may name another project's share with `?project=ID` (names are per project)."""
    ctx = deps.context(request)
    project = request.query_params.get("project") if ctx.is_admin else None
    share = s.scalar(select(Share).where(Share.name == name, Share.scope != ShareScope.GLOBAL,
                                         Share.project_id == (project or ctx.project_id)))
    if share is None and project is None:
        share = s.scalar(select(Share).where(Share.name == name,
                                             Share.scope == ShareScope.GLOBAL))
    if share is None or not share_visible(share, ctx):
        raise NotFound(f"Filesystem {name} could not be found.")
    return share


def _name_taken(s: Any, name: str, scope: str, project: str) -> bool:
    """Only inside the namespace the new share goes to: another project's names stay unseen."""
    query = select(Share.uuid).where(Share.name == name)
    if scope == ShareScope.GLOBAL:
        query = query.where(Share.scope == ShareScope.GLOBAL)
    else:
        query = query.where(Share.scope != ShareScope.GLOBAL, Share.project_id == project)
    return s.scalar(query) is not None


@router.get("")
def list_filesystems(request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    state.policy.authorize(RULE % "index", ctx, ctx.project_id)
    with state.db.read() as s:
        shares = s.scalars(select(Share).order_by(Share.name))
        return {"fs_entries": [_view(sh) for sh in shares if share_visible(sh, ctx)]}


@router.get("/{name}")
def show_filesystem(name: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        share = _get(s, request, name)
        state.policy.authorize(RULE % "show", ctx, share.project_id
                               if share.scope != ShareScope.GLOBAL else ctx.project_id)
    return {"fs_entry": _view(share, state.builtin.usage_bytes(share.uuid))}


@router.put("/{name}", status_code=201)
def create_filesystem(name: str, request: Request, body: Any = Body(None)) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    if not _NAME.match(name):
        raise BadRequest("name must be 1-255 characters of [A-Za-z0-9._-]")
    spec = deps.parse(FsBody, body).fs_entry
    validate_mount_point(spec.mount_point)
    project = spec.project or ctx.project_id
    if project != ctx.project_id and not ctx.is_admin:
        raise Forbidden("Only an admin may create a filesystem for another project")
    state.policy.authorize(RULE % "create", ctx, project)
    if spec.scope == ShareScope.GLOBAL:
        state.policy.authorize(RULE % "global", ctx, project)
    share_id = str(uuidlib.uuid4())
    taken = Conflict(f"Filesystem {name} already exists"
                     + (" (global scope)" if spec.scope == ShareScope.GLOBAL else ""))
    state.builtin.create_dir(share_id, int(spec.size))
    try:
        with state.db.session() as s:
            if _name_taken(s, name, spec.scope, project):
                raise taken
            share = Share(uuid=share_id, name=name, project_id=project, user_id=ctx.user_id,
                          size_gib=spec.size, scope=spec.scope, status="available",
                          mount_point=spec.mount_point)
            s.add(share)
            s.flush()
            if spec.scope == ShareScope.PROJECT:
                services.attach_to_project_servers(
                    s, ctx, share_info(share, state.builtin.storage_root), project)
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        state.builtin.delete_dir(share_id)
        raise taken from exc
    except BaseException:
        state.builtin.delete_dir(share_id)  # nothing half-done: the directory goes too
        raise
    state.wake_agent()
    return {"fs_entry": _view(share, 0)}


@router.delete("/{name}", status_code=202)
def delete_filesystem(name: str, request: Request) -> Response:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.session() as s:
        share = _get(s, request, name)
        state.policy.authorize(RULE % "delete", ctx, share.project_id)
        share_id = services.delete_builtin_share(s, share, f"Filesystem {name}")
    state.builtin.delete_dir(share_id)
    return Response(status_code=202)


@router.get("/{name}/instances")
def list_instances(name: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        share = _get(s, request, name)
        state.policy.authorize(RULE % "show", ctx, share.project_id
                               if share.scope != ShareScope.GLOBAL else ctx.project_id)
        query = (select(ShareMapping.instance_uuid, ShareMapping.status)
                 .join(Server, Server.uuid == ShareMapping.instance_uuid)
                 .where(ShareMapping.share_id == share.uuid).order_by(ShareMapping.id))
        if not ctx.is_admin:  # other projects' servers on a global share stay private
            query = query.where(Server.project_id == ctx.project_id)
        rows = s.execute(query)
        return {"instances": [{"id": r[0], "status": r[1]} for r in rows]}


def _share_id(request: Request, name: str) -> str:
    with deps.api(request).db.read() as s:
        return _get(s, request, name).uuid


@router.put("/{name}/instances/{server_id}", status_code=202)
def connect_instance(name: str, server_id: str, request: Request) -> dict[str, Any]:
    do_attach(request, server_id, _share_id(request, name), None, None)
    return {"id": server_id}


@router.delete("/{name}/instances/{server_id}", status_code=202)
def disconnect_instance(name: str, server_id: str, request: Request) -> Response:
    do_detach(request, server_id, _share_id(request, name))
    return Response(status_code=202)
