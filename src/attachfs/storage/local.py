"""The built-in share provider: a share is a directory under the storage root.

Shares and their access rules live in attachfs's own database (tables `shares`,
`share_access`), so the built-in provider behaves like a share service: a host must be granted
access before it mounts, and a granted rule is locked so the share cannot be deleted under a
guest. The export location is `local:<directory>`; connectors/bind.py mounts it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from attachfs.db.engine import Database
from attachfs.db.tables import Share, ShareAccess
from attachfs.errors import NotFound, PermanentError
from attachfs.paths import under_root
from attachfs.storage.base import RequestContext, ShareInfo

EXPORT_PREFIX = "local:"


def export_location(storage_root: Path, share_id: str) -> str:
    return EXPORT_PREFIX + str(storage_root / share_id)


def share_visible(share: Share, context: RequestContext) -> bool:
    return context.is_admin or share.scope == "global" or share.project_id == context.project_id


def share_info(share: Share, storage_root: Path) -> ShareInfo:
    return ShareInfo(
        id=share.uuid,
        name=share.name,
        status=share.status,
        protocol="LOCAL",
        export_locations=(export_location(storage_root, share.uuid),),
        project_id=share.project_id,
        size_gib=share.size_gib,
        scope=share.scope,
        mount_point=share.mount_point,
    )


class LocalShareProvider:
    name = "local"

    def __init__(self, db: Database, storage_root: Path) -> None:
        self.db = db
        self.storage_root = storage_root

    # ---- share directories (used by the os-filesystem API) ------------------------------------
    def share_dir(self, share_id: str) -> Path:
        return under_root(self.storage_root, share_id)

    def create_dir(self, share_id: str) -> Path:
        path = self.share_dir(share_id)
        path.mkdir(parents=True, exist_ok=True)
        # Guests write as their own root; the directory is theirs to use.
        os.chmod(path, 0o777)
        return path

    def delete_dir(self, share_id: str) -> None:
        shutil.rmtree(self.share_dir(share_id), ignore_errors=True)

    def usage_bytes(self, share_id: str) -> int:
        """Bytes used by the share's files (size is reported, not enforced: see docs)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.share_dir(share_id)):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    continue
        return total

    def owns(self, share_id: str) -> bool:
        with self.db.read() as s:
            return s.get(Share, share_id) is not None

    # ---- ShareProvider ---------------------------------------------------------------------
    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        with self.db.read() as s:
            share = s.get(Share, share_id)
            if share is None or not share_visible(share, context):
                raise NotFound(f"Share {share_id} could not be found.")
            return share_info(share, self.storage_root)

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> None:
        if not self.share_dir(share_id).is_dir():  # checked first: a refusal leaves no rule
            raise PermanentError(f"share directory {self.share_dir(share_id)} is missing")
        with self.db.session() as s:
            if s.get(Share, share_id) is None:
                raise PermanentError(f"share {share_id} no longer exists")
            rule = s.get(ShareAccess, (share_id, host))
            if rule is None:
                s.add(ShareAccess(share_id=share_id, host=host, access_level=access_level,
                                  locked=True,
                                  lock_reason=f"{reason} (requested by {requester.user_id})"))

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> None:
        with self.db.session() as s:
            rule = s.get(ShareAccess, (share_id, host))
            if rule is not None:
                s.delete(rule)
