"""Service layer: the verbs the API offers, each recording desired state in one unit of work.

Handlers take an open SQLAlchemy session (the unit of work, committed by the caller) and plain
values; they never call a hypervisor or a storage backend: the agent does that. State rules
come from core/model.py.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from attachfs.core.model import (
    AttachmentStatus,
    PowerIntent,
    TaskState,
    VmState,
    require_free_slot,
    require_share_change_allowed,
    status_after_detach_request,
    status_after_retry,
    validate_tag,
)
from attachfs.core.rules import guest_mount_point, mount_points_overlap, require_attachable
from attachfs.db.tables import InstanceAction, Server, Share, ShareAccess, ShareMapping, utcnow
from attachfs.errors import Conflict, NotFound
from attachfs.storage.base import RequestContext, ShareInfo


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int = 0


FLAVORS = {f.id: f for f in (
    Flavor("1", "a1.tiny", 1, 128),
    Flavor("2", "a1.small", 1, 256),
    Flavor("3", "a1.medium", 2, 512),
    Flavor("4", "a1.large", 2, 1024),
)}


def find_flavor(ref: str) -> Flavor:
    ref = ref.rstrip("/").rsplit("/", 1)[-1]
    for flavor in FLAVORS.values():
        if ref in (flavor.id, flavor.name):
            return flavor
    raise NotFound(f"Flavor {ref} could not be found.")


def record_action(s: Session, server_uuid: str, action: str, ctx: RequestContext,
                  message: str | None = None) -> None:
    s.add(InstanceAction(
        request_id=ctx.request_id or f"req-{uuidlib.uuid4()}", instance_uuid=server_uuid,
        action=action, user_id=ctx.user_id, project_id=ctx.project_id, message=message,
    ))


def get_server(s: Session, server_uuid: str, ctx: RequestContext, *, lock: bool = False) -> Server:
    """The server if it exists and `ctx` may see it (other projects get the same 404)."""
    query = select(Server).where(Server.uuid == server_uuid, Server.vm_state != VmState.DELETED)
    if lock:
        query = query.with_for_update()
    server = s.scalar(query)
    if server is None or (not ctx.is_admin and server.project_id != ctx.project_id):
        raise NotFound(f"Instance {server_uuid} could not be found.")
    return server


def _touch(server: Server) -> None:
    server.generation += 1


# ---- servers -----------------------------------------------------------------------------

def create_server(s: Session, ctx: RequestContext, *, name: str, flavor: Flavor, image_id: str,
                  host: str, metadata: dict[str, str], user_data: str | None,
                  project_shares: list[ShareInfo], config_drive: bool = False) -> Server:
    server = Server(
        uuid=str(uuidlib.uuid4()), name=name, project_id=ctx.project_id, user_id=ctx.user_id,
        host=host, flavor_id=flavor.id, image_id=image_id, vcpus=flavor.vcpus,
        memory_mib=flavor.ram_mib, vm_state=VmState.BUILDING, task_state=TaskState.SPAWNING,
        power_intent=PowerIntent.ON, user_data=user_data, meta=metadata, generation=1,
        config_drive=config_drive,
        observed_generation=0,
    )
    s.add(server)
    s.flush()
    for share in project_shares:  # seed 003: project-wide shares reach every new server
        _new_mapping(s, server, share, share.id, share.mount_point, ctx)
    record_action(s, server.uuid, "create", ctx)
    return server


def _require_idle(server: Server, allowed: tuple[str, ...], verb: str) -> None:
    if server.vm_state not in allowed or server.task_state is not None:
        raise Conflict(
            f"Cannot '{verb}' instance {server.uuid} while it is in vm_state {server.vm_state}"
            + (f" and task_state {server.task_state}" if server.task_state else "")
        )


def start_server(s: Session, ctx: RequestContext, server: Server) -> None:
    _require_idle(server, (VmState.STOPPED,), "start")
    server.task_state, server.power_intent = TaskState.POWERING_ON, PowerIntent.ON
    _touch(server)
    record_action(s, server.uuid, "start", ctx)


def stop_server(s: Session, ctx: RequestContext, server: Server) -> None:
    _require_idle(server, (VmState.ACTIVE, VmState.ERROR), "stop")
    server.task_state, server.power_intent = TaskState.POWERING_OFF, PowerIntent.OFF
    _touch(server)
    record_action(s, server.uuid, "stop", ctx)


def reboot_server(s: Session, ctx: RequestContext, server: Server, hard: bool) -> None:
    _require_idle(server, (VmState.ACTIVE,) + ((VmState.ERROR,) if hard else ()), "reboot")
    server.task_state = TaskState.REBOOTING_HARD if hard else TaskState.REBOOTING
    server.power_intent = PowerIntent.ON
    _touch(server)
    record_action(s, server.uuid, "reboot", ctx)


def delete_server(s: Session, ctx: RequestContext, server: Server) -> None:
    if server.task_state == TaskState.DELETING:
        return
    server.task_state, server.power_intent = TaskState.DELETING, PowerIntent.OFF
    _touch(server)
    record_action(s, server.uuid, "delete", ctx)


# ---- share attachments -----------------------------------------------------------------------

def _new_mapping(s: Session, server: Server, share: ShareInfo, tag: str,
                 mount_point: str | None, ctx: RequestContext,
                 read_only: bool = False) -> ShareMapping:
    mapping = ShareMapping(
        uuid=str(uuidlib.uuid4()), instance_uuid=server.uuid, share_id=share.id,
        status=AttachmentStatus.ATTACHING, tag=tag, export_location=share.preferred_export,
        share_proto=share.protocol, mount_point=mount_point, read_only=read_only,
        user_id=ctx.user_id,
        project_id=ctx.project_id, request_id=ctx.request_id, requester_token=ctx.auth_token,
    )
    s.add(mapping)
    return mapping


def list_mappings(s: Session, server_uuid: str) -> list[ShareMapping]:
    return list(s.scalars(select(ShareMapping).where(ShareMapping.instance_uuid == server_uuid)
                          .order_by(ShareMapping.id)))


def get_mapping(s: Session, server_uuid: str, share_id: str) -> ShareMapping:
    mapping = s.scalar(select(ShareMapping).where(ShareMapping.instance_uuid == server_uuid,
                                                  ShareMapping.share_id == share_id))
    if mapping is None:
        raise NotFound(f"Share {share_id} is not attached to server {server_uuid}.")
    return mapping


@dataclass(frozen=True)
class AttachRules:
    hot_plug: bool
    max_per_server: int


def _require_free_mount_point(s: Session, server: Server, path: str) -> None:
    for other in s.scalars(select(ShareMapping).where(ShareMapping.instance_uuid == server.uuid)):
        taken = guest_mount_point(other.mount_point, other.tag)
        if mount_points_overlap(path, taken):
            raise Conflict(f"Mount point {path} overlaps {taken}, where share {other.share_id} "
                           "is mounted on this server")


def attach_share(s: Session, ctx: RequestContext, server: Server, share: ShareInfo,
                 tag: str | None, mount_point: str | None, rules: AttachRules,
                 read_only: bool = False) -> ShareMapping:
    """POST /servers/{id}/shares: record the attachment as `attaching` for the agent."""
    tag = validate_tag(tag if tag is not None else share.id)
    require_share_change_allowed(server.vm_state, server.task_state, "attach", rules.hot_plug)
    if share.status != "available":
        raise Conflict(f"Share {share.id} is in status {share.status}, not available")
    require_attachable(share.id, share.protocol)
    existing = s.scalar(select(ShareMapping).where(ShareMapping.instance_uuid == server.uuid,
                                                   ShareMapping.share_id == share.id))
    if existing is not None:
        existing.status = status_after_retry(existing.status)  # 409 unless in error
        existing.fault_message, existing.user_id = None, ctx.user_id
        existing.request_id, existing.read_only = ctx.request_id, read_only
        existing.requester_token = ctx.auth_token
        mapping = existing
    else:
        clash = s.scalar(select(ShareMapping.share_id).where(
            ShareMapping.instance_uuid == server.uuid, ShareMapping.tag == tag))
        if clash is not None:
            raise Conflict(f"Tag '{tag}' is already used by share {clash} on this server")
        _require_free_mount_point(s, server, guest_mount_point(
            mount_point or share.mount_point, tag))
        count = s.scalar(select(func.count()).select_from(ShareMapping)
                         .where(ShareMapping.instance_uuid == server.uuid)) or 0
        if count >= rules.max_per_server:
            raise Conflict(f"Server already has {count} shares attached "
                           f"(limit {rules.max_per_server})")
        require_free_slot(server.vm_state, server.share_slots, count)
        mapping = _new_mapping(s, server, share, tag, mount_point or share.mount_point, ctx,
                               read_only)
    _touch(server)
    record_action(s, server.uuid, "attach_share", ctx, message=share.id)
    s.flush()
    return mapping


def detach_share(s: Session, ctx: RequestContext, server: Server, share_id: str,
                 hot_plug: bool) -> None:
    """DELETE /servers/{id}/shares/{share_id}: the agent detaches and then deletes the row."""
    mapping = get_mapping(s, server.uuid, share_id)
    require_share_change_allowed(server.vm_state, server.task_state, "detach", hot_plug)
    mapping.status = status_after_detach_request(mapping.status)
    mapping.fault_message, mapping.request_id = None, ctx.request_id
    mapping.user_id, mapping.project_id = ctx.user_id, ctx.project_id
    mapping.requester_token = ctx.auth_token
    _touch(server)
    record_action(s, server.uuid, "detach_share", ctx, message=share_id)


def attach_to_project_servers(s: Session, ctx: RequestContext, share: ShareInfo,
                              project_id: str) -> int:
    """A new project-scope share reaches every server of the project (seed 003)."""
    servers = s.scalars(select(Server).where(Server.project_id == project_id,
                                             Server.vm_state != VmState.DELETED))
    count = 0
    for server in servers:
        _new_mapping(s, server, share, share.id, share.mount_point, ctx)
        _touch(server)
        count += 1
    return count


def delete_builtin_share(s: Session, share: Share, label: str) -> str:
    """Delete a built-in share's row; 409 while any server has it or a host holds a locked
    access rule. Returns its id (the caller removes the directory after the commit)."""
    attached = s.scalar(select(ShareMapping.instance_uuid)
                        .where(ShareMapping.share_id == share.uuid).limit(1))
    locked = s.scalar(select(ShareAccess.host).where(ShareAccess.share_id == share.uuid,
                                                     ShareAccess.locked).limit(1))
    if attached or locked:
        raise Conflict(f"{label} is attached"
                       + (f" to server {attached}" if attached else f" on host {locked}")
                       + "; detach it first")
    s.delete(share)
    return share.uuid


def finish_action(s: Session, request_id: str | None, result: str, message: str | None) -> None:
    if not request_id:
        return
    for action in s.scalars(select(InstanceAction).where(InstanceAction.request_id == request_id,
                                                          InstanceAction.finish_time.is_(None))):
        action.result, action.finish_time = result, utcnow()
        if message:
            action.message = (action.message + ": " if action.message else "") + message
