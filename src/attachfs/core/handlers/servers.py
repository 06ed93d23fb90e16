"""Server handlers: create, start, stop, reboot, delete. Each records desired state (and the
audit trail) in one write; the agent makes it so."""

from __future__ import annotations

import uuid as uuidlib

from attachfs.core.commands import (
    CreateServer,
    DeleteServer,
    RebootServer,
    StartServer,
    StopServer,
    UnavailableAction,
)
from attachfs.core.context import RequestContext
from attachfs.core.flavors import Flavor, find_flavor
from attachfs.core.handlers.common import new_attachment, record_action, touch, visible_server
from attachfs.core.hosts import host_state
from attachfs.core.model import PowerIntent, TaskState, VmState, require_server_state
from attachfs.core.moves import failed
from attachfs.core.ports import Env, Repositories, ServerRecord, UnitOfWork
from attachfs.core.rules import ServerKind, Transport, choose_transport
from attachfs.core.scheduler import Candidate, Needs, place
from attachfs.errors import BadRequest, Conflict, NotFound

RULE = "os_compute_api:servers:%s"



def create_server(cmd: CreateServer, uow: UnitOfWork, env: Env) -> ServerRecord:
    ctx = cmd.ctx
    env.policy.authorize(RULE % "create", ctx, ctx.project_id)
    flavor = find_flavor(cmd.flavor_ref)
    if flavor.kind == ServerKind.CONTAINER and not env.containers:
        raise Conflict(f"Flavor {flavor.name} makes a container, and this host runs none "
                       "([containers] enabled is false).")
    # project shares attached at creation: over bind mounts for a container, else as attach
    transport = Transport.BIND if flavor.kind == ServerKind.CONTAINER else choose_transport(
        None, flavor.share_transport, env.default_transport)
    image_id = env.images.image_id(cmd.image_ref)
    if any(env.images.image_id(ref) != image_id for ref in cmd.boot_image_refs):
        raise BadRequest("block_device_mapping_v2 must boot the image imageRef names")
    with uow.write() as repos:
        host, no_host = _place(repos, env, flavor)
        server = repos.servers.add(
            uuid=str(uuidlib.uuid4()), name=cmd.name, project_id=ctx.project_id,
            user_id=ctx.user_id, host=host or "", flavor_id=flavor.id, image_id=image_id,
            vcpus=flavor.vcpus, memory_mib=flavor.ram_mib, vm_state=VmState.BUILDING,
            task_state=TaskState.SPAWNING, power_intent=PowerIntent.ON,
            user_data=cmd.user_data, meta=cmd.metadata, generation=1,
            config_drive=cmd.config_drive, observed_generation=0)
        if host is None:  # the compute service's answer: the server exists, in ERROR
            server.vm_state, server.task_state = VmState.ERROR, None
            server.power_intent, server.fault_message = PowerIntent.OFF, no_host
            server.observed_generation = server.generation
            record_action(repos, server.uuid, "create", ctx)
            return server
        repos.flush()
        for row in repos.shares.project_scoped(ctx.project_id):
            share = env.builtin.info(row)  # seed 003: project shares reach every new server
            new_attachment(repos, server.uuid, share, share.id, share.mount_point, ctx,
                           transport=transport)
        record_action(repos, server.uuid, "create", ctx)
        repos.ring(server.host)
    return server


def _place(repos: Repositories, env: Env, flavor: Flavor, *, exclude: str | None = None,
           only: str | None = None,
           shares: frozenset[str] = frozenset()) -> tuple[str | None, str]:
    """The host the server runs on (core/scheduler.py), or (None, why not). A move leaves its
    source out (`exclude`); an admin may name the host (`only`: still filtered)."""
    hosts = [h for h in repos.hosts.all() if h.name != exclude and only in (None, h.name)]
    if not hosts and exclude is None and only is None:
        return env.host, ""
    usage, now = repos.hosts.usage(), repos.hosts.now()
    candidates = [Candidate(
        h.name, host_state(h.heartbeat_at, h.forced_down, now, env.down_after) == "up",
        not h.disabled, h.containers, frozenset(h.transports), h.memory_mib,
        usage.get(h.name, (0, 0, 0))[2], usage.get(h.name, (0, 0, 0))[0]) for h in hosts]
    return place(candidates, Needs(flavor.ram_mib, flavor.kind == ServerKind.CONTAINER,
                                   flavor.share_transport, shares))


def _power_change(uow: UnitOfWork, env: Env, ctx: RequestContext, server_id: str,
                  verb: str, allowed: tuple[str, ...], task: str, intent: str) -> None:
    with uow.write() as repos:
        server = visible_server(repos, server_id, ctx, lock=True)
        env.policy.authorize(RULE % verb, ctx, server.project_id)
        require_server_state(server.uuid, server.vm_state, server.task_state, verb, allowed)
        server.task_state, server.power_intent = task, intent
        touch(repos, server.uuid)
        record_action(repos, server.uuid, verb, ctx)
        repos.ring(server.host)


