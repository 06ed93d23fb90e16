"""Servers: create/list/show/delete and the actions start, stop, reboot, console output,
plus seed 004's legacy `share_attach` / `share_detach` actions."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from attachfs.api import deps, views
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import NO_QUERY, check_body, check_query
from attachfs.core.commands import (
    AttachShare,
    Command,
    ConfirmMigration,
    CreateServer,
    DeleteServer,
    DetachShare,
    EvacuateServer,
    MigrateServer,
    RebootServer,
    RevertMigration,
    StartServer,
    StopServer,
    UnavailableAction,
)
from attachfs.core.context import RequestContext
from attachfs.core.handlers import handle, queries, servers
from attachfs.core.ports import ServerRecord
from attachfs.errors import BadRequest

router = APIRouter(prefix="/v2.1/servers", route_class=JsonRoute)

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


@router.post("", status_code=202)
def create_server(request: Request, body: Any = Depends(deps.json_body)) -> dict[str, Any]:
    spec = deps.parse(ServerCreateBody, body).server
    cmd = CreateServer(
        deps.context(request), name=spec.name, flavor_ref=spec.flavorRef,
        image_ref=spec.imageRef, metadata=spec.metadata, user_data=spec.user_data,
        config_drive=spec.config_drive,
        boot_image_refs=tuple(str(b.get("uuid", "")) for b in spec.block_device_mapping_v2 or []))
    server = servers.create_server(cmd, deps.uow(request), deps.env(request))
    return {"server": {"id": server.uuid,
                       "links": views.link(deps.base_url(request), "servers", server.uuid),
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


def _page(request: Request) -> queries.ServerPage:
    q = request.query_params
    return queries.ServerPage(name=q.get("name"), marker=q.get("marker"), limit=_limit(request),
                              all_tenants=q.get("all_tenants") not in (None, "0", "false",
                                                                       "False"))


def _page_links(request: Request, rows: list[ServerRecord], path: str) -> dict[str, Any]:
    """`servers_links` with the next page, when this page is full."""
    raw = request.query_params.get("limit")
    if raw is None or not rows or len(rows) < _limit(request):
        return {}
    query = urlencode({**dict(request.query_params), "marker": rows[-1].uuid})
    return {"servers_links": [{"rel": "next", "href": f"{deps.base_url(request)}{path}?{query}"}]}


@router.get("")
def list_servers(request: Request) -> dict[str, Any]:
    rows = queries.list_servers(deps.uow(request), deps.env(request), deps.context(request),
                                _page(request), brief=True).servers
    return {"servers": [views.server_brief(sv, deps.base_url(request)) for sv in rows],
            **_page_links(request, rows, "/v2.1/servers")}


@router.get("/detail")
def list_servers_detail(request: Request) -> dict[str, Any]:
    ctx = deps.context(request)
    extended = deps.extension(request, "1.0")  # only then are attachments shown
    seen = queries.list_servers(deps.uow(request), deps.env(request), ctx, _page(request),
                                with_attachments=extended)
    return {"servers": [views.server_detail(sv, seen.attachments.get(sv.uuid, []),
                                            deps.base_url(request), deps.version(request),
                                            ctx.is_admin, extended, seen.host_status.get(sv.host))
                        for sv in seen.servers],
            **_page_links(request, seen.servers, "/v2.1/servers/detail")}


@router.get("/{server_id}")
def show_server(server_id: str, request: Request) -> dict[str, Any]:
    if deps.version(request).at_least("2.102"):
        check_query(NO_QUERY, request.query_params)
    ctx = deps.context(request)
    extended = deps.extension(request, "1.0")  # only then are attachments shown
    seen = queries.show_server(deps.uow(request), deps.env(request), ctx, server_id,
                               with_attachments=extended)
    (server,) = seen.servers
    return {"server": views.server_detail(server, seen.attachments[server.uuid],
                                          deps.base_url(request), deps.version(request),
                                          ctx.is_admin, extended, seen.host_status.get(server.host))}


@router.delete("/{server_id}", status_code=204)
def delete_server(server_id: str, request: Request) -> Response:
    servers.delete_server(DeleteServer(deps.context(request), server_id), deps.uow(request),
                          deps.env(request))
    return Response(status_code=204)


def _console_output(request: Request, server_id: str, spec: ConsoleOutput) -> dict[str, Any]:
    server_uuid = queries.console_server(deps.uow(request), deps.env(request),
                                         deps.context(request), server_id)
    path = deps.api(request).config.console_dir / f"{server_uuid}.log"
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


# Bodies of the actions attachfs refuses, checked first as the compute service checks them
# (its schemas at the current microversions): a malformed request is a 400 before anything.
_HOST = {"type": ["string", "null"], "pattern": "^[a-zA-Z0-9-._]*$", "minLength": 1,
         "maxLength": 255}
_BOOLEANS: list[Any] = [True, "True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes", "yes",
                     False, "False", "FALSE", "false", "0", "OFF", "Off", "off", "NO", "No", "no"]
ANY_BODY: dict[str, Any] = {"type": "object"}


def _action(name: str, inner: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {name: inner}, "required": [name],
            "additionalProperties": False}


ACTION_SCHEMAS: dict[str, dict[str, Any]] = {
    "migrate": _action("migrate", {"type": ["object", "null"], "properties": {"host": _HOST},
                                   "additionalProperties": False}),
    "os-migrateLive": _action("os-migrateLive", {
        "type": "object",
        "properties": {"block_migration": {"type": ["boolean", "string"],
                                           "enum": [*_BOOLEANS, "auto"]},
                       "host": _HOST},
        "required": ["block_migration", "host"], "additionalProperties": False}),
    "evacuate": _action("evacuate", {
        "type": "object",
        "properties": {"host": {**_HOST, "type": "string"}, "adminPass": {"type": "string"},
                       # before 2.14 clients say whether the disk is on shared storage:
                       # attachfs rebuilds from the image either way (the shares carry data)
                       "onSharedStorage": {"type": ["boolean", "string"], "enum": _BOOLEANS}},
        "additionalProperties": False}),
    "confirmResize": {"type": "object", "properties": {"confirmResize": {"type": "null"}},
                      "required": ["confirmResize"], "additionalProperties": False},
    "revertResize": {"type": "object", "properties": {"revertResize": {"type": "null"}},
                     "required": ["revertResize"], "additionalProperties": False},
    "resize": _action("resize", {
        "type": "object",
        "properties": {"flavorRef": {"type": ["string", "integer"], "minLength": 1},
                       "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]}},
        "required": ["flavorRef"], "additionalProperties": False}),
}


def _command(action: str, args: Any, ctx: RequestContext, server_id: str) -> Command:
    """The command a server action asks for (400 for an unknown action or bad arguments)."""
    if action == "share_attach":
        spec = deps.parse(LegacyAttach, args)
        # seed 004's action drives an attachment in `error` again when asked once more
        return AttachShare(ctx, server_id, spec.share_id, spec.tag, spec.mount_point,
                           spec.read_only, retry=True)
    if action == "share_detach":
        return DetachShare(ctx, server_id, deps.parse(LegacyDetach, args).share_id)
    if action == "reboot":
        return RebootServer(ctx, server_id, hard=deps.parse(Reboot, args).type.upper() == "HARD")
    if action in ("os-start", "os-stop"):
        if args is not None and args != {}:
            raise BadRequest(f"{action} takes no arguments")
        return (StartServer if action == "os-start" else StopServer)(ctx, server_id)
    if action in MOVES:
        check_body(ACTION_SCHEMAS[action], {action: args})
        host = (args or {}).get("host")
        if action == "evacuate":
            return EvacuateServer(ctx, server_id, host)
        if action == "migrate":
            return MigrateServer(ctx, server_id, host)
        return (ConfirmMigration if action == "confirmResize" else RevertMigration)(
            ctx, server_id)
    if action in servers.UNAVAILABLE_ACTIONS:
        check_body(ACTION_SCHEMAS.get(action, ANY_BODY), {action: args})
        flavor = str(args["flavorRef"]) if action == "resize" else None
        return UnavailableAction(ctx, server_id, action, flavor)
    raise BadRequest(f"There is no such action: {action}")


MOVES = ("evacuate", "migrate", "confirmResize", "revertResize")


@router.post("/{server_id}/action")
def server_action(server_id: str, request: Request, body: Any = Depends(deps.json_body)) -> Any:
    if not isinstance(body, dict) or len(body) != 1:
        raise BadRequest("The action body must be an object with exactly one action")
    (action, args), = body.items()
    if action == "os-getConsoleOutput":
        return _console_output(request, server_id, deps.parse(ConsoleOutput, args or {}))
    command = _command(action, args, deps.context(request), server_id)
    if isinstance(command, EvacuateServer) and deps.version(request).at_least("2.95"):
        # from 2.95 an evacuated server is stopped on its new host (the compute API's rule)
        command = EvacuateServer(command.ctx, command.server_id, command.host, stop=True)
    handle(command, deps.uow(request), deps.env(request))
    if action == "evacuate":  # the compute service's 200, with a password before 2.14
        if deps.version(request).at_least("2.14"):
            return Response(status_code=200, media_type="application/json")
        return {"adminPass": (args or {}).get("adminPass") or secrets.token_urlsafe(9)}
    if action == "confirmResize":
        return Response(status_code=204)
    return Response(status_code=202)
