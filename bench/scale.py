"""Part 8 (`python -m bench --scale`, `make bench-scale`): a cloud of simulated hosts on one
PostgreSQL.

HOSTS hosts (default 1,000), each a real agent on the test-only fake virt and storage drivers
(bench/scale_hosts.py, in PROCS processes), SERVERS servers per host (10; every other one
running), SHARES built-in shares attached per server (2), and the real compute API
(`attachfs api --workers N`) on a throw-away database. In order:

1. floor: attaches to stopped servers of a host no agent runs: the API and database alone;
2. cold start: every agent starts at once and builds the running servers (fake guests);
3. idle: IDLE s with nothing asked: what the hosts alone cost the database;
4. round trips: GET /v2.1/ on a keep-alive connection and on new ones;
5. attach: ATTACHES POST /v2.1/servers/{id}/shares (the other attachments inserted settled)
   from CLIENTS concurrent clients: throughput, and POST -> `inactive` (stopped server) /
   `active` (running server, hot plug) from the rows' own times;
6. restart: every agent stopped; one attachment per host detached through the API while they
   are down; every agent started at once: until all are registered, converged, through
   their start-up passes;
7. dedicated: a few hosts each with the real engine, pool and LISTEN of their own: the
   connections one agent per real host holds.

Database connections are sampled from pg_stat_activity every 0.2 s; transactions and the
cores each part used are taken at the phases' ends. Figures are printed and written, never
asserted. See docs/bench.md, "8. Scale simulation".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.listing import PG_ADMIN, create_pg, drop_pg
from bench.measure import HEADERS, Figures, log, pct
from bench.servers import ROOT
from harness.host import remove_state
from harness.process import children, free_port, wait_for

PREFIX, DEDICATED_PREFIX, FLOOR_HOST = "sim-", "ded-", "floor-no-agent"
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


def _mapping(server: str, share: str, tag: str, status: str, storage_root: Path) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "instance_uuid": server, "share_id": share,
            "status": status, "tag": tag, "share_proto": "LOCAL",
            "export_location": f"local:{storage_root}/{share}", "mount_point": None,
            "fault_message": None, "request_id": None, "user_id": PROJECT,
            "project_id": PROJECT}


def seed(url: str, args: argparse.Namespace,
         storage_root: Path) -> tuple[list[Target], list[Target], list[Target]]:
    """Servers and built-in share rows in bulk (the API would write the same rows; creating
    each share's ext4 image is not what is measured). (the attachments the API is to make,
    every attachment). With --scale-attaches N below the total, the N are drawn at random and
    the others are inserted settled: `inactive` on a stopped server, `active` on a running
    one, whose agent then starts its guest with them plugged (the state an attach through the
    API ends in). The dedicated hosts' servers come with attachments asked (`attaching`); the
    floor's stopped servers are on a host no agent runs."""
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
    measured = list(targets)
    if args.scale_attaches < len(targets):
        measured = random.Random(12).sample(targets, args.scale_attaches)
        chosen = set(measured)
        mappings += [_mapping(t.server, t.share, t.tag, "active" if t.running else "inactive",
                              storage_root) for t in targets if t not in chosen]
    floor = []
    for i in range(args.scale_floor):  # stopped servers on a host with no agent: the API alone
        row = _server(f"floor-{i}", FLOOR_HOST, running=False)
        servers.append(row)
        share = _share(f"fs-floor-{i}")
        shares.append(share)
        floor.append(Target(row["uuid"], share["uuid"], "t0", FLOOR_HOST, False))
    for h in range(args.scale_dedicated):
        for i in range(args.scale_servers):
            row = _server(f"ded-{h}-{i}", f"{DEDICATED_PREFIX}{h:04d}", running=False)
            servers.append(row)
            for j in range(args.scale_shares):
                share = _share(f"fs-ded-{h}-{i}-{j}")
                shares.append(share)
                mappings.append(_mapping(row["uuid"], share["uuid"], f"t{j}", "attaching",
                                         storage_root))
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            for table, rows in ((Share, shares), (Server, servers), (ShareMapping, mappings)):
                for start in range(0, len(rows), 5000):
                    if rows[start:start + 5000]:
                        conn.execute(insert(table), rows[start:start + 5000])
    finally:
        db.dispose()
    return measured, targets, floor


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
                _ticks(p) for p in children(self.postmaster))
        if self.api is not None:
            out["api"] = _ticks(self.api, children=True) + sum(
                _ticks(p) for p in children(self.api))
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

    def headroom(self) -> int:
        """Connections the server can still open (max_connections less those in use)."""
        row = self._conn.execute("SELECT current_setting('max_connections')::int - count(*) "
                                 "FROM pg_stat_activity WHERE backend_type = 'client backend'"
                                 ).fetchone()
        return int(row[0]) if row else 0

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
    """One `python -m bench.scale_hosts` process; the latest of each of its events."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, cwd=ROOT, text=True, bufsize=1)
        self.seen: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.seen[event["event"]] = event
                self.cond.notify_all()
        with self.cond:
            self.seen["exited"] = {"event": "exited"}
            self.cond.notify_all()

    def send(self, command: str, forget: tuple[str, ...] = ()) -> None:
        """`command`; the events in `forget` are those of an earlier command."""
        assert self.proc.stdin is not None
        with self.cond:
            for event in forget:
                self.seen.pop(event, None)
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def has(self, event: str) -> dict[str, Any] | None:
        with self.cond:
            self._check_alive()
            return self.seen.get(event)

    def _check_alive(self) -> None:
        if "exited" in self.seen:
            self.proc.wait(10)
            tail = Path(self.log.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"host process {self.proc.pid} exited "
                               f"({self.proc.returncode}); its log ends:\n{tail}")

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        with self.cond:
            self.cond.wait_for(lambda: event in self.seen or "exited" in self.seen, timeout)
            if event in self.seen:
                return self.seen[event]
            self._check_alive()
        raise TimeoutError(f"host process {self.proc.pid}: no {event} in {timeout:.0f}s")

    def quit(self) -> None:
        """Ask it to stop its agents and exit (close() waits for that)."""
        if self.proc.poll() is None:
            with suppress(OSError):
                self.send("quit")

    def close(self) -> None:
        self.quit()
        try:
            self.proc.wait(300)
        except subprocess.TimeoutExpired:
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
            p.quit()
        for p in procs:
            p.close()


def start_all(procs: list[HostProc]) -> float:
    """Every agent of every process started (the commands go out back to back); the time."""
    t0 = time.time()
    for p in procs:
        p.send("start", forget=("started", "verified", "stopped"))
    return t0


def wait_all(procs: list[HostProc], event: str, timeout: float) -> float:
    """The latest time of `event` over the processes."""
    return max(float(p.wait(event, timeout)["t"]) for p in procs)


def watch_start(procs: list[HostProc], rows: Rows, t0: float, hosts: int, timeout: float,
                prefix: str = PREFIX) -> dict[str, float]:
    """After the agents of `procs` were started at `t0`: the seconds until every process had
    started its agents, every host was registered anew, nothing was unconverged and every
    agent had made its start-up passes (`verified`), each checked every CHECK s (the
    processes' own times for their events)."""
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(marks) < 4:
        for event in ("started", "verified"):
            seen = [p.has(event) for p in procs]
            if event not in marks and all(seen):
                marks[event] = max(float(e["t"]) for e in seen if e) - t0
        if "registered" not in marks and rows.registered_since(t0, prefix) >= hosts:
            marks["registered"] = time.time() - t0
        if "converged" not in marks and rows.unconverged(prefix) == 0:
            marks["converged"] = time.time() - t0
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:.0f}s only {sorted(marks)} of started, "
                               f"registered, converged, verified")
        time.sleep(CHECK)
    return marks


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
    try:
        for t in threads:
            t.join()
    finally:  # interrupted: the clients send no more
        while not todo.empty():
            try:
                todo.get_nowait()
            except queue.Empty:
                break
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
        if workers > 1:
            wait_for(f"{workers} API workers", lambda: len(children(proc.pid)) >= workers, 60)
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
        keep_logs(state, state_root / "scale-logs")
        remove_state(state)


