"""The create body's checks: what the built-in shares can honour, and 400 for the rest."""

from __future__ import annotations

import re
from typing import Any

from attachfs.core.rules import BUILTIN_PROTOCOL, BUILTIN_PROTOCOLS
from attachfs.errors import BadRequest
from attachfs.shareservice.discovery import DEFAULT_TYPE_ID

PROTOCOL = BUILTIN_PROTOCOL
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # os-filesystem's form

# Keys a create may carry (the CLI sends most of them, as null); those the built-in provider
# cannot honour are refused when given a value.
_CREATE_KEYS = {"share_proto", "size", "name", "display_name", "description",
                "display_description", "snapshot_id", "metadata", "share_network_id",
                "share_type", "volume_type", "is_public", "availability_zone",
                "share_group_id", "consistency_group_id", "scheduler_hints", "mount_point_name",
                "encryption_key_ref"}
_UNSUPPORTED = ("description", "display_description", "snapshot_id", "share_network_id",
                "share_group_id", "consistency_group_id", "mount_point_name",
                "encryption_key_ref")


def parse_create(body: Any) -> tuple[str | None, int, bool, str]:
    if not isinstance(body, dict) or not isinstance(body.get("share"), dict):
        raise BadRequest("The request body must be {\"share\": {...}}")
    spec: dict[str, Any] = body["share"]
    unknown = sorted(set(spec) - _CREATE_KEYS)
    if unknown:
        raise BadRequest(f"Unknown keys in the share: {', '.join(unknown)}")
    proto = spec.get("share_proto")
    if not isinstance(proto, str) or proto.upper() not in BUILTIN_PROTOCOLS:
        raise BadRequest(f"Invalid share protocol {proto!r}: attachfs's built-in shares are "
                         f"protocol {PROTOCOL} (a directory on the host, handed to guests "
                         "through it) or NFS (the same, also served over NFS to the guests "
                         "granted a rule)")
    size = spec.get("size")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    if isinstance(size, bool) or not isinstance(size, int | str) \
            or not (str(size).isascii() and str(size).isdigit()) or int(size) < 1:
        raise BadRequest(f"Share size must be an integer >= 1, not {size!r}")
    for key in _UNSUPPORTED:
        if spec.get(key) not in (None, ""):
            raise BadRequest(f"{key} is not supported by attachfs's built-in shares")
    if spec.get("metadata") not in (None, {}):
        raise BadRequest("metadata is not supported by attachfs's built-in shares")
    if spec.get("scheduler_hints") not in (None, {}):
        raise BadRequest("scheduler_hints are not supported by attachfs's built-in shares")
    if spec.get("share_type") not in (None, "", "default", DEFAULT_TYPE_ID) or \
            spec.get("volume_type") not in (None, "", "default", DEFAULT_TYPE_ID):
        raise BadRequest("Share type not found: attachfs has one share type, 'default'")
    if spec.get("availability_zone") not in (None, "", "nova"):
        raise BadRequest("Availability zone not found: attachfs has one, 'nova'")
    name = spec.get("name") or spec.get("display_name")
    if name is not None and (not isinstance(name, str) or not NAME.match(name)):
        raise BadRequest("Share name must be 1-255 characters of [A-Za-z0-9._-], starting "
                         "with a letter or digit")
    public = spec.get("is_public")
    if isinstance(public, str):
        public = public.lower() in ("1", "true", "yes")
    return name, int(size), bool(public), proto.upper()
