"""SQLAlchemy repositories: the queries the core's handlers need (core/ports.py), one class per
table. They run inside a unit of work's session (db/uow.py) and never commit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import CursorResult, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from attachfs.core.model import ShareScope, VmState
from attachfs.core.moves import IN_PROGRESS
from attachfs.core.ports import (
    ActionRecord,
    AttachedShare,
    AttachmentRecord,
    BuiltinShareRecord,
    HostRecord,
    MigrationRecord,
    ServerRecord,
    ServerState,
)
from attachfs.db.tables import (
    Host,
    InstanceAction,
    Migration,
    Server,
    Share,
    ShareAccess,
    ShareMapping,
    utcnow,
)

_SERVERS = cast(Table, Server.__table__)
# Built once (a statement built per call cost its construction and cache key each time).
_SERVER_STATE = select(*(_SERVERS.c[name] for name in ServerState.__dict__
                         if not name.startswith("_") and name != "host_transports"),
                       Host.__table__.c.transports.label("host_transports")).outerjoin(
    Host.__table__, Host.__table__.c.name == _SERVERS.c.host).where(
    _SERVERS.c.uuid == bindparam("uuid"), _SERVERS.c.vm_state != VmState.DELETED)
_SERVER_STATE_LOCKED = _SERVER_STATE.with_for_update(of=_SERVERS)
_TOUCH_SERVER = update(_SERVERS).where(_SERVERS.c.uuid == bindparam("server_uuid")).values(
    generation=_SERVERS.c.generation + 1)


class SqlServers:
    def __init__(self, s: Session) -> None:
        self.s = s

    def state(self, server_uuid: str, *, lock: bool = False) -> ServerState | None:
        # A Core row: no ORM object to build, track and flush.
        return cast(ServerState | None, self.s.execute(
            _SERVER_STATE_LOCKED if lock else _SERVER_STATE, {"uuid": server_uuid}).first())

    def touch(self, server_uuid: str) -> None:
        # In SQL: no read-modify-write, and the row need not be an ORM object (its onupdate
        # sets updated_at as well).
        self.s.execute(_TOUCH_SERVER, {"server_uuid": server_uuid})

    def get(self, server_uuid: str, *, lock: bool = False,
            include_deleted: bool = False) -> Server | None:
        # Session.get: its SELECT by primary key is built and compiled once per process (a
        # select() built here per call cost ~0.2 ms of statement construction and cache key).
        # lock: PostgreSQL's FOR UPDATE, concurrent changes of one server take turns.
        server = self.s.get(Server, server_uuid, with_for_update=True if lock else None)
        if server is None or (server.vm_state == VmState.DELETED and not include_deleted):
            return None
        return server

    def add(self, **fields: Any) -> Server:
        server = Server(**fields)
        self.s.add(server)
        return server

    def newest_first(self, project_id: str | None) -> list[ServerRecord]:
        query = select(Server).where(Server.vm_state != VmState.DELETED).order_by(
            Server.created_at.desc(), Server.uuid.desc())
        if project_id is not None:
            query = query.where(Server.project_id == project_id)
        return list(self.s.scalars(query))

    def of_project(self, project_id: str) -> list[ServerRecord]:
        return list(self.s.scalars(select(Server).where(
            Server.project_id == project_id, Server.vm_state != VmState.DELETED)))


_MAPPINGS = cast(Table, ShareMapping.__table__)
# What a server's view shows of its attachments (core/ports.py AttachedShare).
_ATTACHED_SHARE = [_MAPPINGS.c[name] for name in AttachedShare.__dict__
                   if not name.startswith("_")]
# What the request handlers read of one (AttachmentRecord): every column.
_ATTACHMENT = select(_MAPPINGS)
_ATTACHMENTS_OF_SERVER = _ATTACHMENT.where(
    _MAPPINGS.c.instance_uuid == bindparam("server_uuid")).order_by(_MAPPINGS.c.id)
_ATTACHMENT_OF_SERVER = _ATTACHMENT.where(_MAPPINGS.c.instance_uuid == bindparam("server_uuid"),
                                          _MAPPINGS.c.share_id == bindparam("share_id"))
_INSERT_ATTACHMENT = insert(_MAPPINGS)
_UPDATE_ATTACHMENT = update(_MAPPINGS).where(_MAPPINGS.c.uuid == bindparam("attachment_uuid"))
# An inserted row's own values (the columns left out get their defaults, as in the table).
_ATTACHMENT_DEFAULTS = {c.key: c.default.arg if isinstance(c.default, ScalarElementColumnDefault)
                        else None for c in _MAPPINGS.c}


class _AttachmentRow(NamedTuple):
    """An attachment's columns, as a row of select(_MAPPINGS) reads them."""

    id: int
    uuid: str
    instance_uuid: str
    share_id: str
    status: str
    tag: str
    export_location: str
    share_proto: str
    mount_point: str | None
    read_only: bool
    transport: str
    fault_message: str | None
    user_id: str
    project_id: str
    request_id: str | None
    requester_token: str | None
    attempts: int
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class SqlAttachments:
    """Plain rows and Core statements: the request handlers read attachments and change them
    by statement (the agent's own ORM objects live in agent/state.py)."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def of_server(self, server_uuid: str) -> list[AttachmentRecord]:
        return cast(list[AttachmentRecord], self.s.execute(
            _ATTACHMENTS_OF_SERVER, {"server_uuid": server_uuid}).all())

    def of_servers(self, server_uuids: Sequence[str]) -> list[AttachedShare]:
        # Plain rows, not ORM objects: a page of servers can carry 10,000 attachments, and
        # building a tracked object for each was most of the time of GET servers/detail. Run
        # on the session's connection, not through the ORM: its loading still wrapped each
        # of the rows (a third of this read's time).
        rows = self.s.connection().execute(select(*_ATTACHED_SHARE).where(
            _MAPPINGS.c.instance_uuid.in_(list(server_uuids))).order_by(_MAPPINGS.c.id))
        return cast(list[AttachedShare], rows.all())

    def get(self, server_uuid: str, share_id: str) -> AttachmentRecord | None:
        return cast(AttachmentRecord | None, self.s.execute(
            _ATTACHMENT_OF_SERVER, {"server_uuid": server_uuid, "share_id": share_id}).first())

    def add(self, **fields: Any) -> AttachmentRecord:
        now = utcnow()
        values = {**_ATTACHMENT_DEFAULTS, "created_at": now, "updated_at": now, **fields}
        del values["id"]
        result = cast(CursorResult[Any], self.s.execute(_INSERT_ATTACHMENT, values))
        (new_id,) = cast(tuple[int], result.inserted_primary_key)  # a single-row INSERT's
        return _AttachmentRow(id=new_id, **values)

    def update(self, attachment_uuid: str, **fields: Any) -> None:
        # The fields are the statement's parameters (its SET clause): one statement, built
        # once, compiled once per set of fields.
        self.s.execute(_UPDATE_ATTACHMENT, {"attachment_uuid": attachment_uuid, **fields})

    def count(self, server_uuid: str) -> int:
        return self.s.scalar(select(func.count()).select_from(ShareMapping).where(
            ShareMapping.instance_uuid == server_uuid)) or 0

    def servers_of_share(self, share_id: str,
                         project_id: str | None) -> list[tuple[str, str]]:
        query = (select(ShareMapping.instance_uuid, ShareMapping.status)
                 .join(Server, Server.uuid == ShareMapping.instance_uuid)
                 .where(ShareMapping.share_id == share_id).order_by(ShareMapping.id))
        if project_id is not None:
            query = query.where(Server.project_id == project_id)
        return [(row[0], row[1]) for row in self.s.execute(query)]


_SHARES = cast(Table, Share.__table__)
_SHARE_ROW = select(_SHARES).where(_SHARES.c.uuid == bindparam("share_id"))


class SqlShares:
    """The built-in shares. Names are unique per namespace (a project's shares; the global
    ones), enforced by partial unique indexes: a lost race is a Duplicate (db/uow.py)."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def get(self, share_id: str) -> Share | None:
        return self.s.get(Share, share_id)

    def row(self, share_id: str) -> BuiltinShareRecord | None:
        # A Core row (read-only): building an ORM object was the costliest part of an attach
        # (measured: ~0.3 of its ~0.8 ms in the handler).
        return cast(BuiltinShareRecord | None,
                    self.s.execute(_SHARE_ROW, {"share_id": share_id}).first())

    def in_project(self, name: str, project_id: str) -> Share | None:
        return self.s.scalar(select(Share).where(
            Share.name == name, Share.scope != ShareScope.GLOBAL, Share.project_id == project_id))

    def global_named(self, name: str) -> Share | None:
        return self.s.scalar(select(Share).where(Share.name == name,
                                                 Share.scope == ShareScope.GLOBAL))

    def name_taken(self, name: str, global_scope: bool, project_id: str) -> bool:
        found = self.global_named(name) if global_scope else self.in_project(name, project_id)
        return found is not None

    def all(self, order: str) -> list[BuiltinShareRecord]:
        by = (Share.name,) if order == "name" else (Share.created_at.desc(), Share.uuid)
        return list(self.s.scalars(select(Share).order_by(*by)))

    def project_scoped(self, project_id: str) -> list[BuiltinShareRecord]:
        return list(self.s.scalars(select(Share).where(
            Share.project_id == project_id, Share.scope == ShareScope.PROJECT)))

    def add(self, **fields: Any) -> Share:
        share = Share(**fields)
        self.s.add(share)
        return share

    def delete(self, share: Any) -> None:
        self.s.delete(share)

    def locked_by_host(self, share_id: str) -> str | None:
        return self.s.scalar(select(ShareAccess.host).where(
            ShareAccess.share_id == share_id, ShareAccess.locked).limit(1))


