"""Placement: the host a new server runs on. Pure: filters, then a weigher (docs/hosts.md).

Filters, in order, each dropping hosts that cannot take the server:
  up          its agent's heartbeat is recent and no admin forced it down
  enabled     no admin disabled it
  containers  a container flavor needs a host that runs containers
  transport   a flavor that names a share transport needs a host that offers it
  shares      a server that moves needs a host that offers every transport its shares use
  memory      its memory less what its servers were given covers the flavor's
Weigher: the most free memory first, then the fewest servers, then the name (stable). No
registered host at all (an API before its first agent, or the one-host embedded default's first
start): the configured `[agent] host`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str
    up: bool
    enabled: bool
    containers: bool
    transports: frozenset[str]
    memory_mib: int
    memory_used_mib: int
    servers: int

    @property
    def free_mib(self) -> int:
        return self.memory_mib - self.memory_used_mib


@dataclass(frozen=True)
class Needs:
    memory_mib: int
    container: bool = False
    transport: str | None = None  # the flavor's share transport, when it names one
    shares: frozenset[str] = frozenset()  # transports the server's attachments use (a move)


FILTERS: tuple[tuple[str, Callable[[Candidate, Needs], bool]], ...] = (
    ("down", lambda c, n: c.up),
    ("disabled", lambda c, n: c.enabled),
    ("no containers", lambda c, n: c.containers or not n.container),
    ("without the flavor's transport", lambda c, n: n.transport is None
     or n.transport in c.transports),
    ("without a transport its shares use", lambda c, n: n.shares <= c.transports),
    ("without enough free memory", lambda c, n: c.free_mib >= n.memory_mib),
)


def place(candidates: list[Candidate], needs: Needs) -> tuple[str | None, str]:
    """(the chosen host, "") or (None, why: how many hosts each filter dropped)."""
    left, dropped = list(candidates), []
    for name, keep in FILTERS:
        kept = [c for c in left if keep(c, needs)]
        if len(kept) < len(left):
            dropped.append(f"{len(left) - len(kept)} {name}")
        left = kept
    if not candidates:
        return None, "No valid host was found. No host is registered."
    if not left:
        return None, (f"No valid host was found. Of {len(candidates)} host(s): "
                      + ", ".join(dropped) + ".")
    best = min(left, key=lambda c: (-c.free_mib, c.servers, c.name))
    return best.name, ""
