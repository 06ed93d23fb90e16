"""Compute hosts as the API shows them: up or down by their heartbeat's age. Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from attachfs.core.model import AttachmentStatus
from attachfs.core.ports import AttachedShare, HostRecord

SERVICE_BINARY = "nova-compute"  # what clients look for in os-services
ZONE = "nova"


def host_state(heartbeat_at: dt.datetime, forced_down: bool, now: dt.datetime,
               down_after: float) -> str:
    """`up` while its agent heartbeat is younger than `down_after` seconds and an admin has not
    forced it down; else `down` (the compute service's service_down_time rule)."""
    if forced_down or (now - heartbeat_at).total_seconds() > down_after:
        return "down"
    return "up"


IN_FLIGHT = (AttachmentStatus.ATTACHING, AttachmentStatus.DETACHING)

# The compute API's `host_status` of a server (microversion 2.16, admins).
HOST_UP, HOST_DOWN, HOST_MAINTENANCE, HOST_UNKNOWN = "UP", "DOWN", "MAINTENANCE", "UNKNOWN"


def host_status(host: HostRecord | None, now: dt.datetime, down_after: float) -> str:
    """DOWN when its agent is silent or an admin forced it down, MAINTENANCE when disabled,
    UP otherwise; UNKNOWN for a host name attachfs has no record of (the compute service's
    rule, with the agent's heartbeat as the service's)."""
    if host is None:
        return HOST_UNKNOWN
    if host_state(host.heartbeat_at, host.forced_down, now, down_after) == "down":
        return HOST_DOWN
    return HOST_MAINTENANCE if host.disabled else HOST_UP


@dataclass(frozen=True)
class StalledAttachment:
    """An attachment in flight that has not moved for too long, as the views show it: the row,
    with a fault that says why when nothing else has (an agent that fails says why itself)."""

    row: AttachedShare
    fault_message: str

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


def explain_stall(m: AttachedShare, host: str, status_of_host: str, now: dt.datetime,
                  stall_after: float, admin: bool) -> AttachedShare:
    """`m`, or `m` with a fault when it has been `attaching` or `detaching` for `stall_after`
    seconds and more without a word, because its host's agent is silent (down or unknown).
    Only an admin is told the host's name."""
    if m.status not in IN_FLIGHT or m.fault_message or status_of_host not in (HOST_DOWN,
                                                                             HOST_UNKNOWN):
        return m
    waited = (now - m.updated_at).total_seconds()
    if waited < stall_after:
        return m
    who = f"host {host}'s agent" if admin else "the agent of the server's host"
    return StalledAttachment(m, f"no progress for {waited:.0f}s: {who} is not running "
                                f"(it has sent no heartbeat); it carries on when it is back")
