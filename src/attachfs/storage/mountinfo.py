"""Host mounts as the kernel sees them (/proc/self/mountinfo), and mount/umount calls."""

from __future__ import annotations

import subprocess
from pathlib import Path

from attachfs.errors import PermanentError, TemporaryError


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def mount_points(under: Path | None = None) -> list[Path]:
    """Mount points currently on this host, optionally only those below `under`."""
    points: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = Path(_unescape(line.split()[4]))
            if under is None or under in point.parents:
                points.append(point)
    return points


def is_mountpoint(path: Path) -> bool:
    return path in mount_points(path.parent)


def run(argv: list[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"{argv[0]} timed out after {timeout}s") from exc
    except OSError as exc:
        raise PermanentError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise PermanentError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unmount(target: Path) -> None:
    """Unmount every layer at `target`, then remove the empty directory. Idempotent."""
    while is_mountpoint(target):
        run(["umount", str(target)])
    try:
        target.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PermanentError(f"cannot remove mount point {target}: {exc}") from exc
