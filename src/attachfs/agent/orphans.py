"""virtiofsd daemons that serve one of our host mounts while no running guest uses it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attachfs.agent.reconciler import Reconciler

log = logging.getLogger(__name__)
ORPHAN_GRACE = 60.0  # seconds: libvirt starts virtiofsd just before the guest it serves


def kill_orphaned_virtiofsd(r: Reconciler) -> None:
    root = str(r.config.mount_root)
    in_use: set[str] = set()
    for uuid, state in r.virt.list_guests().items():
        if state == "running":
            in_use |= {str(p) for p in r.virt.guest_devices(uuid).values()}
    for pid, argv in _processes():
        args = " ".join(argv)
        if not argv or not argv[0].endswith("virtiofsd") or root not in args:
            continue
        if any(path in args for path in in_use) or _age(pid) < ORPHAN_GRACE:
            continue
        log.warning("repair: killing orphaned virtiofsd %d (%s)", pid, args)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _processes() -> list[tuple[int, list[str]]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        out.append((int(entry), [a.decode(errors="replace") for a in raw.split(b"\0") if a]))
    return out


def _age(pid: int) -> float:
    """Seconds since the process started (0 if it is gone)."""
    try:
        started_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
