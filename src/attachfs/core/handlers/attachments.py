"""Share attachment handlers (2.97's POST/DELETE /servers/{id}/shares, seed 004's actions,
os-filesystem's connect/disconnect): record `attaching`/`detaching` for the agent."""

from __future__ import annotations

from attachfs.core.commands import AttachShare, DetachShare
from attachfs.core.context import RequestContext, ShareInfo
from attachfs.core.flavors import FLAVORS, server_kind
from attachfs.core.handlers.common import (
    NO_CELL,
    new_attachment,
    record_action,
    touch,
    visible_server_state,
)
from attachfs.core.model import (
    ATTACH_ACTION,
    DETACH_ACTION,
    VmState,
    already_attached,
    is_uuid,
    require_free_slot,
    require_share_change_allowed,
    share_visible,
    status_after_detach_request,
    status_after_retry,
    validate_uuid,
)
from attachfs.core.ports import AttachmentRecord, Env, Repositories, ServerState, UnitOfWork
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
    (409), then the share, then the attachment itself, recorded with the server row locked.

    A built-in share is a row of this database: found in the same transaction, so the whole
    request is one transaction. Any other share is asked of its provider outside any
    transaction (it may be a remote service), between a first look at the server and the
    transaction that records the attachment, which checks the server again."""
    ctx = cmd.ctx
    share_id = validate_uuid(cmd.share_id, "share_id")
    if cmd.tag is not None:
        validate_tag(cmd.tag)
    validate_mount_point(cmd.mount_point)
    if cmd.transport is not None and (problem := transport_problem(cmd.transport)):
        raise BadRequest(f"Invalid input for field/attribute transport: {problem}")
    tag = cmd.tag if cmd.tag is not None else share_id
    try:
        with uow.write() as repos:
            server, transport = _checked_server(repos, cmd, env)
            share = _builtin_share(repos, env, share_id, ctx)
            if share is not None:
                mapping = _record_attach(repos, env, cmd, server, share, transport)
    except Duplicate as exc:  # a concurrent attach of the same share or tag won the race
        raise already_attached(share_id, tag) from exc
    if share is None:  # not built-in: asked of its provider, outside any transaction
        return _attach_provided(cmd, uow, env, env.shares.get_share(share_id, ctx))
    return mapping


def _attach_provided(cmd: AttachShare, uow: UnitOfWork, env: Env,
                     share: ShareInfo) -> AttachmentRecord:
    """The attachment of a share its provider has shown (404 before this when it did not):
    the server checked again (it may have changed meanwhile), then recorded."""
    tag = cmd.tag if cmd.tag is not None else share.id
    try:
        with uow.write() as repos:
            server, transport = _checked_server(repos, cmd, env)
            mapping = _record_attach(repos, env, cmd, server, share, transport)
    except Duplicate as exc:
        raise already_attached(share.id, tag) from exc
    return mapping


def _checked_server(repos: Repositories, cmd: AttachShare,
                    env: Env) -> tuple[ServerState, str]:
    """The server (404), policy (403), its state (409), and the transport the attachment
    will use; the server row locked (PostgreSQL; SQLite's writer holds the database)."""
    server = visible_server_state(repos, cmd.server_id, cmd.ctx, lock=True, missing=NO_CELL)
    env.policy.authorize(RULE % "create", cmd.ctx, server.project_id)
    require_share_change_allowed(server.uuid, server.vm_state, server.task_state,
                                 ATTACH_ACTION, env.hot_plug)
    # what the server's own host offers, as its agent registered it (else: this process's)
    offered = frozenset(server.host_transports) if server.host_transports is not None \
        else env.transports
    return server, _transport(cmd, server, env, offered)


def _builtin_share(repos: Repositories, env: Env, share_id: str,
                   ctx: RequestContext) -> ShareInfo | None:
    """A built-in share (404 when the caller may not see it), or None: not built-in."""
    row = repos.shares.row(share_id)
    if row is None:
        return None
    if not share_visible(row, ctx):
        raise NotFound(f"Share {share_id} could not be found.")
    return env.builtin.info(row)


def _transport(cmd: AttachShare, server: ServerState, env: Env,
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


def _require_attachable_share(share: ShareInfo, transport: str) -> None:
    """The compute service's checks of the share, in its order and words; then whether the
    transport can reach it."""
    if share.status != "available":
        raise Conflict(f"Share {share.id} is in '{share.status}' instead of 'available' status.")
    if not share.export_locations:
        raise Conflict(f"Share {share.id} export location is missing.")
    require_attachable(share.protocol)
    require_direct_export(transport, share.id, share.nfs_export)


def _record_attach(repos: Repositories, env: Env, cmd: AttachShare, server: ServerState,
                   share: ShareInfo, transport: str) -> AttachmentRecord:
    """The share's checks, then the attachment, the server's new generation and the audit
    trail, in the caller's transaction."""
    _require_attachable_share(share, transport)
    mapping = _new_or_retried(repos, env, cmd, server, share, transport)
    touch(repos, server.uuid)
    record_action(repos, server.uuid, "attach_share", cmd.ctx, message=share.id)
    repos.ring(server.host)
    return mapping


def _new_or_retried(repos: Repositories, env: Env, cmd: AttachShare, server: ServerState,
                    share: ShareInfo, transport: str) -> AttachmentRecord:
    tag = cmd.tag if cmd.tag is not None else share.id
    attached = repos.attachments.of_server(server.uuid)  # one query for every check below
    existing = next((m for m in attached if m.share_id == share.id), None)
    if existing is not None:
        retried = {"status": status_after_retry(existing.status, share.id, tag, cmd.retry),
                   "fault_message": None, "user_id": cmd.ctx.user_id,
                   "request_id": cmd.ctx.request_id, "read_only": cmd.read_only,
                   "requester_token": cmd.ctx.auth_token, "transport": transport}
        repos.attachments.update(existing.uuid, **retried)
        return _attachment(repos, server.uuid, share.id)
    if any(m.tag == tag for m in attached):
        raise already_attached(share.id, tag)
    mount_point = cmd.mount_point or share.mount_point
    _require_free_mount_point(attached, guest_mount_point(mount_point, tag))
    count = len(attached)
    if count >= env.max_attachments_per_server:
        raise Conflict(f"Server already has {count} shares attached "
                       f"(limit {env.max_attachments_per_server})")
    require_free_slot(server.vm_state, server.share_slots, count)
    return new_attachment(repos, server.uuid, share, tag, mount_point, cmd.ctx, cmd.read_only,
                          transport)


def _attachment(repos: Repositories, server_uuid: str, share_id: str) -> AttachmentRecord:
    """An attachment this transaction has just written."""
    mapping = repos.attachments.get(server_uuid, share_id)
    if mapping is None:
        raise RuntimeError(f"attachment of {share_id} to {server_uuid} vanished in its own "
                           "transaction")
    return mapping


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
        server = visible_server_state(repos, cmd.server_id, ctx, lock=True, missing=NO_CELL)
        env.policy.authorize(RULE % "delete", ctx, server.project_id)
        require_share_change_allowed(server.uuid, server.vm_state, server.task_state,
                                     DETACH_ACTION, env.hot_plug)
        mapping = repos.attachments.get(server.uuid, cmd.share_id) \
            if is_uuid(cmd.share_id) else None
        if mapping is None:
            raise NotFound(f"Share {cmd.share_id} could not be found.")
        require_hot_pluggable(mapping.transport, server.vm_state == VmState.ACTIVE)
        repos.attachments.update(
            mapping.uuid, status=status_after_detach_request(mapping.status),
            fault_message=None, request_id=ctx.request_id, user_id=ctx.user_id,
            project_id=ctx.project_id, requester_token=ctx.auth_token)
        touch(repos, server.uuid)
        record_action(repos, server.uuid, "detach_share", ctx, message=cmd.share_id)
        repos.ring(server.host)
