"""Connector for NFS shares: Manila's NFS export locations ("host:/path") and an operator's
static exports (also "nfs://host[:port]/path"), mounted on this host and handed to guests over
virtio-fs like any other host mount.

Which client mounts the export (`[storage] nfs_client`):
- kernel: the host kernel's NFSv4.1 client, where it has one;
- fuse: attachfs's own FUSE client (storage/nfs_fuse.py: nfs-rs over FUSE), a process per share
  on this host, for kernels without an NFS client (measured here: none; a FUSE mount takes
  ~0.1 s);
- auto (the default): the kernel's when /proc/filesystems lists nfs4 (after asking modprobe
  once), else the FUSE client. Detected on the first mount, not assumed.

Either way one backing mount per share on this host (storage/backing.py), at
STATE/nfs/<share>/mnt, the guests' host mounts being bind mounts of it. The host's access rule
(an `ip` rule for [manila] host_address) is the provider's job and in place before mount().
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from attachfs.core.rules import ShareProtocol
from attachfs.errors import PermanentError, TemporaryError
from attachfs.storage import mountinfo
from attachfs.storage.backing import BackingMounts, reason
from attachfs.storage.base import HostCredentials

PROC_FILESYSTEMS = Path("/proc/filesystems")
NFS_PORT = 2049
MOUNT_TIMEOUT = 30.0
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*"
# host:/path (Manila's form), or nfs://host[:port]/path (RFC 2224's, which can carry a port).
_PLAIN = re.compile(rf"^(?P<host>{_HOST}):(?P<path>/\S*)$")
_URL = re.compile(rf"^nfs://(?P<host>{_HOST})(:(?P<port>\d{{1,5}}))?(?P<path>/\S*)$")


@dataclass(frozen=True)
class NfsExport:
    server: str
    port: int
    path: str

    def __str__(self) -> str:
        return f"{self.server}:{self.port}:{self.path}"


def parse_export(export_location: str) -> NfsExport:
    text = export_location.strip()
    m = _URL.match(text) or _PLAIN.match(text)
    if not m:
        raise PermanentError(f"not an NFS export location (host:/path or nfs://host[:port]/path):"
                             f" {export_location!r}")
    path = "/" + m.group("path").strip("/")
    if "/../" in f"{path}/" or "/./" in f"{path}/":
        raise PermanentError(f"bad path in NFS export location {export_location!r}")
    port = int(m.groupdict().get("port") or NFS_PORT)
    if not 0 < port < 65536:
        raise PermanentError(f"bad port in NFS export location {export_location!r}")
    return NfsExport(m.group("host").strip("[]"), port, path)


def kernel_has_nfs4(proc_filesystems: Path = PROC_FILESYSTEMS) -> bool:
    """Does this kernel know the nfs4 filesystem (built in, or its module loaded)?"""
    try:
        lines = proc_filesystems.read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[-1] == "nfs4" for line in lines if line.split())


class NfsConnector:
    needs_credentials = False  # the access rule names this host's address; no key
    protocol: str = ShareProtocol.NFS

    def __init__(self, mount_root: Path, nfs_dir: Path, client: str = "auto",
                 mount_timeout: float = MOUNT_TIMEOUT,
                 proc_filesystems: Path = PROC_FILESYSTEMS) -> None:
        self.mount_root, self.client, self.mount_timeout = mount_root, client, mount_timeout
        self.proc_filesystems = proc_filesystems
        self.backing = BackingMounts(mount_root, nfs_dir, "NFS", "host mount")
        self._kernel: bool | None = None  # decided on the first mount

    def mount(self, export_location: str, target: Path, read_only: bool,
              credentials: HostCredentials | None = None) -> None:
        export = parse_export(export_location)
        self.backing.mount(target, read_only, lambda share, base: self._mount_backing(
            share, base, export))

    def unmount(self, target: Path) -> None:
        self.backing.unmount(target)

    def release_unused(self) -> list[str]:
        return self.backing.release_unused()

    # ---- which client ----------------------------------------------------------------------------
    def uses_kernel_client(self) -> bool:
        if self.client != "auto":
            return self.client == "kernel"
        if self._kernel is None:
            if not kernel_has_nfs4(self.proc_filesystems):
                with contextlib.suppress(PermanentError, TemporaryError):
                    mountinfo.run(["modprobe", "-q", "nfsv4"], timeout=30)
            self._kernel = kernel_has_nfs4(self.proc_filesystems)
        return self._kernel

    def _mount_backing(self, share: str, base: Path, export: NfsExport) -> None:
        if self.uses_kernel_client():
            self._mount_kernel(share, base / "mnt", export)
        else:
            self._mount_fuse(share, base, export)

    def _mount_kernel(self, share: str, backing: Path, export: NfsExport) -> None:
        if not kernel_has_nfs4(self.proc_filesystems):
            raise PermanentError(
                f"this host cannot mount NFS share {share} with the kernel's client: its kernel "
                f"has no nfs4 (not in {self.proc_filesystems}); set [storage] nfs_client = "
                '"fuse" or "auto"')
        server = f"[{export.server}]" if ":" in export.server else export.server
        options = f"vers=4.1,proto=tcp,port={export.port},{mountinfo.GUEST_SAFE}"
        try:
            mountinfo.run(["mount", "-t", "nfs4", "-o", options, f"{server}:{export.path}",
                           str(backing)], timeout=self.mount_timeout + 15)
        except (PermanentError, TemporaryError) as exc:
            raise PermanentError(f"could not mount NFS share {share} from {export}: "
                                 f"{reason(exc)}") from exc

    def _mount_fuse(self, share: str, base: Path, export: NfsExport) -> None:
        """Start the FUSE client in its own session (it outlives an agent restart, as a kernel
        mount would) and wait for its mount. It connects before it mounts, so an unreachable
        server or a refused export ends it with one line in its log and no mount."""
        backing, log = base / "mnt", base / "client.log"
        argv = [sys.executable, "-m", "attachfs.storage.nfs_fuse", "--server", export.server,
                "--port", str(export.port), "--export", export.path,
                "--timeout", f"{self.mount_timeout:g}", str(backing)]
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + self.mount_timeout + 15
        while not mountinfo.is_mountpoint(backing):
            if proc.poll() is not None:
                raise PermanentError(f"could not mount NFS share {share} from {export}: "
                                     f"{_last_line(log) or f'exit code {proc.returncode}'}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise PermanentError(f"could not mount NFS share {share} from {export}: no "
                                     f"mount after {self.mount_timeout + 15:g} s")
            time.sleep(0.02)


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("attachfs-nfs-fuse: ")[:400] if lines else ""
