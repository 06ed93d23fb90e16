"""Every host path attachfs touches must stay under its configured root."""

from __future__ import annotations

import os
from pathlib import Path

from attachfs.errors import PermanentError


def under_root(root: Path, *parts: str) -> Path:
    """Join `parts` onto `root` and refuse anything that resolves outside it (.., symlinks)."""
    root = Path(os.path.realpath(root))
    path = Path(os.path.realpath(root.joinpath(*parts)))
    if path != root and root not in path.parents:
        raise PermanentError(f"path {path} escapes its root {root}")
    return path


def check_under(root: Path, path: Path) -> Path:
    """Refuse an absolute `path` that does not resolve to `root` or below it."""
    return under_root(root, str(path))


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it root's alone (0700): state, shares and mounts
    hold tenants' data and sockets that no other host user may reach."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
