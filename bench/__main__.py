"""Benchmark of share attachments (compute API 2.97) against the floor of this machine.

    .venv/bin/python -m attachfs.bench [--quick] [--json FILE] [--no-postgres]

1. attach/detach cycles through a real `attachfs serve` (embedded SQLite, in-process agent,
   libvirt) on a stopped server that booted a real guest;
2. the floor, measured in the same run: HTTP round trip + one committed INSERT (bench_floor.py);
3. list/show latency with 10,000 attachments, compute API only, on SQLite and PostgreSQL;
4. hot attach/detach on the running server (POST -> the guest mounted it) against a guest of
   our own that mounts by itself every 50 ms (bench_hotplug.py);
5. power on with 0, 1, 4 and 8 shares: os-start -> ACTIVE and -> the guest is ready.

Figures are printed (and written with --json), never asserted. See docs/bench.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from attachfs.bench_floor import (
    PG_ADMIN,
    Proc,
    api_argv,
    destroy_own_guest,
    drop_pg,
    floor_argv,
    foreign_guests,
    free_port,
    log,
    mapping_status,
    print_table,
    remove_state,
    running,
    sample,
    server_status,
    summary,
    timed,
    wait_for,
)
from attachfs.bench_hotplug import hot_part, hot_rows, new_share, power_on_part

STATE_ROOT = Path("/var/lib/attachfs/bench-state")
HEADERS = {"X-Auth-Token": "bench:bench", "OpenStack-API-Version": "compute 2.97"}
ADMIN = {"X-Auth-Token": "admin:admin"}
POLL = 0.005  # seconds between status polls; a figure that waits on a status is late by <= this
SERVERS, PER_SERVER = 313, 32  # 10,016 attachments for part 3

Figures = dict[str, float]
Row = tuple[str, str, str, str]  # figure, value, baseline, ratio


# ---- part 1: attach/detach through `attachfs serve` ----------------------------------------------

def wait_quiet(timeout: float) -> None:
    """Other guests (tests, demos) each take CPU under TCG: wait up to `timeout` for them to
    stop, then go on (the figures say how many ran). They are safe from this bench's serve:
    its agent's repair only sees guests tagged with its own owner (host:state dir)."""
    others = foreign_guests()
    if not others:
        return
    log(f"waiting up to {timeout:.0f}s for {len(others)} other attachfs guest(s) to stop: "
        f"{others}")
    try:
        wait_for("other attachfs guests to stop", lambda: not foreign_guests(), timeout, 2.0)
    except TimeoutError:
        log(f"going on with {len(foreign_guests())} other guest(s) running: figures are noisier")


