"""This agent's host in the database: registered at start (what it can do, how large it is)
and kept alive by a heartbeat; the API shows it as os-services and os-hypervisors."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import uuid as uuidlib

from sqlalchemy import select

from attachfs.config import Config
from attachfs.db.engine import Database
from attachfs.db.tables import Host, utcnow

log = logging.getLogger(__name__)
QEMU = "qemu-system-x86_64"


def memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def qemu_version() -> int:
    """QEMU's version as the compute service reports it (7.2.0 -> 7002000); 0 when unknown."""
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return int(m[1]) * 1_000_000 + int(m[2]) * 1_000 + int(m[3]) if m else 0


def capabilities(config: Config) -> tuple[list[str], bool]:
    """(share transports offered, runs containers), as the configuration says."""
    transports: list[str] = list(config.agent.share_transports)
    if config.containers.enabled:
        transports.append("bind")
    return transports, config.containers.enabled


def register(db: Database, config: Config) -> None:
    """Insert or refresh this host's row: its capabilities and size as they are now. An admin's
    disabling (and its reason) is kept across restarts."""
    name = config.agent.host
    transports, containers = capabilities(config)
    fields = {"storage_address": config.manila.host_address,
              "ceph_id": config.manila.cephx_access_to or f"attachfs-{name}",
              "transports": transports, "containers": containers, "vcpus": os.cpu_count() or 1,
              "memory_mib": memory_mib(), "hypervisor_type": "QEMU",
              "hypervisor_version": qemu_version()}
    now = utcnow()
    with db.session() as s:
        host = s.scalar(select(Host).where(Host.name == name))
        if host is None:
            s.add(Host(uuid=str(uuidlib.uuid4()), name=name, started_at=now, heartbeat_at=now,
                       updated_at=now, **fields))
        else:
            for key, value in fields.items():
                setattr(host, key, value)
            host.started_at = host.heartbeat_at = host.updated_at = now
    log.info("host %s registered: %s", name, ", ".join(transports))


def heartbeat(db: Database, name: str) -> None:
    with db.session() as s:
        host = s.scalar(select(Host).where(Host.name == name))
        if host is not None:
            host.heartbeat_at = utcnow()
