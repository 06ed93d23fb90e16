"""The FUSE NFS mount's watch on its own mount (storage/nfs_fuse.py): the process ends when its
mount is gone from the host's mount namespace while another namespace (a qemu's, copied from
the host's) still holds a copy that would keep the FUSE session alive."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

from attachfs.storage.nfs_client import one_line

PROG = "attachfs-nfs-fuse"
FS_SUBTYPE = "attachfs-nfs"  # the mount's type: fuse.attachfs-nfs
# How long a mount gone from this namespace may take to end the FUSE session by itself.
UNMOUNT_GRACE = 1.0

log = logging.getLogger(PROG)


def _mount_entries(text: str) -> list[tuple[str, str, str]]:
    """(device major:minor, mount point, fs type) of each line of a mountinfo file."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if " - " in line and len(fields) > 4:
            fstype = line.split(" - ", 1)[1].split(" ", 1)[0]
            point = fields[4].replace("\\040", " ").replace("\\011", "\t") \
                .replace("\\012", "\n").replace("\\134", "\\")
            entries.append((fields[2], point, fstype))
    return entries


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class MountWatch:
    """Ends the process when its mount has gone from this mount namespace (`umount`) while the
    FUSE session lives on because another namespace holds a copy of the mount. libvirt starts
    each qemu in a private mount namespace copied from the host's: every FUSE mount present
    then is held there, and where / is not a shared mount (no systemd) the host's umount does
    not reach the copy. Without this the process would serve the copy until that qemu exits.

    A mount gone here but held only by files still open (`umount -l`) is left to the kernel,
    which ends the session when they close."""

    def __init__(self, mountpoint: Path, finished: threading.Event,
                 end: Callable[[str], None]) -> None:
        self.mountpoint = os.path.realpath(mountpoint)
        self.finished = finished  # set when the FUSE session has ended by itself
        self.end = end

    def start(self) -> None:
        threading.Thread(target=self._run, name="mount-watch", daemon=True).start()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # noqa: BLE001 - the mount works without the watch
            log.warning("not watching %s: %s", self.mountpoint, one_line(exc))

    def _watch(self) -> None:
        fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        try:
            devices = [dev for dev, point, fstype in _mount_entries(_read_all(fd))
                       if point == self.mountpoint and fstype == f"fuse.{FS_SUBTYPE}"]
            if not devices:
                raise RuntimeError("the mount is not in /proc/self/mountinfo")
            device = devices[-1]
            poller = select.poll()
            poller.register(fd, select.POLLPRI)  # the mount table changed
            while any(dev == device for dev, _, _ in _mount_entries(_read_all(fd))):
                poller.poll()
        finally:
            os.close(fd)
        if self.finished.wait(UNMOUNT_GRACE):
            return
        holders = _namespaces_holding(device)
        if holders:
            self.end(f"{self.mountpoint} was unmounted here but the mount namespace of "
                     f"pid {holders[0]} still holds a copy: ending the FUSE session")


def _namespaces_holding(device: str) -> list[int]:
    """One pid per other mount namespace that has a mount of `device` (an attachfs-nfs FUSE
    connection)."""
    seen = {os.readlink("/proc/self/ns/mnt")}
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            namespace = os.readlink(f"/proc/{entry}/ns/mnt")
            if namespace in seen:
                continue
            seen.add(namespace)
            with open(f"/proc/{entry}/mountinfo") as f:
                text = f.read()
        except OSError:
            continue  # gone, or a kernel thread
        if any(dev == device and fstype == f"fuse.{FS_SUBTYPE}"
               for dev, _, fstype in _mount_entries(text)):
            holders.append(int(entry))
    return holders
