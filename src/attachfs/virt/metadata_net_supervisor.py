"""Start, watch and stop one metadata network helper (virt/metadata_net.py) per running guest.

A helper is its own process (a libslirp crash never takes the agent down) in its own session (it
outlives an agent restart, so the guest keeps its metadata service meanwhile). Its pid is kept
next to QEMU's stream socket (``<uuid>.pid``) and checked against /proc before it is trusted, so
a restarted agent adopts the helpers that are still there instead of starting second ones.

A watcher thread looks every `WATCH_INTERVAL` s: a helper that died while its guest still runs
(QEMU's stream socket is still there) is started again; QEMU's stream server accepts the new
helper (measured with QEMU 7.2: the guest's next request after a restart is answered). A helper
that ended because its guest did (exit 0, or 3: nothing to connect to) is forgotten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from attachfs.paths import under_root
from attachfs.virt import metadata_net

log = logging.getLogger(__name__)
HELPER_MODULE = "attachfs.virt.metadata_net"
WATCH_INTERVAL = 1.0
RESTART_BACKOFF = 2.0  # seconds between two starts of one guest's helper
_DONE = (metadata_net.EXIT_GUEST_GONE, metadata_net.EXIT_NO_GUEST)


def stream_socket_path(metadata_socket: Path, server_uuid: str) -> Path:
    """QEMU's stream socket for a guest: ``net/<uuid>.sock`` beside its metadata socket."""
    return under_root(metadata_socket.parent, "net", f"{server_uuid}.sock")


def nfs_socket_path(metadata_socket: Path, server_uuid: str) -> Path:
    """The guest's NFS link socket (virt/nfs_link.py): ``nfs/<uuid>.sock`` beside its
    metadata socket."""
    return under_root(metadata_socket.parent, "nfs", f"{server_uuid}.sock")


@dataclass
class _Helper:
    uuid: str
    stream: Path
    metadata_socket: Path
    pid: int
    proc: subprocess.Popen[bytes] | None = None  # None: adopted from an earlier agent
    started: float = field(default_factory=time.monotonic)
    # the inode of the QEMU socket it served: once its guest is gone, the files are removed
    # only while they are still that guest's (a restarted guest has a new socket, same path)
    stream_inode: tuple[int, int] | None = None


class MetadataNetworks:
    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._helpers: dict[str, _Helper] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    # -- the guest's lifecycle -----------------------------------------------------------------
    def prepare(self, stream: Path) -> None:
        """Before QEMU starts: its socket directory exists (private) and no stale socket is left."""
        stream.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        stream.unlink(missing_ok=True)
        _pid_file(stream).unlink(missing_ok=True)

    def ensure(self, server_uuid: str, stream: Path, metadata_socket: Path) -> None:
        """The guest (running, QEMU listening on `stream`) has a live helper. Idempotent."""
        with self._lock:
            helper = self._helpers.get(server_uuid)
            if helper is not None and self._alive(helper):
                return
            pid = _read_pid(stream)
            if helper is None and pid is not None and _is_helper(pid, server_uuid):
                self._helpers[server_uuid] = _Helper(server_uuid, stream, metadata_socket, pid,
                                                     stream_inode=_inode(stream))
                log.info("guest %s: adopted metadata network helper %d", server_uuid, pid)
            else:
                self._start(server_uuid, stream, metadata_socket)
            self._watch()

    def stop(self, server_uuid: str, stream: Path | None) -> None:
        """Stop the guest's helper (the guest is gone or going) and remove its files."""
        with self._lock:
            helper = self._helpers.pop(server_uuid, None)
        pid = helper.pid if helper else (_read_pid(stream) if stream else None)
        if pid is not None and (helper is not None or _is_helper(pid, server_uuid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if helper is not None and helper.proc is not None:
                try:
                    helper.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    helper.proc.kill()
                    helper.proc.wait()
        if stream is not None:
            stream.unlink(missing_ok=True)
            _pid_file(stream).unlink(missing_ok=True)

    def pid(self, server_uuid: str) -> int | None:
        with self._lock:
            helper = self._helpers.get(server_uuid)
            return helper.pid if helper is not None and self._alive(helper) else None

    # -- internals -------------------------------------------------------------------------------
    def _start(self, server_uuid: str, stream: Path, metadata_socket: Path) -> None:
        argv = [self.python, "-m", HELPER_MODULE, "--server", server_uuid, "--stream", str(stream),
                "--metadata-socket", str(metadata_socket),
                "--nfs-socket", str(nfs_socket_path(metadata_socket, server_uuid))]
        # own session: no terminal signals from the agent's, and it outlives an agent restart
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True)
        _pid_file(stream).write_text(f"{proc.pid}\n")
        self._helpers[server_uuid] = _Helper(server_uuid, stream, metadata_socket, proc.pid, proc,
                                             stream_inode=_inode(stream))
        log.info("guest %s: metadata network helper %d started", server_uuid, proc.pid)

    def _alive(self, helper: _Helper) -> bool:
        if helper.proc is not None:
            return helper.proc.poll() is None
        return _is_helper(helper.pid, helper.uuid)

    def _watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch_loop, name="metadata-net",
                                             daemon=True)
            self._watcher.start()

    def _watch_loop(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                for uuid, helper in list(self._helpers.items()):
                    if self._alive(helper):
                        continue
                    code = helper.proc.returncode if helper.proc is not None else None
                    if code in _DONE or not helper.stream.exists():
                        del self._helpers[uuid]  # its guest is gone (it powered off)
                        if helper.stream_inode is not None \
                                and _inode(helper.stream) == helper.stream_inode:
                            helper.stream.unlink(missing_ok=True)
                        if _read_pid(helper.stream) == helper.pid:
                            _pid_file(helper.stream).unlink(missing_ok=True)
                        continue
                    if time.monotonic() - helper.started < RESTART_BACKOFF:
                        continue
                    log.warning("guest %s: metadata network helper %d died (%s); starting it "
                                "again", uuid, helper.pid, code)
                    try:
                        self._start(uuid, helper.stream, helper.metadata_socket)
                    except OSError as exc:
                        log.error("guest %s: cannot start the metadata network helper: %s",
                                  uuid, exc)


def _inode(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` now: inode and change time (an inode number alone is reused
    at once when a socket is removed and made again)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def _pid_file(stream: Path) -> Path:
    return stream.with_suffix(".pid")


def _read_pid(stream: Path) -> int | None:
    try:
        return int(_pid_file(stream).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_helper(pid: int, server_uuid: str) -> bool:
    """`pid` is a live (not zombie) metadata network helper for this server."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and HELPER_MODULE.encode() in argv and server_uuid.encode() in argv
