"""Share attachment handlers (2.97's POST/DELETE /servers/{id}/shares, seed 004's actions,
os-filesystem's connect/disconnect): record `attaching`/`detaching` for the agent."""

from __future__ import annotations

from attachfs.core.commands import AttachShare, DetachShare
from attachfs.core.context import ShareInfo
from attachfs.core.flavors import FLAVORS, server_kind
from attachfs.core.handlers.common import (
    NO_CELL,
    new_attachment,
    record_action,
    touch,
    visible_server,
)
from attachfs.core.model import (
    ATTACH_ACTION,
    DETACH_ACTION,
    VmState,
    already_attached,
    is_uuid,
    require_free_slot,
    require_share_change_allowed,
    status_after_detach_request,
    status_after_retry,
    validate_uuid,
)
from attachfs.core.ports import AttachmentRecord, Env, Repositories, ServerRecord, UnitOfWork
from attachfs.core.rules import (
    Transport,
    choose_transport,
    guest_mount_point,
    mount_points_overlap,
    require_attachable,
    require_direct_export,
    require_hot_pluggable,
    require_transport,
    transport_problem,
    validate_tag,
)
from attachfs.core.validation import validate_mount_point
from attachfs.errors import BadRequest, Conflict, Duplicate, NotFound

RULE = "os_compute_api:os-server-shares:%s"


def attach_share(cmd: AttachShare, uow: UnitOfWork, env: Env) -> AttachmentRecord:
    """The compute service's order: input, the server (404), policy (403), the server's state
    (409), then the share (asked of the provider outside any transaction: it may be a remote
    service), then the attachment itself, recorded with the server row locked."""
    ctx = cmd.ctx
    share_id = validate_uuid(cmd.share_id, "share_id")
    if cmd.tag is not None:
        validate_tag(cmd.tag)
    validate_mount_point(cmd.mount_point)
    if cmd.transport is not None and (problem := transport_problem(cmd.transport)):
        raise BadRequest(f"Invalid input for field/attribute transport: {problem}")
    with uow.read() as repos:
        server = visible_server(repos, cmd.server_id, ctx, missing=NO_CELL)
        env.policy.authorize(RULE % "create", ctx, server.project_id)
        require_share_change_allowed(server.uuid, server.vm_state, server.task_state,
                                     ATTACH_ACTION, env.hot_plug)
        host = repos.hosts.get(server.host) if server.host else None
        # what the server's own host offers, as its agent registered it (else: this process's)
        offered = frozenset(host.transports) if host is not None else env.transports
        transport = _transport(cmd, server, env, offered)
    share = env.shares.get_share(share_id, ctx)  # 404 when missing or not visible
    _require_attachable_share(share)
    require_direct_export(transport, share.id, share.nfs_export)
    tag = cmd.tag if cmd.tag is not None else share.id
    try:
        with uow.write() as repos:
            server = visible_server(repos, cmd.server_id, ctx, lock=True, missing=NO_CELL)
            mapping = _record_attach(repos, env, cmd, server, share, tag, transport)
            touch(server)
            record_action(repos, server.uuid, "attach_share", ctx, message=share.id)
            repos.flush()
    except Duplicate as exc:  # a concurrent attach of the same share or tag won the race
        raise already_attached(share.id, tag) from exc
    env.wake_agent(server.host)
    return mapping


def _transport(cmd: AttachShare, server: ServerRecord, env: Env,
               offered: frozenset[str]) -> str:
    """The body's choice, else the flavor's, else the operator's; one this host serves and,
    on a running server, one that can be hot-plugged."""
    flavor = FLAVORS.get(server.flavor_id)
    transport = choose_transport(cmd.transport, flavor.share_transport if flavor else None,
                                 env.default_transport, server_kind(server.flavor_id))
    if transport != Transport.BIND:  # a container's server was only made where they run
        require_transport(transport, offered)
    require_hot_pluggable(transport, server.vm_state == VmState.ACTIVE)
    return transport


def _require_attachable_share(share: ShareInfo) -> None:
    """The compute service's checks of the share, in its order and words."""
    if share.status != "available":
        raise Conflict(f"Share {share.id} is in '{share.status}' instead of 'available' status.")
    if not share.export_locations:
        raise Conflict(f"Share {share.id} export location is missing.")
    require_attachable(share.protocol)


def _record_attach(repos: Repositories, env: Env, cmd: AttachShare, server: ServerRecord,
                   share: ShareInfo, tag: str, transport: str) -> AttachmentRecord:
    # again under the lock: the state may have changed since the first look
    require_share_change_allowed(server.uuid, server.vm_state, server.task_state,
                                 ATTACH_ACTION, env.hot_plug)
    require_hot_pluggable(transport, server.vm_state == VmState.ACTIVE)
    attached = repos.attachments.of_server(server.uuid)  # one query for every check below
    existing = next((m for m in attached if m.share_id == share.id), None)
    if existing is not None:
        existing.status = status_after_retry(existing.status, share.id, tag, cmd.retry)
        existing.fault_message, existing.user_id = None, cmd.ctx.user_id
        existing.request_id, existing.read_only = cmd.ctx.request_id, cmd.read_only
        existing.requester_token, existing.transport = cmd.ctx.auth_token, transport
        return existing
    if any(m.tag == tag for m in attached):
        raise already_attached(share.id, tag)
    mount_point = cmd.mount_point or share.mount_point
    _require_free_mount_point(attached, guest_mount_point(mount_point, tag))
    count = len(attached)
    if count >= env.max_attachments_per_server:
        raise Conflict(f"Server already has {count} shares attached "
                       f"(limit {env.max_attachments_per_server})")
    require_free_slot(server.vm_state, server.share_slots, count)
    return new_attachment(repos, server, share, tag, mount_point, cmd.ctx, cmd.read_only,
                          transport)


def _require_free_mount_point(attached: list[AttachmentRecord], path: str) -> None:
    for other in attached:
        taken = guest_mount_point(other.mount_point, other.tag)
        if mount_points_overlap(path, taken):
            raise Conflict(f"Mount point {path} overlaps {taken}, where share {other.share_id} "
                           "is mounted on this server")


def detach_share(cmd: DetachShare, uow: UnitOfWork, env: Env) -> None:
    """The compute service's order: the server (404), policy (403), the server's state (409),
    then the attachment (404; an id that is not a UUID is simply not attached). Whatever the
    attachment is doing, it becomes `detaching`: the agent detaches, then deletes the row."""
    ctx = cmd.ctx
    with uow.write() as repos:
        server = visible_server(repos, cmd.server_id, ctx, lock=True, missing=NO_CELL)
        env.policy.authorize(RULE % "delete", ctx, server.project_id)
        require_share_change_allowed(server.uuid, server.vm_state, server.task_state,
                                     DETACH_ACTION, env.hot_plug)
        mapping = repos.attachments.get(server.uuid, cmd.share_id) \
            if is_uuid(cmd.share_id) else None
        if mapping is None:
            raise NotFound(f"Share {cmd.share_id} could not be found.")
        require_hot_pluggable(mapping.transport, server.vm_state == VmState.ACTIVE)
        mapping.status = status_after_detach_request(mapping.status)
        mapping.fault_message, mapping.request_id = None, ctx.request_id
        mapping.user_id, mapping.project_id = ctx.user_id, ctx.project_id
        mapping.requester_token = ctx.auth_token
        touch(server)
        record_action(repos, server.uuid, "detach_share", ctx, message=cmd.share_id)
    env.wake_agent(server.host)
