"""Part 8 (`python -m bench --scale`): a cloud of simulated hosts on one PostgreSQL.

HOSTS hosts (default 1,000), each a real agent on the test-only fake virt and storage drivers
(bench/scale_hosts.py, in PROCS processes), SERVERS servers per host (10; every other one
running), SHARES built-in shares per server (2), and the real compute API (`attachfs api
--workers N`). In order:

1. cold start: every agent starts at once and builds the running servers (fake guests);
2. idle: IDLE s with nothing asked: what the hosts alone cost the database;
3. attach: one POST /v2.1/servers/{id}/shares per (server, share) from CLIENTS concurrent
   clients: throughput, and POST -> `inactive` (stopped server) / `active` (running server,
   hot plug) from the rows' own times;
4. restart: every agent stopped; one attachment per host detached through the API while they
   are down; every agent started at once: the time until all are back and the database is
   converged again;
5. dedicated: a few hosts each with the real engine, pool and LISTEN of their own: the
   connections one agent per real host holds.

Database connections are sampled from pg_stat_activity every 0.2 s. Figures are printed and
written, never asserted. See docs/bench.md, "Scale simulation".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.listing import PG_ADMIN, create_pg, drop_pg
from bench.measure import HEADERS, Figures, log, pct
from bench.servers import ROOT
from harness.host import remove_state
from harness.process import free_port, wait_for

PREFIX, DEDICATED_PREFIX = "sim-", "ded-"
PROJECT = "bench"  # X-Auth-Token bench:bench (noauth): user bench, project bench
IMAGE_ID = "img-1"  # tests/fakes/world.py IMAGE: what the fake hosts boot
SAMPLE = 0.2  # s between pg_stat_activity samples
CHECK = 0.2  # s between convergence checks: a "converged after" figure is late by <= this


# ---- the rows --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    server: str
    share: str
    tag: str
    host: str
    running: bool


def _server(name: str, host: str, running: bool) -> dict[str, Any]:
    """A server row as the API writes it: a running one as just created (the host's agent
    builds it), a stopped one as already built and stopped."""
    return {"uuid": str(uuid.uuid4()), "name": name, "project_id": PROJECT, "user_id": PROJECT,
            "host": host, "flavor_id": "1", "image_id": IMAGE_ID, "vcpus": 1,
            "memory_mib": 128, "vm_state": "building" if running else "stopped",
            "task_state": "spawning" if running else None,
            "power_intent": "on" if running else "off", "user_data": None, "meta": {},
            "fault_message": None, "launched_at": None, "generation": 1,
            "observed_generation": 0 if running else 1, "config_drive": False}


def _share(name: str) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "name": name, "size_gib": 1, "scope": "instance",
            "status": "available", "mount_point": None, "project_id": PROJECT,
            "user_id": PROJECT}


def seed(url: str, args: argparse.Namespace, storage_root: Path) -> list[Target]:
    """Servers and built-in share rows in bulk (the API would write the same rows; creating
    each share's ext4 image is not what is measured); the attachments are left to the API.
    The dedicated hosts' servers come with attachments already asked (`attaching`)."""
    from sqlalchemy import insert

    from attachfs.db.engine import Database
    from attachfs.db.tables import Server, Share, ShareMapping

    servers, shares, targets, mappings = [], [], [], []
    for h in range(args.scale_hosts):
        host = f"{PREFIX}{h:04d}"
        for i in range(args.scale_servers):
            row = _server(f"vm-{h}-{i}", host, running=i % 2 == 0)
            servers.append(row)
            for j in range(args.scale_shares):
                share = _share(f"fs-{h}-{i}-{j}")
                shares.append(share)
                targets.append(Target(row["uuid"], share["uuid"], f"t{j}", host, i % 2 == 0))
    for h in range(args.scale_dedicated):
        for i in range(args.scale_servers):
            row = _server(f"ded-{h}-{i}", f"{DEDICATED_PREFIX}{h:04d}", running=False)
            servers.append(row)
            for j in range(args.scale_shares):
                share = _share(f"fs-ded-{h}-{i}-{j}")
                shares.append(share)
                mappings.append({
                    "uuid": str(uuid.uuid4()), "instance_uuid": row["uuid"],
                    "share_id": share["uuid"], "status": "attaching", "tag": f"t{j}",
                    "share_proto": "LOCAL", "export_location": f"local:{storage_root}/"
                    f"{share['uuid']}", "mount_point": None, "fault_message": None,
                    "request_id": None, "user_id": PROJECT, "project_id": PROJECT})
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            for table, rows in ((Share, shares), (Server, servers), (ShareMapping, mappings)):
                for start in range(0, len(rows), 5000):
                    if rows[start:start + 5000]:
                        conn.execute(insert(table), rows[start:start + 5000])
    finally:
        db.dispose()
    return targets


def with_app(url: str, name: str) -> str:
    """The URL with application_name set, so pg_stat_activity tells who holds a connection."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


# ---- watching the database -------------------------------------------------------------------
def _ticks(pid: int, children: bool = False) -> float:
    """CPU seconds of `pid` (with its reaped children's when asked); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    used = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children
                                               else 0)
    return used / os.sysconf("SC_CLK_TCK")


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _postmaster() -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if comm == "postgres" and ppid == 1:
                return int(entry)
    return None


class Cpu:
    """CPU seconds used by PostgreSQL (the postmaster and every backend, also the ones gone),
    the API processes, the host processes and this process, between two looks."""

    def __init__(self) -> None:
        self.postmaster = _postmaster()
        self.api: int | None = None
        self.hosts: list[int] = []

    def look(self) -> dict[str, float]:
        out = {"bench": sum(os.times()[:2])}
        if self.postmaster is not None:
            out["postgres"] = _ticks(self.postmaster, children=True) + sum(
                _ticks(p) for p in _children_of(self.postmaster))
        if self.api is not None:
            out["api"] = _ticks(self.api, children=True) + sum(
                _ticks(p) for p in _children_of(self.api))
        out["hosts"] = sum(_ticks(p) for p in self.hosts)
        return out


@dataclass
class Monitor:
    """Samples the connections to database `name` (by who holds them) every SAMPLE s and
    keeps each phase's peak; the database's transactions and the CPU at phase boundaries."""

    name: str
    cpu: Cpu
    phase: str = "setup"
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _conn: Any = None

    def __enter__(self) -> Monitor:
        import psycopg

        self._conn = psycopg.connect(PG_ADMIN, autocommit=True,
                                     application_name="scale-monitor")
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._conn.close()

    def sample(self) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT application_name, query LIKE 'LISTEN%%', count(*) FROM pg_stat_activity "
            "WHERE datname = %s GROUP BY 1, 2", (self.name,)).fetchall()
        out = {"total": 0, "api": 0, "hosts": 0, "listen": 0, "dedicated": 0, "other": 0}
        for app, listening, n in rows:
            out["total"] += n
            kind = ("listen" if listening and app.startswith("scale-hosts") else
                    "hosts" if app.startswith("scale-hosts") else
                    "dedicated" if app.startswith("scale-dedicated") else
                    "api" if app == "scale-api" else "other")
            out[kind] += n
        return out

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE):
            try:
                now = self.sample()
            except Exception:  # noqa: BLE001 - a missed sample; the next one counts
                continue
            peak = self.peaks.setdefault(self.phase, {})
            for k, v in now.items():
                peak[k] = max(peak.get(k, 0), v)

    def transactions(self) -> int:
        row = self._conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                 "WHERE datname = %s", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    @contextmanager
    def phase_of(self, phase: str, fig: Figures) -> Iterator[None]:
        """Within: samples count toward `phase`. After: its transactions per second and the
        cores each part used (CPU seconds over wall seconds); its peak connections."""
        self.phase = phase
        self.peaks[phase] = {}
        t0, x0, c0 = time.monotonic(), self.transactions(), self.cpu.look()
        try:
            yield
        finally:
            time.sleep(1.0)  # PostgreSQL 15 flushes its statistics at most once a second
            wall, c1 = time.monotonic() - t0, self.cpu.look()
            fig[f"scale_{phase}_tx_per_s"] = (self.transactions() - x0) / wall
            for who, used in c1.items():
                fig[f"scale_{phase}_cpu_{who}_cores"] = (used - c0.get(who, 0.0)) / wall
            for kind, n in self.peaks.get(phase, {}).items():
                fig[f"scale_{phase}_conns_{kind}"] = float(n)
            self.phase = "between"


