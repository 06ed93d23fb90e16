"""The agent's hands for one attachment: its row (status, fault, attempts), its notifications,
its host mount path, and the storage calls (grant, mount, revoke).

The reconciler's executor (agent/executor.py) uses these to run a plan's steps; which steps to
run (and whether a host mount or access rule is still needed elsewhere) is the planner's alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from attachfs.config import Config
from attachfs.core.model import AttachmentStatus
from attachfs.core.rules import Transport, host_mount_name
from attachfs.db.engine import Database
from attachfs.db.repositories import SqlActions
from attachfs.db.tables import Server, ShareMapping
from attachfs.errors import BackendError, PermanentError
from attachfs.metadata.sockets import MetadataSockets
from attachfs.notify.base import Notifier
from attachfs.notify.payloads import fault_payload, instance_action_payload
from attachfs.paths import under_root
from attachfs.storage.base import HostConnector, MountTable, RequestContext, ShareProvider
from attachfs.storage.mountinfo import KernelMounts
from attachfs.virt.base import VirtDriver

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
                 mounts: MountTable | None = None,
                 guest_address: Callable[[str], str] | None = None,
                 release_guest: Callable[[str], None] | None = None) -> None:
        self.config, self.db, self.provider = config, db, provider
        self.connectors, self.virt, self.metadata = connectors, virt, metadata
        self.notifier = notifier
        self.mounts: MountTable = mounts if mounts is not None else KernelMounts()
        self.host = config.agent.host
        self._guest_address = guest_address
        self._release_guest = release_guest

    def release_guest(self, server_uuid: str) -> None:
        """The server is deleted: what the host kept for it across stops (its NFS address)."""
        if self._release_guest is not None:
            self._release_guest(server_uuid)

    def grantee(self, m: ShareMapping) -> str:
        """Who an attachment's access rule is for: this host, which mounts the share; for
        transport direct the guest itself (the address its NFS connections come from)."""
        if m.transport != Transport.DIRECT:
            return self.host
        if self._guest_address is None:
            raise PermanentError("transport direct needs this host's NFS server ([agent] "
                                 "share_transports lists no nfs)")
        return self._guest_address(m.instance_uuid)

    # ---- rows --------------------------------------------------------------------------------
    def set_status(self, mapping_id: int, status: str | None, fault: str | None = None,
                   note: str | None = None, expect: str | None = None) -> None:
        """Move one attachment on; status None deletes the row (detach finished). `expect`:
        the status the agent acted on; when a request changed it meanwhile (a DELETE while
        attaching) nothing is written: the next pass works from the new desired state."""
        with self.db.session() as s:
            row = s.get(ShareMapping, mapping_id, with_for_update=True)
            if row is None or (expect is not None and row.status != expect):
                return
            if status is None:
                SqlActions(s).finish_request(row.request_id, "Success", note)
                s.delete(row)
                return
            row.status, row.fault_message = status, fault
            row.attempts, row.last_error = 0, fault
            row.requester_token = None  # used for this step; never kept longer
            if status == AttachmentStatus.ERROR:
                SqlActions(s).finish_request(row.request_id, "Error", fault)
            elif status in HELD:
                SqlActions(s).finish_request(row.request_id, "Success", note)

    def fail(self, server: Server, m: ShareMapping, step: str, exc: Exception,
             event: str | None = None) -> None:
        fault = f"{step} failed: {exc}"
        log.warning("server %s share %s: %s", m.instance_uuid, m.share_id, fault)
        self.set_status(m.id, AttachmentStatus.ERROR, fault, expect=m.status)
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
        credentials = (self.provider.host_credentials(m.share_id, self.config.agent.host)
                       if connector.needs_credentials else None)
        connector.mount(m.export_location, path, read_only=m.read_only, credentials=credentials)
        return path

    def unmount(self, target: Path) -> None:
        """Unmount a host mount (every layer), then let each connector release what no host
        mount uses any more (CephFS: the share's ceph-fuse mount and key)."""
        self.mounts.unmount(target)
        self.release_unused()

    def release_unused(self) -> list[str]:
        """What connectors released (also after a crash between the two unmounts)."""
        return [x for c in self.connectors.values() for x in c.release_unused()]

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
