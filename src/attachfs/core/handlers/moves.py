"""Moving servers between hosts (core/moves.py): evacuate, cold migrate, confirm and revert.

Each handler checks everything a client can get wrong before it writes, then records desired
state (server row, migration row, audit trail) in one transaction; the agents carry it out.
The compute service's order: the server (404), policy (403), the body's host (404/400), the
server's state (409), the hosts' state (409), placement (400).
"""

from __future__ import annotations

import uuid as uuidlib

from attachfs.core.commands import (
    ConfirmMigration,
    EvacuateServer,
    MigrateServer,
    RevertMigration,
)
from attachfs.core.context import RequestContext
from attachfs.core.flavors import find_flavor
from attachfs.core.handlers.common import record_action, touch, visible_server
from attachfs.core.handlers.servers import _place
from attachfs.core.hosts import host_state
from attachfs.core.model import PowerIntent, TaskState, VmState, require_server_state
from attachfs.core.moves import MigrationStatus, MoveType, failed, settled_vm_state
from attachfs.core.ports import (
    AttachmentRecord,
    Env,
    HostRecord,
    MigrationRecord,
    Repositories,
    ServerRecord,
    UnitOfWork,
)
from attachfs.core.rules import Transport
from attachfs.errors import BadRequest, Conflict, NotFound

EVACUATE_RULE = "os_compute_api:os-evacuate"
MIGRATE_RULE = "os_compute_api:os-migrate-server:migrate"
CONFIRM_RULE = "os_compute_api:servers:confirm_resize"
REVERT_RULE = "os_compute_api:servers:revert_resize"
MOVABLE = (VmState.ACTIVE, VmState.STOPPED)


def _host_row(repos: Repositories, name: str) -> HostRecord | None:
    return next((h for h in repos.hosts.all() if h.name == name), None)


def _up(env: Env, repos: Repositories, host: HostRecord | None) -> bool:
    return host is not None and host_state(host.heartbeat_at, host.forced_down,
                                           repos.hosts.now(), env.down_after) == "up"


def _target(repos: Repositories, env: Env, server: ServerRecord, requested: str | None,
            missing: type[Exception], attachments: list[AttachmentRecord]) -> str:
    """The destination: the admin's host (which must exist and differ from the source) or the
    scheduler's pick among the others."""
    if requested is not None:
        if _host_row(repos, requested) is None:
            raise missing(f"Compute host {requested} could not be found.")
        if requested == server.host:
            raise BadRequest("The target host can't be the same one.")
    shares = frozenset(m.transport for m in attachments)
    host, why = _place(repos, env, find_flavor(server.flavor_id), exclude=server.host,
                       only=requested, shares=shares)
    if host is None:
        raise BadRequest(why)
    return host


def _movable_shares(attachments: list[AttachmentRecord], server: ServerRecord,
                    action: str) -> None:
    """An attachment of transport direct holds an access rule for the guest's address on its
    host; it cannot follow the guest (detach it first)."""
    for m in attachments:
        if m.transport == Transport.DIRECT:
            raise Conflict(f"Cannot '{action}' instance {server.uuid}: share {m.share_id} is "
                           "attached with transport direct, whose access rule is for the "
                           "guest's address on its host; detach it first.")


def _unfenceable(attachments: list[AttachmentRecord], env: Env) -> list[str]:
    """Shares of the server whose storage cannot cut the failed host off (built-in and static
    shares: a host's existing mounts of them live on without any rule)."""
    return sorted({m.share_id for m in attachments
                   if not env.shares.fences(m.share_id)})


def _stuck_evacuation(repos: Repositories, env: Env, server: ServerRecord,
                      host: HostRecord | None) -> MigrationRecord | None:
    """The evacuation of a server whose destination failed before it finished (the server is
    still `rebuilding` there): it may be evacuated again, from that host."""
    if server.task_state != TaskState.REBUILDING or _up(env, repos, host):
        return None
    return repos.migrations.in_progress(server.uuid)


def _start_move(repos: Repositories, server: ServerRecord, ctx: RequestContext, kind: str,
                dest: str, status: str, action: str) -> None:
    repos.migrations.add(
        uuid=str(uuidlib.uuid4()), instance_uuid=server.uuid, migration_type=kind,
        source_compute=server.host, dest_compute=dest, status=status,
        flavor_id=server.flavor_id, user_id=ctx.user_id, project_id=ctx.project_id)
    record_action(repos, server.uuid, action, ctx,
                  message=f"from host {server.host} to host {dest}")
    touch(repos, server.uuid)


def evacuate_server(cmd: EvacuateServer, uow: UnitOfWork, env: Env) -> None:
    with uow.write() as repos:
        repos.ring(_evacuate(cmd, repos, env))


