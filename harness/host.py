"""What an attachfs run left on this host, and removing it: guests, mounts, state directories.

Several test runs, benches and demos may share one libvirtd: everything here touches only what
it is told is its own (a state directory, an owner tag) and only reads the rest.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from attachfs.storage import mountinfo

LIBVIRT_URI = "qemu:///system"


def owner_of(state_dir: Path) -> str:
    """The owner tag an `attachfs serve` on `state_dir` gives its guests (host:state dir)."""
    return f"{socket.gethostname()}:{state_dir.resolve()}"


def attachfs_guests() -> list[str]:
    """Names of every running attachfs guest on this host (any owner): each takes CPU."""
    import libvirt

    conn = libvirt.open(LIBVIRT_URI)
    try:
        return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if d.name().startswith("attachfs-")]
    finally:
        conn.close()


def destroy_guests(owner: str) -> None:
    """Destroy the guests tagged with `owner`, and no other."""
    from attachfs.virt.libvirt import LibvirtDriver

    driver = LibvirtDriver(owner=owner)
    try:
        for guest in driver.list_guests():
            driver.stop_guest(guest, 0)
    finally:
        driver.close()


def remove_state(state: Path) -> bool:
    """Unmount the host mounts (mounts/) and share filesystems (shares/) under `state`, and
    `state` itself (the agent makes it a shared mount), then remove it. Anything still mounted
    below it: leave it in place, say so, return False."""
    root = state.resolve()
    stop_host_daemons(root)
    for point in mountinfo.mount_points(root / "mounts"):
        _try(mountinfo.unmount, point)
    for point in reversed(mountinfo.mount_points(root)):  # deepest first
        _try(lambda p: mountinfo.run(["umount", "-l", str(p)]), point)
    if mountinfo.is_mountpoint(root):  # the agent's shared bind of its state dir
        _try(lambda p: mountinfo.run(["umount", "-l", str(p)]), root)
    left = mountinfo.mount_points(root)
    if left:
        print(f"cleanup: NOT removing {state}: still mounted: {left}", flush=True)
        return False
    shutil.rmtree(state, ignore_errors=True)
    return True


def stop_host_daemons(root: Path) -> None:
    """What an agent under `root` started that outlives it: its containers (LXC path
    containers/) and its NFS server (ganesha/), which hold its host mounts."""
    lxc_path = root / "containers"
    if lxc_path.is_dir():
        for d in lxc_path.iterdir():
            for tool in (["lxc-stop", "-k"], ["lxc-destroy", "-f"]):
                subprocess.run([tool[0], "-P", str(lxc_path), "-n", d.name, *tool[1:]],
                               capture_output=True, timeout=60, check=False)
    pid_file = root / "ganesha" / "ganesha.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def _try(action: Callable[[Path], object], point: Path) -> None:
    try:
        action(point)
    except Exception as exc:  # noqa: BLE001 - cleanup goes on; what is left is reported
        print(f"cleanup: {point}: {exc}", flush=True)


def virtiofsd_pids(mount_root: Path) -> list[int]:
    """virtiofsd processes serving a directory under `mount_root`: one per device (the
    sandboxed child virtiofsd forks is not counted separately)."""
    out = []
    root = str(mount_root.resolve())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "virtiofsd" in cmd.split(" ")[0] and root in cmd:
            out.append(int(entry))
    return [pid for pid in out if _parent(pid) not in out]


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])
