"""Versioned notification payloads shaped as the compute service's (nova_object envelopes).

Event types: instance.share_attach.{start,end,error}, instance.share_detach.{start,end,error}
(InstanceActionSharePayload), instance.power_on/power_off.{start,end} (InstanceActionPayload,
with `shares` when notifications.include_share_mapping is on).
"""

from __future__ import annotations

from typing import Any

from attachfs.api.views import iso
from attachfs.core.flavors import FLAVORS
from attachfs.db.tables import Server, ShareMapping

POWER = {"active": "running", "stopped": "shutdown", "building": "pending", "error": "nostate",
         "deleted": "nostate"}


def envelope(name: str, version: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"nova_object.name": name, "nova_object.namespace": "nova",
            "nova_object.version": version, "nova_object.data": data}


def share_payload(m: ShareMapping) -> dict[str, Any]:
    return envelope("SharePayload", "1.0", {
        "share_mapping_uuid": m.uuid, "share_id": m.share_id, "status": m.status, "tag": m.tag,
        "export_location": m.export_location})


def fault_payload(message: str, function: str) -> dict[str, Any]:
    return envelope("ExceptionPayload", "1.1", {
        "exception": "ShareAttachmentError", "exception_message": message,
        "function_name": function, "module_name": "attachfs.agent.reconciler",
        "traceback": ""})


def flavor_payload(server: Server) -> dict[str, Any]:
    flavor = FLAVORS.get(server.flavor_id)
    return envelope("FlavorPayload", "1.4", {
        "flavorid": server.flavor_id, "name": flavor.name if flavor else server.flavor_id,
        "memory_mb": server.memory_mib, "vcpus": server.vcpus, "root_gb": 0, "ephemeral_gb": 0,
        "swap": 0, "rxtx_factor": 1.0, "disabled": False, "is_public": True, "extra_specs": {},
        "projects": None, "description": None})


def instance_action_payload(server: Server, *, user_id: str, project_id: str,
                            request_id: str | None, fault: dict[str, Any] | None,
                            shares: list[ShareMapping] | None = None,
                            share_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uuid": server.uuid, "user_id": server.user_id, "tenant_id": server.project_id,
        "display_name": server.name, "display_description": server.name,
        "host_name": server.name, "host": server.host, "node": server.host,
        "reservation_id": "", "architecture": "x86_64", "availability_zone": "nova",
        "image_uuid": server.image_id, "kernel_id": "", "ramdisk_id": "", "key_name": None,
        "os_type": None, "locked": False, "auto_disk_config": "MANUAL", "progress": 0,
        "state": server.vm_state, "task_state": server.task_state,
        "power_state": POWER.get(server.vm_state, "nostate"),
        "created_at": iso(server.created_at), "updated_at": iso(server.updated_at),
        "launched_at": iso(server.launched_at), "terminated_at": None, "deleted_at": None,
        "metadata": server.meta or {}, "ip_addresses": [], "block_devices": [],
        "flavor": flavor_payload(server), "request_id": request_id,
        # The person who asked, not the service acting for them (compute bug 2089030).
        "action_initiator_user": user_id, "action_initiator_project": project_id,
        "fault": fault,
    }
    if shares is not None:
        data["shares"] = [share_payload(m) for m in shares]
    if share_id is not None:
        data["share_id"] = share_id
        return envelope("InstanceActionSharePayload", "1.0", data)
    return envelope("InstanceActionPayload", "1.9" if shares is not None else "1.8", data)