def start_server(cmd: StartServer, uow: UnitOfWork, env: Env) -> None:
    _power_change(uow, env, cmd.ctx, cmd.server_id, "start", (VmState.STOPPED,),
                  TaskState.POWERING_ON, PowerIntent.ON)


def stop_server(cmd: StopServer, uow: UnitOfWork, env: Env) -> None:
    _power_change(uow, env, cmd.ctx, cmd.server_id, "stop", (VmState.ACTIVE, VmState.ERROR),
                  TaskState.POWERING_OFF, PowerIntent.OFF)


def reboot_server(cmd: RebootServer, uow: UnitOfWork, env: Env) -> None:
    allowed = (VmState.ACTIVE,) + ((VmState.ERROR,) if cmd.hard else ())
    _power_change(uow, env, cmd.ctx, cmd.server_id, "reboot", allowed,
                  TaskState.REBOOTING_HARD if cmd.hard else TaskState.REBOOTING, PowerIntent.ON)


def delete_server(cmd: DeleteServer, uow: UnitOfWork, env: Env) -> None:
    with uow.write() as repos:
        server = visible_server(repos, cmd.server_id, cmd.ctx, lock=True)
        env.policy.authorize(RULE % "delete", cmd.ctx, server.project_id)
        if not server.host:  # never placed (no valid host): nothing exists anywhere
            server.vm_state, server.task_state = VmState.DELETED, None
            record_action(repos, server.uuid, "delete", cmd.ctx)
        elif server.task_state != TaskState.DELETING:  # a repeated DELETE changes nothing
            migration = repos.migrations.in_progress(server.uuid)
            if migration is not None:  # a move cut short: deleted wherever it got to
                migration.status = failed(migration.migration_type)
            server.task_state, server.power_intent = TaskState.DELETING, PowerIntent.OFF
            touch(repos, server.uuid)
            record_action(repos, server.uuid, "delete", cmd.ctx)
        repos.ring(server.host)


# Server actions of the compute service that attachfs does not carry out: each with its policy
# rule and, where the compute service refuses it for a server with shares (its compute API's
# @block_shares_not_supported), the status it answers then. Measured on Nova 34.0.0
# (tests/conformance): shelve, suspend, live-migrate and evacuate are a 409, rebuild a 400;
# resize and cold migrate are not refused there. Its order: the server (404), policy (403),
# shares, then the action's own checks.
UNAVAILABLE_ACTIONS: dict[str, tuple[str, int | None]] = {
    "shelve": ("os_compute_api:os-shelve:shelve", 409),
    "shelveOffload": ("os_compute_api:os-shelve:shelve_offload", None),
    "unshelve": ("os_compute_api:os-shelve:unshelve", None),
    "suspend": ("os_compute_api:os-suspend-server:suspend", 409),
    "resume": ("os_compute_api:os-suspend-server:resume", None),
    "pause": ("os_compute_api:os-pause-server:pause", None),
    "unpause": ("os_compute_api:os-pause-server:unpause", None),
    "lock": ("os_compute_api:os-lock-server:lock", None),
    "unlock": ("os_compute_api:os-lock-server:unlock", None),
    "os-migrateLive": ("os_compute_api:os-migrate-server:migrate_live", 409),
    "resize": ("os_compute_api:servers:resize", None),
    "rebuild": ("os_compute_api:servers:rebuild", 400),
    "createImage": ("os_compute_api:servers:create_image", None),
    "rescue": ("os_compute_api:os-rescue", None),
    "unrescue": ("os_compute_api:os-unrescue", None),
}
WITH_SHARES = "Feature not supported with instances that have shares."
# docs/hosts.md, "Live migration": what it would take
LIVE_MIGRATION = (
    "attachfs does not live-migrate servers: a running guest's virtio-fs devices can move "
    "only with QEMU 8.2 or later and a virtiofsd that migrates its state (--migration-mode), "
    "on both hosts, and this host's QEMU and virtiofsd have neither. Cold-migrate the server "
    "(migrate) instead: it stops, moves with its shares, and starts again.")


def refuse_unavailable(cmd: UnavailableAction, uow: UnitOfWork, env: Env) -> None:
    rule, refused_with_shares = UNAVAILABLE_ACTIONS[cmd.action]
    with uow.read() as repos:
        server = visible_server(repos, cmd.server_id, cmd.ctx)
        env.policy.authorize(rule, cmd.ctx, server.project_id)
        if refused_with_shares and cmd.action != "os-migrateLive" \
                and repos.attachments.count(server.uuid):
            raise (BadRequest if refused_with_shares == 400 else Conflict)(WITH_SHARES)
    if cmd.action == "os-migrateLive":
        raise Conflict(LIVE_MIGRATION)
    if cmd.flavor_ref is not None:  # resize: an unknown flavor is the client's 400
        try:
            find_flavor(cmd.flavor_ref)
        except NotFound as exc:
            raise BadRequest(exc.message) from exc
    raise Conflict(f"attachfs does not carry out the '{cmd.action}' server action "
                   "(see docs/api.md).")
