"""Connector for CephFS shares (Manila's CEPHFS export locations,
"mon1:6789,mon2:6789:/volumes/_nogroup/<id>/<uuid>"): ceph-fuse on this host, with the host's
own cephx key (the share's access rule for this host), limited to the share's path.

This host's kernel has no CephFS client; ceph-fuse is the client (measured: mounts in 0.1 s).

One ceph-fuse mount per share on this host (storage/backing.py), at STATE/cephfs/<share>/mnt,
with its key (mode 0600) beside it at STATE/cephfs/<share>/keyring, removed with the mount; the
guests' host mounts are bind mounts of it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from attachfs.core.rules import ShareProtocol
from attachfs.errors import PermanentError, TemporaryError
from attachfs.storage import mountinfo
from attachfs.storage.backing import BackingMounts, reason
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
                 mount_timeout: float = MOUNT_TIMEOUT) -> None:
        self.mount_root, self.ceph_fuse, self.mount_timeout = mount_root, ceph_fuse, mount_timeout
        self.backing = BackingMounts(mount_root, cephfs_dir, "CephFS", "ceph-fuse mount and key")

    def mount(self, export_location: str, target: Path, read_only: bool,
              credentials: HostCredentials | None = None) -> None:
        export = parse_export(export_location)
        if credentials is None:
            raise PermanentError(f"no cephx key for this host on CephFS share {export_location}: "
                                 "the share service gave its access rule none")
        self.backing.mount(target, read_only,
                           lambda share, base: self._mount_backing(share, base, export, credentials))

    def unmount(self, target: Path) -> None:
        self.backing.unmount(target)

    def release_unused(self) -> list[str]:
        return self.backing.release_unused()

    def _mount_backing(self, share: str, base: Path, export: CephExport,
                       creds: HostCredentials) -> None:
        if not _AUTH_ID.match(creds.auth_id) or not _KEY.match(creds.key):
            raise PermanentError(f"the share service gave an unusable cephx ID or key for share "
                                 f"{share}")
        if shutil.which(self.ceph_fuse) is None:
            raise PermanentError("this host cannot mount CephFS shares: ceph-fuse is not "
                                 "installed (Debian package ceph-fuse)")
        keyring = base / "keyring"
        fd = os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[client.{creds.auth_id}]\n\tkey = {creds.key}\n")
        mons = ",".join(export.mons)
        argv = [self.ceph_fuse, "-c", "/dev/null", "-m", mons, "--id", creds.auth_id,
                "--keyring", str(keyring), "-r", export.path,
                f"--client_mount_timeout={self.mount_timeout:g}", str(base / "mnt")]
        try:
            mountinfo.run(argv, timeout=self.mount_timeout + 15)
        except (PermanentError, TemporaryError) as exc:
            raise PermanentError(
                f"could not mount CephFS share {share} from monitors {mons} as "
                f"client.{creds.auth_id}: {reason(exc)}") from exc
