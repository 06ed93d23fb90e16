"""Compute API microversions: `OpenStack-API-Version: compute X.Y` or the legacy header."""

from __future__ import annotations

import re
from dataclasses import dataclass

from attachfs.errors import BadRequest, NotAcceptable

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 97)
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
        major, minor = text.split(".")
        return (self.major, self.minor) >= (int(major), int(minor))


def fmt(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


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
                            f"{fmt(MIN_VERSION)} and maximum is {fmt(MAX_VERSION)}.")
    return version