def vm_part(args: argparse.Namespace, fig: Figures, errors: list[str]) -> None:
    state = Path(tempfile.mkdtemp(prefix="vm-", dir=STATE_ROOT))
    config = state / "attachfs.toml"
    # The only change from the defaults: no periodic repair pass (noise in the timings).
    config.write_text("[agent]\nresync_interval = 1000000.0\n")
    port = free_port()
    exe = Path(sys.executable).with_name("attachfs")
    serve = Proc([str(exe), "serve", "--config", str(config), "--state-dir", str(state),
                  "--listen", f"127.0.0.1:{port}", "--images-dir", args.images_dir],
                 state / "serve.log", port)
    client = httpx.Client(base_url=serve.url, headers=HEADERS, timeout=60)
    sid = None
    try:
        wait_quiet(args.wait_foreign)
        fig["other_guests_at_start"] = float(len(foreign_guests()))
        serve.start("/v2.1/")
        name = f"bench-{uuid.uuid4().hex[:8]}"
        share_id = new_share(client, name)
        r = client.post("/v2.1/servers", json={"server": {  # flavor 2: 1 vCPU, 256 MiB
            "name": name, "flavorRef": "2", "imageRef": "debian-busybox"}})
        r.raise_for_status()
        sid = r.json()["server"]["id"]
        t0 = time.perf_counter()
        wait_for("server ACTIVE", lambda: server_status(client, sid, "ACTIVE"), 900, 0.2)
        fig["server_active_s"] = time.perf_counter() - t0
        log(f"server {sid} ACTIVE after {fig['server_active_s']:.1f}s; stopping it")
        client.post(f"/v2.1/servers/{sid}/action", json={"os-stop": None}).raise_for_status()
        t0 = time.perf_counter()
        wait_for("server SHUTOFF", lambda: server_status(client, sid, "SHUTOFF"), 300, 0.2)
        fig["server_stop_s"] = time.perf_counter() - t0

        floor_part(state, args, fig)  # same machine, same moment: serve up, its agent idle
        # The floor's HTTP-only request against serve itself: version discovery, no database.
        fig.update(summary("serve_http", sample(client, "GET", "/v2.1/", 200, args.floor_n)))
        log(f"{args.cycles} attach/detach cycles on server {sid}")
        cycles(client, sid, share_id, args.cycles, fig)

        console = state / "console" / f"{sid}.log"
        shares = [share_id] + [new_share(client, f"{name}-{i}") for i in range(1, 8)]
        for what, run in (
                ("power on", lambda: power_on_part(client, sid, shares, console, args, fig)),
                ("hot plug", lambda: hot_part(client, sid, share_id, console,
                                              state / "serve.log", STATE_ROOT, args, fig))):
            log(f"part: {what}")
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - report it, run the other parts
                errors.append(f"{what}: {type(exc).__name__}: {exc}")
                log(f"part {what} FAILED: {exc}")
    finally:
        if sid is not None:
            try:
                client.delete(f"/v2.1/servers/{sid}").raise_for_status()
                wait_for("server deleted", lambda: client.get(f"/v2.1/servers/{sid}")
                         .status_code == 404, 300, 0.2)
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                log(f"cleanup: deleting server {sid} failed: {exc}")
        client.close()
        serve.stop()
        if sid is not None:
            destroy_own_guest(sid)
        remove_state(state)


def cycles(client: httpx.Client, sid: str, share_id: str, n: int, fig: Figures) -> None:
    url = f"/v2.1/servers/{sid}/shares/{share_id}"
    body = {"share": {"share_id": share_id, "tag": "t"}}
    post, delete, cycle, to_inactive, to_gone = [], [], [], [], []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        post.append(timed(client, "POST", f"/v2.1/servers/{sid}/shares", 201, json=body))
        t1 = time.perf_counter()
        wait_for("attachment inactive", lambda: mapping_status(client, url, "inactive"), 60, POLL)
        t2 = time.perf_counter()
        delete.append(timed(client, "DELETE", url, 200))
        t3 = time.perf_counter()
        wait_for("attachment gone", lambda: mapping_status(client, url, "gone"), 60, POLL)
        t4 = time.perf_counter()
        to_inactive.append(t2 - t1)
        to_gone.append(t4 - t3)
        cycle.append(t4 - t0)
    wall = time.perf_counter() - start
    for name, samples in (("attach_post", post), ("detach_delete", delete), ("cycle", cycle),
                          ("agent_attach", to_inactive), ("agent_detach", to_gone)):
        fig.update(summary(name, samples))
    fig["cycles_per_s"] = n / wall
    # An agent pass that takes ~1 s is the poll interval, not work: see docs/bench.md.
    fig["agent_slow_passes"] = float(sum(t > 0.5 for t in to_inactive + to_gone))
    fig["api_req_per_s"] = 2 * n / (sum(post) + sum(delete))


# ---- part 2: the floor -----------------------------------------------------------------------

def floor_part(state: Path, args: argparse.Namespace, fig: Figures) -> None:
    port = free_port()
    db_url = f"sqlite:///{state / 'floor.db'}"
    with running(floor_argv(db_url, port), state / "floor.log", port, "/ping") as floor, \
            httpx.Client(base_url=floor.url, headers=HEADERS, timeout=60) as client:
        n = args.floor_n
        fig.update(summary("floor_write", sample(client, "POST", "/write", 201, n, json={})))
        fig.update(summary("floor_http", sample(client, "GET", "/ping", 200, n)))
        fig["floor_write_req_per_s"] = 1000 / fig["floor_write_mean_ms"]


def floor_alone(args: argparse.Namespace, fig: Figures) -> None:
    state = Path(tempfile.mkdtemp(prefix="floor-", dir=STATE_ROOT))
    try:
        floor_part(state, args, fig)
    finally:
        remove_state(state)