_INSERT_ACTION = insert(InstanceAction.__table__)  # type: ignore[arg-type]  # a Table


class SqlActions:
    def __init__(self, s: Session) -> None:
        self.s = s

    def record(self, **fields: Any) -> None:
        # A Core INSERT: nothing reads the row back in this transaction, and an ORM object
        # would add a class of its own to the flush (measured: ~0.1 ms of an attach).
        self.s.execute(_INSERT_ACTION, fields)

    def of_server(self, server_uuid: str) -> list[ActionRecord]:
        return list(self.s.scalars(select(InstanceAction).where(
            InstanceAction.instance_uuid == server_uuid).order_by(
            InstanceAction.start_time.desc(), InstanceAction.id.desc())))

    def of_request(self, server_uuid: str, request_id: str) -> list[ActionRecord]:
        return list(self.s.scalars(select(InstanceAction).where(
            InstanceAction.instance_uuid == server_uuid,
            InstanceAction.request_id == request_id).order_by(InstanceAction.id)))

    def unfinished(self, request_id: str) -> list[ActionRecord]:
        return list(self.s.scalars(select(InstanceAction).where(
            InstanceAction.request_id == request_id, InstanceAction.finish_time.is_(None))))

    def finish(self, action: Any, result: str) -> None:
        action.result, action.finish_time = result, utcnow()

    def finish_request(self, request_id: str | None, result: str, message: str | None) -> None:
        """Close the audit trail entries of one request with its result (and why, when
        given): the agent's, in its own session, when an attachment's step ends."""
        if not request_id:
            return
        for action in self.unfinished(request_id):
            self.finish(action, result)
            if message:
                action.message = (action.message + ": " if action.message else "") + message


