"""The FUSE operations of attachfs's NFS mount (storage/nfs_fuse.py runs them): each one over
the nfs-rs client of the export's pseudo root, its errors turned into errno values, and a call
that failed with the connection retried once on a new client when that is safe."""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

import mfusepy
import nfs_rs

from attachfs.storage.nfs_client import LOST, Connection, errno_of, one_line
from attachfs.storage.nfs_mount_watch import PROG, MountWatch

# libfuse 2 cannot raise the kernel's 32-page limit (FUSE_MAX_PAGES is libfuse 3): requests of
# at most 128 KiB. Without big_writes the kernel would send every write in 4 KiB pages.
IO_SIZE = 128 * 1024
# How libfuse 2 passes utimensat's special times (tv_sec 0, tv_nsec one of these).
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2

_TYPE_BITS = {
    nfs_rs.FileType.FILE: stat.S_IFREG,
    nfs_rs.FileType.DIRECTORY: stat.S_IFDIR,
    nfs_rs.FileType.SYMLINK: stat.S_IFLNK,
    nfs_rs.FileType.BLOCK_DEVICE: stat.S_IFBLK,
    nfs_rs.FileType.CHARACTER_DEVICE: stat.S_IFCHR,
    nfs_rs.FileType.FIFO: stat.S_IFIFO,
    nfs_rs.FileType.SOCKET: stat.S_IFSOCK,
}

log = logging.getLogger(PROG)
P = ParamSpec("P")
R = TypeVar("R")


def _mode(info: nfs_rs.FileInfo) -> int:
    return _TYPE_BITS.get(info.type, 0) | (info.mode & 0o7777)


@dataclass
class _Open:
    """A file the kernel opened: on a new client it is opened again by the name it had."""

    path: str
    mode: str  # "rb" or "r+b"
    file: nfs_rs.File
    generation: int


Op = Callable[Concatenate["NfsOperations", P], R]


def nfs_op(*, idempotent: bool, export: bool = False) -> Callable[[Op[P, R]], Op[P, R]]:
    """A FUSE operation: exceptions become FuseOSError(errno) (anything else would reach the
    caller as EINVAL, mfusepy's catch-all), EIO is logged (it hides the cause), and a call that
    failed with the connection is retried once on a new client when that is safe: the
    operation is `idempotent`, or nfs-rs says the server did not run it. `export`: it uses the
    export's client rather than the pseudo root's."""

    def decorate(fn: Op[P, R]) -> Op[P, R]:
        @functools.wraps(fn)
        def wrapper(self: NfsOperations, *args: P.args, **kwargs: P.kwargs) -> R:
            conn = self.export_conn if export else self.conn
            try:
                for attempt in (1, 2):
                    generation = conn.ready()
                    try:
                        return fn(self, *args, **kwargs)
                    except LOST as exc:
                        conn.lost(generation)
                        outcome = getattr(exc, "outcome", None)
                        if attempt == 2 or not (idempotent or outcome in _NOT_RUN):
                            raise
                        log.info("%s%s: %s; again on a new client", fn.__name__, args[:1],
                                 one_line(exc))
                raise AssertionError("unreachable")
            except mfusepy.FuseOSError:
                raise
            except Exception as exc:
                code = errno_of(exc)
                if code == errno.EIO:
                    log.warning("%s%s: %s", fn.__name__, args[:1], one_line(exc))
                raise mfusepy.FuseOSError(code) from exc

        return wrapper

    return decorate


_NOT_RUN = (nfs_rs.OperationOutcome.DEFINITE_FAILURE, nfs_rs.OperationOutcome.SAFE_TO_RETRY)


