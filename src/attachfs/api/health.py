"""GET /v2.1/os-attachfs-health: the agent of this process, as it sees itself. Read-only.

Whether the database and the hypervisor answer (an admin also sees since when they do not,
the last error, the queue and which servers keep failing; other users only up or down, as
those details name servers of every project). An API process without an agent
(`attachfs api`) answers with `"agent": null`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from attachfs.agent.health import current
from attachfs.api import deps
from attachfs.api.routing import JsonRoute

router = APIRouter(prefix="/v2.1/os-attachfs-health", route_class=JsonRoute)


@router.get("")
def show_health(request: Request) -> dict[str, Any]:
    health = current()
    if health is None:
        return {"health": {"agent": None}}
    view = health.view()
    if not deps.context(request).is_admin:
        view = {"status": view["status"], "database": {"ok": view["database"]["ok"]},
                "hypervisor": {"ok": view["hypervisor"]["ok"]}}
    return {"health": {"agent": view}}