# ---- part 3: list/show with 10,000 attachments, API only -------------------------------------------

def seed(state: Path, db_url: str) -> tuple[str, str]:
    """313 stopped servers x 32 attachments of 32 shares, in bulk; a middle server and share."""
    from sqlalchemy import insert

    from attachfs.config import load_config
    from attachfs.db.tables import Server, Share, ShareMapping
    from attachfs.service import open_parts

    parts = open_parts(load_config(None, {"state_dir": str(state), "database_url": db_url}))
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
    try:
        with parts.db.engine.begin() as conn:
            conn.execute(insert(Share), shares)
            conn.execute(insert(Server), servers)
            conn.execute(insert(ShareMapping), mappings)
    finally:
        parts.db.dispose()
    return str(servers[SERVERS // 2]["uuid"]), str(shares[PER_SERVER // 2]["uuid"])


def listing_part(kind: str, args: argparse.Namespace, fig: Figures) -> None:
    state = Path(tempfile.mkdtemp(prefix=f"list-{kind}-", dir=STATE_ROOT))
    pg_name = f"attachfs_bench_{uuid.uuid4().hex[:8]}"
    db_url = f"sqlite:///{state / 'attachfs.db'}"
    try:
        if kind == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{pg_name}"')
            db_url = PG_ADMIN.replace("postgresql:", "postgresql+psycopg:").rsplit("/", 1)[0] \
                + f"/{pg_name}"
        t0 = time.perf_counter()
        sid, share_id = seed(state, db_url)
        log(f"{kind}: seeded {SERVERS * PER_SERVER} attachments in {time.perf_counter() - t0:.1f}s")
        floor_url = db_url if kind == "postgres" else f"sqlite:///{state / 'floor.db'}"
        api_port, floor_port = free_port(), free_port()
        with running(api_argv(state, db_url, api_port), state / "api.log", api_port, "/v2.1/") \
                as api, running(floor_argv(floor_url, floor_port), state / "floor.log",
                                floor_port, "/ping") as floor, \
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
                warmup=1, headers=ADMIN)))
    finally:
        if kind == "postgres":
            drop_pg(pg_name)
        remove_state(state)


def check_sizes(client: httpx.Client, sid: str) -> None:
    shares = client.get(f"/v2.1/servers/{sid}/shares").json()["shares"]
    detail = client.get("/v2.1/servers/detail?all_tenants=1", headers=ADMIN).json()["servers"]
    attached = sum(len(s["os-extended-shares:shares_attached"]) for s in detail)
    if (len(shares), len(detail), attached) != (PER_SERVER, SERVERS, SERVERS * PER_SERVER):
        raise RuntimeError(f"seeded data not as expected: {len(shares)} shares on the server, "
                           f"{len(detail)} servers, {attached} attachments in detail")


# ---- report ----------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f} ms"


