"""Host mounts as the kernel sees them (/proc/self/mountinfo), and mount/umount calls.

Every mount a guest can write through is ``nosuid,nodev`` (`GUEST_SAFE`): a guest is root in
its share and can make setuid files and device nodes there; on the host they must stay inert.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path

from attachfs.errors import PermanentError, TemporaryError


def unescape_field(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


GUEST_SAFE = "nosuid,nodev"


def mount_options(path: Path) -> frozenset[str] | None:
    """The per-mount options of the mount at `path` (the topmost), or None if not a mount."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if Path(unescape_field(fields[4])) == path:
                found = frozenset(fields[5].split(","))
    return found


def mount_table(under: Path) -> dict[Path, frozenset[str]]:
    """Every mount point below `under` with its per-mount options (the topmost mount's, when
    several are stacked): what the agent observes in one read of /proc/self/mountinfo."""
    table: dict[Path, frozenset[str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = Path(unescape_field(fields[4]))
            if under in point.parents:
                table[point] = frozenset(fields[5].split(","))
    return table


def mount_points(under: Path | None = None) -> list[Path]:
    """Mount points currently on this host, optionally only those below `under`."""
    points: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = Path(unescape_field(line.split()[4]))
            if under is None or under in point.parents:
                points.append(point)
    return points


def is_mountpoint(path: Path) -> bool:
    return path in mount_points(path.parent)


def propagation(path: Path) -> frozenset[str] | None:
    """The propagation fields of the mount at `path` (the topmost), e.g. {"shared:12"}; empty
    for a private mount; None if `path` is not a mount point."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if Path(unescape_field(fields[4])) == path:
                found = frozenset(fields[6:fields.index("-")])
    return found


def make_shared(path: Path) -> bool:
    """Make `path` a mount point with shared propagation (bound onto itself if it is not one).

    Why: libvirt gives each QEMU a mount namespace copied from this one and made a slave of it.
    Below a shared mount, an unmount here reaches those copies; below a private one (`/` on a
    host without systemd) it does not, and a copy keeps what was unmounted alive until that
    guest stops: a FUSE client (ceph-fuse, the NFS client) whose mount is gone, a share's
    filesystem whose image was released.

    False, doing nothing, when `path` is not a mount point and has mounts below it: binding it
    onto itself would hide them (and a recursive bind would leave the originals beneath)."""
    fields = propagation(path)
    if fields is None:
        if mount_points(path):
            return False
        run(["mount", "--bind", str(path), str(path)])
        fields = propagation(path) or frozenset()
    if not any(f.startswith("shared:") for f in fields):
        run(["mount", "--make-shared", str(path)])
    return True


def run(argv: list[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"{argv[0]} timed out after {timeout}s") from exc
    except OSError as exc:
        raise PermanentError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise PermanentError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unmount(target: Path) -> None:
    """Unmount every layer at `target`, then remove the empty directory. Idempotent."""
    while is_mountpoint(target):
        run(["umount", str(target)])
    try:
        target.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PermanentError(f"cannot remove mount point {target}: {exc}") from exc


# ---- bind mounts with their flags from the start ---------------------------------------------
# open_tree(OPEN_TREE_CLONE) + mount_setattr + move_mount (Linux >= 5.12): the new mount is
# read-only/nosuid/nodev before it becomes visible, so no crash or race ever leaves a writable
# or suid-honouring window (`mount --bind` + `mount -o remount` is two steps).
_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # same on x86_64 and arm64
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_OPEN_TREE_CLONE, _MOVE_MOUNT_F_EMPTY_PATH = 1, 4
_MOUNT_ATTR = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8}


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _syscall(number: int, *args: object) -> int:
    # syscall(2) reads longs: pass ints as c_long so no register keeps stale upper bits.
    result = int(_libc.syscall(ctypes.c_long(number),
                               *(ctypes.c_long(a) if isinstance(a, int) else a for a in args)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def bind(source: Path, target: Path, options: str) -> None:
    """Bind-mount `source` at `target` with `options` (comma-separated: ro, nosuid, nodev,
    noexec) in effect from the first moment; `target` must exist."""
    flags = 0
    for option in filter(None, options.split(",")):
        flags |= _MOUNT_ATTR[option]
    try:
        fd = _syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                      _OPEN_TREE_CLONE | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise PermanentError(f"cannot bind {source}: {exc}") from exc
        run(["mount", "--bind", str(source), str(target)])  # kernels before 5.2
        run(["mount", "-o", f"remount,bind,{options}", str(target)])
        return
    try:
        attr = _MountAttr(attr_set=flags)
        _syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH | _AT_RECURSIVE,
                 ctypes.byref(attr), ctypes.sizeof(attr))
        _syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, os.fsencode(target),
                 _MOVE_MOUNT_F_EMPTY_PATH)
    except OSError as exc:
        raise PermanentError(f"cannot bind {source} at {target} ({options}): {exc}") from exc
    finally:
        os.close(fd)


def set_options(target: Path, options: str) -> None:
    """Make the existing mount at `target` carry exactly the flags in `options` among ro,
    nosuid, nodev (added or cleared in place, without unmounting): how a mount found with the
    wrong flags is fixed."""
    wanted = {o for o in options.split(",") if o}
    attr = _MountAttr(attr_set=sum(_MOUNT_ATTR[o] for o in wanted),
                      attr_clr=sum(_MOUNT_ATTR[o] for o in {"ro", "nosuid", "nodev"} - wanted))
    try:
        _syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, os.fsencode(target), 0, ctypes.byref(attr),
                 ctypes.sizeof(attr))
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise PermanentError(f"cannot set {options} on {target}: {exc}") from exc
        flags = ",".join(sorted(wanted | ({"rw"} if "ro" not in wanted else set())))
        run(["mount", "-o", f"remount,bind,{flags}", str(target)])


class KernelMounts:
    """The MountTable of this host's kernel."""

    def table(self, under: Path) -> dict[Path, frozenset[str]]:
        return mount_table(under)

    def set_options(self, target: Path, options: str) -> None:
        set_options(target, options)

    def unmount(self, target: Path) -> None:
        unmount(target)
