"""Checks on values tenants send that end up somewhere else: a guest's mount table (mount_point)
and the API's own CPU (the server list's `name` regular expression). Pure: no I/O.

The guest agent (virt/guest/attachfs-guest-agent) applies the same mount point rule again, for
metadata written by older versions.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import re2

# Mount paths (the /mnt/<tag> default, overlaps) live in core/rules.py; still importable here.
from attachfs.core.rules import guest_mount_point as guest_mount_point
from attachfs.core.rules import mount_points_overlap as mount_points_overlap
from attachfs.errors import BadRequest

MOUNT_POINT_MAX = 255
# One path component: a conservative charset, so a mount point never needs quoting or escaping
# anywhere (shell words, /proc/mounts' octal escapes, the agent's tab-separated files).
_COMPONENT = re.compile(r"[A-Za-z0-9._+@-]+")
# First components a share must never cover in the guest: its kernel interfaces, its system
# and its scratch space (/run holds the guest agent's own state, /tmp and /var the system's).
RESERVED_TOP = frozenset({"proc", "sys", "dev", "run", "etc", "bin", "sbin", "usr", "boot",
                          "tmp", "var", "lib", "lib32", "lib64", "libx32"})


def mount_point_problem(path: str) -> str | None:
    """Why `path` is not an acceptable guest mount point, or None when it is."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if len(path.encode()) > MOUNT_POINT_MAX:
        return f"must be at most {MOUNT_POINT_MAX} bytes"
    if not path.startswith("/"):
        return "must be an absolute path (start with /)"
    if path == "/":
        return "must not be / (the guest's root)"
    if path.endswith("/"):
        return "must not end with /"
    components = path[1:].split("/")
    if "" in components:
        return "must not contain // (empty components)"
    for component in components:
        if component in (".", ".."):
            return "must be normalized: no . or .. components"
        if not _COMPONENT.fullmatch(component):
            return ("components may use only letters, digits and . _ + @ - (no spaces, "
                    "control characters, backslashes or other symbols)")
    if components[0] in RESERVED_TOP:
        return f"must not be under /{components[0]} (a guest system directory)"
    return None


def validate_mount_point(path: str | None) -> str | None:
    """The API's one mount point check (share_attach, os-filesystem create, ...): 400 naming
    the rule that failed. None (not given) is allowed: the guest uses /mnt/<tag>."""
    if path is None:
        return None
    problem = mount_point_problem(path)
    if problem is not None:
        raise BadRequest(f"Invalid input for field/attribute mount_point: {path!r} {problem}")
    return path


NAME_FILTER_MAX = 255
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a tenant's bad pattern is a 400, not a line in our log
_RE2_OPTIONS.max_mem = 1 << 20  # bounds the compiled program (e.g. a{1000}{1000} is refused)


def name_filter(pattern: str) -> Callable[[str], bool]:
    """The server list's `name` filter: a regular expression searched in the name, as the
    compute API does, run by RE2 (linear time: no pattern can stall the process). Patterns
    RE2 cannot run (backreferences, lookaround) and over-long ones are a 400."""
    if len(pattern) > NAME_FILTER_MAX:
        raise BadRequest(f"Invalid name filter: at most {NAME_FILTER_MAX} characters")
    try:
        compiled = re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(
            exc.args[0], bytes) else str(exc)
        raise BadRequest(f"Invalid regular expression for name: {detail} (the name filter "
                         "is a linear-time RE2 expression: no backreferences or "
                         "lookaround)") from exc

    def matches(name: str) -> bool:
        return compiled.search(name) is not None

    return matches
