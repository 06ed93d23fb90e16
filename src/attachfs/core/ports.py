"""What the handlers need from the outside, as small interfaces (Cosmic Python's "abstract
repository" and "abstract unit of work"). db/repositories.py and db/uow.py implement them
with SQLAlchemy; tests/unit may implement them in memory. No I/O here.

Records are the rows as the core sees them: plain attributes, read and written by handlers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from attachfs.core.context import RequestContext, ShareInfo
from attachfs.core.guest_mount import NfsLink


class ServerRecord(Protocol):
    uuid: str
    name: str
    project_id: str
    user_id: str
    host: str
    vm_state: str
    task_state: str | None
    power_intent: str
    share_slots: int | None
    generation: int
    observed_generation: int
    flavor_id: str
    image_id: str
    vcpus: int
    memory_mib: int
    user_data: str | None
    meta: dict[str, Any]
    fault_message: str | None
    attempts: int  # the agent's failed tries in a row of the server's own steps
    last_error: str | None  # the last of them
    config_drive: bool
    launched_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ServerState(Protocol):
    """What a share attachment's request reads of its server: a plain row, read-only (the
    request changes the server only through ServerRepository.touch)."""

    @property
    def uuid(self) -> str: ...
    @property
    def project_id(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def flavor_id(self) -> str: ...
    @property
    def vm_state(self) -> str: ...
    @property
    def task_state(self) -> str | None: ...
    @property
    def share_slots(self) -> int | None: ...
    @property
    def host_transports(self) -> list[str] | None:
        """What its host offers, as its agent registered it (None: not registered)."""
        ...


class AttachedShare(Protocol):
    """What the views of a server and its attachments show of each (read-only)."""

    @property
    def instance_uuid(self) -> str: ...
    @property
    def uuid(self) -> str: ...
    @property
    def share_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def export_location(self) -> str: ...
    @property
    def mount_point(self) -> str | None: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def fault_message(self) -> str | None: ...
    @property
    def transport(self) -> str: ...
    @property
    def updated_at(self) -> dt.datetime: ...


class AttachmentRecord(AttachedShare, Protocol):
    """An attachment as the request handlers read it: a plain row, changed only through
    AttachmentRepository.update (an ORM object per row cost the write path its flush)."""

    @property
    def share_proto(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def project_id(self) -> str: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def requester_token(self) -> str | None: ...


class BuiltinShareRecord(Protocol):
    uuid: str
    name: str
    project_id: str
    user_id: str
    size_gib: int
    scope: str
    status: str
    mount_point: str | None
    created_at: dt.datetime
    protocol: str


class HostRecord(Protocol):
    id: int
    uuid: str
    name: str
    storage_address: str
    ceph_id: str
    transports: list[str]
    containers: bool
    vcpus: int
    memory_mib: int
    hypervisor_type: str
    hypervisor_version: int
    disabled: bool
    disabled_reason: str | None
    forced_down: bool
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    updated_at: dt.datetime


class HostRepository(Protocol):
    def all(self) -> list[HostRecord]: ...
    def get(self, ref: str, *, lock: bool = False) -> HostRecord | None:
        """By uuid, or by integer id (microversions before 2.53), or by name."""
        ...
    def usage(self) -> dict[str, tuple[int, int, int]]:
        """host name -> (servers, vCPUs, MiB) of the servers placed there (not deleted)."""
        ...
    def now(self) -> dt.datetime:
        """The clock heartbeats are written with (naive UTC)."""
        ...


class MigrationRecord(Protocol):
    id: int
    uuid: str
    instance_uuid: str
    migration_type: str
    source_compute: str
    dest_compute: str
    status: str
    fenced: bool
    flavor_id: str
    user_id: str
    project_id: str
    created_at: dt.datetime
    updated_at: dt.datetime


class MigrationRepository(Protocol):
    def add(self, **fields: Any) -> MigrationRecord: ...
    def in_progress(self, server_uuid: str) -> MigrationRecord | None:
        """The server's newest migration, when it is not over (core/moves.IN_PROGRESS)."""
        ...
    def search(self, instance_uuid: str | None = None, status: str | None = None,
               migration_type: str | None = None,
               host: str | None = None) -> list[MigrationRecord]:
        """Newest first; `host`: as source or destination."""
        ...


class ActionRecord(Protocol):
    request_id: str
    instance_uuid: str
    action: str
    user_id: str
    project_id: str
    result: str | None
    message: str | None
    start_time: dt.datetime
    finish_time: dt.datetime | None


class ServerRepository(Protocol):
    def get(self, server_uuid: str, *, lock: bool = False,
            include_deleted: bool = False) -> ServerRecord | None: ...
    def state(self, server_uuid: str, *, lock: bool = False) -> ServerState | None:
        """The server (not deleted) as a plain row; `lock`: as `get`."""
        ...
    def touch(self, server_uuid: str) -> None:
        """Desired state changed: a generation the agent has not converged yet."""
        ...
    def add(self, **fields: Any) -> ServerRecord: ...
    def newest_first(self, project_id: str | None) -> list[ServerRecord]:
        """Servers not deleted, of one project (None: all), newest first."""
        ...
    def of_project(self, project_id: str) -> list[ServerRecord]: ...


