"""Server-level steps: the guest (start, stop), its metadata socket and config drive, host
mounts and devices no attachment claims, and the server row's outcome (`finish`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from attachfs.agent.attachments import Attachments
from attachfs.agent.config_drives import ConfigDrives
from attachfs.agent.executor import Outcome
from attachfs.agent.state import PassMemory, Snapshot, read_snapshot
from attachfs.config import Config
from attachfs.core import moves
from attachfs.core.context import RequestContext
from attachfs.core.flavors import server_kind
from attachfs.core.model import PowerIntent, VmState
from attachfs.core.moves import IN_PROGRESS, failed, handed_over
from attachfs.core.reconcile_model import Desired, Phase
from attachfs.core.steps import Op, Operation, Step
from attachfs.db import doorbell
from attachfs.db.engine import Database
from attachfs.db.tables import InstanceAction, Migration, Server, utcnow
from attachfs.errors import PermanentError
from attachfs.notify.payloads import instance_action_payload
from attachfs.paths import under_root
from attachfs.virt.base import BootImage, GuestShare, GuestSpec

log = logging.getLogger(__name__)


class ServerSteps:
    def __init__(self, config: Config, db: Database, attachments: Attachments,
                 images: Callable[[], list[BootImage]], memory: PassMemory,
                 drives: ConfigDrives) -> None:
        self.config, self.db, self.a, self.images = config, db, attachments, images
        self.drives = drives
        self.virt, self.metadata = attachments.virt, attachments.metadata
        self.memory = memory

    def run(self, step: Step, desired: Desired, snap: Snapshot | None, out: Outcome) -> bool:
        """Run one server step; False while it is under way outside (a fence the share
        service is still applying): the pass holds there and looks again soon."""
        uuid = desired.uuid
        match step.op:
            case Op.FENCE:
                assert snap is not None
                return self._fence(step, snap)
            case Op.FENCED:
                assert snap is not None
                self._fenced(step, snap)
            case Op.FORGET:
                self.drives.remove(uuid)
                self.a.release_guest(uuid)
            case Op.HANDOFF:
                assert snap is not None
                self._hand_over(step, snap)
            case Op.METADATA:
                self.metadata.ensure(uuid)
            case Op.REMOVE_METADATA:
                self.metadata.remove(uuid)
            case Op.CONFIG_DRIVE:
                if (now := self._snapshot(uuid)) is not None:  # the rows as this pass left them
                    self.drives.refresh(now, live=True)
            case Op.START_GUEST:
                assert snap is not None
                self._start(desired, snap, out)
            case Op.STOP_GUEST:
                self._stop(step, desired, snap)
            case Op.UNMOUNT:
                self.a.unmount(under_root(self.config.mount_root, Path(step.path).name))
            case Op.UNPLUG:
                log.warning("server %s: removing device %s: no attachment claims it", uuid,
                            step.tag)
                self.virt.request_detach(uuid, step.tag)
                self.unplug_asked(uuid, step.tag)
            case Op.FINISH:
                self._finish(step, desired, snap, out)
            case _:
                raise PermanentError(f"step {step.name} needs an attachment")
        return True

    # ---- guest -------------------------------------------------------------------------------
    def _start(self, desired: Desired, snap: Snapshot, out: Outcome) -> None:
        server, uuid = snap.server, desired.uuid
        image = next((i for i in self.images() if i.id == server.image_id), None)
        if image is None:
            raise PermanentError(f"image {server.image_id} is not on host {self.a.host}")
        self._power_notify(snap, "power_on.start")
        shares = tuple(GuestShare(tag=s.tag, host_path=Path(s.path), read_only=s.read_only,
                                  transport=s.transport, target=s.target,
                                  share_id=s.share_id)
                       for s in desired.shares
                       if s.phase in (Phase.REQUESTED, Phase.HELD)
                       and s.id not in out.failed and s.id not in out.pending)
        drive = self.drives.refresh(self._snapshot(uuid) or snap, live=False)
        spec = GuestSpec(uuid=uuid, name=server.name, vcpus=server.vcpus,
                         memory_mib=server.memory_mib, image=image,
                         console_log=self.console_log(uuid),
                         metadata_socket=self.metadata.ensure(uuid), shares=shares,
                         config_drive=drive, generation=server.generation,
                         kind=server_kind(server.flavor_id))
        self.virt.start_guest(spec)
        slots = len(shares) + self.virt.free_share_slots(uuid)
        with self.db.session() as s:
            row = s.get(Server, uuid)
            if row is not None:
                row.share_slots = slots
        log.info("server %s: guest started with %d share(s), %d slot(s)", uuid, len(shares),
                 slots)

    def _stop(self, step: Step, desired: Desired, snap: Snapshot | None) -> None:
        """Press the power button and return (the planner looks again), or, forced, stop the
        guest now. power_off.start goes out once; power_off.end when the stop is recorded."""
        uuid = desired.uuid
        if step.operation == Operation.POWER_OFF and snap is not None \
                and uuid not in self.memory.power_off_notified:
            self.memory.power_off_notified.add(uuid)
            self._power_notify(snap, "power_off.start")
        if step.force:
            self.virt.stop_guest(uuid, 0)
            log.info("server %s: guest stopped (%s)", uuid, step.operation)
            return
        now = time.monotonic()
        first = self.memory.shutdown_asked.get(uuid, (now, now))[0]
        self.memory.shutdown_asked[uuid] = (first, now)
        self.virt.request_shutdown(uuid)
        log.info("server %s: power button pressed (%s)", uuid, step.operation)

    def unplug_asked(self, uuid: str, tag: str) -> None:
        self.memory.unplugging[(uuid, tag)] = time.monotonic()

    def fail(self, snap: Snapshot | None, fault: str) -> None:
        if snap is not None:
            self._record_server(snap.server, VmState.ERROR, fault)

    # ---- moves (core/moves.py) -----------------------------------------------------------------
    def _fence(self, step: Step, snap: Snapshot) -> bool:
        """The failed host's rule on one share goes (True once it is gone)."""
        server = snap.server
        who = RequestContext(user_id=server.user_id, project_id=server.project_id)
        gone = self.a.provider.revoke_access(step.share_id, step.host, who)
        if gone:
            log.warning("server %s: host %s fenced off share %s", server.uuid, step.host,
                        step.share_id)
        return gone

    def _fenced(self, step: Step, snap: Snapshot) -> None:
        """Record the fence on the migration and in the audit trail, in one transaction."""
        shares = sorted({m.share_id for m in snap.mappings})
        with self.db.session() as s:
            migration = s.get(Migration, snap.migration.id) if snap.migration else None
            if migration is None:
                return
            migration.fenced = True
            action = s.scalar(select(InstanceAction).where(
                InstanceAction.instance_uuid == snap.server.uuid,
                InstanceAction.action == "evacuate", InstanceAction.finish_time.is_(None))
                .order_by(InstanceAction.id.desc()).limit(1))
            what = (f"its access to share(s) {', '.join(shares)} revoked on the storage side"
                    if shares else "no shares to revoke")
            if action is not None:
                action.message = (f"{action.message or ''}; host {step.host} fenced: "
                                  f"{what}").lstrip("; ")
        log.warning("server %s: host %s fenced (%s); rebuilding on %s", snap.server.uuid,
                    step.host, what, self.a.host)

    def _hand_over(self, step: Step, snap: Snapshot) -> None:
        """The server row now names the next host, whose agent takes it from here (rung)."""
        with self.db.session() as s:
            row = s.get(Server, snap.server.uuid, with_for_update=True)
            migration = s.get(Migration, snap.migration.id) if snap.migration else None
            if row is None or migration is None or row.host != self.a.host:
                return
            row.task_state, migration.status = handed_over(migration.migration_type,
                                                           migration.status)
            row.host, row.share_slots = step.host, None
            row.generation += 1
        doorbell.ring(self.db, step.host)
        log.info("server %s: handed over to host %s", snap.server.uuid, step.host)

    def fail_move(self, snap: Snapshot | None, fault: str) -> None:
        """A move that cannot go on (a fence the storage refuses): the server is ERROR with
        the reason, the migration failed; the admin decides (evacuate again, delete)."""
        if snap is None:
            return
        with self.db.session() as s:
            migration = s.get(Migration, snap.migration.id) if snap.migration else None
            if migration is not None:
                migration.status = failed(migration.migration_type)
        self._record_server(snap.server, VmState.ERROR, fault)

    # ---- outcome -----------------------------------------------------------------------------
    def _finish(self, step: Step, desired: Desired, snap: Snapshot | None, out: Outcome) -> None:
        if snap is None:
            return
        uuid = desired.uuid
        if step.vm_state == VmState.DELETED:
            if out.delete_failures:  # keep the server and the failed attachments visible
                self._record_server(snap.server, VmState.ERROR,
                                    "delete could not detach " + "; ".join(out.delete_failures))
                return
            self.console_log(uuid).unlink(missing_ok=True)
            self.drives.remove(uuid)
            self.a.release_guest(uuid)
            log.info("server %s: deleted", uuid)
        elif step.force:
            log.warning("server %s: its guest is not running although the server is ACTIVE; "
                        "recording it as stopped", uuid)
        self._record_server(snap.server, step.vm_state, None, stopped_itself=step.force,
                            arrived=desired.move is not None)
        if uuid in self.memory.power_off_notified and step.vm_state == VmState.STOPPED:
            self.memory.power_off_notified.discard(uuid)
            self._power_notify(snap, "power_off.end")
        if any(st.op == Op.START_GUEST for st in out.done):
            after = self._snapshot(uuid)
            if after is not None:
                self._power_notify(after, "power_on.end")  # with the shares now active

    def _record_server(self, server: Server, vm_state: str, fault: str | None,
                       stopped_itself: bool = False, arrived: bool = False) -> None:
        """Record the outcome, unless the API changed desired state meanwhile (then run again).
        `arrived`: a move ends here (its migration's status moves on in the same write)."""
        with self.db.session() as s:
            row = s.get(Server, server.uuid, with_for_update=True)
            if row is None:
                return
            row.fault_message = fault
            if row.generation != server.generation and vm_state != VmState.DELETED:
                return  # a newer request arrived; the next pass handles it
            if arrived:
                migration = s.scalar(select(Migration).where(
                    Migration.instance_uuid == server.uuid).order_by(Migration.id.desc())
                    .limit(1))
                if migration is not None and migration.status in IN_PROGRESS:
                    migration.status = moves.arrived(migration.migration_type,
                                                     migration.status)
            if stopped_itself:
                row.power_intent = PowerIntent.OFF
            row.vm_state, row.task_state = vm_state, None
            row.observed_generation = server.generation
            row.attempts, row.last_error = 0, None
            if vm_state != VmState.ACTIVE:
                row.share_slots = None
            elif row.share_slots is None:  # a crash between boot and here lost the count
                devices = len(self.virt.guest_devices(server.uuid))
                row.share_slots = devices + self.virt.free_share_slots(server.uuid)
            if vm_state == VmState.ACTIVE and row.launched_at is None:
                row.launched_at = utcnow()
            self._finish_actions(s, server.uuid, fault)

    @staticmethod
    def _finish_actions(s: object, uuid: str, fault: str | None) -> None:
        from sqlalchemy.orm import Session

        assert isinstance(s, Session)
        result = "Error" if fault else "Success"
        for action in s.scalars(select(InstanceAction).where(
                InstanceAction.instance_uuid == uuid, InstanceAction.finish_time.is_(None),
                InstanceAction.action.in_(("create", "start", "stop", "reboot", "delete",
                                           "evacuate", "migrate", "revertResize")))):
            action.result, action.finish_time = result, utcnow()
            if fault:
                action.message = fault

    def record_attempt(self, uuid: str, error: str) -> None:
        """A pass of this server failed: count it and keep why, on the server row."""
        with self.db.session() as s:
            row = s.get(Server, uuid)
            if row is not None:
                row.attempts = (row.attempts or 0) + 1
                row.last_error = error

    # ---- helpers -----------------------------------------------------------------------------
    def _snapshot(self, uuid: str) -> Snapshot | None:
        with self.db.read() as s:
            return read_snapshot(s, uuid)

    def _power_notify(self, snap: Snapshot, event: str) -> None:
        """instance.power_on/power_off, naming the user whose request it was."""
        with self.db.read() as s:
            action = s.scalar(select(InstanceAction).where(
                InstanceAction.instance_uuid == snap.server.uuid,
                InstanceAction.finish_time.is_(None)).order_by(InstanceAction.id.desc()).limit(1))
        shares = snap.mappings if self.config.notifications.include_share_mapping else None
        payload = instance_action_payload(
            snap.server, user_id=action.user_id if action else snap.server.user_id,
            project_id=action.project_id if action else snap.server.project_id,
            request_id=action.request_id if action else None, fault=None, shares=shares)
        self.a.notifier.notify(f"instance.{event}", payload)

    def console_log(self, uuid: str) -> Path:
        return under_root(self.config.console_dir, f"{uuid}.log")
