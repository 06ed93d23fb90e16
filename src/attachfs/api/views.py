"""Response bodies, shaped as the compute API shapes them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from attachfs.api.microversion import Version
from attachfs.core.flavors import FLAVORS, Flavor
from attachfs.core.model import server_status
from attachfs.core.ports import AttachedShare, ServerRecord

POWER_STATE = {"active": 1, "stopped": 4, "building": 0, "error": 0, "deleted": 0}


def iso(t: dt.datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def link(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{base}/v2.1/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{kind}/{ident}"}]


def share_mapping(m: AttachedShare, admin: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"share_id": m.share_id, "status": m.status, "tag": m.tag}
    if admin:  # the compute API shows the mapping uuid and export location to admins only
        view["uuid"] = m.uuid
        view["export_location"] = m.export_location
    return view


def attached_share(m: AttachedShare, admin: bool) -> dict[str, Any]:
    """Seed 004's extension on the server body; unlike 2.97's view it also says why an
    attachment failed, so the reason kept by the agent is visible to its owner."""
    view: dict[str, Any] = {"share_id": m.share_id, "status": m.status, "tag": m.tag}
    if admin:  # as in share_mapping (written out: a page of servers holds thousands)
        view["uuid"], view["export_location"] = m.uuid, m.export_location
    if mount_point := m.mount_point:
        view["mount_point"] = mount_point
    if m.read_only:
        view["read_only"] = True
    if fault := m.fault_message:
        view["fault"] = fault
    return view


def flavor(f: Flavor, base: str, version: Version) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": f.id, "name": f.name, "vcpus": f.vcpus, "ram": f.ram_mib, "disk": f.disk_gib,
        "OS-FLV-EXT-DATA:ephemeral": 0, "swap": 0, "rxtx_factor": 1.0,
        "os-flavor-access:is_public": True, "OS-FLV-DISABLED:disabled": False,
        "description": None, "extra_specs": dict(f.extra_specs),
        "links": link(base, "flavors", f.id)}
    if version.at_least("2.102"):  # both fields were dropped from flavor views at 2.102
        del view["rxtx_factor"], view["OS-FLV-DISABLED:disabled"]
    return view


def server_brief(s: ServerRecord, base: str) -> dict[str, Any]:
    return {"id": s.uuid, "name": s.name, "links": link(base, "servers", s.uuid)}


# Server body keys the compute service adds at a microversion (nova/api/openstack/compute/
# views/servers.py); below it they are absent.
SINCE = {"locked": "2.9", "host_status": "2.16", "description": "2.19", "tags": "2.26",
         "trusted_image_certificates": "2.63", "server_groups": "2.71",
         "pinned_availability_zone": "2.96"}


def _server_flavor(s: ServerRecord, base: str, version: Version) -> dict[str, Any]:
    """The flavor as the server body shows it: a link before 2.47, its figures from 2.47."""
    if not version.at_least("2.47"):
        return {"id": s.flavor_id, "links": link(base, "flavors", s.flavor_id)[1:]}
    fl = FLAVORS.get(s.flavor_id)
    return {"vcpus": s.vcpus, "ram": s.memory_mib, "disk": 0, "ephemeral": 0, "swap": 0,
            "original_name": fl.name if fl else s.flavor_id,
            "extra_specs": dict(fl.extra_specs) if fl else {}}


def _server_image(s: ServerRecord, base: str, version: Version) -> dict[str, Any]:
    image: dict[str, Any] = {"id": s.image_id, "links": link(base, "images", s.image_id)[1:]}
    if version.at_least("2.98"):
        # the image's standard properties (hw_*, os_*, ...) as the server booted with them;
        # attachfs's boot images carry none (their kernel command line is not one)
        image["properties"] = {}
    return image


def server_detail(s: ServerRecord, mappings: Sequence[AttachedShare], base: str, version: Version,
                  admin: bool, extended: bool = False,
                  host_status: str | None = None) -> dict[str, Any]:
    """`extended`: the client asked for attachfs's extension (any version), which adds
    seed 004's `os-extended-shares:shares_attached`; without it the body is the compute
    service's, key for key. `host_status`: its host's (core.hosts.host_status), for an admin;
    "" for a server on no host."""
    view: dict[str, Any] = {
        "id": s.uuid, "name": s.name, "status": server_status(s.vm_state, s.task_state),
        "tenant_id": s.project_id, "user_id": s.user_id, "metadata": s.meta or {},
        "hostId": "", "image": _server_image(s, base, version),
        "flavor": _server_flavor(s, base, version),
        "created": iso(s.created_at), "updated": iso(s.updated_at),
        "addresses": {}, "accessIPv4": "", "accessIPv6": "", "links": link(base, "servers", s.uuid),
        "OS-DCF:diskConfig": "MANUAL", "progress": 0, "OS-EXT-AZ:availability_zone": "nova",
        "config_drive": "True" if s.config_drive else "", "key_name": None,
        "OS-SRV-USG:launched_at": iso(s.launched_at),
        "OS-SRV-USG:terminated_at": None, "security_groups": [],
        "OS-EXT-STS:vm_state": s.vm_state, "OS-EXT-STS:task_state": s.task_state,
        "OS-EXT-STS:power_state": POWER_STATE.get(s.vm_state, 0),
        "os-extended-volumes:volumes_attached": [],
        "locked": False, "tags": [], "description": None,
        "host_status": (host_status or "") if admin else None,
        "trusted_image_certificates": None, "server_groups": [],
        "pinned_availability_zone": None,
    }
    if extended:  # seed 004: attached shares shown on the server
        view["os-extended-shares:shares_attached"] = [attached_share(m, admin) for m in mappings]
        # the agent's tries at the server's own steps (start, stop, ...) that failed and are
        # retried with backoff: how many in a row, and the last error (each attachment's are in
        # its `fault`); 0 and null again once the operation completes
        view["attachfs:attempts"] = s.attempts or 0
        view["attachfs:last_error"] = s.last_error
    for key, since in SINCE.items():
        if not version.at_least(since):
            view.pop(key, None)
    if version.at_least("2.73"):
        view["locked_reason"] = None

    if version.at_least("2.100"):
        view["scheduler_hints"] = {}  # attachfs takes no scheduler hints at create
    if admin:
        view["OS-EXT-SRV-ATTR:host"] = s.host
        view["OS-EXT-SRV-ATTR:hypervisor_hostname"] = s.host
        view["OS-EXT-SRV-ATTR:instance_name"] = f"attachfs-{s.uuid}"
    if s.fault_message and s.vm_state == "error":
        view["fault"] = {"code": 500, "message": s.fault_message, "created": iso(s.updated_at)}
    return view