class AttachmentRepository(Protocol):
    def of_server(self, server_uuid: str) -> list[AttachmentRecord]: ...
    def of_servers(self, server_uuids: Sequence[str]) -> list[AttachedShare]: ...
    def get(self, server_uuid: str, share_id: str) -> AttachmentRecord | None: ...
    def count(self, server_uuid: str) -> int: ...
    def add(self, **fields: Any) -> AttachmentRecord: ...
    def update(self, attachment_uuid: str, **fields: Any) -> None: ...
    def servers_of_share(self, share_id: str,
                         project_id: str | None) -> list[tuple[str, str]]:
        """(server uuid, attachment status) of the share, of one project's servers (None: all)."""
        ...


class BuiltinShareRepository(Protocol):
    def get(self, share_id: str) -> BuiltinShareRecord | None: ...
    def row(self, share_id: str) -> BuiltinShareRecord | None:
        """The share as a plain row, read-only."""
        ...
    def in_project(self, name: str, project_id: str) -> BuiltinShareRecord | None:
        """The project's own (not global) share of that name."""
        ...
    def global_named(self, name: str) -> BuiltinShareRecord | None: ...
    def name_taken(self, name: str, global_scope: bool, project_id: str) -> bool: ...
    def all(self, order: str) -> list[BuiltinShareRecord]:
        """Every share; order "name" or "newest"."""
        ...
    def project_scoped(self, project_id: str) -> list[BuiltinShareRecord]: ...
    def add(self, **fields: Any) -> BuiltinShareRecord: ...
    def delete(self, share: BuiltinShareRecord) -> None: ...
    def locked_by_host(self, share_id: str) -> str | None:
        """A host holding a locked access rule on the share, if any."""
        ...


class ActionRepository(Protocol):
    def record(self, **fields: Any) -> None: ...
    def of_server(self, server_uuid: str) -> list[ActionRecord]: ...
    def of_request(self, server_uuid: str, request_id: str) -> list[ActionRecord]: ...
    def unfinished(self, request_id: str) -> list[ActionRecord]: ...
    def finish(self, action: ActionRecord, result: str) -> None: ...


class Repositories(Protocol):
    @property
    def servers(self) -> ServerRepository: ...
    @property
    def attachments(self) -> AttachmentRepository: ...
    @property
    def shares(self) -> BuiltinShareRepository: ...
    @property
    def actions(self) -> ActionRepository: ...
    @property
    def hosts(self) -> HostRepository: ...
    @property
    def migrations(self) -> MigrationRepository: ...

    def flush(self) -> None: ...

    def ring(self, host: str | None) -> None:
        """Wake the agent of `host` (None: every agent) once this transaction commits, and
        not at all if it rolls back: the desired state it changed is then visible."""


class UnitOfWork(Protocol):
    """Transactions: `write()` commits when its block ends without error and rolls back on
    any error; `read()` never writes (and on SQLite does not queue behind writers)."""

    def write(self) -> AbstractContextManager[Repositories]: ...
    def read(self) -> AbstractContextManager[Repositories]: ...


# ---- collaborators the handlers call besides the database ----------------------------------
class Authorizer(Protocol):
    def authorize(self, rule: str, context: RequestContext, target_project: str) -> None:
        """Raise errors.Forbidden unless policy allows `rule`."""


@dataclass
class SharesSeen:
    """Shares a caller may see, each with the name of its provider (local, static, manila),
    and the providers that could not answer (what they said)."""

    shares: list[tuple[str, ShareInfo]] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)


class ShareLookup(Protocol):
    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        """Raise NotFound when missing or not visible to `context`."""

    def visible_shares(self, context: RequestContext) -> SharesSeen:
        """Every provider's shares `context` may see (a provider that fails is named)."""

    def fences(self, share_id: str) -> bool:
        """Whether revoking a host's access to the share also cuts off the mounts that host
        already has (fencing before an evacuation); False for built-in and static shares."""


class BuiltinStorage(Protocol):
    """The built-in shares' filesystems on this host (storage/local.py)."""

    def create_dir(self, share_id: str, size_gib: int) -> Path: ...
    def delete_dir(self, share_id: str) -> None: ...
    def info(self, share: BuiltinShareRecord) -> ShareInfo: ...
    def usage_bytes(self, share_id: str) -> int: ...


class ImageLookup(Protocol):
    def image_id(self, ref: str) -> str:
        """The id of the guest image `ref` names (id or name); NotFound otherwise."""


@dataclass(frozen=True)
class Env:
    """Everything a handler may use besides its command and unit of work (bound once, at
    start, as Cosmic Python's bootstrap does)."""

    policy: Authorizer
    shares: ShareLookup
    builtin: BuiltinStorage
    images: ImageLookup
    # after a commit that changed desired state: the host whose agent acts (None: every host)
    host: str
    hot_plug: bool
    max_attachments_per_server: int
    transports: frozenset[str] = frozenset({"virtiofs"})  # what this host can serve
    default_transport: str = "virtiofs"  # the operator's choice ([agent] share_transport)
    nfs_link: NfsLink | None = None  # where guests reach this host's NFS server (transport nfs)
    containers: bool = False  # servers of a container flavor can run here
    container_layout: str = "mnt"  # where a container's shares appear ([containers])
    down_after: float = 60.0  # s without a heartbeat before a host is down
    stall_after: float = 120.0  # s an attachment may stay in flight without a word
