"""Part 9: the write path through the compute API alone (no agent), on SQLite and on
PostgreSQL, against the floor on the same kind of database in the same run.

- Latency: attach POST and detach DELETE one at a time, each on a (server, share) pair of its
  own (no agent runs, so an attachment stays `attaching`, then `detaching`), against the
  floor's HTTP + one committed INSERT.
- Throughput: the same requests from CLIENTS keep-alive connections at once, against the
  floor's writes from the same clients. SQLite: one API process, one floor process. PostgreSQL:
  `attachfs api --workers N` and the floor in as many processes.

The clients are a small asyncio loop writing prepared HTTP/1.1 requests (bench/loadgen.py):
an httpx client costs more CPU per request than the floor itself, and it shares the cores.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen
from bench.listing import scratch_databases
from bench.measure import HEADERS, Figures, Row, log, summary
from bench.servers import ROOT, api_argv, floor_argv
from harness.process import free_port, running

SERVERS, SHARES = 200, 30  # 6,000 (server, share) pairs; 30 fit the per-server limit (32)
CLIENTS = 8


def seed(state: Path, db_url: str) -> list[tuple[str, str]]:
    """Stopped servers and built-in shares, no attachments; every (server, share) pair."""
    from sqlalchemy import insert

    from attachfs.config import load_config
    from attachfs.db.tables import Server, Share
    from attachfs.service import open_parts

    owner = {"project_id": "bench", "user_id": "bench"}
    shares = [{"uuid": str(uuid.uuid4()), "name": f"w{j}", "size_gib": 1, "scope": "instance",
               "status": "available", "mount_point": None, **owner} for j in range(SHARES)]
    servers: list[dict[str, Any]] = [
               {"uuid": str(uuid.uuid4()), "name": f"w{i}", "host": "bench", "flavor_id": "1",
                "image_id": "debian-busybox", "vcpus": 1, "memory_mib": 128,
                "vm_state": "stopped", "task_state": None, "power_intent": "off",
                "user_data": None, "meta": {}, "fault_message": None, "launched_at": None,
                "generation": 1, "observed_generation": 1, **owner} for i in range(SERVERS)]
    parts = open_parts(load_config(None, {"state_dir": str(state), "database_url": db_url}))
    try:
        with parts.db.engine.begin() as conn:
            conn.execute(insert(Share), shares)
            conn.execute(insert(Server), servers)
    finally:
        parts.db.dispose()
    return [(str(sv["uuid"]), str(sh["uuid"])) for sh in shares for sv in servers]


def attach_requests(pairs: list[tuple[str, str]]) -> list[bytes]:
    return [loadgen.request("POST", f"/v2.1/servers/{sid}/shares", HEADERS,
                            {"share": {"share_id": share}}) for sid, share in pairs]


def detach_requests(pairs: list[tuple[str, str]]) -> list[bytes]:
    return [loadgen.request("DELETE", f"/v2.1/servers/{sid}/shares/{share}", HEADERS)
            for sid, share in pairs]


def writes_part(kind: str, state_root: Path, args: argparse.Namespace, fig: Figures) -> None:
    with scratch_databases(kind, state_root, "writes") as (state, db_url, floor_url):
        measure(kind, state, db_url, floor_url, seed(state, db_url), args, fig)


def measure(kind: str, state: Path, db_url: str, floor_url: str,
            pairs: list[tuple[str, str]], args: argparse.Namespace, fig: Figures) -> None:
    p = f"w_{kind}_"
    n = args.write_n
    workers = args.write_workers if kind == "postgres" else 1
    fig[p + "workers"] = float(workers)
    warm, one, rest = pairs[:20], pairs[20:20 + n], pairs[20 + n:]
    # one at a time: the API alone and the floor, one process each
    api_port, floor_port = free_port(), free_port()
    with running(api_argv(state, db_url, api_port), state / "api.log", api_port, "/v2.1/",
                 ROOT) as api, \
            running(floor_argv(floor_url, floor_port), state / "floor.log", floor_port,
                    "/ping", ROOT) as floor:
        loadgen.one_at_a_time(api.url, attach_requests(warm), 201, warmup=0)  # not timed
        loadgen.one_at_a_time(api.url, detach_requests(warm), 200, warmup=0)
        fig.update(summary(p + "floor_write", loadgen.one_at_a_time(
            floor.url, [loadgen.request("POST", "/write", {}, {})] * n, 201)))
        fig.update(summary(p + "attach_post", loadgen.one_at_a_time(
            api.url, attach_requests(one), 201, warmup=0)))
        fig.update(summary(p + "detach_delete", loadgen.one_at_a_time(
            api.url, detach_requests(one), 200, warmup=0)))
        check_recorded(api.url, one[-1])
        if workers == 1:
            throughput(p, api.url, floor.url, rest, args, fig)
    if workers > 1:
        with running(api_argv(state, db_url, api_port, workers), state / "api-w.log",
                     api_port, "/v2.1/", ROOT) as api, \
                running(floor_argv(floor_url, floor_port, workers), state / "floor-w.log",
                        floor_port, "/ping", ROOT) as floor:
            throughput(p, api.url, floor.url, rest, args, fig)


def throughput(p: str, api_url: str, floor_url: str, pairs: list[tuple[str, str]],
               args: argparse.Namespace, fig: Figures) -> None:
    m = min(args.write_m, len(pairs))
    todo = pairs[:m]
    log(f"{p}: {2 * m} attach+detach requests from {CLIENTS} clients, then {2 * m} floor writes")
    t0 = time.perf_counter()
    loadgen.concurrently(api_url, attach_requests(todo), 201, CLIENTS)
    loadgen.concurrently(api_url, detach_requests(todo), 200, CLIENTS)
    fig[p + "api_req_per_s"] = 2 * m / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    loadgen.concurrently(floor_url, [loadgen.request("POST", "/write", {}, {})] * (2 * m), 201,
                         CLIENTS)
    fig[p + "floor_req_per_s"] = 2 * m / (time.perf_counter() - t0)


def check_recorded(base: str, pair: tuple[str, str]) -> None:
    """The requests did what they say: the last pair's attachment is `detaching`."""
    sid, share = pair
    r = httpx.get(f"{base}/v2.1/servers/{sid}/shares/{share}", headers=HEADERS, timeout=30)
    r.raise_for_status()
    status = r.json()["share"]["status"]
    if status != "detaching":
        raise RuntimeError(f"attachment of {share} on {sid} is {status}, not detaching")


def writes_rows(fig: Figures) -> list[Row]:
    out: list[Row] = []
    for kind in ("sqlite", "postgres"):
        p = f"w_{kind}_"
        for what, label in (("attach_post", "attach POST"), ("detach_delete", "detach DELETE")):
            for q in ("p50", "p99"):
                k, b = f"{p}{what}_{q}_ms", f"{p}floor_write_{q}_ms"
                if k in fig and b in fig:
                    out.append((f"[{kind}] API alone: {label} {q}", f"{fig[k]:.2f} ms",
                                f"{fig[b]:.2f} ms (floor write {q})", f"{fig[k] / fig[b]:.1f}x"))
        k, b = p + "api_req_per_s", p + "floor_req_per_s"
        if k in fig and b in fig:
            procs = f"{fig[p + 'workers']:.0f} process(es) each, {CLIENTS} clients"
            out.append((f"[{kind}] API alone: attach+detach throughput ({procs})",
                        f"{fig[k]:.0f} req/s", f"{fig[b]:.0f} req/s (floor writes)",
                        f"{fig[k] / fig[b]:.2f}x"))
    return out
