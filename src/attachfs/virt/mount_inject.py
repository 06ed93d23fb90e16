"""Put a host mount into a running container's mount namespace, or take it out.

    python -m attachfs.virt.mount_inject attach PID SOURCE TARGET [--read-only]
    python -m attachfs.virt.mount_inject detach PID TARGET

Its own short-lived process: joining a mount namespace (setns) is refused to a multithreaded
process and changes the caller for good. Measured on Linux 6.1 with LXC 5.0 (PLATFORM.md): a
bind mount made with `nsenter -m mount --bind` cannot see the host path, so the new mount API
is used: ``open_tree(SOURCE, OPEN_TREE_CLONE)`` in the host's namespace gives a detached copy of
the mount, ``mount_setattr`` makes it nosuid,nodev (and read-only) before anyone sees it,
``setns`` enters the container's namespace (root and cwd become the container's root), and
``move_mount`` attaches the copy at TARGET.

TARGET is inside a container whose root may be hostile: it is walked one component at a time
with ``O_PATH|O_NOFOLLOW`` from the container's root (missing directories made with
``mkdirat``), and the copy is moved onto the final directory's file descriptor, so a symlink or
a component swapped meanwhile can never redirect the mount. The container itself cannot undo
or widen the mount: its servers run without CAP_SYS_ADMIN (virt/lxc.py).

Exit status 0 on success; 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import sys

SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
CLONE_NEWNS = 0x00020000
MNT_DETACH, UMOUNT_NOFOLLOW = 0x2, 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _syscall(number: int, *args: object) -> int:
    return int(_libc.syscall(number, *args))


def enter_namespace(pid: int) -> None:
    ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(ns, CLONE_NEWNS), f"entering the mount namespace of {pid}")
    finally:
        os.close(ns)


def components(target: str) -> list[str]:
    parts = target.split("/")
    if not target.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
        raise OSError(errno.EINVAL, f"target {target!r} is not a normalized absolute path")
    return parts[1:]


def open_target(target: str, create: bool) -> int:
    """An O_PATH descriptor of `target` in the current root, never through a symlink."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in components(target):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            try:
                nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                              dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(exc.errno, f"{target}: {name} is not a directory (a "
                                  "symlink or a file)") from exc
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def attach(pid: int, source: str, target: str, read_only: bool) -> None:
    tree = _check(_syscall(SYS_OPEN_TREE, AT_FDCWD, source.encode(),
                           OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), f"cloning the mount {source}")
    flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if read_only else 0)
    attr = MountAttr(flags, 0, 0, 0)
    _check(_syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                    ctypes.sizeof(attr)), "setting nosuid,nodev" + (",ro" if read_only else ""))
    enter_namespace(pid)
    where = open_target(target, create=True)
    try:
        _check(_syscall(SYS_MOVE_MOUNT, tree, b"", where, b"",
                        MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
               f"mounting at {target}")
    finally:
        os.close(where)
        os.close(tree)


def detach(pid: int, target: str) -> None:
    enter_namespace(pid)
    components(target)
    if _libc.umount2(target.encode(), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL and err != errno.ENOENT:  # not a mount point (any more)
            raise OSError(err, f"unmounting {target}: {os.strerror(err)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attachfs.virt.mount_inject")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attach")
    a.add_argument("pid", type=int)
    a.add_argument("source")
    a.add_argument("target")
    a.add_argument("--read-only", action="store_true")
    d = sub.add_parser("detach")
    d.add_argument("pid", type=int)
    d.add_argument("target")
    args = parser.parse_args(argv)
    try:
        if args.command == "attach":
            attach(args.pid, args.source, args.target, args.read_only)
        else:
            detach(args.pid, args.target)
    except OSError as exc:
        print(exc.strerror or str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
