"""An in-memory host: its mounts (path -> options, the MountTable), a connector that mounts
exports there, and a share provider that keeps access rules."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from attachfs.errors import NotFound, PermanentError
from attachfs.storage.base import HostCredentials, RequestContext, ShareInfo
from tests.fakes.faults import Faults

SAFE = frozenset({"rw", "nosuid", "nodev"})


@dataclass
class FakeHost:
    """MountTable + HostConnector (protocol LOCAL) over one dict."""

    mounts: dict[Path, frozenset[str]] = field(default_factory=dict)
    sources: dict[Path, str] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    protocol: str = "LOCAL"

    def table(self, under: Path) -> dict[Path, frozenset[str]]:
        self.faults.check("table")
        return {p: o for p, o in self.mounts.items() if under in p.parents}

    def set_options(self, target: Path, options: str) -> None:
        self.faults.check("set_options")
        wanted = {o for o in options.split(",") if o}
        self.mounts[target] = frozenset(wanted | ({"rw"} if "ro" not in wanted else set()))

    needs_credentials = False

    def mount(self, export_location: str, target: Path, read_only: bool,
              credentials: HostCredentials | None = None) -> None:
        self.faults.check("mount")
        if export_location.endswith("/missing"):
            raise PermanentError(f"share directory {export_location} does not exist")
        if target in self.mounts:
            return
        self.mounts[target] = SAFE - {"rw"} | {"ro"} if read_only else SAFE
        self.sources[target] = export_location

    def release_unused(self) -> list[str]:
        return []

    def unmount(self, target: Path) -> None:
        self.faults.check("unmount")
        self.mounts.pop(target, None)
        self.sources.pop(target, None)


@dataclass
class FakeProvider:
    """Shares and the access rules of hosts on them."""

    name: str = "fake"
    rules: dict[tuple[str, str], str] = field(default_factory=dict)  # (share, host) -> level
    faults: Faults = field(default_factory=Faults)
    # looks before a new rule is in effect (or a revoked one gone), as Manila applies rules
    # asynchronously; 0: at once
    apply_delay: int = 0
    _applying: dict[tuple[str, str], int] = field(default_factory=dict)

    def _settled(self, key: tuple[str, str]) -> bool:
        left = self._applying.setdefault(key, self.apply_delay)
        if left > 0:
            self._applying[key] = left - 1
            return False
        del self._applying[key]
        return True

    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        raise NotFound(f"share {share_id}")

    def list_shares(self, context: RequestContext) -> list[ShareInfo]:
        self.faults.check("list_shares")
        return []

    def fences(self, share_id: str) -> bool:
        return True

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> bool:
        self.faults.check("grant_access")
        self.rules[(share_id, host)] = access_level
        return self._settled((share_id, host))

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> bool:
        self.faults.check("revoke_access")
        self.rules.pop((share_id, host), None)
        return self._settled((share_id, host))

    def host_credentials(self, share_id: str, host: str) -> HostCredentials | None:
        return None

    def access_levels(self, share_ids: Collection[str], host: str) -> dict[str, str]:
        self.faults.check("access_levels")
        return {s: self.rules[(s, host)] for s in share_ids if (s, host) in self.rules}


@dataclass
class ShareCatalog(FakeProvider):
    """A share service's shares, of any protocol and status (the compute service's checks of
    a share: status, export location, protocol), with the access rules of FakeProvider."""

    known: dict[str, ShareInfo] = field(default_factory=dict)

    def add(self, protocol: str = "NFS", status: str = "available", exported: bool = True,
            project_id: str = "p1") -> str:
        share_id = str(uuid.uuid4())
        exports = (f"192.0.2.1:/shares/{share_id}",) if exported else ()
        self.known[share_id] = ShareInfo(share_id, "s", status, protocol, exports, project_id, 1)
        return share_id

    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        """As the share service shows them: a project's shares to that project (and admins)."""
        share = self.known.get(share_id)
        if share is None or not (context.is_admin or share.project_id == context.project_id):
            raise NotFound(f"Share {share_id} could not be found.")
        return share

    def list_shares(self, context: RequestContext) -> list[ShareInfo]:
        self.faults.check("list_shares")
        return [s for s in self.known.values()
                if context.is_admin or s.project_id == context.project_id]
