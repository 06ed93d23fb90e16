"""What a running virtiofsd serves: whether its view of the share is writable.

virtiofsd (sandbox=namespace) bind-mounts its shared directory into a mount namespace of its
own when it starts and pivots into it, so the share is the root mount of that namespace and
keeps the flags the host mount had *then*. A host mount made read-only later does not change
it (mount flags do not propagate between namespaces): only a new virtiofsd sees the change.
This is how the reconciler tells a device that still serves a read-only share writable.
"""

from __future__ import annotations

from pathlib import Path


def root_writable(pid: int, proc: Path = Path("/proc")) -> bool | None:
    """Whether process `pid`'s root mount is read-write; None when it cannot be told (the
    process is gone, or its mount table has no root)."""
    try:
        text = (proc / str(pid) / "mountinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[4] == "/":
            return "rw" in fields[5].split(",")
    return None


def pid_of(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
