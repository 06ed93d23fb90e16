"""Servers in their own processes (so a client and its server do not share a GIL, and a test
can kill -9 one), waiting for them, and free loopback ports."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