def rows(fig: Figures) -> list[Row]:
    out: list[Row] = []

    def add(label: str, key: str, base: str | None, fmt: Callable[[float], str] = _ms) -> None:
        if key not in fig:
            return
        value = fig[key]
        if base is None or base not in fig:
            out.append((label, fmt(value), "-", "-"))
            return
        out.append((label, fmt(value), f"{fmt(fig[base])} ({base})",
                    f"{value / fig[base]:.1f}x" if fig[base] else "-"))

    def rate(v: float) -> str:
        return f"{v:.1f}/s"

    add("server create -> ACTIVE (domain started)", "server_active_s", None, lambda v: f"{v:.1f} s")
    add("server stop -> SHUTOFF", "server_stop_s", None, lambda v: f"{v:.1f} s")
    for q in ("p50", "p99"):
        add(f"attach POST {q}", f"attach_post_{q}_ms", f"floor_write_{q}_ms")
    for q in ("p50", "p99"):
        add(f"detach DELETE {q}", f"detach_delete_{q}_ms", f"floor_write_{q}_ms")
    for q in ("p50", "p99"):
        add(f"agent: POST done -> inactive {q}", f"agent_attach_{q}_ms", None)
    for q in ("p50", "p99"):
        add(f"agent: DELETE done -> 404 {q}", f"agent_detach_{q}_ms", None)
    for q in ("p50", "p99"):
        add(f"full cycle {q}", f"cycle_{q}_ms", None)
    add("cycles per second", "cycles_per_s", None, rate)
    add("agent waits > 0.5 s (of 2 per cycle)", "agent_slow_passes", None, lambda v: f"{v:.0f}")
    add("API throughput (attach+detach)", "api_req_per_s", "floor_write_req_per_s", rate)
    for q in ("p50", "p99"):
        add(f"floor: HTTP + INSERT commit {q}", f"floor_write_{q}_ms", None)
    for q in ("p50", "p99"):
        add(f"floor: HTTP only {q}", f"floor_http_{q}_ms", None)
    for q in ("p50", "p99"):
        add(f"serve: GET /v2.1/ (no database) {q}", f"serve_http_{q}_ms", f"floor_http_{q}_ms")
    for kind in ("sqlite", "postgres"):
        for what, label in (("list_shares", "GET servers/{id}/shares (32)"),
                            ("show_share", "GET servers/{id}/shares/{share}"),
                            ("show_server", "GET servers/{id} (32 shares)"),
                            ("servers_detail", "GET servers/detail (313 srv, 10k shares)"),
                            ("floor_read", "floor: HTTP + SELECT 1 row")):
            for q in ("p50", "p99"):
                base = None if what == "floor_read" else f"{kind}_floor_read_{q}_ms"
                add(f"[{kind}] {label} {q}", f"{kind}_{what}_{q}_ms", base)
    add("other guests running at the start", "other_guests_at_start", None, lambda v: f"{v:.0f}")
    return out + hot_rows(fig)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attachfs.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="30 cycles, 10 hot rounds, 1 boot per share count, fewer samples")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--cycles", type=int, help="attach/detach cycles (default 200, quick 30)")
    p.add_argument("--hot-rounds", type=int,
                   help="hot attach/detach rounds, each side (default 12, quick 10)")
    p.add_argument("--power-runs", type=int,
                   help="boots per share count 0/1/4/8 (default 2, quick 1)")
    p.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True,
                   help="also run part 3 on PostgreSQL at 127.0.0.1:5432 (default on)")
    p.add_argument("--vm", action=argparse.BooleanOptionalAction, default=True,
                   help="run part 1 (boots a guest); --no-vm measures the floor alone")
    p.add_argument("--images-dir", default="/var/lib/attachfs/images")
    p.add_argument("--wait-foreign", type=float, default=300, metavar="SECONDS",
                   help="how long to wait for guests of other attachfs instances to stop "
                        "(then the bench goes on anyway)")
    args = p.parse_args(argv)
    args.cycles = args.cycles or (30 if args.quick else 200)
    args.hot_rounds = args.hot_rounds or (10 if args.quick else 12)
    args.power_runs = args.power_runs or (1 if args.quick else 2)
    args.floor_n = 200 if args.quick else 500
    args.reads, args.detail = (200, 5) if args.quick else (500, 20)
    signal.signal(signal.SIGTERM, _interrupt)  # so every finally block cleans up
    STATE_ROOT.mkdir(parents=True, exist_ok=True)

    fig: Figures = {"loadavg_1m_at_start": os.getloadavg()[0]}  # other work on the machine
    errors: list[str] = []
    parts: list[tuple[str, Callable[[], None]]] = []
    if args.vm:
        parts.append(("guests: attach/detach + floor, power on, hot plug",
                      lambda: vm_part(args, fig, errors)))
    else:
        parts.append(("floor", lambda: floor_alone(args, fig)))
    parts.append(("listing on sqlite", lambda: listing_part("sqlite", args, fig)))
    if args.postgres:
        parts.append(("listing on postgres", lambda: listing_part("postgres", args, fig)))
    for name, run in parts:
        log(f"part: {name}")
        try:
            run()
        except KeyboardInterrupt:  # the part's finally blocks have cleaned up
            errors.append(f"{name}: interrupted")
            break
        except Exception as exc:  # noqa: BLE001 - report it, run the other parts
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"part {name} FAILED: {exc}")
    print(f"\nload average at start: {fig['loadavg_1m_at_start']:.2f} on {os.cpu_count()} cores")
    print_table(rows(fig))
    for e in errors:
        print(f"error: {e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": fig, "errors": errors,
                                               "args": vars(args)}, indent=2, default=str))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
