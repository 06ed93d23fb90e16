"""Drive one server on this host from its desired state (database) to its actual state (host).

Level-triggered: `reconcile(uuid)` names the server, never the event. It reads the rows, looks
at what the host really has, and does only the missing steps, each idempotent, so running it
again after a crash (kill -9 anywhere) converges to the same place.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from attachfs.agent.attachments import HELD, Attachments
from attachfs.config import Config
from attachfs.core.model import (
    AttachmentStatus,
    PowerIntent,
    TaskState,
    VmState,
    status_after_power,
)
from attachfs.db.engine import Database
from attachfs.db.tables import InstanceAction, Server, ShareMapping, utcnow
from attachfs.errors import BackendError
from attachfs.metadata.app import config_drive_files
from attachfs.notify.payloads import instance_action_payload
from attachfs.paths import under_root
from attachfs.virt.base import BootImage, GuestShare, GuestSpec, PowerState
from attachfs.virt.configdrive import build_config_drive

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """The rows as read at the start of a step (detached copies; the session is closed)."""

    server: Server
    mappings: list[ShareMapping]


class Reconciler:
    def __init__(self, config: Config, db: Database, attachments: Attachments,
                 images: Callable[[], list[BootImage]]) -> None:
        self.config, self.db, self.a, self.images = config, db, attachments, images
        self.virt, self.metadata, self.host = attachments.virt, attachments.metadata, config.agent.host

    def snapshot(self, uuid: str) -> Snapshot | None:
        with self.db.read() as s:
            server = s.get(Server, uuid)
            if server is None:
                return None
            mappings = list(s.scalars(select(ShareMapping)
                                      .where(ShareMapping.instance_uuid == uuid)
                                      .order_by(ShareMapping.id)))
            return Snapshot(server, mappings)

    # ---- the pass --------------------------------------------------------------------------
    def reconcile(self, uuid: str) -> None:
        snap = self.snapshot(uuid)
        if snap is None or snap.server.vm_state == VmState.DELETED:
            if self.virt.guest_state(uuid) != PowerState.MISSING:
                log.warning("repair: guest %s has no server row; destroying it", uuid)
                self.virt.stop_guest(uuid, 0)
            self.metadata.remove(uuid)
            return
        server = snap.server
        if server.task_state == TaskState.DELETING:
            self._delete(snap)
            return
        running = self.virt.guest_state(uuid) == PowerState.RUNNING
        changed = False
        for m in snap.mappings:
            if m.status == AttachmentStatus.ATTACHING:
                changed |= self.a.attach(server, m, running)
            elif m.status == AttachmentStatus.DETACHING:
                changed |= self.a.detach(server, m, running)
        snap = self.snapshot(uuid)
        assert snap is not None
        if changed and snap.server.config_drive:
            self._refresh_config_drive(snap, running)
        if snap.server.vm_state == VmState.ERROR and snap.server.task_state is None:
            return  # a failed server waits for the user (stop, reboot --hard, delete)
        if snap.server.task_state in (TaskState.REBOOTING, TaskState.REBOOTING_HARD):
            hard = snap.server.task_state == TaskState.REBOOTING_HARD
            self.virt.stop_guest(uuid, 0 if hard else self.config.agent.stop_timeout)
        if snap.server.power_intent == PowerIntent.ON:
            self._power_on(snap)
        else:
            self._power_off(snap)

    # ---- config drive ----------------------------------------------------------------------
    def config_drive_path(self, uuid: str) -> Path:
        return under_root(self.config.config_drive_dir, f"{uuid}.iso")

    def _refresh_config_drive(self, snap: Snapshot, running: bool) -> Path:
        """Rebuild the ISO from the rows; a running guest gets the new media live."""
        path = self.config_drive_path(snap.server.uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        build_config_drive(path, config_drive_files(snap.server, snap.mappings))
        if running:
            try:
                self.virt.set_config_drive(snap.server.uuid, path)
            except BackendError as exc:
                log.error("server %s: config drive media change failed: %s",
                          snap.server.uuid, exc)
        return path

    # ---- power -------------------------------------------------------------------------------
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

    def _power_on(self, snap: Snapshot) -> None:
        server, uuid = snap.server, snap.server.uuid
        wanted = [m for m in snap.mappings if m.status in HELD]
        booted = self.virt.guest_state(uuid) != PowerState.RUNNING
        if booted:
            if not self._boot(snap, wanted):
                return
        else:
            self.metadata.ensure(uuid)
        self._plug_missing(snap, wanted)
        if booted and (after := self.snapshot(uuid)) is not None:
            self._power_notify(after, "power_on.end")  # with the shares now active
        self._server_done(server, VmState.ACTIVE, None)

    def _boot(self, snap: Snapshot, wanted: list[ShareMapping]) -> bool:
        server, uuid = snap.server, snap.server.uuid
        image = next((i for i in self.images() if i.id == server.image_id), None)
        if image is None:
            self._server_done(server, VmState.ERROR, f"image {server.image_id} is not on host "
                              f"{self.host}")
            return False
        self._power_notify(snap, "power_on.start")
        shares: list[GuestShare] = []
        for m in wanted:
            try:
                shares.append(GuestShare(tag=m.tag, host_path=self.a.mount(m),
                                         read_only=m.read_only))
            except BackendError as exc:
                self.a.fail(server, m, "mounting on the host", exc)
        drive = self._refresh_config_drive(snap, running=False) if server.config_drive else None
        spec = GuestSpec(uuid=uuid, name=server.name, vcpus=server.vcpus,
                         memory_mib=server.memory_mib, image=image,
                         console_log=self.console_log(uuid),
                         metadata_socket=self.metadata.ensure(uuid), shares=tuple(shares),
                         config_drive=drive)
        try:
            self.virt.start_guest(spec)
        except BackendError as exc:
            self._server_done(server, VmState.ERROR, f"starting the guest failed: {exc}")
            return False
        slots = len(shares) + self.virt.free_share_slots(uuid)
        with self.db.session() as s:
            row = s.get(Server, uuid)
            if row is not None:
                row.share_slots = slots
        log.info("server %s: guest started with %d share(s), %d slot(s)", uuid, len(shares),
                 slots)
        return True

    def _plug_missing(self, snap: Snapshot, wanted: list[ShareMapping]) -> None:
        """Every held attachment of a running guest must have its device: add what is missing
        (hot plug) and mark them active."""
        present = self.virt.guest_share_tags(snap.server.uuid)
        for m in wanted:
            if m.tag not in present:
                try:
                    with contextlib.ExitStack() as undo:
                        self.a.plug(snap.server.uuid, m, undo)
                        undo.pop_all()
                except BackendError as exc:
                    self.a.fail(snap.server, m, "adding the device", exc)
                    continue
            if (status := status_after_power(m.status, power_on=True)) != m.status:
                self.a.set_status(m.id, status)

    def _power_off(self, snap: Snapshot) -> None:
        uuid = snap.server.uuid
        if self.virt.guest_state(uuid) == PowerState.RUNNING:
            self._power_notify(snap, "power_off.start")
            self.virt.stop_guest(uuid, self.config.agent.stop_timeout)
            log.info("server %s: guest stopped", uuid)
            self._power_notify(snap, "power_off.end")
        for m in snap.mappings:
            if (status := status_after_power(m.status, power_on=False)) != m.status:
                self.a.set_status(m.id, status)
        for m in snap.mappings:
            if m.status in HELD:
                try:
                    self.a.release_mount(m)
                except BackendError as exc:
                    self.a.fail(snap.server, m, "unmounting on the host", exc)
        keep_error = snap.server.vm_state == VmState.ERROR and not snap.server.task_state
        self._server_done(snap.server, VmState.ERROR if keep_error else VmState.STOPPED, None)

    def _delete(self, snap: Snapshot) -> None:
        uuid = snap.server.uuid
        self.virt.stop_guest(uuid, self.config.agent.stop_timeout)
        self.metadata.remove(uuid)
        failures = []
        for m in snap.mappings:
            try:
                self.a.release_mount(m)
                self.a.release_access(m)
            except BackendError as exc:
                self.a.fail(snap.server, m, "detaching on delete", exc)
                failures.append(f"share {m.share_id}: {exc}")
                continue
            self.a.set_status(m.id, None)
        if failures:  # keep the server and the failed attachments visible: nothing is lost
            self._server_done(snap.server, VmState.ERROR,
                              "delete could not detach " + "; ".join(failures))
            return
        self.console_log(uuid).unlink(missing_ok=True)
        self.config_drive_path(uuid).unlink(missing_ok=True)
        self._server_done(snap.server, VmState.DELETED, None)
        log.info("server %s: deleted", uuid)

    def _server_done(self, server: Server, vm_state: str, fault: str | None) -> None:
        """Record the outcome, unless the API changed desired state meanwhile (then run again)."""
        with self.db.session() as s:
            row = s.get(Server, server.uuid, with_for_update=True)
            if row is None:
                return
            row.fault_message = fault
            if row.generation != server.generation and vm_state != VmState.DELETED:
                return  # a newer request arrived; the next pass handles it
            row.vm_state, row.task_state = vm_state, None
            row.observed_generation = server.generation
            if vm_state != VmState.ACTIVE:
                row.share_slots = None
            if vm_state == VmState.ACTIVE and row.launched_at is None:
                row.launched_at = utcnow()
            result, message = ("Error", fault) if fault else ("Success", None)
            for action in s.scalars(select(InstanceAction).where(
                    InstanceAction.instance_uuid == server.uuid,
                    InstanceAction.finish_time.is_(None),
                    InstanceAction.action.in_(("create", "start", "stop", "reboot", "delete")))):
                action.result, action.finish_time = result, utcnow()
                if message:
                    action.message = message

    def note_guest_stopped(self, uuid: str) -> None:
        """The guest powered itself off (or crashed): record it as the compute API does,
        SHUTOFF with power intent off, rather than booting it again behind the user's back."""
        with self.db.session() as s:
            row = s.get(Server, uuid, with_for_update=True)
            if row is None or row.vm_state != VmState.ACTIVE or row.task_state is not None:
                return
            row.power_intent = PowerIntent.OFF
            row.generation += 1
        log.warning("repair: guest %s is not running although its server is ACTIVE; "
                    "recording it as stopped", uuid)
        self.reconcile(uuid)

    def console_log(self, uuid: str) -> Path:
        return under_root(self.config.console_dir, f"{uuid}.log")
