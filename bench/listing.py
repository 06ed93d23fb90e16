"""Part 3: list and show with 10,000 attachments, through the compute API alone (no agent: it
would reconcile the seeded servers, and its polling would add noise), on SQLite and PostgreSQL,
against the floor's one-row SELECT on the same kind of database."""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.measure import ADMIN, HEADERS, Figures, log, sample, summary
from bench.servers import ROOT, api_argv, floor_argv
from harness.host import remove_state
from harness.process import free_port, running

SERVERS, PER_SERVER = 313, 32  # 10,016 attachments
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _rows(state: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """313 stopped servers, 32 shares, and 32 inactive attachments per server."""
    owner = {"project_id": "bench", "user_id": "bench"}
    shares = [{"uuid": str(uuid.uuid4()), "name": f"fs{j}", "size_gib": 1, "scope": "instance",
               "status": "available", "mount_point": None, **owner} for j in range(PER_SERVER)]
    servers: list[dict[str, Any]] = [
        {"uuid": str(uuid.uuid4()), "name": f"vm{i}", "host": "bench", "flavor_id": "1",
         "image_id": "debian-busybox", "vcpus": 1, "memory_mib": 128, "vm_state": "stopped",
         "task_state": None, "power_intent": "off", "user_data": None, "meta": {},
         "fault_message": None, "launched_at": None, "generation": 1, "observed_generation": 1,
         **owner} for i in range(SERVERS)]
    mappings = [{"uuid": str(uuid.uuid4()), "instance_uuid": sv["uuid"], "share_id": sh["uuid"],
                 "status": "inactive", "tag": f"t{j}", "share_proto": "LOCAL",
                 "export_location": f"local:{state}/shares/{sh['uuid']}", "mount_point": None,
                 "fault_message": None, "request_id": None, **owner}
                for sv in servers for j, sh in enumerate(shares)]
    return shares, servers, mappings


def seed(state: Path, db_url: str) -> tuple[str, str]:
    """The rows of `_rows`, in bulk, in a freshly migrated database; a middle server and share."""
    from sqlalchemy import insert

    from attachfs.config import load_config
    from attachfs.db.tables import Server, Share, ShareMapping
    from attachfs.service import open_parts

    parts = open_parts(load_config(None, {"state_dir": str(state), "database_url": db_url}))
    shares, servers, mappings = _rows(state)
    try:
        with parts.db.engine.begin() as conn:
            conn.execute(insert(Share), shares)
            conn.execute(insert(Server), servers)
            conn.execute(insert(ShareMapping), mappings)
    finally:
        parts.db.dispose()
    return str(servers[SERVERS // 2]["uuid"]), str(shares[PER_SERVER // 2]["uuid"])


def create_pg(name: str) -> str:
    """A new PostgreSQL database `name`; its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.replace("postgresql:", "postgresql+psycopg:").rsplit("/", 1)[0] + f"/{name}"


def drop_pg(name: str) -> None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        print(f"cleanup: dropping database {name} failed: {exc}")


@contextmanager
def scratch_databases(kind: str, state_root: Path, prefix: str) -> Iterator[tuple[Path, str, str]]:
    """A throw-away state directory, an empty database of `kind` (SQLite in that directory, or
    a new PostgreSQL database) and the floor's database beside it: (state, url, floor url).
    All removed afterwards."""
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-{kind}-", dir=state_root))
    pg_name = f"attachfs_bench_{uuid.uuid4().hex[:8]}"
    try:
        if kind == "postgres":
            db_url = create_pg(pg_name)
            yield state, db_url, db_url
        else:
            yield state, f"sqlite:///{state / 'attachfs.db'}", f"sqlite:///{state / 'floor.db'}"
    finally:
        if kind == "postgres":
            drop_pg(pg_name)
        remove_state(state)


def listing_part(kind: str, state_root: Path, args: argparse.Namespace, fig: Figures) -> None:
    with scratch_databases(kind, state_root, "list") as (state, db_url, floor_url):
        t0 = time.perf_counter()
        sid, share_id = seed(state, db_url)
        log(f"{kind}: seeded {SERVERS * PER_SERVER} attachments in {time.perf_counter() - t0:.1f}s")
        measure(kind, state, db_url, floor_url, (sid, share_id), args, fig)


def measure(kind: str, state: Path, db_url: str, floor_url: str, ids: tuple[str, str],
            args: argparse.Namespace, fig: Figures) -> None:
    """The API-only server and the floor up; the reads on server ids[0] and share ids[1]."""
    sid, share_id = ids
    api_port, floor_port = free_port(), free_port()
    with running(api_argv(state, db_url, api_port), state / "api.log", api_port, "/v2.1/",
                 ROOT) as api, \
            running(floor_argv(floor_url, floor_port), state / "floor.log", floor_port, "/ping",
                    ROOT) as floor, \
            httpx.Client(base_url=api.url, headers=HEADERS, timeout=300) as client, \
            httpx.Client(base_url=floor.url, timeout=60) as fclient:
        n, p = args.reads, f"{kind}_"
        check_sizes(client, sid)
        fig.update(summary(p + "floor_read", sample(fclient, "GET", "/read", 200, n)))
        fig.update(summary(p + "list_shares", sample(
            client, "GET", f"/v2.1/servers/{sid}/shares", 200, n)))
        fig.update(summary(p + "show_share", sample(
            client, "GET", f"/v2.1/servers/{sid}/shares/{share_id}", 200, n)))
        fig.update(summary(p + "show_server", sample(
            client, "GET", f"/v2.1/servers/{sid}", 200, n)))
        fig.update(summary(p + "servers_detail", sample(
            client, "GET", "/v2.1/servers/detail?all_tenants=1", 200, args.detail,
            warmup=1, headers=ADMIN_EXTENDED)))
    fig.update(summary(p + "rows_floor", rows_floor(db_url, args.detail)))


# What servers/detail shows of each attachment (core/ports.py AttachedShare)
ATTACHED_COLUMNS = ("instance_uuid, uuid, share_id, status, tag, export_location, mount_point, "
                    "read_only, fault_message, transport")


def rows_floor(db_url: str, n: int) -> list[float]:
    """The floor of servers/detail's own work, in this process, no HTTP: its 10,016
    attachments fetched by the database driver itself and encoded as JSON (seconds each)."""
    import json

    query = f"SELECT {ATTACHED_COLUMNS} FROM share_mappings ORDER BY id"
    if db_url.startswith("sqlite"):
        import sqlite3

        conn: Any = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    else:
        import psycopg

        conn = psycopg.connect(db_url.replace("postgresql+psycopg:", "postgresql:"))
    out = []
    try:
        for _ in range(n + 1):
            t0 = time.perf_counter()
            rows = conn.execute(query).fetchall()
            json.dumps([list(r) for r in rows])
            out.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return out[1:]  # the first one warms the caches


# the server bodies with their attachments (attachfs's extension): the read path measured
ADMIN_EXTENDED = {**ADMIN, "OpenStack-API-Version": "compute 2.97, attachfs 1.0"}


def check_sizes(client: httpx.Client, sid: str) -> None:
    shares = client.get(f"/v2.1/servers/{sid}/shares").json()["shares"]
    detail = client.get("/v2.1/servers/detail?all_tenants=1",
                        headers=ADMIN_EXTENDED).json()["servers"]
    attached = sum(len(s["os-extended-shares:shares_attached"]) for s in detail)
    if (len(shares), len(detail), attached) != (PER_SERVER, SERVERS, SERVERS * PER_SERVER):
        raise RuntimeError(f"seeded data not as expected: {len(shares)} shares on the server, "
                           f"{len(detail)} servers, {attached} attachments in detail")
