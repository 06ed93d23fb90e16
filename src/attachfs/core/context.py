"""Who is asking (`RequestContext`) and what a share looks like to the core (`ShareInfo`).

Defined here, in the core, and used by every layer: the API builds them, handlers decide with
them, storage providers take them (storage/base.py names them for its interfaces).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShareInfo:
    id: str
    name: str
    status: str  # "available" when it can be attached
    protocol: str  # LOCAL, NFS, CEPHFS
    export_locations: tuple[str, ...]
    project_id: str
    size_gib: int
    scope: str = "instance"  # instance | project | global (built-in provider)
    mount_point: str | None = None  # where the guest should mount it, when the share says
    # A built-in NFS share's export, for transport direct (the guest mounts it itself)
    nfs_export: str = ""

    @property
    def preferred_export(self) -> str:
        return self.export_locations[0] if self.export_locations else ""


@dataclass(frozen=True)
class RequestContext:
    """Who is asking: forwarded to providers so the share service's records name the user."""

    user_id: str
    project_id: str
    roles: tuple[str, ...] = ()
    auth_token: str | None = None
    request_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
