"""Reading what a guest prints on its serial console as it happens (QEMU appends to a file)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TAIL_POLL = 0.02  # seconds between reads of a console log (and API polls while tailing)


class ConsoleTail:
    """The text a console log gains from now on: the file is kept open and only the new bytes
    are read (QEMU appends to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.text = ""
        self._file: IO[bytes] | None = None

    def read(self) -> str:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open between reads
            except FileNotFoundError:
                return self.text
            self._file.seek(self.offset)
        data = self._file.read()
        if data:
            self.text += data.decode(errors="replace")
        return self.text

    def wait(self, needle: str, timeout: float, tick: Callable[[], None] | None = None) -> float:
        """perf_counter() of the first read that shows `needle` (late by <= TAIL_POLL)."""
        deadline = time.monotonic() + timeout
        while True:
            if needle in self.read():
                return time.perf_counter()
            if tick is not None:
                tick()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not on the console of {self.path.name} after "
                                   f"{timeout:.0f}s; it shows:\n{self.text[-2000:]}")
            time.sleep(TAIL_POLL)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@contextlib.contextmanager
def tail(path: Path) -> Iterator[ConsoleTail]:
    t = ConsoleTail(path)
    try:
        yield t
    finally:
        t.close()
