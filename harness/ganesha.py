"""A throw-away NFSv4 server on 127.0.0.1: one nfs-ganesha (Debian's nfs-ganesha and
nfs-ganesha-vfs packages) exporting one host directory through FSAL VFS. For tests/nfs: the NFS
side of attachfs's FUSE connector (storage/nfs_fuse.py), on hosts whose kernel has no NFS client.

Everything lives under one directory: ganesha.conf, ganesha.log, ganesha.pid, the NFSv4 recovery
root (recovery/) and the exported directory itself (export/), which tests read and write directly
to check what went through NFS. The server listens on a free port of 127.0.0.1 only, speaks NFSv4
only (no rpcbind, MOUNT, NLM or rquota: with none of them it needs no portmapper) and skips the
grace period, so a (re)start serves at once: start() returns in 0.03-0.15 s (measured, until an
nfs-rs client lists the export), stop() in about 0.02 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import nfs_rs

from attachfs.storage import mountinfo
from attachfs.virt.ganesha import Client, Export, ganesha_conf
from harness.process import Tracked, free_port, processes_mentioning

__all__ = ["EXPORT_PSEUDO", "GaneshaServer", "running_ganesha"]

HOST = "127.0.0.1"
# The export's path in the server's NFSv4 pseudo filesystem: what a client names.
EXPORT_PSEUDO = "/export"


def _conf(directory: Path, port: int) -> str:
    """attachfs's own configuration (virt/ganesha.py) with one export of export/ to
    127.0.0.1, read-write."""
    client = Client(HOST, "harness", "export", read_only=False)
    return ganesha_conf(directory, port, [Export(1, str(directory / "export"), EXPORT_PSEUDO,
                                                 (client,))])


class GaneshaServer:
    """One nfs-ganesha under `directory`, exporting `directory`/export (created if absent, kept
    across restarts) as nfs://127.0.0.1:PORT/export. `start()` returns when an NFSv4.1 client
    (nfs-rs) lists the export; `stop()` leaves no daemon, or raises saying what is left. A
    stopped server starts again on the same port, with the same data (outage tests).

    `port`: 0 for a free one, chosen by the first start and kept by the next ones.
    `die_with_parent`: the daemon gets SIGKILL when the process that started it dies (tests).
    As a context manager: started on the way in, stopped on the way out."""

    def __init__(self, directory: Path, *, port: int = 0, die_with_parent: bool = True) -> None:
        self.dir = directory.resolve()
        self.die_with_parent = die_with_parent
        self.port = port
        self.daemon: Tracked | None = None
        self.start_seconds = 0.0

    def __enter__(self) -> GaneshaServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- where it is -------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.dir / "ganesha.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "ganesha.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "ganesha.pid"

    @property
    def export_dir(self) -> Path:
        """The host directory behind the export: what the server reads and writes."""
        return self.dir / "export"

    @property
    def host(self) -> str:
        return HOST

    @property
    def export_path(self) -> str:
        return EXPORT_PSEUDO

    @property
    def export_location(self) -> str:
        """The export as Manila's NFS drivers name one: "nfs://127.0.0.1:PORT/export"."""
        return f"nfs://{HOST}:{self.port}{EXPORT_PSEUDO}"

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        """Start the server (again: same port, same exported data) and wait until it serves."""
        if self.running():
            raise RuntimeError(f"nfs-ganesha under {self.dir} is already running")
        began = time.monotonic()
        if not self.export_dir.exists():
            self.export_dir.mkdir(parents=True)
            self.export_dir.chmod(0o755)  # whatever the umask: what an export usually is
        (self.dir / "recovery").mkdir(exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.conf_path.write_text(_conf(self.dir, self.port))
        self.pid_path.unlink(missing_ok=True)
        # -F: foreground, a child in its own session whose exit is ours to reap (a daemonized
        # ganesha is an orphan that PID 1 reaps late). Its own log (-L) holds the details; the
        # output file gets what it prints before the log is open (a bad config).
        argv = ["ganesha.nfsd", "-F", "-f", str(self.conf_path), "-L", str(self.log_path),
                "-p", str(self.pid_path)]
        try:
            self.daemon = Tracked.spawn("ganesha.nfsd", argv, self.dir / "ganesha.out",
                                        die_with_parent=self.die_with_parent)
            self._wait_serving(timeout)
        except BaseException:
            self.stop(check=False)
            raise
        self.start_seconds = time.monotonic() - began

    def running(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def _check_daemon(self) -> None:
        assert self.daemon is not None
        if not self.daemon.alive():
            raise RuntimeError(f"ganesha.nfsd (pid {self.daemon.pid}) exited; its output:\n"
                               f"{self.daemon.tail()}\nlog: {self._log_tail()}")

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(none)"

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_daemon()
            why = self._not_serving()
            if not why:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nfs-ganesha on {HOST}:{self.port} not serving "
                                   f"{EXPORT_PSEUDO} after {timeout:.0f}s: {why}")
            time.sleep(0.02)

    def _not_serving(self) -> str:
        """Why an NFSv4.1 client cannot list the export yet (empty when it can)."""
        try:
            socket.create_connection((HOST, self.port), timeout=1).close()
        except OSError as exc:
            return f"port {self.port}: {exc}"
        try:
            self.list_export()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            return f"{type(exc).__name__}: {exc}"
        return ""

    def client(self, timeout: float = 5) -> nfs_rs.Client:
        """An NFSv4.1 client of the server's pseudo root (close it). nfs-rs cannot stat or
        list the root of the mount it connected to ("bad name"), so export paths are named
        from the pseudo root: "export/…"."""
        return nfs_rs.Client.connect(f"nfs://{HOST}:{self.port}/?version=4.1",
                                     connect_timeout=timeout, operation_timeout=timeout)

    def list_export(self) -> list[str]:
        """The names in the export, as an NFS client sees them."""
        with self.client() as c:
            return c.listdir(EXPORT_PSEUDO.lstrip("/"))

    def stop(self, check: bool = True, timeout: float = 30) -> None:
        """SIGTERM (ganesha shuts down cleanly in well under a second), SIGKILL to the
        process group after 5 s, and wait until it is reaped, not merely a zombie. The exported
        data stays. `check`: raise if anything is left."""
        d = self.daemon
        if d is not None and d.state() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.pid, signal.SIGTERM)
            if not d.wait_gone(5):
                d.kill()
                d.wait_gone(timeout)
        left = self.leftovers()
        if check and left:
            raise RuntimeError(f"nfs-ganesha under {self.dir} left: " + "; ".join(left))

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    def leftovers(self) -> list[str]:
        """What is left of the server: its daemon by pid and start time (zombies included), any
        process whose command line names its directory, any mount below it."""
        left = []
        tracked = set()
        if self.daemon is not None:
            tracked.add(self.daemon.pid)
            state = self.daemon.state()
            if state is not None:
                left.append(f"ganesha.nfsd pid {self.daemon.pid} (state {state})")
        left += [f"pid {pid}: {cmd[:120]}" for pid, cmd in processes_mentioning(self.dir)
                 if pid not in tracked]
        left += [f"mount {p}" for p in mountinfo.mount_points(self.dir)]
        return left

    def destroy(self) -> None:
        """stop(), then remove the directory."""
        self.stop()
        shutil.rmtree(self.dir)


@contextmanager
def running_ganesha(directory: Path, **kwargs: Any) -> Iterator[GaneshaServer]:
    """A started server under `directory`, stopped on the way out (nothing left, or an error
    saying what is)."""
    with GaneshaServer(directory, **kwargs) as server:
        yield server
