"""One pass for one server: desired (rows) + actual (drivers) -> plan -> execute -> result.

Level-triggered, as controller-runtime's reconcile: `reconcile(uuid)` names the server, never
the event, and returns what the runner should do next (`PassResult`): nothing (done), look
again after a delay (waiting for the guest or a device), or retry with backoff (a temporary
error). Nothing here sleeps on the outside world.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select

from attachfs.agent.attachments import Attachments
from attachfs.agent.config_drives import ConfigDrives
from attachfs.agent.executor import Executor, backoff, pending_delay
from attachfs.agent.server import ServerSteps
from attachfs.agent.state import (
    PassMemory,
    Snapshot,
    access_due,
    desired_of,
    observe,
    observe_access,
    read_snapshot,
)
from attachfs.config import Config
from attachfs.core.model import AttachmentStatus, VmState
from attachfs.core.planner import host_plan, plan
from attachfs.core.reconcile_model import Actual, Desired, Phase, Plan, Power, phase_of
from attachfs.core.steps import Op
from attachfs.db.engine import Database
from attachfs.db.tables import Server, ShareMapping
from attachfs.errors import BackendError
from attachfs.virt.base import BootImage

log = logging.getLogger(__name__)
CONFIRM_STOPPED = 5.0  # s a guest must stay away before its server is recorded as stopped


class Next(enum.StrEnum):
    DONE = "done"
    REQUEUE = "requeue"  # look again after `after` s: waiting on the guest or a device
    RETRY = "retry"  # a temporary error: again after `after` s (the runner backs off)


@dataclass(frozen=True)
class PassResult:
    next: Next
    after: float = 0.0
    why: str = ""

    @classmethod
    def done(cls) -> PassResult:
        return cls(Next.DONE)


class Reconciler:
    def __init__(self, config: Config, db: Database, attachments: Attachments,
                 images: Callable[[], list[BootImage]], crash_after: str | None = None) -> None:
        self.config, self.db, self.a, self.images = config, db, attachments, images
        self.virt, self.metadata, self.host = attachments.virt, attachments.metadata, config.agent.host
        self.memory = PassMemory(release_started={}, unplugging={},
                                 missing_since={})
        self.drives = ConfigDrives(config, self.virt)
        self.server_steps = ServerSteps(config, db, attachments, images, self.memory,
                                        self.drives)
        self.executor = Executor(attachments, self.server_steps, crash_after)

    def mount_path(self, share_id: str, read_only: bool) -> str:
        return str(self.a.mount_path(share_id, read_only))

    def snapshot(self, uuid: str) -> Snapshot | None:
        with self.db.read() as s:
            return read_snapshot(s, uuid)

    def _desired_and_actual(self, uuid: str) -> tuple[Snapshot | None, Desired, Actual]:
        """The rows (desired) and what the host has (actual) for one server."""
        started = self.memory.release_started  # shared by the workers: looked up, not iterated
        with self.db.read() as s:
            snap = read_snapshot(s, uuid)
            ids = [m.id for m in snap.mappings] if snap is not None else []
            waiting = {i for i in ids if i in started}
            desired = desired_of(s, snap, uuid, self.mount_path, self.memory,
                                 self.config.agent, self.config.containers.mount_layout)
        if any(i in started and i not in waiting for i in ids):
            # a detach starts: the guest is told now rather than after this pass (its report
            # counts from the moment just recorded; the runner rings after the pass as well)
            self.metadata.changed(uuid)
        actual = observe(uuid, self.virt, self.metadata, self.a.mounts, self.config.mount_root,
                         self.memory)
        if access_due(desired, self.memory, self.config.agent.access_check_interval,
                      actual.now):
            actual = replace(actual, access=observe_access(self.a.provider, self.host, desired))
        if snap is not None and desired.config_drive and desired.power != Power.GONE:
            desired = replace(desired, drive_digest=self.drives.wanted(snap))
            actual = replace(actual, drive_digest=self.drives.held(snap.server))
        return snap, desired, actual

    def plan_for(self, uuid: str) -> tuple[Plan, Snapshot | None, object]:
        """Desired and actual, and the plan between them (also what `attachfs` tools show)."""
        snap, desired, actual = self._desired_and_actual(uuid)
        return plan(desired, actual), snap, desired

    def reconcile(self, uuid: str) -> PassResult:
        snap, desired, actual = self._desired_and_actual(uuid)
        if access_due(desired, self.memory, self.config.agent.access_check_interval,
                      actual.now):
            self.memory.access_checked[uuid] = actual.now  # looked (or failed to): not again
        if self._unconfirmed_stop(desired, actual):
            return PassResult(Next.REQUEUE, CONFIRM_STOPPED / 2, "confirming the guest stopped")
        the_plan = plan(desired, actual)
        if the_plan.steps:
            log.info("server %s: %s", uuid, ", ".join(map(str, the_plan.steps)))
        out = self.executor.run(the_plan, desired, snap)
        self._forget_released(snap)
        for step in out.done:
            if step.op == Op.RECORD and step.status is None and step.attachment is not None:
                self.memory.release_started.pop(step.attachment, None)
        if out.temporary is not None:
            after = out.retry_after or backoff((snap.server.attempts if snap else 0) + 1,
                                                self.config.agent)
            if out.server_failed and snap is not None:
                self.server_steps.record_attempt(uuid, out.temporary)
            return PassResult(Next.RETRY, after, out.temporary)
        if out.pending_why is not None:
            looks = self.memory.pending_looks.get(uuid, 0)
            self.memory.pending_looks[uuid] = looks + 1
            delay = pending_delay(looks)
            return PassResult(Next.REQUEUE, min(delay, the_plan.wait or delay), out.pending_why)
        self.memory.pending_looks.pop(uuid, None)
        if the_plan.wait is not None:
            return PassResult(Next.REQUEUE, the_plan.wait, the_plan.waiting_for)
        if snap is None:
            self.memory.forget(uuid)
        return PassResult.done()

    def _unconfirmed_stop(self, desired: Desired, actual: Actual) -> bool:
        """A guest of an ACTIVE server not seen running is recorded as stopped by itself only
        when it stays away CONFIRM_STOPPED s: a hypervisor that is restarting may not list it
        for a moment, and recording a running guest as stopped would stop it."""
        suspect = (desired.settled and desired.vm_state == VmState.ACTIVE
                   and desired.power == Power.ON and actual.power != "running")
        if not suspect:
            self.memory.missing_since.pop(desired.uuid, None)
            return False
        since = self.memory.missing_since.setdefault(desired.uuid, actual.now)
        return actual.now - since < CONFIRM_STOPPED

    def _forget_released(self, snap: Snapshot | None) -> None:
        """This server's attachments that are no longer detaching (or gone) need no clock."""
        if snap is None:
            return
        for m in snap.mappings:
            if phase_of(m.status) != Phase.RELEASE:
                self.memory.release_started.pop(m.id, None)

    def note_stalled(self, uuid: str, error: str, attempts: int, retry_in: float) -> None:
        """Passes of this server keep failing: say so on the server and on its attachments in
        flight (they would otherwise sit in `attaching` without a word)."""
        message = (f"the agent cannot make progress: {error} (attempt {attempts}; retrying in "
                   f"{retry_in:.0f}s)")
        try:
            with self.db.session() as s:
                row = s.get(Server, uuid)
                if row is None:
                    return
                row.attempts, row.last_error = attempts, error
                for m in s.scalars(select(ShareMapping).where(
                        ShareMapping.instance_uuid == uuid,
                        ShareMapping.status.in_((AttachmentStatus.ATTACHING,
                                                 AttachmentStatus.DETACHING)))):
                    m.attempts, m.last_error, m.fault_message = attempts, error, message
        except Exception as exc:  # noqa: BLE001 - the database may be what is failing
            log.debug("cannot record the stall of %s: %s", uuid, exc)

    def note_waiting(self, uuid: str, why: str, seconds: float) -> None:
        """This server's passes have waited `seconds` for `why`: its attachments in flight that
        say nothing yet say that (the status change that ends the wait clears it)."""
        message = f"still waiting after {seconds:.0f}s for {why}"
        try:
            with self.db.session() as s:
                for m in s.scalars(select(ShareMapping).where(
                        ShareMapping.instance_uuid == uuid,
                        ShareMapping.fault_message.is_(None),
                        ShareMapping.status.in_((AttachmentStatus.ATTACHING,
                                                 AttachmentStatus.DETACHING)))):
                    m.fault_message = message
        except Exception as exc:  # noqa: BLE001 - said again on the next streak
            log.debug("cannot record the wait of %s: %s", uuid, exc)

    # ---- the host as a whole -------------------------------------------------------------------
    def needed_mounts(self) -> set[str]:
        """Host mounts some server of this host may use now (its guest runs or is to run)."""
        with self.db.read() as s:
            rows = s.execute(select(ShareMapping.share_id, ShareMapping.read_only).join(
                Server, Server.uuid == ShareMapping.instance_uuid).where(
                Server.host == self.host, ShareMapping.status != AttachmentStatus.ERROR,
                Server.vm_state.in_((VmState.ACTIVE, VmState.BUILDING, VmState.ERROR))))
            return {self.mount_path(share_id, ro) for share_id, ro in rows}

    def reconcile_host(self) -> PassResult:
        """Host mounts under the mount root that no server of this host uses are removed."""
        root = Path(self.config.mount_root)
        mounted = [str(p) for p in self.a.mounts.table(root) if p.parent == root]
        in_use = self.needed_mounts()
        for uuid, state in self.virt.list_guests().items():
            if state == "running":
                in_use |= {str(p) for p in self.virt.guest_devices(uuid).values()}
        failed = None
        try:
            for released in self.a.release_unused():
                log.warning("repair: released %s, no host mount uses it", released)
        except BackendError as exc:
            log.error("repair: cannot release a connector's mount: %s", exc)
            failed = str(exc)
        for step in host_plan(in_use, mounted).steps:
            log.warning("repair: unmounting %s, no server uses it", step.path)
            try:
                self.a.unmount(Path(step.path))
            except BackendError as exc:
                log.error("repair: cannot unmount %s: %s", step.path, exc)
                failed = str(exc)
        return PassResult(Next.RETRY, 30.0, failed) if failed else PassResult.done()
