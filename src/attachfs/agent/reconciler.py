"""Drive one server on this host from its desired state (database) to its actual state (host).

Level-triggered: `reconcile(uuid)` names the server, never the event. It reads the rows, looks
at what the host really has, and does only the missing steps, each idempotent, so running it
again after a crash (kill -9 anywhere) converges to the same place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from attachfs.config import Config
from attachfs.core.model import (
    AttachmentStatus,
    PowerIntent,
    TaskState,
    VmState,
    status_after_power,
)
from attachfs.core.services import finish_action
from attachfs.db.engine import Database
from attachfs.db.tables import InstanceAction, Server, ShareMapping, utcnow
from attachfs.errors import BackendError
from attachfs.metadata.sockets import MetadataSockets
from attachfs.paths import under_root
from attachfs.storage.base import HostConnector, ShareProvider
from attachfs.virt.base import BootImage, GuestShare, GuestSpec, PowerState, VirtDriver

log = logging.getLogger(__name__)
RUNNING_STATES = (AttachmentStatus.ACTIVE, AttachmentStatus.INACTIVE)


@dataclass
class Snapshot:
    """The rows as read at the start of a pass (detached copies; the session is closed)."""

    server: Server
    mappings: list[ShareMapping]


class Reconciler:
    def __init__(self, config: Config, db: Database, provider: ShareProvider,
                 connectors: dict[str, HostConnector], virt: VirtDriver,
                 metadata: MetadataSockets, images: Callable[[], list[BootImage]]) -> None:
        self.config, self.db, self.provider = config, db, provider
        self.connectors, self.virt, self.metadata, self.images = connectors, virt, metadata, images
        self.host = config.agent.host

    # ---- reading -------------------------------------------------------------------------
    def _snapshot(self, uuid: str) -> Snapshot | None:
        with self.db.session() as s:
            server = s.get(Server, uuid)
            if server is None:
                return None
            mappings = list(s.scalars(select(ShareMapping)
                                      .where(ShareMapping.instance_uuid == uuid)
                                      .order_by(ShareMapping.id)))
            return Snapshot(server, mappings)

    def _set_mapping(self, mapping_id: int, status: str | None, fault: str | None = None) -> None:
        """Move one attachment on; status None deletes the row (detach finished)."""
        with self.db.session() as s:
            row = s.get(ShareMapping, mapping_id)
            if row is None:
                return
            if status is None:
                finish_action(s, row.request_id, "Success", None)
                s.delete(row)
                return
            row.status, row.fault_message = status, fault
            if status == AttachmentStatus.ERROR:
                finish_action(s, row.request_id, "Error", fault)
            elif status in RUNNING_STATES:
                finish_action(s, row.request_id, "Success", None)

    def _fail(self, mapping: ShareMapping, step: str, exc: Exception) -> None:
        fault = f"{step} failed: {exc}"
        log.warning("server %s share %s: %s", mapping.instance_uuid, mapping.share_id, fault)
        self._set_mapping(mapping.id, AttachmentStatus.ERROR, fault)

    # ---- host mounts (shared by every guest of this host that uses the share) --------------
    def mount_path(self, share_id: str) -> Path:
        return under_root(self.config.mount_root, share_id)

    def _mount(self, mapping: ShareMapping) -> Path:
        connector = self.connectors.get(mapping.share_proto)
        if connector is None:
            raise BackendError(f"no connector for share protocol {mapping.share_proto}")
        path = self.mount_path(mapping.share_id)
        connector.mount(mapping.export_location, path, read_only=False)
        return path

    def _share_in_use(self, s: Session, share_id: str, except_server: str) -> bool:
        """Does a running guest of this host (other than `except_server`) still use the share?"""
        rows = s.scalars(select(Server.uuid).join(ShareMapping,
                                                  ShareMapping.instance_uuid == Server.uuid)
                         .where(ShareMapping.share_id == share_id, Server.host == self.host,
                                Server.uuid != except_server,
                                ShareMapping.status == AttachmentStatus.ACTIVE))
        return any(self.virt.guest_state(uuid) == PowerState.RUNNING for uuid in rows)

    def _release_mount(self, mapping: ShareMapping) -> None:
        with self.db.session() as s:
            in_use = self._share_in_use(s, mapping.share_id, mapping.instance_uuid)
        connector = self.connectors.get(mapping.share_proto)
        if not in_use and connector is not None:
            connector.unmount(self.mount_path(mapping.share_id))

    def _release_access(self, mapping: ShareMapping) -> None:
        """Revoke the host's rule unless another attachment on this host still needs it."""
        with self.db.session() as s:
            others = s.scalar(select(ShareMapping.id).join(
                Server, Server.uuid == ShareMapping.instance_uuid).where(
                ShareMapping.share_id == mapping.share_id, ShareMapping.id != mapping.id,
                Server.host == self.host).limit(1))
        if others is None:
            self.provider.revoke_access(mapping.share_id, self.host)

    # ---- the pass --------------------------------------------------------------------------
    def reconcile(self, uuid: str) -> None:
        snap = self._snapshot(uuid)
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
        for m in snap.mappings:
            if m.status == AttachmentStatus.ATTACHING:
                self._grant(m)
            elif m.status == AttachmentStatus.DETACHING:
                self._detach(m)
        snap = self._snapshot(uuid)
        assert snap is not None
        if snap.server.vm_state == VmState.ERROR and snap.server.task_state is None:
            return  # a failed server waits for the user (stop, reboot --hard, delete)
        if snap.server.task_state in (TaskState.REBOOTING, TaskState.REBOOTING_HARD):
            hard = snap.server.task_state == TaskState.REBOOTING_HARD
            self.virt.stop_guest(uuid, 0 if hard else self.config.agent.stop_timeout)
        if snap.server.power_intent == PowerIntent.ON:
            self._power_on(snap)
        else:
            self._power_off(snap)

    def _grant(self, m: ShareMapping) -> None:
        try:
            self.provider.grant_access(m.share_id, self.host, "rw",
                                       reason=f"attached to server {m.instance_uuid} by attachfs")
        except BackendError as exc:
            self._fail(m, "granting access", exc)
            return
        self._set_mapping(m.id, AttachmentStatus.INACTIVE)
        log.info("server %s share %s: access granted -> inactive", m.instance_uuid, m.share_id)

    def _detach(self, m: ShareMapping) -> None:
        try:
            if m.tag in self.virt.guest_share_tags(m.instance_uuid):
                # Cold detach only (2.97): the device goes away with the next power off.
                return
            self._release_mount(m)
            self._release_access(m)
        except BackendError as exc:
            self._fail(m, "detaching", exc)
            return
        self._set_mapping(m.id, None)
        log.info("server %s share %s: detached", m.instance_uuid, m.share_id)

    def _power_on(self, snap: Snapshot) -> None:
        server = snap.server
        uuid = server.uuid
        state = self.virt.guest_state(uuid)
        wanted = [m for m in snap.mappings if m.status in RUNNING_STATES]
        if state != PowerState.RUNNING:
            image = next((i for i in self.images() if i.id == server.image_id), None)
            if image is None:
                self._server_done(server, VmState.ERROR, f"image {server.image_id} is not on "
                                  f"host {self.host}")
                return
            shares: list[GuestShare] = []
            for m in wanted:
                try:
                    shares.append(GuestShare(tag=m.tag, host_path=self._mount(m)))
                except BackendError as exc:
                    self._fail(m, "mounting on the host", exc)
            spec = GuestSpec(
                uuid=uuid, name=server.name, vcpus=server.vcpus, memory_mib=server.memory_mib,
                image=image, console_log=self.console_log(uuid),
                metadata_socket=self.metadata.ensure(uuid), shares=tuple(shares))
            try:
                self.virt.start_guest(spec)
            except BackendError as exc:
                self._server_done(server, VmState.ERROR, f"starting the guest failed: {exc}")
                return
            log.info("server %s: guest started with %d share(s)", uuid, len(shares))
        else:
            self.metadata.ensure(uuid)
        present = self.virt.guest_share_tags(uuid)
        for m in wanted:
            if m.tag in present:
                if m.status != AttachmentStatus.ACTIVE:
                    self._set_mapping(m.id, status_after_power(m.status, power_on=True))
            elif self._snapshot_status(m.id) in RUNNING_STATES:
                self._fail(m, "adding the device", BackendError(
                    f"the running guest has no device with tag {m.tag}; stop and start the "
                    "server to add it"))
        self._server_done(server, VmState.ACTIVE, None)

    def _snapshot_status(self, mapping_id: int) -> str | None:
        with self.db.session() as s:
            row = s.get(ShareMapping, mapping_id)
            return row.status if row else None

    def _power_off(self, snap: Snapshot) -> None:
        uuid = snap.server.uuid
        if self.virt.guest_state(uuid) == PowerState.RUNNING:
            self.virt.stop_guest(uuid, self.config.agent.stop_timeout)
            log.info("server %s: guest stopped", uuid)
        for m in snap.mappings:
            if m.status == AttachmentStatus.ACTIVE:
                self._set_mapping(m.id, status_after_power(m.status, power_on=False))
        for m in snap.mappings:
            if m.status in RUNNING_STATES:
                try:
                    self._release_mount(m)
                except BackendError as exc:
                    self._fail(m, "unmounting on the host", exc)
        vm_state = VmState.STOPPED if snap.server.vm_state != VmState.ERROR or \
            snap.server.task_state else snap.server.vm_state
        self._server_done(snap.server, vm_state, None)

    def _delete(self, snap: Snapshot) -> None:
        uuid = snap.server.uuid
        self.virt.stop_guest(uuid, self.config.agent.stop_timeout)
        self.metadata.remove(uuid)
        failures = []
        for m in snap.mappings:
            try:
                self._release_mount(m)
                self._release_access(m)
            except BackendError as exc:
                self._fail(m, "detaching on delete", exc)
                failures.append(f"share {m.share_id}: {exc}")
                continue
            self._set_mapping(m.id, None)
        if failures:  # keep the server and the failed attachments visible: nothing is lost
            self._server_done(snap.server, VmState.ERROR,
                              "delete could not detach " + "; ".join(failures))
            return
        self.console_log(uuid).unlink(missing_ok=True)
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
            row.vm_state = vm_state
            row.task_state = None
            row.observed_generation = server.generation
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
