"""Commands: what a caller asks the core to do, as plain values (parsed, not yet checked
against state). Each has one handler (core/handlers/); the API builds them from requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attachfs.core.context import RequestContext
from attachfs.core.rules import BUILTIN_PROTOCOL


@dataclass(frozen=True)
class Command:
    ctx: RequestContext


# ---- servers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateServer(Command):
    name: str
    flavor_ref: str
    image_ref: str
    # Root disks the client named besides imageRef (block_device_mapping_v2): each must be it.
    boot_image_refs: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    user_data: str | None = None
    config_drive: bool = False


@dataclass(frozen=True)
class StartServer(Command):
    server_id: str


@dataclass(frozen=True)
class StopServer(Command):
    server_id: str


@dataclass(frozen=True)
class RebootServer(Command):
    server_id: str
    hard: bool = False


@dataclass(frozen=True)
class DeleteServer(Command):
    server_id: str


@dataclass(frozen=True)
class EvacuateServer(Command):
    """Rebuild a server of a failed host on another (core/moves.py), after fencing."""

    server_id: str
    host: str | None = None  # None: the scheduler picks
    stop: bool = False  # from 2.95 the server is stopped on its new host, else as it was


@dataclass(frozen=True)
class MigrateServer(Command):
    """Cold migrate: stop, move to another host, start as before; VERIFY_RESIZE after."""

    server_id: str
    host: str | None = None


@dataclass(frozen=True)
class ConfirmMigration(Command):
    """confirmResize: the moved server stays where it is."""

    server_id: str


@dataclass(frozen=True)
class RevertMigration(Command):
    """revertResize: the moved server goes back to its source host."""

    server_id: str


@dataclass(frozen=True)
class UnavailableAction(Command):
    """A server action of the compute service that attachfs does not carry out (shelve,
    migrate, ...): answered as the compute service answers where it can, else a clear 409."""

    server_id: str
    action: str
    flavor_ref: str | None = None  # resize's target flavor


# ---- share attachments ---------------------------------------------------------------------
@dataclass(frozen=True)
class AttachShare(Command):
    server_id: str
    share_id: str
    tag: str | None = None
    mount_point: str | None = None
    read_only: bool = False
    retry: bool = False  # drive an attachment in `error` again (else: already attached, 409)
    transport: str | None = None  # None: the server's flavor, else the operator's default


@dataclass(frozen=True)
class DetachShare(Command):
    server_id: str
    share_id: str


# ---- built-in shares -----------------------------------------------------------------------
@dataclass(frozen=True)
class CreateShare(Command):
    """A built-in share (os-filesystem, or the emulated share service)."""

    name: str
    size_gib: int
    scope: str  # core.model.ShareScope
    project_id: str
    mount_point: str | None = None
    taken_message: str = ""  # the 409 when the name is taken, in the calling API's words
    protocol: str = BUILTIN_PROTOCOL  # or another of BUILTIN_PROTOCOLS


@dataclass(frozen=True)
class ShareRef:
    """Names a built-in share: by id (the share service), or by name (os-filesystem: the
    caller's project's share, else the global one; an admin may name the project)."""

    id: str | None = None
    name: str | None = None
    project: str | None = None
    label: str = "Share"  # how a 404 or 409 names it: "Filesystem data", "Share <id>"


@dataclass(frozen=True)
class DeleteShare(Command):
    ref: ShareRef


# ---- hosts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpdateHost(Command):
    """An admin's change to a compute host (os-services)."""

    ref: str  # uuid, integer id or host name
    not_found: str  # the 404, in the calling form's words
    disabled: bool | None = None
    reason: str | None = None
    forced_down: bool | None = None
