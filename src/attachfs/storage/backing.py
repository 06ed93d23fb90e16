"""One mount of a remote share per host, shared by every guest on it (as the compute service's
`volume/mount.py` shares one mount per export), for the connectors whose client is a process on
this host (ceph-fuse, the NFS FUSE client, or the kernel's NFS client).

Two layers:
- the backing mount: one per share, at <backing root>/<share>/mnt, with what its client needs
  beside it (a key, a log) in <backing root>/<share>; made by the first host mount of the
  share and removed, files and all, once no host mount of the share is left;
- the host mounts handed to guests (<mount root>/<share> and <share>-ro): bind mounts of the
  backing mount with the guest-facing flags (nosuid,nodev, and ro for read-only) from the first
  moment (mountinfo.bind), which the reconciler checks.

The reference count is the kernel's own mount table: a backing mount is in use while a host
mount of its share exists. Both layers are in /proc/self/mountinfo, so an agent that restarts
(or was killed between any two steps) finds them as they are, and release_unused() removes what
a crash left behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

from attachfs.core.rules import HOST_MOUNT_READ_ONLY_SUFFIX
from attachfs.errors import PermanentError
from attachfs.paths import check_under
from attachfs.storage import mountinfo

# Makes the backing mount of a share: (share id, its directory) → the mount at directory/"mnt".
MakeBacking = Callable[[str, Path], None]


class BackingMounts:
    def __init__(self, mount_root: Path, backing_root: Path, kind: str, what: str) -> None:
        self.mount_root, self.backing_root = mount_root, backing_root
        # How messages name them: "CephFS" share …, ("ceph-fuse mount and key")
        self.kind, self.what = kind, what
        # The agent's workers mount and release concurrently: a backing mount must never be
        # released between its making and the bind mount that puts it to use.
        self._lock = threading.Lock()

    def share_of(self, target: Path) -> str:
        return target.name.removesuffix(HOST_MOUNT_READ_ONLY_SUFFIX)

    def directory(self, share: str) -> Path:
        return check_under(self.backing_root, self.backing_root / share)

    def mount(self, target: Path, read_only: bool, make: MakeBacking) -> None:
        """Bind the share's backing mount at `target`, making the backing mount first if this
        host has none yet. Idempotent. When `make` fails, nothing of it is left."""
        target = check_under(self.mount_root, target)
        if mountinfo.is_mountpoint(target):
            return
        share = self.share_of(target)
        base = self.directory(share)
        backing = base / "mnt"
        with self._lock:
            if not mountinfo.is_mountpoint(backing):
                backing.mkdir(mode=0o700, parents=True, exist_ok=True)
                try:
                    make(share, base)
                    if not mountinfo.is_mountpoint(backing):
                        raise PermanentError(f"the {self.kind} client exited without mounting "
                                             f"share {share}")
                except BaseException:
                    self._release(share)
                    raise
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            mountinfo.bind(backing, target, mountinfo.GUEST_SAFE + (",ro" if read_only else ""))

    def unmount(self, target: Path) -> None:
        mountinfo.unmount(check_under(self.mount_root, target))
        self.release_unused()

    def release_unused(self) -> list[str]:
        """Backing mounts (and their files) of shares with no host mount left on this host."""
        if not self.backing_root.is_dir():
            return []
        released = []
        with self._lock:
            for base in sorted(self.backing_root.iterdir()):
                share = base.name
                users = (self.mount_root / share,
                         self.mount_root / (share + HOST_MOUNT_READ_ONLY_SUFFIX))
                if not any(mountinfo.is_mountpoint(p) for p in users):
                    self._release(share)
                    released.append(f"{self.kind} share {share} ({self.what})")
        return released

    def _release(self, share: str) -> None:
        base = self.directory(share)
        backing = base / "mnt"
        if mountinfo.is_mountpoint(backing):
            mountinfo.unmount(backing)  # the client process exits when its mount goes
        with contextlib.suppress(FileNotFoundError, OSError):
            backing.rmdir()
        if base.is_dir():
            for entry in base.iterdir():  # what make() wrote: a key, a log
                if entry.is_file() or entry.is_symlink():
                    entry.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            base.rmdir()


def reason(exc: BaseException) -> str:
    """An error's text, bounded, for a message an attachment carries."""
    text = str(exc)
    return text if len(text) <= 400 else text[:400] + "…"