# ---- the host processes ----------------------------------------------------------------------
class HostProc:
    """One `python -m bench.scale_hosts` process; its events in a queue."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, cwd=ROOT, text=True, bufsize=1)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put({"event": "exited"})

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"host process {self.proc.pid}: no {event} in {timeout:.0f}s") \
                    from None
            if got["event"] == event:
                return got
            if got["event"] == "exited":
                self.proc.wait(10)
                tail = Path(self.log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"host process {self.proc.pid} exited "
                                   f"({self.proc.returncode}); its log ends:\n{tail}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(120)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def host_argv(url: str, state: Path, first: int, count: int, args: argparse.Namespace,
              dedicated: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "bench.scale_hosts", "--state", str(state / "hosts"),
            "--first", str(first), "--count", str(count)]
    if dedicated:
        return [*argv, "--db-url", with_app(url, "scale-dedicated"), "--prefix",
                DEDICATED_PREFIX, "--dedicated"]
    return [*argv, "--db-url", with_app(url, f"scale-hosts-{first}"), "--prefix", PREFIX,
            "--pool", str(args.scale_pool), "--agent-workers", str(args.scale_agent_workers),
            "--bell", args.scale_bell]


@contextmanager
def host_procs(url: str, state: Path, args: argparse.Namespace,
               cpu: Cpu) -> Iterator[list[HostProc]]:
    n, k = args.scale_hosts, args.scale_procs
    bounds = [(n * i // k, n * (i + 1) // k - n * i // k) for i in range(k)]
    procs: list[HostProc] = []
    try:
        for i, (first, count) in enumerate(bounds):
            procs.append(HostProc(host_argv(url, state, first, count, args),
                                  state / f"hosts-{i}.log"))
        cpu.hosts = [p.proc.pid for p in procs]
        for p in procs:
            p.wait("ready", 300)
        yield procs
    finally:
        for p in procs:
            p.close()


def start_all(procs: list[HostProc]) -> float:
    """Every agent of every process started (the commands go out back to back); the time."""
    t0 = time.time()
    for p in procs:
        p.send("start")
    return t0


def wait_all(procs: list[HostProc], event: str, timeout: float) -> float:
    """The latest time of `event` over the processes."""
    return max(float(p.wait(event, timeout)["t"]) for p in procs)


# ---- the database's view ---------------------------------------------------------------------
class Rows:
    """The bench's own connection to the database under test (application_name scale-bench)."""

    def __init__(self, url: str) -> None:
        from attachfs.db.engine import Database

        self.db = Database(with_app(url, "scale-bench"))

    def close(self) -> None:
        self.db.dispose()

    def scalar(self, sql: str, **params: Any) -> int:
        from sqlalchemy import text

        with self.db.read() as s:
            return int(s.execute(text(sql), params).scalar_one())

    def unconverged(self, prefix: str = PREFIX) -> int:
        """Servers of these hosts not where they were asked to be, and attachments in
        flight: no transitional status, generation == observed_generation, no task."""
        like = {"like": prefix + "%"}
        return self.scalar(
            "SELECT count(*) FROM servers WHERE host LIKE :like AND (generation <> "
            "observed_generation OR task_state IS NOT NULL OR vm_state = 'building')", **like) \
            + self.scalar(
                "SELECT count(*) FROM share_mappings m JOIN servers s ON s.uuid = "
                "m.instance_uuid WHERE s.host LIKE :like AND m.status IN ('attaching', "
                "'detaching')", **like)

    def errors(self, prefix: str = PREFIX) -> int:
        like = {"like": prefix + "%"}
        return self.scalar("SELECT count(*) FROM servers WHERE host LIKE :like AND vm_state = "
                           "'error'", **like) + self.scalar(
            "SELECT count(*) FROM share_mappings m JOIN servers s ON s.uuid = m.instance_uuid "
            "WHERE s.host LIKE :like AND m.status = 'error'", **like)

    def registered_since(self, t: float, prefix: str = PREFIX) -> int:
        since = dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None)
        return self.scalar("SELECT count(*) FROM hosts WHERE name LIKE :like AND started_at >= "
                           ":since", like=prefix + "%", since=since)

    def settled(self) -> list[tuple[str, str, str, float, int]]:
        """(server, share, status, updated_at as epoch seconds, attempts) of each attachment
        of the simulated hosts."""
        from sqlalchemy import text

        with self.db.read() as s:
            rows = s.execute(text(
                "SELECT m.instance_uuid, m.share_id, m.status, m.updated_at, m.attempts FROM "
                "share_mappings m JOIN servers s ON s.uuid = m.instance_uuid WHERE s.host LIKE "
                ":like"), {"like": PREFIX + "%"}).all()
        return [(a, b, c, d.replace(tzinfo=dt.UTC).timestamp(), e) for a, b, c, d, e in rows]


