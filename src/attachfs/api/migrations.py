"""GET /os-migrations: servers' moves between hosts (evacuations, cold migrations), admin only,
newest first, in the compute API's shape at each microversion (migration_type from 2.23, uuid
from 2.59, user_id and project_id from 2.80). The fields that name a node name the host (one
node per host here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from attachfs.api import deps
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import check_query
from attachfs.api.views import iso
from attachfs.core.flavors import find_flavor
from attachfs.core.handlers import queries
from attachfs.core.ports import MigrationRecord
from attachfs.errors import NotFound

router = APIRouter(prefix="/v2.1", route_class=JsonRoute)
_ONE = {"type": "array", "maxItems": 1}
QUERY = {"type": "object", "properties": {
    "instance_uuid": _ONE, "status": _ONE, "migration_type": _ONE, "host": _ONE,
    "source_compute": _ONE, "hidden": _ONE, "limit": _ONE, "marker": _ONE,
    "changes-since": _ONE, "changes-before": _ONE, "user_id": _ONE, "project_id": _ONE},
    "additionalProperties": True}


def _flavor_id(ref: str) -> int | str:
    try:
        flavor_id = find_flavor(ref).id
    except NotFound:
        return ref
    return int(flavor_id) if str(flavor_id).isdigit() else flavor_id


def migration_view(request: Request, m: MigrationRecord) -> dict[str, Any]:
    version = deps.version(request)
    view: dict[str, Any] = {
        "id": m.id, "instance_uuid": m.instance_uuid, "status": m.status,
        "source_compute": m.source_compute, "source_node": m.source_compute,
        "dest_compute": m.dest_compute, "dest_node": m.dest_compute,
        "dest_host": m.dest_compute, "old_instance_type_id": _flavor_id(m.flavor_id),
        "new_instance_type_id": _flavor_id(m.flavor_id),
        "created_at": iso(m.created_at), "updated_at": iso(m.updated_at)}
    if version.at_least("2.23"):
        view["migration_type"] = m.migration_type
        view["links"] = []  # only an in-progress live migration has links
    if version.at_least("2.59"):
        view["uuid"] = m.uuid
    if version.at_least("2.80"):
        view["user_id"], view["project_id"] = m.user_id, m.project_id
    return view


@router.get("/os-migrations")
def list_migrations(request: Request) -> dict[str, Any]:
    check_query(QUERY, request.query_params)
    q = request.query_params
    rows = queries.list_migrations(
        deps.uow(request), deps.env(request), deps.context(request), q.get("instance_uuid"),
        q.get("status"), q.get("migration_type"), q.get("host") or q.get("source_compute"))
    return {"migrations": [migration_view(request, m) for m in rows]}
