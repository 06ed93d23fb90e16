"""attachfs's extension: every share the caller may see, wherever it comes from (the built-in
provider, the operator's static exports, the share service), with the caller's servers it is
attached to, and a built-in share's usage against its size. For the web console's shares page.

    GET /v2.1/os-attachfs-shares  ->  {"shares": [...], "unavailable": ["manila: ...", ...]}

The share service is asked with the caller's own token, so it shows what it would show them.
A provider that cannot answer is named in `unavailable`; the others' shares are still listed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from attachfs.api import deps
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import NO_QUERY, check_query
from attachfs.core.handlers import queries

router = APIRouter(prefix="/v2.1/os-attachfs-shares", route_class=JsonRoute)


@router.get("")
def list_shares(request: Request) -> dict[str, Any]:
    check_query(NO_QUERY, request.query_params)
    overview, unavailable = queries.shares_overview(deps.uow(request), deps.env(request),
                                                    deps.context(request))
    return {"shares": [_view(o) for o in overview], "unavailable": unavailable}


def _view(o: queries.ShareOverview) -> dict[str, Any]:
    s = o.share
    view: dict[str, Any] = {
        "id": s.id, "name": s.name, "provider": o.provider, "protocol": s.protocol,
        "status": s.status, "size_gib": s.size_gib, "scope": s.scope, "project_id": s.project_id,
        "attached_to": [{"server": server, "status": status} for server, status in o.attached_to]}
    if o.used_bytes is not None:
        view["used_bytes"] = o.used_bytes
    return view