class NfsOperations(mfusepy.Operations):
    """The FUSE operations over one export, `prefix` ("export", "volumes/x/y") from the pseudo
    root `conn` is connected to; `export_conn` is connected to the export itself (statfs)."""

    use_ns = True  # times in integer nanoseconds, as nfs-rs has them

    def __init__(self, conn: Connection, export_conn: Connection, prefix: str,
                 read_only: bool, watch: MountWatch | None = None) -> None:
        self.conn = conn
        self.watch = watch
        self.export_conn = export_conn
        self.prefix = prefix
        self.read_only = read_only
        # The identity of nfs-rs's AUTH_SYS credential: the owner the server gives new files.
        self.uid, self.gid = os.geteuid(), os.getegid()
        self._files: dict[int, _Open] = {}
        self._handles = itertools.count(1)
        self._lock = threading.Lock()

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def client(self) -> nfs_rs.Client:
        return self.conn.client

    def _path(self, path: str) -> str:
        """A FUSE path ("/", "/a/b") as nfs-rs names it from the pseudo root."""
        rel = path.strip("/")
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def _writable(self) -> None:
        if self.read_only:
            raise mfusepy.FuseOSError(errno.EROFS)

    def _open(self, fh: int) -> _Open:
        try:
            return self._files[fh]
        except KeyError:
            raise mfusepy.FuseOSError(errno.EBADF) from None

    def _file(self, fh: int) -> nfs_rs.File:
        """The nfs-rs file of `fh`, opened again if the client was replaced since."""
        handle = self._open(fh)
        with self._lock:
            if handle.generation != self.conn.generation:
                handle.file = self.client.open(handle.path, handle.mode)
                handle.generation = self.conn.generation
            return handle.file

    def _add_file(self, path: str, mode: str, file: nfs_rs.File, generation: int) -> int:
        with self._lock:
            fh = next(self._handles)
            self._files[fh] = _Open(path, mode, file, generation)
        return fh

    def _own(self, nfs_path: str) -> None:
        """Make a new object the caller's, as a local filesystem would: its uid, and its gid
        unless the directory is setgid (the server then gave it the directory's). A server
        that refuses (root squashed) leaves it as it made it."""
        uid, gid, _pid = mfusepy.fuse_get_context()
        if (uid, gid) == (self.uid, self.gid):
            return
        if gid != self.gid and _mode(self.client.stat(nfs_path.rsplit("/", 1)[0])) & stat.S_ISGID:
            gid = -1
        try:
            self.client.chown(nfs_path, uid if uid != self.uid else -1, gid)
        except PermissionError as exc:
            log.info("chown %s to %d:%d refused by the server: %s", nfs_path, uid, gid, exc)

    def init(self, path: str) -> None:
        """The kernel's FUSE_INIT: mounted."""
        if self.watch is not None:
            self.watch.start()

    # ---- attributes ----------------------------------------------------------------------------
    @nfs_op(idempotent=True)
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        info = self.client.stat(self._path(path))
        return {"st_mode": _mode(info), "st_ino": info.fileid, "st_nlink": info.nlink,
                "st_uid": info.uid, "st_gid": info.gid, "st_size": info.size,
                "st_blocks": (info.used + 511) // 512, "st_blksize": IO_SIZE,
                "st_atime": info.atime, "st_mtime": info.mtime, "st_ctime": info.ctime}

    @nfs_op(idempotent=True)
    def chmod(self, path: str, mode: int) -> None:
        self._writable()
        self.client.chmod(self._path(path), mode & 0o7777)

    @nfs_op(idempotent=True)
    def chown(self, path: str, uid: int, gid: int) -> None:
        self._writable()
        self.client.chown(self._path(path), uid, gid)

    @nfs_op(idempotent=True)
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        self._writable()
        nfs_path = self._path(path)
        now = time.time_ns()
        if times is None:
            self.client.utime(nfs_path, ns=(now, now))
            return
        atime, mtime = times
        if UTIME_OMIT in (atime, mtime):
            info = self.client.stat(nfs_path)
            atime = info.atime if atime == UTIME_OMIT else atime
            mtime = info.mtime if mtime == UTIME_OMIT else mtime
        self.client.utime(nfs_path, ns=(now if atime == UTIME_NOW else atime,
                                        now if mtime == UTIME_NOW else mtime))

    @nfs_op(idempotent=True, export=True)
    def statfs(self, path: str) -> dict[str, int]:
        fs = self.export_conn.client.fs_stat()
        frsize = 4096
        return {"f_bsize": IO_SIZE, "f_frsize": frsize,
                "f_blocks": fs.total_bytes // frsize, "f_bfree": fs.free_bytes // frsize,
                "f_bavail": fs.available_bytes // frsize, "f_files": fs.total_files,
                "f_ffree": fs.free_files, "f_favail": fs.available_files, "f_namemax": 255}

    # ---- directories and names -----------------------------------------------------------------
    @nfs_op(idempotent=True)
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # A list, not a generator: an error while listing must be raised here, not later in
        # mfusepy's loop. Every entry has its inode number (use_ino): readdir(3) skips an entry
        # whose d_ino is 0.
        nfs_path = self._path(path)
        here = self.client.stat(nfs_path).fileid
        up = self.client.stat(nfs_path.rsplit("/", 1)[0]).fileid if path.strip("/") else here
        entries = [(".", {"st_mode": stat.S_IFDIR, "st_ino": here}, 0),
                   ("..", {"st_mode": stat.S_IFDIR, "st_ino": up}, 0)]
        for entry in self.client.scandir(nfs_path):
            entries.append((entry.name, {"st_mode": _mode(entry.info),
                                         "st_ino": entry.info.fileid}, 0))
        return entries

    @nfs_op(idempotent=False)
    def mkdir(self, path: str, mode: int) -> None:
        self._writable()
        nfs_path = self._path(path)
        self.client.mkdir(nfs_path, mode & 0o7777)
        self._own(nfs_path)

    @nfs_op(idempotent=False)
    def rmdir(self, path: str) -> None:
        # The kernel calls rmdir for directories only and unlink for the rest (nfs-rs's rmdir
        # and unlink are both NFS REMOVE, which takes either).
        self._writable()
        self.client.rmdir(self._path(path))

    @nfs_op(idempotent=False)
    def unlink(self, path: str) -> None:
        self._writable()
        self.client.unlink(self._path(path))

    @nfs_op(idempotent=False)
    def rename(self, old: str, new: str) -> None:
        self._writable()
        self.client.rename(self._path(old), self._path(new))

    @nfs_op(idempotent=False)
    def symlink(self, target: str, source: str) -> None:
        """`target`: the new link's path; `source`: its content (mfusepy's naming)."""
        self._writable()
        nfs_path = self._path(target)
        self.client.symlink(source, nfs_path)
        self._own(nfs_path)  # an NFS SETATTR of a symlink changes the link itself

    @nfs_op(idempotent=True)
    def readlink(self, path: str) -> str:
        return self.client.readlink(self._path(path))

    @nfs_op(idempotent=False)
    def link(self, target: str, source: str) -> None:
        """`target`: the new name; `source`: the existing file (mfusepy's naming)."""
        self._writable()
        self.client.link(self._path(source), self._path(target))

    # ---- files ---------------------------------------------------------------------------------
    @nfs_op(idempotent=True)
    def open(self, path: str, flags: int) -> int:
        # The kernel checked the caller's access (default_permissions) and places O_APPEND
        # writes. O_TRUNC reaches here only where the kernel does not truncate first itself
        # (atomic_o_trunc: libfuse 3's default).
        mode = "rb" if flags & os.O_ACCMODE == os.O_RDONLY else "r+b"
        if mode != "rb":
            self._writable()
        nfs_path, generation = self._path(path), self.conn.generation
        file = self.client.open(nfs_path, mode)
        if mode != "rb" and flags & os.O_TRUNC:
            try:
                file.truncate(0)
            except BaseException:
                file.close()
                raise
        return self._add_file(nfs_path, mode, file, generation)

    @nfs_op(idempotent=False)
    def create(self, path: str, mode: int, flags: int) -> int:
        # Only for a name the kernel just looked up and did not find. nfs-rs has no exclusive
        # create, and makes new files 0666: the mode is set here (after the chown, which
        # clears set-id bits).
        self._writable()
        nfs_path, generation = self._path(path), self.conn.generation
        file = self.client.open(nfs_path, "w+b")
        try:
            self._own(nfs_path)
            self.client.chmod(nfs_path, mode & 0o7777)
        except BaseException:
            file.close()
            raise
        return self._add_file(nfs_path, "r+b", file, generation)

    @nfs_op(idempotent=True)
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self._file(fh).read_at(offset, size)

    @nfs_op(idempotent=True)  # the same bytes at the same offset
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self._writable()
        return self._file(fh).write_at(data, offset)

    @nfs_op(idempotent=True)
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        self._writable()
        if fh is not None and self._open(fh).mode != "rb":
            self._file(fh).truncate(length)
        elif path is not None:
            self.client.truncate(self._path(path), length)
        else:
            raise mfusepy.FuseOSError(errno.EBADF)

    def flush(self, path: str | None, fh: int) -> None:
        # nfs-rs's writes are durable when they return: this waits for any still running. A
        # file open for reading has nothing to wait for, even from a server that is down.
        if self._open(fh).mode != "rb":
            self._sync(fh)

    def fsync(self, path: str | None, datasync: int, fh: int) -> None:
        self.flush(path, fh)

    @nfs_op(idempotent=True)
    def _sync(self, fh: int) -> None:
        self._file(fh).flush()

    def release(self, path: str | None, fh: int) -> None:
        # The kernel ignores what release returns: a file that cannot be closed (its client
        # gone with the server) is only logged.
        with self._lock:
            handle = self._files.pop(fh, None)
        if handle is not None:
            try:
                handle.file.close()
            except Exception as exc:  # noqa: BLE001
                log.info("closing %s: %s", handle.path, one_line(exc))

    def destroy(self, path: str) -> None:
        """At unmount: close the files the kernel did not release (a lazy unmount, an abort)."""
        with self._lock:
            handles, self._files = list(self._files.values()), {}
        for handle in handles:
            try:
                handle.file.close()
            except Exception as exc:  # noqa: BLE001 - closing the rest matters more
                log.info("closing %s at unmount: %s", handle.path, one_line(exc))
