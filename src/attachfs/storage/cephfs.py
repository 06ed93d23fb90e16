"""Connector for CephFS shares (Manila's CEPHFS export locations,
"mon1:6789,mon2:6789:/volumes/_nogroup/<id>/<uuid>"): ceph-fuse on this host, with the host's
own cephx key (the share's access rule for this host), limited to the share's path.

This host's kernel has no CephFS client; ceph-fuse is the client (measured: mounts in 0.1 s).

Two layers, so that one share is mounted once per host however many guests use it:
- the backing mount: one ceph-fuse mount per share, at STATE/cephfs/<share>/mnt, with its key
  (mode 0600) beside it at STATE/cephfs/<share>/keyring; made by the first host mount of the
  share and removed, key and all, with the last;
- the host mounts handed to guests (<mount root>/<share> and <share>-ro): bind mounts of the
  backing mount with the guest-facing flags (nosuid,nodev, and ro for read-only) from the
  first moment, as for every share (mountinfo.bind); the reconciler checks these.
Both are in /proc/self/mountinfo, so an agent that restarts finds them as they are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from attachfs.core.rules import HOST_MOUNT_READ_ONLY_SUFFIX, ShareProtocol
from attachfs.errors import PermanentError, TemporaryError
from attachfs.paths import check_under
from attachfs.storage import mountinfo
from attachfs.storage.base import HostCredentials

# monitors (host:port, comma-separated; IPv6 in brackets) then ":" and the path in the fs
EXPORT = re.compile(r"^(?P<mons>[^/\s]+):(?P<path>/\S*)$")
_MON = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(:\d{1,5})?$")
_AUTH_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KEY = re.compile(r"^[A-Za-z0-9+/=]{16,128}$")
MOUNT_TIMEOUT = 30  # seconds ceph-fuse may take to reach the monitors and mount


@dataclass(frozen=True)
class CephExport:
    mons: tuple[str, ...]
    path: str


def parse_export(export_location: str) -> CephExport:
    """Split at the last ':/' (the path may not contain one; monitors end with a port)."""
    m = EXPORT.match(export_location.strip())
    if not m:
        raise PermanentError(f"not a CephFS export location (mons:/path): {export_location!r}")
    mons = tuple(x for x in m.group("mons").split(",") if x)
    if not mons or not all(_MON.match(x) for x in mons):
        raise PermanentError(f"bad monitor list in CephFS export location {export_location!r}")
    path = m.group("path")
    if "/../" in f"{path}/" or "/./" in f"{path}/":
        raise PermanentError(f"bad path in CephFS export location {export_location!r}")
    return CephExport(mons, path)


class CephFsConnector:
    protocol: str = ShareProtocol.CEPHFS
    needs_credentials = True

    def __init__(self, mount_root: Path, cephfs_dir: Path, ceph_fuse: str = "ceph-fuse",
                 mount_timeout: int = MOUNT_TIMEOUT) -> None:
        self.mount_root, self.cephfs_dir, self.ceph_fuse = mount_root, cephfs_dir, ceph_fuse
        self.mount_timeout = mount_timeout
        # The agent's workers mount and release concurrently: a backing mount must never be
        # released between its ceph-fuse mount and the bind mount that puts it to use.
        self._lock = threading.Lock()

    # ---- paths ---------------------------------------------------------------------------------
    def _share_of(self, target: Path) -> str:
        return target.name.removesuffix(HOST_MOUNT_READ_ONLY_SUFFIX)

    def _backing(self, share: str) -> tuple[Path, Path]:
        base = check_under(self.cephfs_dir, self.cephfs_dir / share)
        return base / "mnt", base / "keyring"

    # ---- HostConnector ---------------------------------------------------------------------------
    def mount(self, export_location: str, target: Path, read_only: bool,
              credentials: HostCredentials | None = None) -> None:
        export = parse_export(export_location)
        target = check_under(self.mount_root, target)
        if mountinfo.is_mountpoint(target):
            return
        if credentials is None:
            raise PermanentError(f"no cephx key for this host on CephFS share {export_location}: "
                                 "the share service gave its access rule none")
        share = self._share_of(target)
        backing, _ = self._backing(share)
        with self._lock:
            if not mountinfo.is_mountpoint(backing):
                self._mount_backing(share, export, credentials)
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            mountinfo.bind(backing, target, mountinfo.GUEST_SAFE + (",ro" if read_only else ""))

    def unmount(self, target: Path) -> None:
        target = check_under(self.mount_root, target)
        mountinfo.unmount(target)
        self.release_unused()

    def release_unused(self) -> list[str]:
        """Backing mounts (and keys) of shares with no host mount left on this host."""
        if not self.cephfs_dir.is_dir():
            return []
        with self._lock:
            return self._release_unused()

    def _release_unused(self) -> list[str]:
        released = []
        for base in sorted(self.cephfs_dir.iterdir()):
            share = base.name
            users = (self.mount_root / share,
                     self.mount_root / (share + HOST_MOUNT_READ_ONLY_SUFFIX))
            if not any(mountinfo.is_mountpoint(p) for p in users):
                self._unmount_backing(share)
                released.append(f"CephFS share {share} (ceph-fuse mount and key)")
        return released

    # ---- the backing ceph-fuse mount ---------------------------------------------------------------
    def _mount_backing(self, share: str, export: CephExport, creds: HostCredentials) -> None:
        if not _AUTH_ID.match(creds.auth_id) or not _KEY.match(creds.key):
            raise PermanentError(f"the share service gave an unusable cephx ID or key for share "
                                 f"{share}")
        if shutil.which(self.ceph_fuse) is None:
            raise PermanentError("this host cannot mount CephFS shares: ceph-fuse is not "
                                 "installed (Debian package ceph-fuse)")
        backing, keyring = self._backing(share)
        backing.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[client.{creds.auth_id}]\n\tkey = {creds.key}\n")
        mons = ",".join(export.mons)
        argv = [self.ceph_fuse, "-c", "/dev/null", "-m", mons, "--id", creds.auth_id,
                "--keyring", str(keyring), "-r", export.path,
                f"--client_mount_timeout={self.mount_timeout}", str(backing)]
        try:
            mountinfo.run(argv, timeout=self.mount_timeout + 15)
        except (PermanentError, TemporaryError) as exc:
            self._unmount_backing(share)
            raise PermanentError(
                f"could not mount CephFS share {share} from monitors {mons} as "
                f"client.{creds.auth_id}: {_reason(exc)}") from exc
        if not mountinfo.is_mountpoint(backing):
            self._unmount_backing(share)
            raise PermanentError(f"ceph-fuse exited without mounting CephFS share {share} from "
                                 f"monitors {mons}")

    def _unmount_backing(self, share: str) -> None:
        backing, keyring = self._backing(share)
        if mountinfo.is_mountpoint(backing):
            mountinfo.unmount(backing)  # ceph-fuse exits when its mount goes
        with contextlib.suppress(FileNotFoundError):
            keyring.unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            backing.rmdir()
        with contextlib.suppress(FileNotFoundError, OSError):
            backing.parent.rmdir()


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 400 else text[:400] + "…"
