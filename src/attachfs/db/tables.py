"""SQLAlchemy 2 tables. Schema changes go through Alembic (db/migrations)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from attachfs.core.rules import BUILTIN_PROTOCOL


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


GLOBAL_SCOPE = "global"  # core.model.ShareScope.GLOBAL, spelled out for the index predicates


class Base(DeclarativeBase):
    pass


class Server(Base):
    __tablename__ = "servers"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255), index=True)
    flavor_id: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[str] = mapped_column(String(36))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    vm_state: Mapped[str] = mapped_column(String(32))
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    power_intent: Mapped[str] = mapped_column(String(8))  # desired: on/off
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)  # base64, as given
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    fault_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_drive: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Filesystem devices the running guest can hold (boot-time shares + free hot-plug ports),
    # recorded by the agent at boot; None while not running. The API refuses attaches past it.
    share_slots: Mapped[int | None] = mapped_column(Integer, nullable=True)
    launched_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # Bumped by every API request that changes desired state; the agent records the generation
    # it converged, so "dirty" is derivable and a restart simply reconciles again.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)
    # The agent's failed passes in a row for this server and the last one's error (migration
    # 0006): a server whose request does not progress says why.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Share(Base):
    """A share of the built-in provider: a directory under the storage root."""

    __tablename__ = "shares"
    # Names are unique per namespace: each project's own shares, and the global shares (whose
    # names every project sees). Partial unique indexes, so concurrent creates of one name in
    # one namespace still have exactly one winner (migration 0005).
    __table_args__ = (
        Index("uniq_shares_project_name", "project_id", "name", unique=True,
              sqlite_where=text(f"scope != '{GLOBAL_SCOPE}'"),
              postgresql_where=text(f"scope != '{GLOBAL_SCOPE}'")),
        Index("uniq_shares_global_name", "name", unique=True,
              sqlite_where=text(f"scope = '{GLOBAL_SCOPE}'"),
              postgresql_where=text(f"scope = '{GLOBAL_SCOPE}'")),
    )

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    size_gib: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    mount_point: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # LOCAL, or NFS: also served by this host's NFS server to the clients granted (migration
    # 0008; transport direct)
    protocol: Mapped[str] = mapped_column(String(16), default=BUILTIN_PROTOCOL,
                                          server_default=BUILTIN_PROTOCOL.value)


class ShareAccess(Base):
    """Access rules of the built-in provider: which host may mount which share."""

    __tablename__ = "share_access"

    share_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("shares.uuid", ondelete="CASCADE"), primary_key=True
    )
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    access_level: Mapped[str] = mapped_column(String(4), default="rw")
    locked: Mapped[bool] = mapped_column(Boolean, default=True)
    lock_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ShareMapping(Base):
    """An attachment of a share to a server (Nova's share_mapping, plus fault and requester)."""

    __tablename__ = "share_mappings"
    __table_args__ = (
        UniqueConstraint("instance_uuid", "share_id", name="uniq_share_mapping_instance_share"),
        UniqueConstraint("instance_uuid", "tag", name="uniq_share_mapping_instance_tag"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    instance_uuid: Mapped[str] = mapped_column(
        String(36), ForeignKey("servers.uuid", ondelete="CASCADE"), index=True
    )
    share_id: Mapped[str] = mapped_column(String(36), index=True)
    status: Mapped[str] = mapped_column(String(32))
    tag: Mapped[str] = mapped_column(String(255))
    export_location: Mapped[str] = mapped_column(Text, default="")
    share_proto: Mapped[str] = mapped_column(String(32), default="")
    mount_point: Mapped[str | None] = mapped_column(String(255), nullable=True)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How the host hands the share to the guest (core.rules.Transport; migration 0007).
    transport: Mapped[str] = mapped_column(String(16), default="virtiofs",
                                           server_default="virtiofs")
    fault_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    user_id: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The requester's token, kept only until the agent has used it for the share service
    # (grant or revoke), then cleared. None with noauth or once used.
    requester_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Temporary failures of the current step in a row, and the last error (migration 0006);
    # while retrying, fault_message also says so.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class InstanceAction(Base):
    """Audit trail: who asked for what, and how it ended."""

    __tablename__ = "instance_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(String(32), nullable=True)  # Success / Error
    start_time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finish_time: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ShareServiceLock(Base):
    """One row per share of an external share service (Manila), locked (SELECT ... FOR UPDATE)
    while an agent changes that share's access rules, so agents on different hosts take turns."""

    __tablename__ = "share_service_locks"

    share_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(255), nullable=True)  # host, for debugging
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Host(Base):
    """A compute host: its agent registers it at start and heartbeats (agent/hosts.py); the API
    shows it as the compute service's os-services and os-hypervisors (api/hosts.py)."""

    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    storage_address: Mapped[str] = mapped_column(String(64), default="")
    ceph_id: Mapped[str] = mapped_column(String(255), default="")
    # what it can do: share transports (core.rules.Transport) and whether it runs containers
    transports: Mapped[list[str]] = mapped_column(JSON, default=list)
    containers: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    hypervisor_type: Mapped[str] = mapped_column(String(32), default="QEMU")
    hypervisor_version: Mapped[int] = mapped_column(Integer, default=0)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    forced_down: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Migration(Base):
    """A server's move between hosts (the compute service's migrations): an admin's evacuate
    from a failed host or cold migrate, with the hosts and where it got to. The agents drive it
    (core/moves.py says which host does what at each status); `GET /os-migrations` lists it."""

    __tablename__ = "migrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    migration_type: Mapped[str] = mapped_column(String(16))  # evacuation / migration
    source_compute: Mapped[str] = mapped_column(String(255))
    dest_compute: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    # the source host's storage access was revoked (evacuation: before the guest comes back)
    fenced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    flavor_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
