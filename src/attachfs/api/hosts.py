"""Compute hosts as the compute API shows them: /os-services (each host's agent is its
`nova-compute`) and /os-hypervisors, admin only (the compute service's default policy).

Ids are uuids from 2.53 and integers before it, as the compute service has them. From 2.53 an
admin changes a host with PUT /os-services/{id}; before, with the action forms
(PUT /os-services/disable, enable, disable-log-reason, force-down) naming host and binary.
Hypervisor bodies lose their resource figures at 2.88, as the compute service's do.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from attachfs.api import deps
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import check_body, check_query
from attachfs.api.views import iso
from attachfs.core.commands import UpdateHost
from attachfs.core.handlers import hosts
from attachfs.core.handlers.hosts import HYPERVISORS, SERVICES, HostView
from attachfs.core.hosts import SERVICE_BINARY, ZONE
from attachfs.errors import BadRequest, NotFound

router = APIRouter(prefix="/v2.1", route_class=JsonRoute)
UUID_IDS = "2.53"
REASON = {"type": "string", "minLength": 1, "maxLength": 255}
SERVICES_QUERY = {"type": "object", "properties": {"host": {"type": "array"},
                                                   "binary": {"type": "array"}},
                  "additionalProperties": False}
HYPERVISORS_QUERY = {"type": "object", "properties": {
    "hypervisor_hostname_pattern": {"type": "array"}, "with_servers": {"type": "array"},
    "limit": {"type": "array"}, "marker": {"type": "array"}}, "additionalProperties": False}
UPDATE = {"type": "object", "properties": {
    "status": {"type": "string", "enum": ["enabled", "disabled"]},
    "disabled_reason": REASON, "forced_down": {"type": "boolean"}},
    "additionalProperties": False}
LEGACY = {"type": "object", "properties": {
    "host": {"type": "string", "minLength": 1, "maxLength": 255},
    "binary": {"type": "string", "minLength": 1, "maxLength": 255},
    "disabled_reason": REASON, "forced_down": {"type": "boolean"}},
    "required": ["host", "binary"], "additionalProperties": False}


def _id(request: Request, v: HostView) -> str | int:
    return v.host.uuid if deps.version(request).at_least(UUID_IDS) else v.host.id


def service_view(request: Request, v: HostView) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": _id(request, v), "binary": SERVICE_BINARY, "host": v.host.name, "zone": ZONE,
        "status": "disabled" if v.host.disabled else "enabled", "state": v.state,
        "updated_at": iso(v.host.heartbeat_at), "disabled_reason": v.host.disabled_reason}
    if deps.version(request).at_least("2.11"):
        view["forced_down"] = v.host.forced_down
    return view


@router.get("/os-services")
def list_services(request: Request) -> dict[str, Any]:
    check_query(SERVICES_QUERY, request.query_params)
    q = request.query_params
    views = hosts.list_hosts(deps.uow(request), deps.env(request), deps.context(request),
                             SERVICES % "list")
    return {"services": [service_view(request, v) for v in views
                         if q.get("host", v.host.name) == v.host.name
                         and q.get("binary", SERVICE_BINARY) == SERVICE_BINARY]}


@router.put("/os-services/{service_id}")
def update_service(service_id: str, request: Request,
                   body: Any = Depends(deps.json_body)) -> dict[str, Any]:
    if not deps.version(request).at_least(UUID_IDS):
        return _legacy_update(service_id, request, body)
    check_body(UPDATE, body)
    spec: dict[str, Any] = body
    if "disabled_reason" in spec and spec.get("status") != "disabled":
        raise BadRequest("Specifying 'disabled_reason' with status other than 'disabled' is "
                         "invalid.")
    if "status" not in spec and "forced_down" not in spec:
        raise BadRequest("'status' and/or 'forced_down' must be specified.")
    status = spec.get("status")
    cmd = UpdateHost(deps.context(request), service_id,
                     f"Service {service_id} could not be found.",
                     disabled=None if status is None else status == "disabled",
                     reason=spec.get("disabled_reason"), forced_down=spec.get("forced_down"))
    return {"service": service_view(request, hosts.update_host(cmd, deps.uow(request),
                                                               deps.env(request)))}


def _legacy_update(action: str, request: Request, body: Any) -> dict[str, Any]:
    """Before 2.53: PUT /os-services/{enable,disable,disable-log-reason,force-down}."""
    allowed = ("enable", "disable", "disable-log-reason") + (
        ("force-down",) if deps.version(request).at_least("2.11") else ())
    if action not in allowed:
        raise NotFound(f"Unknown action {action}")
    check_body(LEGACY, body)
    spec: dict[str, Any] = body
    if spec["binary"] != SERVICE_BINARY:
        raise NotFound(f"Service binary {spec['binary']} on host {spec['host']} could not "
                       "be found.")
    if action == "disable-log-reason" and "disabled_reason" not in spec:
        raise BadRequest("Missing disabled reason field")
    if action == "force-down" and "forced_down" not in spec:
        raise BadRequest("Missing forced_down field")
    disabled = {"enable": False, "disable": True, "disable-log-reason": True}.get(action)
    cmd = UpdateHost(deps.context(request), spec["host"],
                     f"Compute host {spec['host']} could not be found.", disabled=disabled,
                     reason=spec.get("disabled_reason"), forced_down=spec.get("forced_down"))
    v = hosts.update_host(cmd, deps.uow(request), deps.env(request))
    out: dict[str, Any] = {"host": v.host.name, "binary": SERVICE_BINARY}
    if action == "force-down":
        out["forced_down"] = v.host.forced_down
    else:
        out["status"] = "disabled" if v.host.disabled else "enabled"
        if action == "disable-log-reason":
            out["disabled_reason"] = v.host.disabled_reason
    return {"service": out}


# ---- hypervisors ---------------------------------------------------------------------------
def hypervisor_view(request: Request, v: HostView, detail: bool) -> dict[str, Any]:
    h = v.host
    view: dict[str, Any] = {"id": _id(request, v), "hypervisor_hostname": h.name,
                            "state": v.state, "status": "disabled" if h.disabled else "enabled"}
    if not detail:
        return view
    view.update({"hypervisor_type": h.hypervisor_type,
                 "hypervisor_version": h.hypervisor_version, "host_ip": h.storage_address,
                 "service": {"host": h.name, "id": _id(request, v),
                             "disabled_reason": h.disabled_reason}})
    if deps.version(request).at_least("2.88"):
        view["uptime"] = None  # the compute service's libvirt driver's `uptime` output
        return view
    view.update({"vcpus": h.vcpus, "vcpus_used": v.vcpus_used, "memory_mb": h.memory_mib,
                 "memory_mb_used": v.memory_mib_used,
                 "free_ram_mb": h.memory_mib - v.memory_mib_used, "local_gb": 0,
                 "local_gb_used": 0, "free_disk_gb": 0, "disk_available_least": 0,
                 "running_vms": v.servers, "current_workload": 0,
                 "cpu_info": {} if deps.version(request).at_least("2.28") else "{}"})
    return view


def _hypervisors(request: Request, detail: bool) -> dict[str, Any]:
    check_query(HYPERVISORS_QUERY, request.query_params)
    rule = HYPERVISORS % ("list-detail" if detail else "list")
    views = hosts.list_hosts(deps.uow(request), deps.env(request), deps.context(request), rule)
    pattern = request.query_params.get("hypervisor_hostname_pattern")
    if pattern is not None:
        views = [v for v in views if pattern in v.host.name]
        if not views:
            raise NotFound(f"No hypervisor matching '{pattern}' could be found.")
    return {"hypervisors": [hypervisor_view(request, v, detail) for v in views]}


@router.get("/os-hypervisors")
def list_hypervisors(request: Request) -> dict[str, Any]:
    return _hypervisors(request, detail=False)


@router.get("/os-hypervisors/detail")
def list_hypervisors_detail(request: Request) -> dict[str, Any]:
    return _hypervisors(request, detail=True)


@router.get("/os-hypervisors/{hypervisor_id}")
def show_hypervisor(hypervisor_id: str, request: Request) -> dict[str, Any]:
    v = hosts.show_host(deps.uow(request), deps.env(request), deps.context(request),
                        HYPERVISORS % "show", hypervisor_id, "Hypervisor")
    return {"hypervisor": hypervisor_view(request, v, detail=True)}
