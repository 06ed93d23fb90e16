"""The audit trail: /servers/{id}/os-instance-actions[/{request_id}].

Every action names the user who asked (the compute service loses the user on share
attachments, its bug 2089030); events carry how it ended and why.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from attachfs.api import deps
from attachfs.api.views import iso
from attachfs.core.handlers import queries
from attachfs.core.ports import ActionRecord

router = APIRouter(prefix="/v2.1/servers/{server_id}/os-instance-actions")


def _view(a: ActionRecord) -> dict[str, Any]:
    return {"action": a.action, "instance_uuid": a.instance_uuid, "request_id": a.request_id,
            "user_id": a.user_id, "project_id": a.project_id,
            "start_time": iso(a.start_time), "updated_at": iso(a.finish_time or a.start_time),
            "message": "Error" if a.result == "Error" else None}


def _event(a: ActionRecord, admin: bool) -> dict[str, Any]:
    event: dict[str, Any] = {"event": f"compute_{a.action}", "start_time": iso(a.start_time),
                             "finish_time": iso(a.finish_time), "result": a.result,
                             "details": a.message, "hostId": ""}
    if admin:
        event["traceback"] = None
    return event


@router.get("")
def list_actions(server_id: str, request: Request) -> dict[str, Any]:
    rows = queries.list_actions(deps.uow(request), deps.env(request), deps.context(request),
                                server_id)
    return {"instanceActions": [_view(a) for a in rows]}


@router.get("/{request_id}")
def show_action(server_id: str, request_id: str, request: Request) -> dict[str, Any]:
    ctx = deps.context(request)
    rows = queries.show_action(deps.uow(request), deps.env(request), ctx, server_id, request_id)
    view = _view(rows[0])
    view["events"] = [_event(a, ctx.is_admin) for a in rows]
    return {"instanceAction": view}