def keep_logs(state: Path, dest: Path) -> None:
    """The API's and the host processes' logs of the last run, kept for reading."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for log_file in state.glob("*.log"):
        shutil.copy(log_file, dest / log_file.name)


def run(url: str, name: str, state: Path, args: argparse.Namespace, fig: Figures) -> None:
    import psycopg

    from attachfs.db.engine import migrate

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        fig["scale_max_connections"] = float(row[0]) if row else float("nan")
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                           "'client backend'").fetchone()
        fig["scale_other_connections_at_start"] = float(row[0]) - 1 if row else float("nan")
    args.scale_attaches = min(args.scale_attaches, args.scale_hosts * args.scale_servers
                              * args.scale_shares)
    fig[f"scale_bell_{args.scale_bell}"] = 1.0
    for key in ("floor", "hosts", "servers", "shares", "attaches", "procs", "pool", "agent_workers",
                "clients", "api_workers", "dedicated"):
        fig[f"scale_{key}"] = float(getattr(args, f"scale_{key}"))
    migrate(url)
    t0 = time.perf_counter()
    measured, targets, floor = seed(url, args, state / "api" / "shares")
    log(f"scale: seeded {args.scale_hosts * args.scale_servers} servers and {len(targets)} "
        f"shares ({len(targets) - len(measured)} attached settled) in "
        f"{time.perf_counter() - t0:.1f}s")
    cpu = Cpu()
    rows = Rows(url)
    try:
        with Monitor(name, cpu) as mon, api_running(url, state, args.scale_api_workers,
                                                    cpu) as base, \
                host_procs(url, state, args, cpu) as procs:
            api_floor(base, floor, args, fig)
            cold_start(procs, rows, mon, args, fig)
            idle(mon, args, fig)
            round_trips(base, fig)
            attach_phase(base, measured, rows, mon, args, fig)
            restart_phase(base, targets, procs, rows, mon, args, fig)
        if args.scale_dedicated:  # the simulated hosts and the API gone: room for their own
            with Monitor(name, cpu) as mon:
                dedicated_phase(url, state, rows, mon, args, fig)
    finally:
        rows.close()


def attach_requests(targets: list[Target]) -> list[tuple[str, str, dict[str, Any] | None,
                                                        tuple[str, str]]]:
    return [("POST", f"/v2.1/servers/{t.server}/shares",
             {"share": {"share_id": t.share, "tag": t.tag}}, (t.server, t.share))
            for t in targets]


def api_floor(base: str, floor: list[Target], args: argparse.Namespace, fig: Figures) -> None:
    """The same attaches from the same clients to stopped servers of a host no agent runs,
    before any agent starts: the API and the database alone."""
    if not floor:
        return
    log(f"scale: floor: {len(floor)} attaches, API alone")
    t0 = time.time()
    sent = fire(base, attach_requests(floor), args.scale_clients)
    ok = [s.seconds for s in sent if s.status == 201]
    fig["scale_floor_req_per_s"] = len(ok) / (max(s.t_send + s.seconds for s in sent) - t0)
    fig["scale_floor_post_p50_ms"] = pct(ok, 50) * 1000
    fig["scale_floor_post_p99_ms"] = pct(ok, 99) * 1000
    fig["scale_floor_failed"] = float(len(sent) - len(ok))


def cold_start(procs: list[HostProc], rows: Rows, mon: Monitor, args: argparse.Namespace,
               fig: Figures) -> None:
    running = args.scale_hosts * ((args.scale_servers + 1) // 2)
    log(f"scale: starting {args.scale_hosts} agents in {len(procs)} processes; they build "
        f"{running} running servers")
    with mon.phase_of("cold", fig):
        marks = watch_start(procs, rows, start_all(procs), args.scale_hosts, args.scale_timeout)
    for what, seconds in marks.items():
        fig[f"scale_cold_{what}_s"] = seconds
    fig["scale_cold_errors"] = float(rows.errors())
    log(f"scale: cold start converged after {marks['converged']:.1f}s")


def idle(mon: Monitor, args: argparse.Namespace, fig: Figures) -> None:
    log(f"scale: {args.scale_idle:.0f}s idle")
    with mon.phase_of("idle", fig):
        time.sleep(args.scale_idle)


def round_trips(base: str, fig: Figures, n: int = 30) -> None:
    """GET /v2.1/ (no database) on one keep-alive connection, and on a new connection each:
    what any request pays before its work (see docs/bench.md on `--workers` and Nagle)."""
    keep, fresh = [], []
    with httpx.Client(base_url=base, timeout=60) as http:
        for i in range(n + 2):
            t0 = time.perf_counter()
            http.get("/v2.1/").raise_for_status()
            if i >= 2:
                keep.append(time.perf_counter() - t0)
    for _ in range(n):
        with httpx.Client(base_url=base, timeout=60) as http:
            t0 = time.perf_counter()
            http.get("/v2.1/").raise_for_status()
            fresh.append(time.perf_counter() - t0)
    for key, samples in (("keepalive", keep), ("fresh", fresh)):
        fig[f"scale_api_get_{key}_p50_ms"] = pct(samples, 50) * 1000
        fig[f"scale_api_get_{key}_p99_ms"] = pct(samples, 99) * 1000


def attach_phase(base: str, targets: list[Target], rows: Rows, mon: Monitor,
                 args: argparse.Namespace, fig: Figures) -> None:
    order = list(targets)
    random.Random(8).shuffle(order)
    requests = attach_requests(order)
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
    first: dict[str, Target] = {}  # a stopped server's: no guest to wait for (detach_timeout)
    for t in targets:
        if not t.running:
            first.setdefault(t.host, t)
    pending = list(first.values())[:args.scale_pending]
    log(f"scale: stopping every agent; {len(pending)} detaches while they are down; then "
        "every agent at once")
    with mon.phase_of("restart", fig):
        t0 = time.time()
        for p in procs:
            p.send("stop", forget=("stopped",))
        stopped = wait_all(procs, "stopped", 600)
        sent = fire(base, [("DELETE", f"/v2.1/servers/{t.server}/shares/{t.share}", None,
                            (t.server, t.share)) for t in pending], args.scale_clients)
        marks = watch_start(procs, rows, start_all(procs), args.scale_hosts, args.scale_timeout)
    fig["scale_restart_stop_s"] = stopped - t0
    fig["scale_restart_pending"] = float(sum(s.status == 200 for s in sent))
    for what, seconds in marks.items():
        fig[f"scale_restart_{what}_s"] = seconds
    fig["scale_restart_errors"] = float(rows.errors())
    log(f"scale: restart converged after {marks['converged']:.1f}s, every agent verified "
        f"after {marks['verified']:.1f}s")


def dedicated_phase(url: str, state: Path, rows: Rows, mon: Monitor, args: argparse.Namespace,
                    fig: Figures) -> None:
    free = mon.headroom()
    k = min(args.scale_dedicated, max(1, (free - 10) // 8))  # never past max_connections
    fig["scale_dedicated_agents"] = float(k)
    log(f"scale: {k} dedicated agents (own engine, own LISTEN, default workers), "
        f"{k * args.scale_servers * args.scale_shares} attachments waiting for them")
    proc = HostProc(host_argv(url, state, 0, k, args, dedicated=True), state / "dedicated.log")
    rows.db.dispose()  # its pooled connection is not one of theirs
    try:
        proc.wait("ready", 300)
        with mon.phase_of("dedicated", fig):
            t0 = time.time()
            proc.send("start")
            names = [f"{DEDICATED_PREFIX}{i:04d}" for i in range(k)]
            wait_for("the dedicated hosts converged", lambda: rows.scalar(
                "SELECT count(*) FROM share_mappings m JOIN servers s ON s.uuid = "
                "m.instance_uuid WHERE s.host = ANY(:names) AND m.status = 'attaching'",
                names=names) == 0, args.scale_timeout, CHECK)
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
    bell = next((k.removeprefix("scale_bell_") for k in fig if k.startswith("scale_bell_")), "?")
    out.append(("[scale] hosts / servers / attachments (through the API)",
                f"{n} / {s} / {int(s * fig['scale_shares'])} ({fig['scale_attaches']:.0f})",
                f"doorbell: {bell}", "-"))
    out.append(("[scale] host processes x pool, API workers, clients",
                f"{fig['scale_procs']:.0f} x {fig['scale_pool']:.0f}, "
                f"{fig['scale_api_workers']:.0f}, {fig['scale_clients']:.0f}", "-", "-"))
    row("[scale] cold start: all servers built", "scale_cold_converged_s", "{:.1f} s")
    row("[scale] idle: transactions/s (hosts alone)", "scale_idle_tx_per_s", "{:.0f}/s")
    for what in ("keepalive", "fresh"):
        row(f"[scale] API GET /v2.1/ p50, {'keep-alive' if what == 'keepalive' else 'new'} "
            "connection", f"scale_api_get_{what}_p50_ms", "{:.1f} ms")
    def versus(label: str, key: str, base: str, unit: str) -> None:
        if key in fig and base in fig:
            out.append((label, f"{fig[key]:.1f}{unit}", f"{fig[base]:.1f}{unit} (API alone)",
                        f"{fig[key] / fig[base]:.2f}x" if fig[base] else "-"))
        else:
            row(label, key, "{:.1f}" + unit)

    versus("[scale] attach throughput", "scale_attach_req_per_s", "scale_floor_req_per_s", "/s")
    for q in ("p50", "p99"):
        versus(f"[scale] attach POST {q}", f"scale_attach_post_{q}_ms",
               f"scale_floor_post_{q}_ms", " ms")
    for what, key in (("POST -> inactive", "to_inactive"), ("POST -> active", "to_active")):
        for q in ("p50", "p99"):
            row(f"[scale] {what} {q}", f"scale_{key}_{q}_ms", "{:.0f} ms")
    row("[scale] attach: first POST -> all settled", "scale_attach_settled_s", "{:.1f} s")
    row("[scale] attach: transactions/s", "scale_attach_tx_per_s", "{:.0f}/s")
    if "scale_attach_failed" in fig:
        out.append(("[scale] failed attaches; errors cold / attach / restart",
                    f"{fig['scale_attach_failed']:.0f}; " + " / ".join(
                        f"{fig.get(f'scale_{p}_errors', float('nan')):.0f}"
                        for p in ("cold", "attach", "restart")), "-", "-"))
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
    if "scale_dedicated_idle_conns" in fig and fig.get("scale_dedicated_agents"):
        per = fig["scale_dedicated_idle_conns"] / fig["scale_dedicated_agents"]
        peak = (fig.get("scale_dedicated_conns_dedicated", float("nan"))
                / fig["scale_dedicated_agents"])
        out.append(("[scale] one agent per host: connections each", f"{per:.1f} idle, "
                    f"{peak:.1f} peak", f"x {n} hosts = {per * n:.0f} idle, {peak * n:.0f} peak",
                    "-"))
    return out
