"""The built-in share provider: a share is a filesystem of its size under the storage root.

Shares and their access rules live in attachfs's own database (tables `shares`,
`share_access`), so the built-in provider behaves like a share service: a host must be granted
access before it mounts, and a granted rule is locked so the share cannot be deleted under a
guest. Each share's data is an ext4 image of exactly its size (storage/volumes.py), mounted at
`<root>/<id>`. The export location is `local:<directory>`; storage/bind.py mounts it.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from sqlalchemy import select

from attachfs.core.guest_mount import share_nfs_export
from attachfs.core.model import share_visible
from attachfs.core.rules import BUILTIN_PROTOCOL, ShareProtocol
from attachfs.db.engine import Database
from attachfs.db.tables import Share, ShareAccess
from attachfs.errors import BadRequest, NotFound, PermanentError
from attachfs.storage.base import HostCredentials, RequestContext, ShareInfo
from attachfs.storage.volumes import GIB, ShareVolumes

EXPORT_PREFIX = "local:"


def export_location(storage_root: Path, share_id: str) -> str:
    return EXPORT_PREFIX + str(storage_root / share_id)


def share_info(share: Share, storage_root: Path) -> ShareInfo:
    """What the core sees: always a directory of this host to bind (protocol LOCAL for the
    host's connector), and for an NFS share also its NFS export (transport direct)."""
    return ShareInfo(
        id=share.uuid,
        name=share.name,
        status=share.status,
        protocol=BUILTIN_PROTOCOL,
        export_locations=(export_location(storage_root, share.uuid),),
        project_id=share.project_id,
        size_gib=share.size_gib,
        scope=share.scope,
        mount_point=share.mount_point,
        nfs_export=share_nfs_export(share.uuid) if share.protocol == ShareProtocol.NFS else "",
    )


class LocalShareProvider:
    name = "local"

    def __init__(self, db: Database, storage_root: Path, max_share_gib: int = 1024) -> None:
        self.db = db
        self.storage_root = storage_root
        self.max_share_gib = max_share_gib
        self.volumes = ShareVolumes(storage_root)

    # ---- share filesystems (used by the os-filesystem and share APIs) -------------------------
    def share_dir(self, share_id: str) -> Path:
        return self.volumes.directory(share_id)

    def create_dir(self, share_id: str, size_gib: int) -> Path:
        """The share's filesystem, mounted at its directory. Refused (400, nothing made) when
        larger than the operator allows or than the storage filesystem has free: images are
        sparse, so this is the last point where the host can say no."""
        if size_gib > self.max_share_gib:
            raise BadRequest(f"Share size {size_gib} GiB is larger than the {self.max_share_gib} "
                             "GiB this service allows for a built-in share")
        self.storage_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.statvfs(self.storage_root)
        if size_gib * GIB > st.f_bavail * st.f_frsize:
            raise BadRequest(f"Share size {size_gib} GiB is larger than the free space of the "
                             f"built-in share storage ({st.f_bavail * st.f_frsize // GIB} GiB)")
        return self.volumes.create(share_id, size_gib)

    def delete_dir(self, share_id: str) -> None:
        self.volumes.delete(share_id)

    def usage_bytes(self, share_id: str) -> int:
        return self.volumes.usage_bytes(share_id)

    def mount_all(self) -> None:
        """Mount every share's filesystem (after a host reboot; idempotent)."""
        with self.db.read() as s:
            share_ids = list(s.scalars(select(Share.uuid)))
        self.volumes.mount_all(share_ids)

    def owns(self, share_id: str) -> bool:
        with self.db.read() as s:
            return s.get(Share, share_id) is not None

    def owned(self, share_ids: Collection[str]) -> set[str]:
        """Which of the shares are built-in (one query)."""
        with self.db.read() as s:
            return set(s.scalars(select(Share.uuid).where(Share.uuid.in_(list(share_ids)))))

    # ---- ShareProvider ---------------------------------------------------------------------
    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        with self.db.read() as s:
            share = s.get(Share, share_id)
            if share is None or not share_visible(share, context):
                raise NotFound(f"Share {share_id} could not be found.")
            return share_info(share, self.storage_root)

    def list_shares(self, context: RequestContext) -> list[ShareInfo]:
        with self.db.read() as s:
            return [share_info(share, self.storage_root)
                    for share in s.scalars(select(Share).order_by(Share.name))
                    if share_visible(share, context)]

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> bool:
        self.volumes.mount(share_id)  # checked first: a refusal leaves no rule
        if not self.share_dir(share_id).is_dir():
            raise PermanentError(f"share directory {self.share_dir(share_id)} is missing")
        with self.db.session() as s:
            if s.get(Share, share_id) is None:
                raise PermanentError(f"share {share_id} no longer exists")
            rule = s.get(ShareAccess, (share_id, host))
            if rule is None:
                s.add(ShareAccess(share_id=share_id, host=host, access_level=access_level,
                                  locked=True,
                                  lock_reason=f"{reason} (requested by {requester.user_id})"))
        return True  # a row: in effect at once

    def host_credentials(self, share_id: str, host: str) -> HostCredentials | None:
        return None  # a directory on this host: nothing to present

    def access_levels(self, share_ids: Collection[str], host: str) -> dict[str, str]:
        with self.db.read() as s:
            return {share: str(level) for share, level in s.execute(
                select(ShareAccess.share_id, ShareAccess.access_level).where(
                    ShareAccess.host == host, ShareAccess.share_id.in_(list(share_ids))))}

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> bool:
        with self.db.session() as s:
            rule = s.get(ShareAccess, (share_id, host))
            if rule is not None:
                s.delete(rule)
        return True
