"""Connector for NFS shares (Manila's NFS export locations, "host:/path"): an NFSv4.1 mount on
this host, which the guest then gets over virtio-fs like any other host mount.

The host's access rule (an `ip` rule for [manila] host_address) is the provider's job and is in
place before mount() is called. A host whose kernel has no NFS client cannot mount at all: that
is checked first (/proc/filesystems) and reported as such, not as a failed mount command.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from attachfs.core.rules import ShareProtocol
from attachfs.errors import PermanentError
from attachfs.paths import check_under
from attachfs.storage import mountinfo
from attachfs.storage.base import HostCredentials

PROC_FILESYSTEMS = Path("/proc/filesystems")
# host:/path, with host a name, an IPv4 address or a bracketed IPv6 address.
EXPORT = re.compile(r"^(?P<server>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<path>/\S*)$")
MOUNT_OPTIONS = "vers=4.1,proto=tcp," + mountinfo.GUEST_SAFE


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

    def __init__(self, mount_root: Path, proc_filesystems: Path = PROC_FILESYSTEMS) -> None:
        self.mount_root = mount_root
        self.proc_filesystems = proc_filesystems

    def mount(self, export_location: str, target: Path, read_only: bool,
              credentials: HostCredentials | None = None) -> None:
        if not EXPORT.match(export_location):
            raise PermanentError(f"not an NFS export location (host:/path): {export_location!r}")
        target = check_under(self.mount_root, target)
        if mountinfo.is_mountpoint(target):
            return
        if not kernel_has_nfs4(self.proc_filesystems):
            # modprobe might still load it; ask once before giving up.
            with contextlib.suppress(PermanentError):
                mountinfo.run(["modprobe", "nfsv4"], timeout=30)
            if not kernel_has_nfs4(self.proc_filesystems):
                raise PermanentError(
                    f"this host cannot mount NFS share {export_location}: its kernel has no NFS "
                    f"client (no nfs4 in {self.proc_filesystems}, and modprobe nfsv4 did not "
                    "add it); install the host's NFS client kernel module (nfsv4) or attach "
                    "the share on another host")
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        options = MOUNT_OPTIONS + (",ro" if read_only else "")
        try:
            mountinfo.run(["mount", "-t", "nfs4", "-o", options, export_location, str(target)],
                          timeout=120)
        except PermanentError:
            with contextlib.suppress(OSError):
                target.rmdir()
            raise

    def release_unused(self) -> list[str]:
        return []  # the host mount is all there is

    def unmount(self, target: Path) -> None:
        mountinfo.unmount(check_under(self.mount_root, target))
