"""The audit trail: /servers/{id}/os-instance-actions[/{request_id}].

Every action names the user who asked (the compute service loses the user on share
attachments, its bug 2089030); events carry how it ended and why.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from attachfs.api import deps
from attachfs.api.views import iso
from attachfs.db.tables import InstanceAction, Server
from attachfs.errors import NotFound

router = APIRouter(prefix="/v2.1/servers/{server_id}/os-instance-actions")
RULE = "os_compute_api:os-instance-actions:%s"


def _server(s: Any, request: Request, server_id: str) -> Server:
    """Deleted servers keep their audit trail (as the compute API shows it)."""
    ctx = deps.context(request)
    server = s.get(Server, server_id)
    if server is None or (not ctx.is_admin and server.project_id != ctx.project_id):
        raise NotFound(f"Instance {server_id} could not be found.")
    return server


def _view(a: InstanceAction) -> dict[str, Any]:
    return {"action": a.action, "instance_uuid": a.instance_uuid, "request_id": a.request_id,
            "user_id": a.user_id, "project_id": a.project_id,
            "start_time": iso(a.start_time), "updated_at": iso(a.finish_time or a.start_time),
            "message": "Error" if a.result == "Error" else None}


def _event(a: InstanceAction, admin: bool) -> dict[str, Any]:
    event: dict[str, Any] = {"event": f"compute_{a.action}", "start_time": iso(a.start_time),
                             "finish_time": iso(a.finish_time), "result": a.result,
                             "details": a.message, "hostId": ""}
    if admin:
        event["traceback"] = None
    return event


@router.get("")
def list_actions(server_id: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        server = _server(s, request, server_id)
        state.policy.authorize(RULE % "list", ctx, server.project_id)
        rows = s.scalars(select(InstanceAction).where(InstanceAction.instance_uuid == server.uuid)
                         .order_by(InstanceAction.start_time.desc(), InstanceAction.id.desc()))
        return {"instanceActions": [_view(a) for a in rows]}


@router.get("/{request_id}")
def show_action(server_id: str, request_id: str, request: Request) -> dict[str, Any]:
    state, ctx = deps.api(request), deps.context(request)
    with state.db.read() as s:
        server = _server(s, request, server_id)
        state.policy.authorize(RULE % "show", ctx, server.project_id)
        rows = list(s.scalars(select(InstanceAction).where(
            InstanceAction.instance_uuid == server.uuid, InstanceAction.request_id == request_id)
            .order_by(InstanceAction.id)))
        if not rows:
            raise NotFound(f"Action for request_id {request_id} on instance {server_id} "
                           "not found")
        view = _view(rows[0])
        view["events"] = [_event(a, ctx.is_admin) for a in rows]
        return {"instanceAction": view}
