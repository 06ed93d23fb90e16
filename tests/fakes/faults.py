"""Make a fake's call fail: `faults.fail("attach_share", TemporaryError("..."), times=2)`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Faults:
    _planned: dict[str, list[Exception]] = field(default_factory=dict)
    _down: dict[str, Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def fail(self, call: str, error: Exception, times: int = 1) -> None:
        self._planned.setdefault(call, []).extend([error] * times)

    def down(self, call: str, error: Exception) -> None:
        """Every call named `call` (or "*") fails until `up()`."""
        self._down[call] = error

    def up(self) -> None:
        self._down.clear()

    def check(self, call: str) -> None:
        self.calls.append(call)
        for key in (call, "*"):
            if key in self._down:
                raise self._down[key]
        if self._planned.get(call):
            raise self._planned[call].pop(0)
