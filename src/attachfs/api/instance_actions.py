"""The audit trail: /servers/{id}/os-instance-actions[/{request_id}].

Every action names the user who asked (the compute service loses the user on share
attachments, its bug 2089030); events carry how it ended and why.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request

from attachfs.api import deps
from attachfs.api.microversion import Version
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import NO_QUERY, check_query
from attachfs.api.views import iso
from attachfs.core.handlers import queries
from attachfs.core.ports import ActionRecord
from attachfs.errors import BadRequest

router = APIRouter(prefix="/v2.1/servers/{server_id}/os-instance-actions", route_class=JsonRoute)


def _view(a: ActionRecord, version: Version) -> dict[str, Any]:
    view = {"action": a.action, "instance_uuid": a.instance_uuid, "request_id": a.request_id,
            "user_id": a.user_id, "project_id": a.project_id,
            "start_time": iso(a.start_time), "message": "Error" if a.result == "Error" else None}
    if version.at_least("2.58"):
        view["updated_at"] = iso(_updated(a))
    return view


def _updated(a: ActionRecord) -> dt.datetime:
    return a.finish_time or a.start_time


def _event(a: ActionRecord, admin: bool, version: Version) -> dict[str, Any]:
    event: dict[str, Any] = {"event": f"compute_{a.action}", "start_time": iso(a.start_time),
                             "finish_time": iso(a.finish_time), "result": a.result}
    if version.at_least("2.62"):
        event["hostId"] = ""
    if version.at_least("2.84"):
        event["details"] = a.message
    if admin:
        event["traceback"] = None
    return event


# The list's query from 2.58 (nova/api/openstack/compute/schemas/instance_actions.py): paging
# and a time window, nothing else; 2.66 adds changes-before.
_ONE = {"type": "array", "items": {"type": "string"}, "maxItems": 1}


def _list_query(version: Version) -> dict[str, Any]:
    names = ["limit", "marker", "changes-since"] + (
        ["changes-before"] if version.at_least("2.66") else [])
    return {"type": "object", "properties": {n: _ONE for n in names},
            "additionalProperties": False}


def _time(request: Request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"Invalid input for query parameters {name}. Value: {raw}. "
                         f"'{raw}' is not a 'date-time'") from exc
    # stored times are naive UTC
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def _page(request: Request, rows: list[ActionRecord]) -> tuple[list[ActionRecord], bool]:
    """2.58's paging over the newest-first list: after `marker` (a request id), at most
    `limit`, within [changes-since, changes-before] by the time each action last changed."""
    since, before = _time(request, "changes-since"), _time(request, "changes-before")
    if since and before and before < since:
        raise BadRequest("The value of changes-since must be less than or equal to "
                         "changes-before.")
    rows = [a for a in rows if (since is None or _updated(a) >= since)
            and (before is None or _updated(a) <= before)]
    marker = request.query_params.get("marker")
    if marker is not None:
        ids = [a.request_id for a in rows]
        if marker not in ids:
            raise BadRequest(f"Marker {marker} could not be found.")
        rows = rows[ids.index(marker) + 1:]
    raw = request.query_params.get("limit")
    if raw is None:
        return rows, False
    if not raw.isdigit():
        raise BadRequest(f"Invalid input for query parameters limit. Value: {raw}. "
                         f"'{raw}' does not match '^[0-9]*$'")
    limit = int(raw)
    return rows[:limit], len(rows) > limit


@router.get("")
def list_actions(server_id: str, request: Request) -> dict[str, Any]:
    version = deps.version(request)
    paged = version.at_least("2.58")
    if paged:
        check_query(_list_query(version), request.query_params)
    rows = queries.list_actions(deps.uow(request), deps.env(request), deps.context(request),
                                server_id)
    more = False
    if paged:
        rows, more = _page(request, rows)
    body: dict[str, Any] = {"instanceActions": [_view(a, version) for a in rows]}
    if more and rows:
        query = urlencode({**dict(request.query_params), "marker": rows[-1].request_id})
        href = f"{deps.base_url(request)}/v2.1/servers/{server_id}/os-instance-actions?{query}"
        body["links"] = [{"rel": "next", "href": href}]
    return body


@router.get("/{request_id}")
def show_action(server_id: str, request_id: str, request: Request) -> dict[str, Any]:
    version = deps.version(request)
    if version.at_least("2.102"):
        check_query(NO_QUERY, request.query_params)
    ctx = deps.context(request)
    rows = queries.show_action(deps.uow(request), deps.env(request), ctx, server_id, request_id)
    view = _view(rows[0], version)
    view["events"] = [_event(a, ctx.is_admin, version) for a in rows]
    return {"instanceAction": view}
