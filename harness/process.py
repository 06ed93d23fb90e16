"""Servers in their own processes (so a client and its server do not share a GIL, and a test
can kill -9 one), waiting for them, and free loopback ports; daemons known by pid and start time
(`Tracked`), so that another process can still tell whether they are gone."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 120,
             interval: float = 0.3) -> T:
    """Call `fn` every `interval` s until it returns something true (returned); TimeoutError
    naming `what` and the last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        last: Any = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} "
                               f"(last: {last!r})")
        time.sleep(interval)


class Proc:
    """An HTTP server in its own process, its output appended to `log`; started when `probe`
    answers 200 on 127.0.0.1:`port`."""

    def __init__(self, argv: list[str], log: Path, port: int, cwd: Path | None = None) -> None:
        self.argv, self.log, self.port, self.cwd = argv, log, port, cwd
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, probe: str, timeout: float = 60) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.cwd)
        with httpx.Client(base_url=self.url, timeout=5) as c:
            wait_for(f"{self.argv[:3]} to answer", lambda: self._answers(c, probe), timeout, 0.1)

    def _answers(self, client: httpx.Client, probe: str) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.argv[:3]} exited {self.proc.returncode}:\n{self.tail()}")
        try:
            return client.get(probe).status_code == 200
        except httpx.TransportError:
            return False

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 60 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def running(argv: list[str], log: Path, port: int, probe: str,
            cwd: Path | None = None) -> Iterator[Proc]:
    """A started Proc, stopped on the way out."""
    proc = Proc(argv, log, port, cwd)
    try:
        proc.start(probe)
        yield proc
    finally:
        proc.stop()


# ---- daemons known by pid and start time -----------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of `pid`, or None if there is no
    such process. State `Z` is a process that exited and is not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # comm may hold spaces and ')'
    return fields[0], int(fields[19])


@dataclass
class Tracked:
    """A daemon started in its own session (process group = pid), named by pid AND start time:
    a pid is reused once reaped, so only both tell that it is still this process. `proc` is set
    in the process that started it (which reaps it); another process (a later `stop` from the
    command line) sees the orphan, which PID 1 reaps only seconds after it exits."""

    name: str
    pid: int
    start_time: int
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def spawn(cls, name: str, argv: list[str], log: Path, *, die_with_parent: bool) -> Tracked:
        """`die_with_parent`: SIGKILL when this process dies, even by SIGKILL, so that an
        interrupted test run leaves no daemon behind (setpriv sets it and execs: no Python
        between fork and exec, which is unsafe in a process with threads)."""
        if die_with_parent:
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        stat = proc_stat(proc.pid)
        assert stat is not None, f"{name}: pid {proc.pid} vanished before being reaped"
        return cls(name, proc.pid, stat[1], log, proc)

    def state(self) -> str | None:
        """The process state letter (`Z`: exited, not reaped), or None when it is gone."""
        if self.proc is not None:
            self.proc.poll()  # ours: reap it if it exited
        stat = proc_stat(self.pid)
        if stat is None or stat[1] != self.start_time:
            return None
        return stat[0]

    def alive(self) -> bool:
        return self.state() not in (None, "Z", "X")

    def kill(self) -> None:
        """SIGKILL its whole process group, if it is still this process."""
        if self.state() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def wait_gone(self, timeout: float = 30) -> bool:
        """Wait until it is reaped (not merely a zombie); False after `timeout` s."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self.state() is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time,
                "log": str(self.log)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Tracked:
        return cls(str(d["name"]), int(d["pid"]), int(d["start_time"]), Path(d["log"]))


def processes_mentioning(path: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process with `path`, or a path below it, among its
    arguments, except this process and its ancestors (a shell or tool given the same path)."""
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    root = str(path)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        argv = args.split("\0")
        if any(a == root or a.startswith(root + "/") for a in argv):
            found.append((int(entry), " ".join(argv).strip()))
    return found


def processes_running(program: str, under: Path) -> list[int]:
    """PIDs of the processes running `program` (a command such as ceph-fuse, or a module run
    with `python -m`) with `under`, or a path below it, among their arguments."""
    return [pid for pid, cmd in processes_mentioning(under)
            if any(a == program or a.endswith("/" + program) for a in cmd.split()[:3])]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out
