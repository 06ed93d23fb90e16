"""Storage interfaces: providers (where shares come from) and connectors (how a host mounts).

A provider answers for shares the way the shared-file-system service does (status, protocol,
export locations) and manages access rules for compute hosts, with locks so a tenant cannot
drop the rule under a running guest. The built-in provider is storage/local.py; Manila fits
the same interface later. A connector turns an export location into a mount on this host.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# Who asks and what a share looks like are the core's words; providers take them.
from attachfs.core.context import RequestContext as RequestContext
from attachfs.core.context import ShareInfo as ShareInfo


class ShareProvider(Protocol):
    name: str

    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        """Raise NotFound when the share does not exist or is not visible to `context`."""

    def list_shares(self, context: RequestContext) -> list[ShareInfo]:
        """The shares `context` may see (their export locations may be left out: a listing
        does not ask for each share's). Raises BackendError when the provider cannot tell."""

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> bool:
        """Allow `host` to mount the share, and lock the rule. Idempotent. `requester` is the
        user whose request this is (their token, when still at hand, goes along). True once
        the rule is in effect; False while the provider is still applying it: nothing waits,
        the caller asks again later (the reconciler requeues the server)."""

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> bool:
        """Unlock and remove the rule for `host`. Idempotent (no rule: nothing to do). True
        once it is gone; False while the provider is still removing it (ask again)."""

    def host_credentials(self, share_id: str, host: str) -> HostCredentials | None:
        """What `host` mounts the share with, when its protocol needs one (CephFS: the cephx ID
        and key of the host's access rule); None when it needs none. Asked by the agent just
        before it mounts; never stored by attachfs beyond the mount (the key file goes with
        it)."""

    def access_levels(self, share_ids: Collection[str], host: str) -> dict[str, str]:
        """The level ("rw" or "ro") of `host`'s rule on each of the shares as the provider has
        it now; a share without one (or whose rule failed, or is being removed) is left out.
        What the reconciler observes: a rule dropped behind its back is granted again. Asked
        for all of a server's shares at once (a built-in provider answers in one query).
        Raises BackendError when the provider cannot tell."""


@dataclass(frozen=True)
class HostCredentials:
    """A host's identity on the storage side for one share (CephFS: client.<auth_id>)."""

    auth_id: str
    key: str = field(repr=False)  # a secret: kept out of logs and reprs


@dataclass(frozen=True)
class HostMount:
    """A share mounted on this host, ready to be handed to a guest."""

    share_id: str
    path: Path
    read_only: bool = False


class HostConnector(Protocol):
    protocol: str
    needs_credentials: bool  # ask the provider for host_credentials before mounting

    def mount(self, export_location: str, target: Path, read_only: bool,
              credentials: HostCredentials | None = None) -> None:
        """Mount the export at `target` (idempotent: already mounted is fine)."""

    def unmount(self, target: Path) -> None:
        """Unmount `target` (idempotent)."""

    def release_unused(self) -> list[str]:
        """Undo what mount() made below the host mounts and no host mount uses any more (the
        agent unmounts host mounts through the MountTable, then calls this); what it
        released. Idempotent; safe after a crash anywhere."""


class MountTable(Protocol):
    """The host's mounts as the agent observes and fixes them (storage/mountinfo.py: the
    kernel's; tests/fakes: in memory)."""

    def table(self, under: Path) -> dict[Path, frozenset[str]]:
        """Mount points below `under` with their per-mount options."""

    def set_options(self, target: Path, options: str) -> None:
        """Give the mount at `target` exactly these flags among ro, nosuid, nodev."""

    def unmount(self, target: Path) -> None:
        """Unmount every layer at `target` and remove the directory (idempotent)."""