def _evacuate(cmd: EvacuateServer, repos: Repositories, env: Env) -> str:
    """The checks and the writes, in evacuate_server's one transaction; the new host."""
    ctx = cmd.ctx
    server = visible_server(repos, cmd.server_id, ctx, lock=True)
    env.policy.authorize(EVACUATE_RULE, ctx, server.project_id)
    if cmd.host is not None and _host_row(repos, cmd.host) is None:
        raise NotFound(f"Compute host {cmd.host} could not be found.")
    source = _host_row(repos, server.host)
    attachments = repos.attachments.of_server(server.uuid)  # read once per request
    stuck = _stuck_evacuation(repos, env, server, source)
    if stuck is None:
        require_server_state(server.uuid, server.vm_state, server.task_state, "evacuate",
                             (*MOVABLE, VmState.ERROR))
    if source is None or _up(env, repos, source):
        raise Conflict(f"Compute service of {server.host} is still in use.")
    if stuck is not None and not stuck.fenced:
        # the new host failed before it fenced the first one (so it took nothing): the
        # same evacuation goes on to another host, which fences the first failed host
        dest = _target(repos, env, server, cmd.host, NotFound, attachments)
        record_action(repos, server.uuid, "evacuate", ctx,
                      message=f"from host {stuck.source_compute} to host {dest} (host "
                              f"{server.host} failed before it took the server)")
        stuck.dest_compute, server.host = dest, dest
        touch(repos, server.uuid)
        return dest
    if stuck is not None:  # it fenced and may hold the shares: that host is fenced too
        stuck.status = failed(stuck.migration_type)
        server.task_state = None
    _movable_shares(attachments, server, "evacuate")
    blind = _unfenceable(attachments, env)
    if blind and not source.forced_down:
        raise Conflict(
            f"Host {server.host} is down, but the storage of share(s) {', '.join(blind)} "
            "cannot cut it off (built-in or static shares: a mount the host still has "
            "stays usable); fence the host yourself (power it off), mark it forced down "
            f"(openstack compute service set --down {server.host} nova-compute), then "
            "evacuate again.")
    dest = _target(repos, env, server, cmd.host, NotFound, attachments)
    _start_move(repos, server, ctx, MoveType.EVACUATION, dest, MigrationStatus.ACCEPTED,
                "evacuate")
    # rebuilt on the new host as it was (running unless it was stopped), or stopped (2.95)
    server.power_intent = PowerIntent.OFF if cmd.stop or server.vm_state == VmState.STOPPED \
        else PowerIntent.ON
    server.host, server.task_state = dest, TaskState.REBUILDING
    server.fault_message = None
    return dest


def migrate_server(cmd: MigrateServer, uow: UnitOfWork, env: Env) -> None:
    ctx = cmd.ctx
    with uow.write() as repos:
        server = visible_server(repos, cmd.server_id, ctx, lock=True)
        env.policy.authorize(MIGRATE_RULE, ctx, server.project_id)
        if cmd.host is not None and _host_row(repos, cmd.host) is None:
            raise BadRequest(f"Compute host {cmd.host} could not be found.")
        require_server_state(server.uuid, server.vm_state, server.task_state, "migrate",
                             MOVABLE)
        attachments = repos.attachments.of_server(server.uuid)  # read once per request
        dest = _target(repos, env, server, cmd.host, BadRequest, attachments)
        if not _up(env, repos, _host_row(repos, server.host)):
            raise Conflict(f"Host {server.host} is down: it cannot let the server go; "
                           "evacuate the server instead.")
        _movable_shares(attachments, server, "migrate")
        busy = [m.share_id for m in attachments
                if m.status in ("attaching", "detaching")]
        if busy:
            raise Conflict(f"Cannot 'migrate' instance {server.uuid} while share(s) "
                           f"{', '.join(busy)} are attaching or detaching.")
        _start_move(repos, server, ctx, MoveType.MIGRATION, dest,
                    MigrationStatus.PRE_MIGRATING, "migrate")
        server.task_state = TaskState.RESIZE_PREP
        repos.ring(server.host)


def confirm_migration(cmd: ConfirmMigration, uow: UnitOfWork, env: Env) -> None:
    """Nothing is left on the source (it let go before the move): only the rows change."""
    ctx = cmd.ctx
    with uow.write() as repos:
        server = visible_server(repos, cmd.server_id, ctx, lock=True)
        env.policy.authorize(CONFIRM_RULE, ctx, server.project_id)
        migration = _resized(repos, server, "confirmResize")
        migration.status = MigrationStatus.CONFIRMED
        server.vm_state = settled_vm_state(server.power_intent == PowerIntent.ON)
        record_action(repos, server.uuid, "confirmResize", ctx, finished=True)


def revert_migration(cmd: RevertMigration, uow: UnitOfWork, env: Env) -> None:
    ctx = cmd.ctx
    with uow.write() as repos:
        server = visible_server(repos, cmd.server_id, ctx, lock=True)
        env.policy.authorize(REVERT_RULE, ctx, server.project_id)
        migration = _resized(repos, server, "revertResize")
        if not _up(env, repos, _host_row(repos, migration.source_compute)):
            raise Conflict(f"Host {migration.source_compute} is down: the server cannot go "
                           "back to it; confirm the migration instead.")
        migration.status = MigrationStatus.REVERTING
        server.task_state = TaskState.RESIZE_REVERTING
        touch(repos, server.uuid)
        record_action(repos, server.uuid, "revertResize", ctx,
                      message=f"from host {server.host} back to host "
                              f"{migration.source_compute}")
        repos.ring(server.host)


def _resized(repos: Repositories, server: ServerRecord, action: str) -> MigrationRecord:
    require_server_state(server.uuid, server.vm_state, server.task_state, action,
                         (VmState.RESIZED,))
    migration = repos.migrations.in_progress(server.uuid)
    if migration is None or migration.status != MigrationStatus.FINISHED:
        raise BadRequest("Instance has not been resized.")
    return migration