def converge(rows: Rows, what: str, timeout: float, prefix: str = PREFIX) -> float:
    """Wait until nothing is unconverged on these hosts; the time (epoch) it was seen."""
    wait_for(what, lambda: rows.unconverged(prefix) == 0, timeout, CHECK)
    return time.time()


# ---- requests --------------------------------------------------------------------------------
@dataclass
class Sent:
    key: tuple[str, str]
    t_send: float  # time.time() when the request went out
    seconds: float  # its round trip
    status: int
    body: str = ""


def fire(base: str, requests: Sequence[tuple[str, str, dict[str, Any] | None, tuple[str, str]]],
         clients: int) -> list[Sent]:
    """Each (method, path, json, key) once, from `clients` threads with a keep-alive
    connection each (the API's workers share the port: connections spread over them)."""
    todo: queue.Queue[tuple[str, str, dict[str, Any] | None, tuple[str, str]]] = queue.Queue()
    for r in requests:
        todo.put(r)
    out: list[Sent] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=base, headers=HEADERS, timeout=300) as http:
            while True:
                try:
                    method, path, body, key = todo.get_nowait()
                except queue.Empty:
                    return
                t_send, t0 = time.time(), time.perf_counter()
                r = http.request(method, path, json=body)
                sent = Sent(key, t_send, time.perf_counter() - t0, r.status_code,
                            "" if r.status_code < 300 else r.text[:300])
                with lock:
                    out.append(sent)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@contextmanager
