"""Compute hosts as the API shows them: up or down by their heartbeat's age. Pure."""

from __future__ import annotations

import datetime as dt

SERVICE_BINARY = "nova-compute"  # what clients look for in os-services
ZONE = "nova"


def host_state(heartbeat_at: dt.datetime, forced_down: bool, now: dt.datetime,
               down_after: float) -> str:
    """`up` while its agent heartbeat is younger than `down_after` seconds and an admin has not
    forced it down; else `down` (the compute service's service_down_time rule)."""
    if forced_down or (now - heartbeat_at).total_seconds() > down_after:
        return "down"
    return "up"
