"""What the agent knows about its own health: is the database reachable, is the hypervisor,
how many servers wait, which fail. Kept in memory (an outage of the database is exactly when
it cannot be written there) and read by the API's /v2.1/os-attachfs-health in the same process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Dependency:
    """One thing the agent depends on: up, or down since when and why."""

    ok: bool = True
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    failures: int = 0

    def succeeded(self) -> None:
        if not self.ok:
            self.ok, self.since = True, time.time()
        self.failures = 0

    def failed(self, error: str) -> None:
        if self.ok:
            self.ok, self.since = False, time.time()
        self.failures += 1
        self.last_error = error

    def view(self) -> dict[str, Any]:
        return {"ok": self.ok, "since": round(self.since, 3), "failures": self.failures,
                "last_error": self.last_error}


class AgentHealth:
    def __init__(self, host: str) -> None:
        self.host = host
        self.started = time.time()
        self.database = Dependency()
        self.hypervisor = Dependency()
        self.passes = 0
        self.last_pass: float | None = None
        self.queued = 0
        self.retrying: dict[str, str] = {}  # server uuid -> last error of its failing passes
        self._lock = threading.Lock()

    def pass_done(self, uuid: str, error: str | None) -> None:
        with self._lock:
            self.passes += 1
            self.last_pass = time.time()
            if error is None:
                self.retrying.pop(uuid, None)
            else:
                self.retrying[uuid] = error

    def view(self) -> dict[str, Any]:
        with self._lock:
            retrying = dict(sorted(self.retrying.items())[:50])
            return {"host": self.host, "status": "ok" if self.database.ok and self.hypervisor.ok
                    else "degraded", "started": round(self.started, 3),
                    "database": self.database.view(), "hypervisor": self.hypervisor.view(),
                    "passes": self.passes, "last_pass": self.last_pass, "queued": self.queued,
                    "retrying": retrying, "retrying_count": len(self.retrying)}


_CURRENT: list[AgentHealth] = []


def register(health: AgentHealth) -> None:
    """The agent of this process (the API shows it); a later agent replaces an earlier one."""
    _CURRENT[:] = [health]


def current() -> AgentHealth | None:
    return _CURRENT[0] if _CURRENT else None