# Built once: a statement built per call cost its construction and cache key each time.
_HOST_BY_ID = select(Host).where(Host.id == bindparam("ref"))
_HOST_BY_UUID_OR_NAME = select(Host).where((Host.uuid == bindparam("ref"))
                                           | (Host.name == bindparam("ref")))


class SqlHosts:
    def __init__(self, s: Session) -> None:
        self.s = s

    def all(self) -> list[HostRecord]:
        return list(self.s.scalars(select(Host).order_by(Host.id)))

    def get(self, ref: str, *, lock: bool = False) -> HostRecord | None:
        ref_value: int | str = ref
        if ref.isascii() and ref.isdigit() and len(ref) <= 9:  # an id, within INTEGER's range
            query, ref_value = _HOST_BY_ID, int(ref)
        else:
            query = _HOST_BY_UUID_OR_NAME
        if lock:
            query = query.with_for_update()
        return self.s.scalar(query, {"ref": ref_value})

    def now(self) -> dt.datetime:
        return utcnow()

    def usage(self) -> dict[str, tuple[int, int, int]]:
        rows = self.s.execute(select(Server.host, func.count(), func.sum(Server.vcpus),
                                     func.sum(Server.memory_mib))
                              .where(Server.vm_state != VmState.DELETED)
                              .group_by(Server.host))
        return {host: (int(n), int(cpus or 0), int(mem or 0)) for host, n, cpus, mem in rows}


class SqlMigrations:
    def __init__(self, s: Session) -> None:
        self.s = s

    def add(self, **fields: Any) -> MigrationRecord:
        row = Migration(**fields)
        self.s.add(row)
        return row

    def in_progress(self, server_uuid: str) -> MigrationRecord | None:
        row = self.s.scalar(select(Migration).where(Migration.instance_uuid == server_uuid)
                            .order_by(Migration.id.desc()).limit(1))
        return row if row is not None and row.status in IN_PROGRESS else None

    def search(self, instance_uuid: str | None = None, status: str | None = None,
               migration_type: str | None = None,
               host: str | None = None) -> list[MigrationRecord]:
        query = select(Migration).order_by(Migration.id.desc())
        if instance_uuid is not None:
            query = query.where(Migration.instance_uuid == instance_uuid)
        if status is not None:
            query = query.where(Migration.status == status)
        if migration_type is not None:
            query = query.where(Migration.migration_type == migration_type)
        if host is not None:
            query = query.where((Migration.source_compute == host)
                                | (Migration.dest_compute == host))
        return list(self.s.scalars(query))
