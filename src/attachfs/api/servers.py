"""Servers: create/list/show/delete and the actions start, stop, reboot, console output,
plus seed 004's legacy `share_attach` / `share_detach` actions."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select

from attachfs.api import deps, views
from attachfs.api.catalog import base_url, find_image, host_images
from attachfs.api.server_shares import do_attach, do_detach
from attachfs.core import services
from attachfs.core.model import ShareScope, VmState
from attachfs.core.validation import name_filter
from attachfs.db.tables import Server, Share, ShareMapping
from attachfs.errors import BadRequest
from attachfs.storage.local import share_info

router = APIRouter(prefix="/v2.1/servers")

_STRICT = ConfigDict(extra="forbid")


class ServerCreate(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=255)
    flavorRef: str = Field(min_length=1)
    imageRef: str = Field(min_length=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    user_data: str | None = Field(default=None, max_length=65535)
    # Accepted for client compatibility; one host, user-mode networking, no keys or groups yet.
    networks: Any = None
    min_count: int = Field(default=1, ge=1, le=1)
    max_count: int = Field(default=1, ge=1, le=1)
    security_groups: Any = None
    key_name: str | None = None
    availability_zone: str | None = None
    description: str | None = None
    config_drive: bool = False
    # The openstack CLI always sends the image as the root disk in this form; only exactly that
    # (what imageRef already says) is accepted: there are no volumes here.
    block_device_mapping_v2: list[dict[str, Any]] | None = None

    @field_validator("block_device_mapping_v2")
    @classmethod
    def _image_root_only(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for bdm in value or []:
            if (bdm.get("source_type"), bdm.get("destination_type"), bdm.get("boot_index")) \
                    != ("image", "local", 0):
                raise ValueError("only the image as the root disk (source_type image, "
                                 "destination_type local, boot_index 0) is supported")
        return value

    @field_validator("user_data")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("user_data must be base64 encoded") from exc
        return value


class ServerCreateBody(BaseModel):
    model_config = _STRICT
    server: ServerCreate


class ConsoleOutput(BaseModel):
    model_config = _STRICT
    length: int | str | None = None


class Reboot(BaseModel):
    model_config = _STRICT
    type: Literal["SOFT", "HARD", "soft", "hard"]


class LegacyAttach(BaseModel):
    model_config = _STRICT
    share_id: str
    mount_point: str | None = None  # checked by core.validation.validate_mount_point
    tag: str | None = None
    read_only: bool = False


class LegacyDetach(BaseModel):
    model_config = _STRICT
    share_id: str
    mount_point: str | None = None


def _project_shares(s: Any, project_id: str) -> list[Share]:
    return list(s.scalars(select(Share).where(Share.project_id == project_id,
                                              Share.scope == ShareScope.PROJECT)))


@router.post("", status_code=202)
def create_server(request: Request, body: Any = Body(None)) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    spec = deps.parse(ServerCreateBody, body).server
    state.policy.authorize("os_compute_api:servers:create", ctx, ctx.project_id)
    flavor = services.find_flavor(spec.flavorRef)
    images = host_images(request)
    image = find_image(images, spec.imageRef)
    if any(find_image(images, str(bdm.get("uuid", ""))).id != image.id
           for bdm in spec.block_device_mapping_v2 or []):
        raise BadRequest("block_device_mapping_v2 must boot the image imageRef names")
    with state.db.session() as s:
        shares = [share_info(sh, state.builtin.storage_root)
                  for sh in _project_shares(s, ctx.project_id)]
        server = services.create_server(
            s, ctx, name=spec.name, flavor=flavor, image_id=image.id,
            host=state.config.agent.host, metadata=spec.metadata, user_data=spec.user_data,
            project_shares=shares, config_drive=spec.config_drive)
        uuid = server.uuid
    state.wake_agent()
    return {"server": {"id": uuid, "links": views.link(base_url(request), "servers", uuid),
                       "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
                       "adminPass": ""}}


MAX_LIMIT = 1000  # the compute API's osapi_max_limit default


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return MAX_LIMIT
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequest("limit param must be an integer") from exc
    if limit < 0:
        raise BadRequest("limit param must be positive")
    return min(limit, MAX_LIMIT)


def _visible_servers(s: Any, ctx: Any, request: Request) -> list[Server]:
    """Newest first, as the compute API lists them; `name` (a regular expression, as there),
    `limit` and `marker` (the last server id of the previous page) page through them."""
    pattern = request.query_params.get("name")
    matches = name_filter(pattern) if pattern is not None else None  # RE2: linear time
    query = select(Server).where(Server.vm_state != VmState.DELETED).order_by(
        Server.created_at.desc(), Server.uuid.desc())
    all_tenants = request.query_params.get("all_tenants") not in (None, "0", "false", "False")
    if not (ctx.is_admin and all_tenants):
        query = query.where(Server.project_id == ctx.project_id)
    servers = list(s.scalars(query))
    if matches is not None:
        servers = [sv for sv in servers if matches(sv.name)]
    if (marker := request.query_params.get("marker")) is not None:
        ids = [sv.uuid for sv in servers]
        if marker not in ids:
            raise BadRequest(f"marker [{marker}] not found")
        servers = servers[ids.index(marker) + 1:]
    return servers[:_limit(request)]


def _page_links(request: Request, servers: list[Server], path: str) -> dict[str, Any]:
    """`servers_links` with the next page, when this page is full."""
    raw = request.query_params.get("limit")
    if raw is None or not servers or len(servers) < _limit(request):
        return {}
    query = urlencode({**dict(request.query_params), "marker": servers[-1].uuid})
    return {"servers_links": [{"rel": "next", "href": f"{base_url(request)}{path}?{query}"}]}


@router.get("")
def list_servers(request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    state.policy.authorize("os_compute_api:servers:index", ctx, ctx.project_id)
    with state.db.read() as s:
        servers = _visible_servers(s, ctx, request)
        return {"servers": [views.server_brief(sv, base_url(request)) for sv in servers],
                **_page_links(request, servers, "/v2.1/servers")}


@router.get("/detail")
def list_servers_detail(request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    state.policy.authorize("os_compute_api:servers:index", ctx, ctx.project_id)
    with state.db.read() as s:
        servers = _visible_servers(s, ctx, request)
        by_server: dict[str, list[ShareMapping]] = {}
        ids = [sv.uuid for sv in servers]
        for m in s.scalars(select(ShareMapping).where(ShareMapping.instance_uuid.in_(ids))
                           .order_by(ShareMapping.id)):
            by_server.setdefault(m.instance_uuid, []).append(m)
        return {"servers": [views.server_detail(sv, by_server.get(sv.uuid, []), base_url(request),
                                                deps.version(request), ctx.is_admin)
                            for sv in servers],
                **_page_links(request, servers, "/v2.1/servers/detail")}


@router.get("/{server_id}")
def show_server(server_id: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        server = services.get_server(s, server_id, ctx)
        state.policy.authorize("os_compute_api:servers:show", ctx, server.project_id)
        mappings = services.list_mappings(s, server.uuid)
        return {"server": views.server_detail(server, mappings, base_url(request),
                                              deps.version(request), ctx.is_admin)}


@router.delete("/{server_id}", status_code=204)
def delete_server(server_id: str, request: Request) -> Response:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.session() as s:
        server = services.get_server(s, server_id, ctx, lock=True)
        state.policy.authorize("os_compute_api:servers:delete", ctx, server.project_id)
        services.delete_server(s, ctx, server)
    state.wake_agent()
    return Response(status_code=204)


def _console_output(request: Request, server: Server, spec: ConsoleOutput) -> dict[str, Any]:
    path = deps.api(request).config.console_dir / f"{server.uuid}.log"
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    lines = text.splitlines(keepends=True)
    if spec.length not in (None, "-1", -1):
        try:
            length = int(spec.length)
        except ValueError as exc:
            raise BadRequest("length must be an integer") from exc
        if length < 0:
            raise BadRequest("length must be -1 or a positive integer")
        lines = lines[-length:] if length else []
    return {"output": "".join(lines)}


@router.post("/{server_id}/action")
def server_action(server_id: str, request: Request, body: Any = Body(None)) -> Any:
    state, ctx = deps.api(request), deps.context(request)
    if not isinstance(body, dict) or len(body) != 1:
        raise BadRequest("The action body must be an object with exactly one action")
    (action, args), = body.items()
    if action == "share_attach":
        spec = deps.parse(LegacyAttach, args)
        do_attach(request, server_id, spec.share_id, spec.tag, spec.mount_point, spec.read_only)
        return Response(status_code=202)
    if action == "share_detach":
        do_detach(request, server_id, deps.parse(LegacyDetach, args).share_id)
        return Response(status_code=202)
    handlers = {"os-start": ("start", services.start_server),
                "os-stop": ("stop", services.stop_server)}
    with state.db.session() as s:
        server = services.get_server(s, server_id, ctx, lock=True)
        if action == "os-getConsoleOutput":
            state.policy.authorize("os_compute_api:os-console-output", ctx, server.project_id)
            return _console_output(request, server, deps.parse(ConsoleOutput, args or {}))
        if action == "reboot":
            reboot = deps.parse(Reboot, args)
            state.policy.authorize("os_compute_api:servers:reboot", ctx, server.project_id)
            services.reboot_server(s, ctx, server, hard=reboot.type.upper() == "HARD")
        elif action in handlers:
            if args is not None and args != {}:
                raise BadRequest(f"{action} takes no arguments")
            verb, handler = handlers[action]
            state.policy.authorize(f"os_compute_api:servers:{verb}", ctx, server.project_id)
            handler(s, ctx, server)
        else:
            raise BadRequest(f"Unsupported server action: {action}")
    state.wake_agent()
    return Response(status_code=202)
