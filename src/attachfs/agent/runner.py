"""The agent loop: find servers of this host whose desired state is not yet their actual state,
reconcile each on a worker (one pass per server at a time), and on start and periodically
compare the host with the database to repair drift (guests, mounts, virtiofsd, sockets)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import or_, select

from attachfs.agent.reconciler import Reconciler
from attachfs.core.model import AttachmentStatus, VmState
from attachfs.db.tables import Server, ShareMapping
from attachfs.storage import mountinfo
from attachfs.virt.base import PowerState

log = logging.getLogger(__name__)
ORPHAN_GRACE = 60.0  # seconds
TRANSITIONAL = (AttachmentStatus.ATTACHING, AttachmentStatus.DETACHING)


class Agent:
    def __init__(self, reconciler: Reconciler) -> None:
        self.r = reconciler
        self.config = reconciler.config
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[str, Future[None]] = {}
        self._pool = ThreadPoolExecutor(self.config.agent.workers, thread_name_prefix="reconcile")

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # ---- what needs work ---------------------------------------------------------------------
    def dirty_servers(self) -> list[str]:
        with self.r.db.read() as s:
            busy = select(ShareMapping.instance_uuid).where(ShareMapping.status.in_(TRANSITIONAL))
            rows = s.scalars(select(Server.uuid).where(
                Server.host == self.r.host, Server.vm_state != VmState.DELETED,
                or_(Server.generation != Server.observed_generation,
                    Server.task_state.is_not(None), Server.uuid.in_(busy))))
            return list(rows)

    def host_servers(self) -> dict[str, Server]:
        with self.r.db.read() as s:
            rows = s.scalars(select(Server).where(Server.host == self.r.host,
                                                  Server.vm_state != VmState.DELETED))
            return {row.uuid: row for row in rows}

    def submit(self, uuid: str) -> None:
        running = self._inflight.get(uuid)
        if running is not None and not running.done():
            return
        self._inflight[uuid] = self._pool.submit(self._reconcile_safely, uuid)

    def _reconcile_safely(self, uuid: str) -> None:
        try:
            self.r.reconcile(uuid)
        except Exception:  # one server's surprise must not stop the agent
            log.exception("reconcile of server %s failed; will retry", uuid)
        finally:
            # A request that arrived during this pass was skipped by submit(): look again now
            # rather than at the next poll tick.
            self._wake.set()

    # ---- drift -----------------------------------------------------------------------------
    def repair(self) -> None:
        """Compare host and database; fix and log every difference."""
        servers = self.host_servers()
        guests = self.r.virt.list_guests()
        for uuid, state in guests.items():
            if uuid not in servers and state == PowerState.RUNNING:
                log.warning("repair: destroying guest %s that has no server", uuid)
                self.r.virt.stop_guest(uuid, 0)
        for uuid, server in servers.items():
            guest = guests.get(uuid, PowerState.MISSING)
            if server.vm_state == VmState.STOPPED and server.task_state is None \
                    and guest == PowerState.RUNNING:
                log.warning("repair: guest %s runs although its server is SHUTOFF", uuid)
                self.submit(uuid)
            elif server.vm_state == VmState.ACTIVE and server.task_state is None \
                    and guest != PowerState.RUNNING:
                self.r.note_guest_stopped(uuid)
        self.r.metadata.sync(set(servers))
        self._repair_devices(servers, guests)
        self._repair_mounts()
        self._repair_virtiofsd()

    def _repair_devices(self, servers: dict[str, Server],
                        guests: dict[str, PowerState]) -> None:
        """No device without a row: a running guest's share device that no attachment of its
        server claims is removed (a crash between adding it and recording it leaves one)."""
        for uuid, state in guests.items():
            if state != PowerState.RUNNING or uuid not in servers:
                continue
            snap = self.r.snapshot(uuid)
            if snap is None or snap.server.task_state is not None:
                continue
            claimed = {m.tag for m in snap.mappings}
            for tag in self.r.virt.guest_share_tags(uuid) - claimed:
                log.warning("repair: removing device %s from guest %s: no attachment has it",
                            tag, uuid)
                try:
                    self.r.virt.detach_share(uuid, tag, 30.0)
                except Exception as exc:  # noqa: BLE001 - logged; the next repair retries
                    log.error("repair: cannot remove device %s from %s: %s", tag, uuid, exc)

    def _needed_mounts(self) -> set[Path]:
        with self.r.db.read() as s:
            rows = s.execute(select(ShareMapping.share_id, ShareMapping.read_only).join(
                Server, Server.uuid == ShareMapping.instance_uuid).where(
                Server.host == self.r.host, ShareMapping.status.in_(
                    (AttachmentStatus.ACTIVE, AttachmentStatus.INACTIVE,
                     AttachmentStatus.ATTACHING, AttachmentStatus.DETACHING)),
                Server.vm_state.in_((VmState.ACTIVE, VmState.BUILDING))))
            return {self.r.a.mount_path(share_id, ro) for share_id, ro in rows}

    def _repair_mounts(self) -> None:
        root = self.config.mount_root
        needed = self._needed_mounts()
        for point in mountinfo.mount_points(root):
            if point.parent == root and point not in needed:
                log.warning("repair: unmounting %s, no running guest uses it", point)
                try:
                    mountinfo.unmount(point)
                except Exception as exc:  # noqa: BLE001 - logged; next repair retries
                    log.error("repair: cannot unmount %s: %s", point, exc)

    def _repair_virtiofsd(self) -> None:
        """A virtiofsd serving one of our mounts that no running guest uses is an orphan.
        Young ones are spared: libvirt starts virtiofsd just before the guest it serves."""
        root = str(self.config.mount_root)
        running = [u for u, st in self.r.virt.list_guests().items() if st == PowerState.RUNNING]
        with self.r.db.read() as s:
            in_use = {str(self.r.a.mount_path(share_id, ro)) for share_id, ro in s.execute(
                select(ShareMapping.share_id, ShareMapping.read_only)
                .where(ShareMapping.instance_uuid.in_(running)))}
        for pid, argv in _processes():
            args = " ".join(argv)
            if not argv or not argv[0].endswith("virtiofsd") or root not in args:
                continue
            if any(path in args for path in in_use) or _age(pid) < ORPHAN_GRACE:
                continue
            log.warning("repair: killing orphaned virtiofsd %d (%s)", pid, args)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # ---- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        log.info("agent for host %s starting", self.r.host)
        self.repair()
        last_repair = time.monotonic()
        while not self._stop.is_set():
            for uuid in self.dirty_servers():
                self.submit(uuid)
            if time.monotonic() - last_repair > self.config.agent.resync_interval:
                self.repair()
                last_repair = time.monotonic()
            self._wake.wait(self.config.agent.poll_interval)
            self._wake.clear()
        self._pool.shutdown(wait=True)
        log.info("agent stopped")


def _processes() -> list[tuple[int, list[str]]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        out.append((int(entry), [a.decode(errors="replace") for a in raw.split(b"\0") if a]))
    return out


def _age(pid: int) -> float:
    """Seconds since the process started (0 if it is gone)."""
    try:
        started_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
