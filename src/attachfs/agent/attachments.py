"""The agent's hands for one attachment: its row (status, fault, attempts), its notifications,
its host mount path, and the storage calls (grant, mount, revoke).

The reconciler's executor (agent/executor.py) uses these to run a plan's steps. `attach` and
`detach` are one-shot helpers for a *stopped* server (tools, the notification test); the agent
itself never calls them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from attachfs.config import Config
from attachfs.core.model import AttachmentStatus
from attachfs.core.rules import host_mount_name
from attachfs.core.services import finish_action
from attachfs.db.engine import Database
from attachfs.db.tables import Server, ShareMapping
from attachfs.errors import BackendError
from attachfs.metadata.sockets import MetadataSockets
from attachfs.notify.base import Notifier
from attachfs.notify.payloads import fault_payload, instance_action_payload
from attachfs.paths import under_root
from attachfs.storage.base import HostConnector, MountTable, RequestContext, ShareProvider
from attachfs.storage.mountinfo import KernelMounts
from attachfs.virt.base import GuestShare, PowerState, VirtDriver

log = logging.getLogger(__name__)
HELD = (AttachmentStatus.ACTIVE, AttachmentStatus.INACTIVE)


def requester(m: ShareMapping) -> RequestContext:
    """The user whose request moved this attachment (their token goes to the share service
    along with the service's own, so its records name the user)."""
    return RequestContext(user_id=m.user_id, project_id=m.project_id,
                          auth_token=m.requester_token, request_id=m.request_id)


class Attachments:
    def __init__(self, config: Config, db: Database, provider: ShareProvider,
                 connectors: dict[str, HostConnector], virt: VirtDriver,
                 metadata: MetadataSockets, notifier: Notifier,
                 mounts: MountTable | None = None) -> None:
        self.config, self.db, self.provider = config, db, provider
        self.connectors, self.virt, self.metadata = connectors, virt, metadata
        self.notifier = notifier
        self.mounts: MountTable = mounts if mounts is not None else KernelMounts()
        self.host = config.agent.host

    # ---- rows --------------------------------------------------------------------------------
    def set_status(self, mapping_id: int, status: str | None, fault: str | None = None,
                   note: str | None = None) -> None:
        """Move one attachment on; status None deletes the row (detach finished)."""
        with self.db.session() as s:
            row = s.get(ShareMapping, mapping_id)
            if row is None:
                return
            if status is None:
                finish_action(s, row.request_id, "Success", note)
                s.delete(row)
                return
            row.status, row.fault_message = status, fault
            row.attempts, row.last_error = 0, fault
            row.requester_token = None  # used for this step; never kept longer
            if status == AttachmentStatus.ERROR:
                finish_action(s, row.request_id, "Error", fault)
            elif status in HELD:
                finish_action(s, row.request_id, "Success", note)

    def fail(self, server: Server, m: ShareMapping, step: str, exc: Exception,
             event: str | None = None) -> None:
        fault = f"{step} failed: {exc}"
        log.warning("server %s share %s: %s", m.instance_uuid, m.share_id, fault)
        self.set_status(m.id, AttachmentStatus.ERROR, fault)
        if event:
            self._notify(server, m, f"{event}.error", fault=fault_payload(fault, step))

    def _notify(self, server: Server, m: ShareMapping, event_type: str,
                fault: dict[str, object] | None = None) -> None:
        payload = instance_action_payload(
            server, user_id=m.user_id, project_id=m.project_id, request_id=m.request_id,
            fault=fault, share_id=m.share_id)
        self.notifier.notify(f"instance.{event_type}", payload,
                             "ERROR" if event_type.endswith(".error") else "INFO")

    # ---- host mounts: one per (share, read-only) on this host, shared by its guests ------------
    def mount_path(self, share_id: str, read_only: bool = False) -> Path:
        return under_root(self.config.mount_root, host_mount_name(share_id, read_only))

    def mount(self, m: ShareMapping) -> Path:
        connector = self.connectors.get(m.share_proto)
        if connector is None:
            raise BackendError(f"no connector for share protocol {m.share_proto}")
        path = self.mount_path(m.share_id, m.read_only)
        # Read-only is enforced here, on the host: a read-only bind mount refuses every write
        # (virtio-fs alone does not enforce it, and libvirt refuses <readonly/> for virtiofs).
        connector.mount(m.export_location, path, read_only=m.read_only)
        return path

    def record_retry(self, mapping_id: int, step: str, exc: Exception, retry_in: float) -> int:
        """A temporary failure: count it and show it (status unchanged). Returns the count."""
        with self.db.session() as s:
            row = s.get(ShareMapping, mapping_id)
            if row is None:
                return 0
            row.attempts = (row.attempts or 0) + 1
            row.last_error = f"{step} failed: {exc}"
            row.fault_message = (f"{row.last_error} (attempt {row.attempts}; retrying in "
                                 f"{retry_in:.0f}s)")
            return row.attempts

    def clear_retry(self, mapping_id: int) -> None:
        with self.db.session() as s:
            row = s.get(ShareMapping, mapping_id)
            if row is not None and row.status != AttachmentStatus.ERROR:
                row.attempts, row.last_error, row.fault_message = 0, None, None

    def mount_needed(self, m: ShareMapping) -> bool:
        """Does a running guest of this host, other than m's, still use m's host mount?"""
        with self.db.read() as s:
            users = list(s.scalars(
                select(Server.uuid).join(ShareMapping, ShareMapping.instance_uuid == Server.uuid)
                .where(ShareMapping.share_id == m.share_id, ShareMapping.read_only == m.read_only,
                       Server.host == self.host, Server.uuid != m.instance_uuid,
                       ShareMapping.status == AttachmentStatus.ACTIVE)))
        return any(self.virt.guest_state(uuid) == PowerState.RUNNING for uuid in users)

    def release_mount(self, m: ShareMapping) -> None:
        connector = self.connectors.get(m.share_proto)
        if connector is not None and not self.mount_needed(m):
            connector.unmount(self.mount_path(m.share_id, m.read_only))

    def release_access(self, m: ShareMapping) -> None:
        """Revoke the host's rule unless another attachment on this host still needs it."""
        with self.db.read() as s:
            others = s.scalar(select(ShareMapping.id).join(
                Server, Server.uuid == ShareMapping.instance_uuid).where(
                ShareMapping.share_id == m.share_id, ShareMapping.id != m.id,
                Server.host == self.host).limit(1))
        if others is None:
            self.provider.revoke_access(m.share_id, self.host, requester(m))

    # ---- attach ------------------------------------------------------------------------------
    def attach(self, server: Server, m: ShareMapping, running: bool) -> bool:
        """attaching -> inactive (stopped) or active (running: hot attach). True if done."""
        self._notify(server, m, "share_attach.start")
        try:
            with contextlib.ExitStack() as undo:
                self.provider.grant_access(m.share_id, self.host, "ro" if m.read_only else "rw",
                                           reason=f"attached to server {m.instance_uuid}",
                                           requester=requester(m))
                undo.callback(self._quietly, self.release_access, m)
                if running:
                    self.plug(server.uuid, m, undo)
                undo.pop_all()
        except BackendError as exc:
            self.fail(server, m, "attaching", exc, event="share_attach")
            return False
        status = AttachmentStatus.ACTIVE if running else AttachmentStatus.INACTIVE
        self.set_status(m.id, status)
        log.info("server %s share %s: attached -> %s", m.instance_uuid, m.share_id, status)
        self._notify(server, m, "share_attach.end")
        return True

    def plug(self, uuid: str, m: ShareMapping, undo: contextlib.ExitStack) -> None:
        """Host mount + live device (hot plug), each with its undo."""
        path = self.mount(m)
        undo.callback(self._quietly, self.release_mount, m)
        self.virt.attach_share(uuid, GuestShare(tag=m.tag, host_path=path,
                                                read_only=m.read_only))
        undo.callback(self._quietly, self.virt.detach_share, uuid, m.tag, 30.0)

    @staticmethod
    def _quietly(fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except BackendError as exc:
            log.error("undo step %s failed: %s", getattr(fn, "__name__", fn), exc)

    # ---- detach ------------------------------------------------------------------------------
    def detach(self, server: Server, m: ShareMapping, running: bool) -> bool:
        """detaching -> row gone, in one go (a running guest loses the device at once; the
        agent's own hot detach waits for the guest without blocking, see core/planner.py)."""
        self._notify(server, m, "share_detach.start")
        try:
            if running:
                self.virt.detach_share(server.uuid, m.tag, 30.0)
            self.release_mount(m)
            self.release_access(m)
        except BackendError as exc:
            self.fail(server, m, "detaching", exc, event="share_detach")
            return False
        self._notify(server, m, "share_detach.end")
        self.set_status(m.id, None)
        log.info("server %s share %s: detached", m.instance_uuid, m.share_id)
        return True
