"""Compute API microversions: `OpenStack-API-Version: compute X.Y` or the legacy header."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from attachfs.errors import BadRequest, NotAcceptable

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 104)  # Nova 34 (2025.2) and 35's maximum
HEADERS = ("OpenStack-API-Version", "X-OpenStack-Nova-API-Version")
VARY = ", ".join(HEADERS)
_RE = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def at_least(self, text: str) -> bool:
        return (self.major, self.minor) >= _parsed(text)


@functools.lru_cache(maxsize=256)  # the code's own literals: a server view asks ~20 a server
def _parsed(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def fmt(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


# attachfs's own extensions, asked for beside the compute version:
#   OpenStack-API-Version: compute 2.97, attachfs 1.1
# 1.1: read-only attachments (`read_only` in the attach body and in attachment views).
# 1.2: `retry` in the attach body drives an attachment in `error` again.
# 1.3: `transport` (virtiofs, 9p, nfs) in the attach body and in attachment views;
#      GET /servers/{id}/shares/{share_id}/mount_info.
# Any extension version also adds `os-extended-shares:shares_attached` to server bodies.
EXT_SERVICE = "attachfs"
EXT_MAX = (1, 3)


def parse_extension(openstack_header: str | None) -> Version | None:
    """The attachfs extension version asked for, or None (then bodies are exactly 2.97's)."""
    for part in (openstack_header or "").split(","):
        service, _, value = part.strip().partition(" ")
        if service.lower() != EXT_SERVICE:
            continue
        value = value.strip()
        if value.lower() == "latest":
            return Version(*EXT_MAX)
        m = _RE.match(value)
        if not m:
            raise BadRequest(f"attachfs API version {value} is of invalid format")
        version = Version(int(m.group(1)), int(m.group(2)))
        if not (Version(1, 0) <= version <= Version(*EXT_MAX)):
            raise NotAcceptable(f"attachfs API version {value} is not supported; "
                                f"minimum 1.0, maximum {fmt(EXT_MAX)}")
        return version
    return None


def parse(openstack_header: str | None, nova_header: str | None) -> Version:
    """Pick the requested version; no header means the minimum, as the compute API does."""
    text: str | None = None
    if openstack_header:
        for part in openstack_header.split(","):
            service, _, value = part.strip().partition(" ")
            if service.lower() == "compute":
                text = value.strip()
    if text is None and nova_header:
        text = nova_header.strip()
    if not text:
        return Version(*MIN_VERSION)
    if text.lower() == "latest":
        return Version(*MAX_VERSION)
    m = _RE.match(text)
    if not m:
        raise BadRequest(f"API Version String {text} is of invalid format. Must be of format "
                         "MajorNum.MinorNum.")
    version = Version(int(m.group(1)), int(m.group(2)))
    if not (Version(*MIN_VERSION) <= version <= Version(*MAX_VERSION)):
        raise NotAcceptable(f"Version {text} is not supported by the API. Minimum is "
                            f"{fmt(MIN_VERSION)} and maximum is {fmt(MAX_VERSION)}.", text)
    return version