def api_running(url: str, state: Path, workers: int, cpu: Cpu) -> Iterator[str]:
    """`attachfs api --workers N` on the database, as tests/integration/test_api_workers.py
    starts it; its base URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("attachfs")
    images = state / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(state / "api.log", "ab") as out:
        proc = subprocess.Popen([str(exe), "api", "--state-dir", str(state / "api"), "--listen",
                                 f"127.0.0.1:{port}", "--database-url",
                                 with_app(url, "scale-api"), "--images-dir", str(images),
                                 "--workers", str(workers), "--log-level", "WARNING"],
                                stdout=out, stderr=subprocess.STDOUT)
    cpu.api = proc.pid
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                tail = (state / "api.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"attachfs api exited {proc.returncode}; its log ends:\n{tail}")
            try:
                return httpx.get(base + "/v2.1/", timeout=5).status_code == 200
            except httpx.TransportError:
                return False
        wait_for("the API workers", answers, 120, 0.2)
        wait_for(f"{workers} API workers", lambda: len(_children_of(proc.pid)) >= workers, 60)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the part ------------------------------------------------------------------------------
def scale_part(state_root: Path, args: argparse.Namespace, fig: Figures) -> None:
    state = Path(tempfile.mkdtemp(prefix="scale-", dir=state_root))
    name = f"attachfs_scale_{uuid.uuid4().hex[:8]}"
    try:
        url = create_pg(name)
        run(url, name, state, args, fig)
    finally:
        drop_pg(name)
        remove_state(state)


def run(url: str, name: str, state: Path, args: argparse.Namespace, fig: Figures) -> None:
    import psycopg

    from attachfs.db.engine import migrate

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        fig["scale_max_connections"] = float(row[0]) if row else float("nan")
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                           "'client backend'").fetchone()
        fig["scale_other_connections_at_start"] = float(row[0]) - 1 if row else float("nan")
    for key in ("hosts", "servers", "shares", "procs", "pool", "agent_workers", "clients",
                "api_workers", "dedicated"):
        fig[f"scale_{key}"] = float(getattr(args, f"scale_{key}"))
    migrate(url)
    t0 = time.perf_counter()
    targets = seed(url, args, state / "api" / "shares")
    log(f"scale: seeded {args.scale_hosts * args.scale_servers} servers and {len(targets)} "
        f"shares in {time.perf_counter() - t0:.1f}s")
    cpu = Cpu()
    rows = Rows(url)
    try:
        with Monitor(name, cpu) as mon, api_running(url, state, args.scale_api_workers,
                                                    cpu) as base, \
                host_procs(url, state, args, cpu) as procs:
            cold_start(procs, rows, mon, args, fig)
            idle(mon, args, fig)
            attach_phase(base, targets, rows, mon, args, fig)
            restart_phase(base, targets, procs, rows, mon, args, fig)
            if args.scale_dedicated:
                dedicated_phase(url, state, rows, mon, args, fig)
    finally:
        rows.close()


def cold_start(procs: list[HostProc], rows: Rows, mon: Monitor, args: argparse.Namespace,
               fig: Figures) -> None:
    running = args.scale_hosts * ((args.scale_servers + 1) // 2)
    log(f"scale: starting {args.scale_hosts} agents in {len(procs)} processes; they build "
        f"{running} running servers")
    with mon.phase_of("cold", fig):
        t0 = start_all(procs)
        started = wait_all(procs, "started", 300)
        done = converge(rows, "every server built", args.scale_timeout)
        verified = wait_all(procs, "verified", args.scale_timeout)
    fig["scale_cold_started_s"] = started - t0
    fig["scale_cold_converged_s"] = done - t0
    fig["scale_cold_verified_s"] = verified - t0
    fig["scale_cold_errors"] = float(rows.errors())
    log(f"scale: cold start converged after {done - t0:.1f}s")


def idle(mon: Monitor, args: argparse.Namespace, fig: Figures) -> None:
    log(f"scale: {args.scale_idle:.0f}s idle")
    with mon.phase_of("idle", fig):
        time.sleep(args.scale_idle)


def attach_phase(base: str, targets: list[Target], rows: Rows, mon: Monitor,
                 args: argparse.Namespace, fig: Figures) -> None:
    order = list(targets)
    random.Random(8).shuffle(order)
    requests = [("POST", f"/v2.1/servers/{t.server}/shares",
                 {"share": {"share_id": t.share, "tag": t.tag}}, (t.server, t.share))
                for t in order]
    log(f"scale: {len(requests)} attaches from {args.scale_clients} clients over "
        f"{args.scale_api_workers} API workers")
    with mon.phase_of("attach", fig):
        t0 = time.time()
        sent = fire(base, requests, args.scale_clients)
        t_posted = max(s.t_send + s.seconds for s in sent)
        done = converge(rows, "every attachment settled", args.scale_timeout)
    ok = [s for s in sent if s.status == 201]
    failed = [s for s in sent if s.status != 201]
    for s in failed[:3]:
        log(f"scale: attach answered {s.status}: {s.body}")
    fig["scale_attach_requests"] = float(len(sent))
    fig["scale_attach_failed"] = float(len(failed))
    fig["scale_attach_req_per_s"] = len(ok) / (t_posted - t0)
    fig["scale_attach_posting_s"] = t_posted - t0
    fig["scale_attach_settled_s"] = done - t0
    posts = [s.seconds for s in ok]
    fig["scale_attach_post_p50_ms"] = pct(posts, 50) * 1000
    fig["scale_attach_post_p99_ms"] = pct(posts, 99) * 1000
    when = {s.key: s.t_send for s in ok}
    to: dict[str, list[float]] = {"inactive": [], "active": [], "other": []}
    retried = 0
    for server, share, status, updated, attempts in rows.settled():
        if (server, share) in when:
            to[status if status in to else "other"].append(updated - when[(server, share)])
            retried += attempts > 0
    for status in ("inactive", "active"):
        fig[f"scale_to_{status}_p50_ms"] = pct(to[status], 50) * 1000
        fig[f"scale_to_{status}_p99_ms"] = pct(to[status], 99) * 1000
        fig[f"scale_to_{status}_max_ms"] = pct(to[status], 100) * 1000
        fig[f"scale_to_{status}_n"] = float(len(to[status]))
    fig["scale_attach_other_status"] = float(len(to["other"]))
    fig["scale_attach_errors"] = float(rows.errors())
    log(f"scale: {len(ok)} attaches at {fig['scale_attach_req_per_s']:.0f}/s, all settled "
        f"after {done - t0:.1f}s")


def restart_phase(base: str, targets: list[Target], procs: list[HostProc], rows: Rows,
                  mon: Monitor, args: argparse.Namespace, fig: Figures) -> None:
    first: dict[str, Target] = {}
    for t in targets:
        first.setdefault(t.host, t)
    pending = list(first.values())[:args.scale_pending]
    log(f"scale: stopping every agent; {len(pending)} detaches while they are down; then "
        "every agent at once")
    with mon.phase_of("restart", fig):
        t0 = time.time()
        for p in procs:
            p.send("stop")
        stopped = wait_all(procs, "stopped", 600)
        sent = fire(base, [("DELETE", f"/v2.1/servers/{t.server}/shares/{t.share}", None,
                            (t.server, t.share)) for t in pending], args.scale_clients)
        t1 = start_all(procs)
        started = wait_all(procs, "started", 300)
        registered = wait_for("every host registered again",
                              lambda: rows.registered_since(t1) >= args.scale_hosts and time.time(),
                              args.scale_timeout, CHECK)
        done = converge(rows, "every agent converged again", args.scale_timeout)
        verified = wait_all(procs, "verified", args.scale_timeout)
    fig["scale_restart_stop_s"] = stopped - t0
    fig["scale_restart_pending"] = float(sum(s.status == 200 for s in sent))
    fig["scale_restart_started_s"] = started - t1
    fig["scale_restart_registered_s"] = float(registered) - t1
    fig["scale_restart_converged_s"] = done - t1
    fig["scale_restart_verified_s"] = verified - t1
    fig["scale_restart_errors"] = float(rows.errors())
    log(f"scale: restart converged after {done - t1:.1f}s, every agent verified after "
        f"{verified - t1:.1f}s")


def dedicated_phase(url: str, state: Path, rows: Rows, mon: Monitor, args: argparse.Namespace,
                    fig: Figures) -> None:
    k = args.scale_dedicated
    log(f"scale: {k} dedicated agents (own engine, own LISTEN, default workers), "
        f"{k * args.scale_servers * args.scale_shares} attachments waiting for them")
    proc = HostProc(host_argv(url, state, 0, k, args, dedicated=True), state / "dedicated.log")
    try:
        proc.wait("ready", 300)
        with mon.phase_of("dedicated", fig):
            t0 = time.time()
            proc.send("start")
            wait_for("the dedicated hosts converged",
                     lambda: rows.unconverged(DEDICATED_PREFIX) == 0, args.scale_timeout, CHECK)
            proc.wait("verified", args.scale_timeout)
            fig["scale_dedicated_converged_s"] = time.time() - t0
            time.sleep(3.0)  # settled: what each agent keeps open while idle
            fig["scale_dedicated_idle_conns"] = float(mon.sample()["dedicated"])
    finally:
        proc.close()


# ---- the rows of the table -------------------------------------------------------------------
def scale_rows(fig: Figures) -> list[tuple[str, str, str, str]]:
    if "scale_hosts" not in fig:
        return []
    out: list[tuple[str, str, str, str]] = []

    def row(label: str, key: str, fmt: str = "{:.0f}", base: str = "-") -> None:
        if key in fig:
            out.append((label, fmt.format(fig[key]), base, "-"))

    n, s = int(fig["scale_hosts"]), int(fig["scale_hosts"] * fig["scale_servers"])
    out.append(("[scale] hosts / servers / attachments",
                f"{n} / {s} / {int(s * fig['scale_shares'])}", "-", "-"))
    out.append(("[scale] host processes x pool, API workers, clients",
                f"{fig['scale_procs']:.0f} x {fig['scale_pool']:.0f}, "
                f"{fig['scale_api_workers']:.0f}, {fig['scale_clients']:.0f}", "-", "-"))
    row("[scale] cold start: all servers built", "scale_cold_converged_s", "{:.1f} s")
    row("[scale] idle: transactions/s (hosts alone)", "scale_idle_tx_per_s", "{:.0f}/s")
    row("[scale] attach throughput", "scale_attach_req_per_s", "{:.1f}/s")
    for what, key in (("attach POST", "attach_post"), ("POST -> inactive", "to_inactive"),
                      ("POST -> active", "to_active")):
        for q in ("p50", "p99"):
            row(f"[scale] {what} {q}", f"scale_{key}_{q}_ms", "{:.0f} ms")
    row("[scale] attach: first POST -> all settled", "scale_attach_settled_s", "{:.1f} s")
    row("[scale] attach: transactions/s", "scale_attach_tx_per_s", "{:.0f}/s")
    row("[scale] failed requests / errors", "scale_attach_failed")
    row("[scale] restart: every agent stopped", "scale_restart_stop_s", "{:.1f} s")
    row("[scale] restart: every host registered", "scale_restart_registered_s", "{:.1f} s")
    row("[scale] restart: converged (pending detaches done)", "scale_restart_converged_s",
        "{:.1f} s")
    row("[scale] restart: every agent re-verified its servers", "scale_restart_verified_s",
        "{:.1f} s")
    for phase in ("idle", "attach", "restart"):
        if f"scale_{phase}_conns_total" in fig:
            out.append((f"[scale] connections, peak, {phase}",
                        f"{fig[f'scale_{phase}_conns_total']:.0f}",
                        f"api {fig[f'scale_{phase}_conns_api']:.0f}, hosts "
                        f"{fig[f'scale_{phase}_conns_hosts']:.0f}, listen "
                        f"{fig[f'scale_{phase}_conns_listen']:.0f} (max_connections "
                        f"{fig['scale_max_connections']:.0f})", "-"))
        cores = [f"{who} {fig[f'scale_{phase}_cpu_{who}_cores']:.2f}"
                 for who in ("postgres", "api", "hosts", "bench")
                 if f"scale_{phase}_cpu_{who}_cores" in fig]
        if cores:
            out.append((f"[scale] cores used, {phase}", ", ".join(cores), "-", "-"))
    if "scale_dedicated_idle_conns" in fig and fig["scale_dedicated"]:
        per = fig["scale_dedicated_idle_conns"] / fig["scale_dedicated"]
        peak = fig.get("scale_dedicated_conns_dedicated", float("nan")) / fig["scale_dedicated"]
        out.append(("[scale] one agent per host: connections each", f"{per:.1f} idle, "
                    f"{peak:.1f} peak", f"x {n} hosts = {per * n:.0f} idle, {peak * n:.0f} peak",
                    "-"))
    return out
