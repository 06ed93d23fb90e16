"""The two inputs of a pass: desired state from the rows, actual state from the drivers.

Both are turned into the planner's plain dataclasses (core/reconcile_model.py); the rows themselves
(`Snapshot`) travel along for the executor, which needs the requester and export details.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from attachfs.config import AgentConfig
from attachfs.core.flavors import server_kind
from attachfs.core.model import AttachmentStatus, PowerIntent, TaskState, VmState
from attachfs.core.moves import IN_PROGRESS, move_of
from attachfs.core.reconcile_model import Actual, Desired, DesiredShare, Phase, Power, phase_of
from attachfs.core.rules import ServerKind, Transport, container_target
from attachfs.db.tables import Migration, Server, ShareMapping
from attachfs.errors import BackendError
from attachfs.metadata.sockets import MetadataSockets
from attachfs.storage.base import MountTable, ShareProvider
from attachfs.storage.local import EXPORT_PREFIX
from attachfs.virt.base import PowerState, VirtDriver

log = logging.getLogger(__name__)

# Statuses of another server's attachment whose host mount that server may use right now.
_USING = (AttachmentStatus.ACTIVE, AttachmentStatus.ATTACHING, AttachmentStatus.DETACHING)


MountPath = Callable[[str, bool], str]  # (share id, read-only) -> the host mount's path


@dataclass
class Snapshot:
    """The rows as read at the start of a pass (detached copies; the session is closed)."""

    server: Server
    mappings: list[ShareMapping]
    migration: Migration | None = None  # the server's move under way, if any

    def mapping(self, mapping_id: int | None) -> ShareMapping | None:
        return next((m for m in self.mappings if m.id == mapping_id), None)


@dataclass
class PassMemory:
    """What the agent remembers between passes of one server (lost on restart, harmlessly:
    a restarted agent waits for the guest again, or reboots once more)."""

    release_started: dict[int, float]  # attachment id -> monotonic time `detaching` was seen
    unplugging: dict[tuple[str, str], float]  # (server, tag) -> monotonic time unplug was asked
    missing_since: dict[str, float]  # server -> since when its guest is not seen running
    access_checked: dict[str, float] = field(default_factory=dict)  # server -> last look
    # server -> (first, last) press of its guest's power button, while the guest runs
    shutdown_asked: dict[str, tuple[float, float]] = field(default_factory=dict)
    power_off_notified: set[str] = field(default_factory=set)  # power_off.start went out
    # server -> passes in a row that found the share service still applying a rule
    pending_looks: dict[str, int] = field(default_factory=dict)

    def forget(self, server: str) -> None:
        """A server whose row is gone: nothing of it is kept."""
        for per_server in (self.missing_since, self.access_checked, self.shutdown_asked,
                           self.pending_looks):
            per_server.pop(server, None)
        self.power_off_notified.discard(server)


def read_snapshot(s: Session, uuid: str) -> Snapshot | None:
    server = s.get(Server, uuid)
    if server is None:
        return None
    mappings = list(s.scalars(select(ShareMapping).where(ShareMapping.instance_uuid == uuid)
                              .order_by(ShareMapping.id)))
    migration = s.scalar(select(Migration).where(Migration.instance_uuid == uuid)
                         .order_by(Migration.id.desc()).limit(1)) if server.task_state else None
    return Snapshot(server, mappings,
                    migration if migration is not None and migration.status in IN_PROGRESS
                    else None)


def _elsewhere(s: Session, server: Server, host: str,
               mount_path: MountPath) -> tuple[frozenset[str], frozenset[str]]:
    """(host mounts other running servers of `host` use, shares other attachments on `host`
    hold a rule for)."""
    mine = select(ShareMapping.share_id).where(ShareMapping.instance_uuid == server.uuid)
    # a running (or starting) server's attachment that is in use holds the host mount
    in_use = and_(ShareMapping.status.in_(_USING), Server.vm_state != VmState.DELETED,
                  or_(Server.vm_state.in_((VmState.ACTIVE, VmState.BUILDING)),
                      Server.power_intent == PowerIntent.ON))
    # One row per (share, read-only) in SQL, not one per other attachment: with every server
    # of a host on the same shares, a pass read every other server's rows (quadratic: 3.1
    # million rows for one sweep of 313 servers x 32 shares).
    rows = s.execute(select(ShareMapping.share_id, ShareMapping.read_only,
                            func.max(case((in_use, 1), else_=0)))
                     .join(Server, Server.uuid == ShareMapping.instance_uuid)
                     .where(Server.host == host, Server.uuid != server.uuid,
                            ShareMapping.share_id.in_(mine),
                            # a direct attachment holds neither a host mount nor the host's rule
                            ShareMapping.transport != Transport.DIRECT)
                     .group_by(ShareMapping.share_id, ShareMapping.read_only))
    paths, shares = set(), set()
    for share_id, read_only, used in rows:
        shares.add(share_id)
        if used:
            paths.add(mount_path(share_id, read_only))
    return frozenset(paths), frozenset(shares)


def desired_of(s: Session, snap: Snapshot | None, uuid: str, mount_path: MountPath,
               memory: PassMemory, agent: AgentConfig, layout: str = "mnt") -> Desired:
    if snap is None or snap.server.vm_state == VmState.DELETED:
        return Desired(uuid=uuid, power=Power.GONE, vm_state=VmState.DELETED,
                       stop_timeout=agent.stop_timeout)
    server, now = snap.server, time.monotonic()
    container = server_kind(server.flavor_id) == ServerKind.CONTAINER
    shares = []
    for m in snap.mappings:
        if phase_of(m.status) == Phase.RELEASE:
            memory.release_started.setdefault(m.id, now)
        target = container_target(m.mount_point, m.tag, m.share_id, layout) if container else ""
        # direct: no host mount; the host's NFS server exports the share's own directory
        path = m.export_location.removeprefix(EXPORT_PREFIX) if m.transport == Transport.DIRECT \
            else mount_path(m.share_id, m.read_only)
        shares.append(DesiredShare(
            id=m.id, share_id=m.share_id, tag=m.tag, path=path,
            read_only=m.read_only, status=m.status, protocol=m.share_proto,
            export=m.export_location, release_started=memory.release_started.get(m.id),
            transport=m.transport, target=target))
    paths, access = _elsewhere(s, server, agent.host, mount_path) if shares \
        else (frozenset(), frozenset())
    if server.host != agent.host:  # it runs elsewhere now: what is left here goes
        return Desired(uuid=uuid, power=Power.GONE, vm_state=server.vm_state, moved_away=True,
                       shares=tuple(shares), paths_used_elsewhere=paths,
                       access_used_elsewhere=access, stop_timeout=agent.stop_timeout)
    migration = snap.migration
    move = None if migration is None else move_of(
        migration.migration_type, migration.status, migration.source_compute,
        migration.dest_compute, migration.fenced, server.task_state, server.host, agent.host)
    power = Power.GONE if server.task_state == TaskState.DELETING else Power(server.power_intent)
    return Desired(
        uuid=uuid, power=power, vm_state=server.vm_state, task=server.task_state,
        settled=server.generation == server.observed_generation and server.task_state is None,
        # a container's metadata is always its "config drive" (a directory it sees)
        shares=tuple(shares), config_drive=server.config_drive or container,
        generation=server.generation,
        paths_used_elsewhere=paths, access_used_elsewhere=access,
        detach_timeout=agent.detach_timeout, stop_timeout=agent.stop_timeout, move=move)


def observe(uuid: str, virt: VirtDriver, metadata: MetadataSockets, mounts: MountTable,
            mount_root: Path, memory: PassMemory) -> Actual:
    """What is there now, through the drivers: the guest and its devices, the host's mounts
    under the mount root with their options, the metadata socket, the guest's last report."""
    guest = virt.observe(uuid)
    running = guest.power == PowerState.RUNNING
    devices = {tag: str(path) for tag, path in guest.devices.items()} if running else {}
    if not running:
        memory.shutdown_asked.pop(uuid, None)  # it stopped: a later stop starts afresh
    table = {str(p): opts for p, opts in mounts.table(mount_root).items()}
    for key in [k for k in memory.unplugging if k[0] == uuid and k[1] not in devices]:
        del memory.unplugging[key]  # gone: the request was honoured
    unplugging = {tag: t for (server, tag), t in memory.unplugging.items() if server == uuid}
    return Actual(power=str(guest.power), devices=devices, mounts=table,
                  metadata=metadata.serving(uuid), guest_report=metadata.reports.mounted(uuid),
                  unplugging=unplugging,
                  writable_devices=guest.writable if running else frozenset(),
                  shutdown_asked=memory.shutdown_asked.get(uuid),
                  guest_generation=guest.generation if running else None,
                  fixed_devices=guest.fixed if running else frozenset(),
                  cooperative=guest.cooperative,
                  now=time.monotonic())


def access_due(desired: Desired, memory: PassMemory, interval: float, now: float) -> bool:
    """Whether this server's access rules are to be looked up: it holds attachments and its
    last look (memory.access_checked, set by the pass that ran it) is `interval` s old."""
    last = memory.access_checked.get(desired.uuid)
    return any(s.phase == Phase.HELD for s in desired.shares) and (
        last is None or now - last >= interval)


def observe_access(provider: ShareProvider, host: str, desired: Desired) -> frozenset[str] | None:
    """The shares of this server's held attachments that have a rule for this host, as the
    provider has them (one call for all); None, "unknown", when the provider cannot answer."""
    held = sorted({s.share_id for s in desired.shares
                   if s.phase == Phase.HELD and not s.own_rule})
    try:
        return frozenset(provider.access_levels(held, host))
    except BackendError as exc:
        log.warning("server %s: cannot look up access rules: %s", desired.uuid, exc)
        return None
