"""Connector for built-in shares: bind-mount the share directory onto the host mount point.

Why a bind mount rather than handing the directory straight to virtiofsd: the mount point
under the mount root is what the agent reconciles (it can list it in /proc/self/mountinfo
after a crash), and it carries the guest-facing flags: always ``nosuid,nodev``, and ``ro`` for a
read-only attachment, all in effect from the first moment (mountinfo.bind).
"""

from __future__ import annotations

from pathlib import Path

from attachfs.core.rules import BUILTIN_PROTOCOL
from attachfs.errors import PermanentError
from attachfs.paths import check_under
from attachfs.storage import mountinfo
from attachfs.storage.base import HostCredentials
from attachfs.storage.local import EXPORT_PREFIX
from attachfs.storage.volumes import ShareVolumes


class BindConnector:
    needs_credentials = False  # built-in shares need no key
    protocol: str = BUILTIN_PROTOCOL

    def __init__(self, storage_root: Path, mount_root: Path) -> None:
        self.storage_root = storage_root
        self.mount_root = mount_root
        self.volumes = ShareVolumes(storage_root)

    def mount(self, export_location: str, target: Path, read_only: bool,
              credentials: HostCredentials | None = None) -> None:
        if not export_location.startswith(EXPORT_PREFIX):
            raise PermanentError(f"not a local export location: {export_location!r}")
        source = check_under(self.storage_root, Path(export_location.removeprefix(EXPORT_PREFIX)))
        target = check_under(self.mount_root, target)
        # Never bind the empty directory under an unmounted share filesystem: the guest
        # would write to the host's own filesystem, unbounded.
        self.volumes.mount(source.name)
        if not source.is_dir():
            raise PermanentError(f"share directory {source} does not exist")
        if mountinfo.is_mountpoint(target):
            return
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        mountinfo.bind(source, target, mountinfo.GUEST_SAFE + (",ro" if read_only else ""))

    def release_unused(self) -> list[str]:
        return []  # the host mount is all there is

    def unmount(self, target: Path) -> None:
        mountinfo.unmount(check_under(self.mount_root, target))
