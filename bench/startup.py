"""Memory and start-up: `attachfs serve`'s time to its first answers and its resident memory,
with 0 and with 10,000 attachments in the database (SQLite, the embedded default; and
PostgreSQL), against a bare Python and the floor server of bench/servers.py, all in one run.

Each case is started several times (`runs`) on the same state directory and database, already
migrated (a restart, not a first install). Per start:

- spawn -> first 200 of `GET /v2.1/` (no auth), polled every 5 ms;
- spawn -> first 200 of an authenticated `GET /v2.1/servers/detail` (noauth token
  `bench:bench`, the project that owns the seeded servers, with attachfs's extension so the
  bodies carry the attachments), polled right after;
- the resident memory (VmRSS) of the serve process plus every descendant process, at the first
  `/v2.1/` answer, at the first `servers/detail` answer, and after `gets` more GETs of
  `servers/detail` (one keep-alive client, their mean wall time kept); the serve process's own
  peak (VmHWM) and thread count then; the CPU time of the tree at the first answer and at the
  end. The agent's start-up repair (a pass over every server of its host) runs in this window.

The baselines, in the same run: `python -c "import sys"` (spawn -> exit; its VmRSS once the
code has run), `python -c "import attachfs.service"` (the imports alone), and the floor server
(`python -m bench.servers floor`, SQLite): spawn -> first 200 of `/ping` and of `/read`, its
memory then and after `gets` GETs of `/read`.

The 10,000 attachments are part 3's (bench/listing.py: 313 stopped servers x 32 inactive
attachments, bulk-inserted), but on *this* serve's agent host (`[agent] host`), with the built-in
provider's access rules and share directories they imply: what a host restart finds, with
nothing for the agent to change.

    python -m bench.startup [--json [FILE]] [--runs N] [--gets N] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.listing import PER_SERVER, SERVERS, create_pg, drop_pg, seed
from bench.measure import Figures, Row, log
from bench.servers import ROOT, floor_argv
from harness import host
from harness.process import children, free_port

AGENT_HOST = "bench-startup"  # the serve's [agent] host: the seeded servers are on it
CONFIG = f'[agent]\nhost = "{AGENT_HOST}"\n'  # everything else: the defaults
DETAIL = "/v2.1/servers/detail"
DETAIL_HEADERS = {"X-Auth-Token": "bench:bench",
                  "OpenStack-API-Version": "compute 2.97, attachfs 1.0"}
POLL = 0.005  # seconds between attempts; a start-up time is late by at most this
START_TIMEOUT = 180.0
SIZES = (0, SERVERS * PER_SERVER)  # attachments in the database
DEFAULT_STATE_ROOT = Path("/var/lib/attachfs/bench-state")


# ---- memory of a process tree ----------------------------------------------------------------
def _status_kib(pid: int, field: str) -> int:
    """A `kB` line of /proc/PID/status (0 when the process is gone or has none: a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid`, its reaped children and its live descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS of `pid` and all its descendants, in KiB; how many processes that is). Pages two
    of them share are counted twice."""
    pids = [pid, *descendants(pid)]
    return sum(_status_kib(p, "VmRSS") for p in pids), len(pids)


# ---- one start -------------------------------------------------------------------------------
@dataclass
class Start:
    first_s: float  # spawn -> first 200 of the first probe
    second_s: float  # spawn -> first 200 of the second probe
    rss_first_kib: int  # tree RSS right after the first answer
    rss_second_kib: int  # ... right after the second
    rss_after_kib: int  # ... after `gets` more GETs of the second
    hwm_kib: int  # peak RSS of the main process, read at the end
    cpu_first_s: float  # CPU seconds of the tree at the first answer
    cpu_after_s: float  # ... after the GETs
    gets_mean_s: float  # mean wall time of the GETs
    procs: int  # processes in the tree at the end
    threads: int  # threads of the main process at the end


def _first_200(client: httpx.Client, proc: subprocess.Popen[bytes], url: str, t0: float,
               headers: dict[str, str], log_path: Path) -> float:
    """Poll `url` every POLL s until it answers 200; seconds since t0. An error when the
    process exits or START_TIMEOUT passes."""
    deadline = t0 + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{url}: the server exited {proc.returncode}:\n{tail}")
        try:
            r = client.get(url, headers=headers)
            if r.status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{url}: no 200 within {START_TIMEOUT:.0f}s")
        time.sleep(POLL)


def measure_start(argv: list[str], port: int, probes: tuple[str, str], headers: dict[str, str],
                  gets: int, log_path: Path, cwd: Path | None = None,
                  check: Callable[[httpx.Response], None] | None = None) -> Start:
    """Spawn `argv` (a server on 127.0.0.1:`port`), time its first answers to probes[0] (no
    headers) and probes[1] (`headers`), read its memory, send `gets` more GETs of probes[1],
    read it again, stop it (SIGTERM; SIGKILL after 60 s) and wait until it is gone."""
    # made before the spawn (an httpx client costs milliseconds of CPU), used for every probe
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    with open(log_path, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        first = _first_200(client, proc, probes[0], t0, {}, log_path)
        rss_first, cpu_first = tree_rss_kib(proc.pid)[0], tree_cpu_s(proc.pid)
        second = _first_200(client, proc, probes[1], t0, headers, log_path)
        rss_second = tree_rss_kib(proc.pid)[0]
        t_gets = time.perf_counter()
        for i in range(gets):
            r = client.get(probes[1], headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"GET {probes[1]}: HTTP {r.status_code}: {r.text[:300]}")
            if i == 0 and check is not None:
                check(r)
        gets_mean = (time.perf_counter() - t_gets) / gets if gets else math.nan
        rss_after, procs = tree_rss_kib(proc.pid)
        cpu_after = tree_cpu_s(proc.pid)
        hwm = _status_kib(proc.pid, "VmHWM")
        threads = _status_kib(proc.pid, "Threads")
        return Start(first, second, rss_first, rss_second, rss_after, hwm, cpu_first,
                     cpu_after, gets_mean, procs, threads)
    finally:
        client.close()
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bare_start(code: str) -> tuple[float, int]:
    """`python -c CODE`: spawn -> exit, and its VmRSS (KiB) once CODE has run, read as the
    servers' is, from a second run of `CODE; print; sys.stdin.read()` (a child's own peak
    from wait4 would be no good: a spawned child's ru_maxrss counts this process's memory,
    which it shared until its exec)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, check=True)
    dt = time.perf_counter() - t0
    with subprocess.Popen([sys.executable, "-c", f"{code}; import sys; print(flush=True); "
                           "sys.stdin.read()"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()
        rss = _status_kib(proc.pid, "VmRSS")
        proc.stdin.close()
    return dt, rss


# ---- the serve cases ---------------------------------------------------------------------------
def serve_argv(state: Path, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("attachfs")
    return [str(exe), "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}",
            "--images-dir", "/var/lib/attachfs/images", "--config", str(state / "attachfs.toml")]


def prepare(state: Path, db_url: str, attachments: int) -> None:
    """A migrated database with `attachments` (0 or part 3's 10,016) on AGENT_HOST's servers,
    with the access rules and share directories a settled host has."""
    state.mkdir(parents=True, exist_ok=True)
    config = CONFIG if db_url.startswith("sqlite") else f'database_url = "{db_url}"\n{CONFIG}'
    (state / "attachfs.toml").write_text(config)
    if attachments == 0:
        from attachfs.config import load_config
        from attachfs.service import open_parts

        open_parts(load_config(None, {"state_dir": str(state), "database_url": db_url})) \
            .db.dispose()
        return
    from sqlalchemy import insert, select, update

    from attachfs.db.engine import Database
    from attachfs.db.tables import Server, Share, ShareAccess

    seed(state, db_url)
    db = Database(db_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(update(Server).values(host=AGENT_HOST))
            share_ids = list(conn.scalars(select(Share.uuid)))
            conn.execute(insert(ShareAccess), [
                {"share_id": s, "host": AGENT_HOST, "access_level": "rw", "locked": True,
                 "lock_reason": "bench"} for s in share_ids])
    finally:
        db.dispose()
    for s in share_ids:
        (state / "shares" / s).mkdir(mode=0o700, exist_ok=True)


def _expect_servers(n: int) -> Callable[[httpx.Response], None]:
    def check(r: httpx.Response) -> None:
        servers = r.json()["servers"]
        attached = sum(len(s.get("os-extended-shares:shares_attached", [])) for s in servers)
        if (len(servers), attached) != (n // PER_SERVER if n else 0, n):
            raise RuntimeError(f"servers/detail shows {len(servers)} servers and {attached} "
                               f"attachments; seeded {n} attachments")
    return check


def attachment_statuses(db_url: str) -> dict[str, int]:
    """How many attachments are in each status (the agent must not have changed any)."""
    from sqlalchemy import func, select

    from attachfs.db.engine import Database
    from attachfs.db.tables import ShareMapping

    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            return {str(k): int(v) for k, v in conn.execute(
                select(ShareMapping.status, func.count()).group_by(ShareMapping.status))}
    finally:
        db.dispose()


def serve_case(kind: str, attachments: int, state_root: Path, runs: int, gets: int,
               fig: Figures) -> None:
    state = Path(tempfile.mkdtemp(prefix=f"startup-{kind}-", dir=state_root))
    pg_name = f"attachfs_bench_{uuid.uuid4().hex[:8]}"
    db_url = f"sqlite:///{state / 'attachfs.db'}"
    key = f"startup_{kind}_{attachments}"
    try:
        if kind == "postgres":
            db_url = create_pg(pg_name)
        t0 = time.perf_counter()
        prepare(state, db_url, attachments)
        log(f"startup {kind}: {attachments} attachments ready in {time.perf_counter() - t0:.1f}s")
        for run in range(runs):
            port = free_port()
            s = measure_start(serve_argv(state, port), port, ("/v2.1/", DETAIL), DETAIL_HEADERS,
                              gets, state / "serve.log", check=_expect_servers(attachments))
            record(fig, key, run, s)
            log(f"startup {kind} {attachments}: run {run + 1}: /v2.1/ {s.first_s:.2f}s, detail "
                f"{s.second_s:.2f}s, RSS {s.rss_first_kib / 1024:.0f} -> "
                f"{s.rss_after_kib / 1024:.0f} MiB, {s.threads} threads")
        statuses = attachment_statuses(db_url)
        if attachments and statuses != {"inactive": attachments}:
            raise RuntimeError(f"the agent changed the seeded attachments: {statuses}")
    finally:
        host.destroy_guests(f"{AGENT_HOST}:{state.resolve()}")  # none are started: a safety net
        if kind == "postgres":
            drop_pg(pg_name)
        host.remove_state(state)


def record(fig: Figures, key: str, run: int, s: Start) -> None:
    for name, value in (("first_s", s.first_s), ("second_s", s.second_s),
                        ("rss_first_mib", s.rss_first_kib / 1024),
                        ("rss_second_mib", s.rss_second_kib / 1024),
                        ("rss_after_mib", s.rss_after_kib / 1024),
                        ("hwm_mib", s.hwm_kib / 1024), ("cpu_first_s", s.cpu_first_s),
                        ("cpu_after_s", s.cpu_after_s), ("gets_mean_ms", s.gets_mean_s * 1000),
                        ("procs", float(s.procs)),
                        ("threads", float(s.threads))):
        fig[f"{key}_{name}_{run}"] = value


# ---- the baselines -----------------------------------------------------------------------------
def baselines(state_root: Path, runs: int, gets: int, fig: Figures) -> None:
    """A bare interpreter, the import of attachfs's service module alone, and the floor server
    (SQLite, HTTP + one-row SELECT), each started `runs` times."""
    for run in range(runs):
        dt, rss = bare_start("import sys")
        fig[f"startup_python_s_{run}"], fig[f"startup_python_rss_mib_{run}"] = dt, rss / 1024
        dt, rss = bare_start("import attachfs.service")
        fig[f"startup_import_s_{run}"], fig[f"startup_import_rss_mib_{run}"] = dt, rss / 1024
    state = Path(tempfile.mkdtemp(prefix="startup-floor-", dir=state_root))
    try:
        for run in range(runs):
            port = free_port()
            s = measure_start(floor_argv(f"sqlite:///{state / 'floor.db'}", port), port,
                              ("/ping", "/read"), {}, gets, state / "floor.log", cwd=ROOT)
            record(fig, "startup_floor", run, s)
    finally:
        host.remove_state(state)


def startup_part(state_root: Path, fig: Figures, *, runs: int = 3, gets: int = 200,
                 postgres: bool = True) -> None:
    """The part: baselines, then serve with 0 and 10,016 attachments on SQLite (and
    PostgreSQL), `runs` starts each; figures under `startup_*` (rows: `startup_rows`)."""
    fig["startup_loadavg_1m"] = os.getloadavg()[0]
    fig["startup_runs"], fig["startup_gets"] = float(runs), float(gets)
    log(f"startup: baselines ({runs} starts each)")
    baselines(state_root, runs, gets, fig)
    for kind in ("sqlite", "postgres") if postgres else ("sqlite",):
        for n in SIZES:
            serve_case(kind, n, state_root, runs, gets, fig)


# ---- the rows ----------------------------------------------------------------------------------
def _runs(fig: Figures, key: str) -> list[float]:
    out, run = [], 0
    while f"{key}_{run}" in fig:
        out.append(fig[f"{key}_{run}"])
        run += 1
    return out


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "MiB":
        return f"{v:.0f} MiB" if v >= 100 else f"{v:.1f} MiB"
    return f"{v:.0f}"


def _value(runs: list[float], unit: str) -> str:
    """The median, and (min-max) when there are several starts."""
    med = _fmt(statistics.median(runs), unit)
    if len(runs) < 2:
        return med
    low, high = _fmt(min(runs), unit).split(), _fmt(max(runs), unit)
    return f"{med} ({low[0]}-{high})"


def startup_rows(fig: Figures) -> list[Row]:
    """Medians over the starts, (min-max); ratios of the medians. The chain of baselines:
    bare Python -> floor server -> serve with 0 attachments -> serve with 10,016."""
    out: list[Row] = []
    gets = f"{fig.get('startup_gets', 0):.0f}"

    def add(label: str, key: str, unit: str, base: str | None = None,
            base_label: str = "") -> None:
        runs = _runs(fig, key)
        if not runs:
            return
        base_runs = _runs(fig, base) if base else []
        if not base_runs:
            out.append((label, _value(runs, unit), "-", "-"))
            return
        v, b = statistics.median(runs), statistics.median(base_runs)
        out.append((label, _value(runs, unit), f"{_fmt(b, unit)} ({base_label})",
                    f"{v / b:.1f}x" if b else "-"))

    add("python -c 'import sys': spawn -> exit", "startup_python_s", "s")
    add("python -c 'import sys': RSS", "startup_python_rss_mib", "MiB")
    add("python -c 'import attachfs.service': spawn -> exit", "startup_import_s", "s",
        "startup_python_s", "bare python")
    add("python -c 'import attachfs.service': RSS", "startup_import_rss_mib", "MiB",
        "startup_python_rss_mib", "bare python")
    add("floor server: spawn -> first 200 /ping", "startup_floor_first_s", "s",
        "startup_python_s", "bare python")
    add("floor server: spawn -> first 200 /read", "startup_floor_second_s", "s")
    add("floor server: RSS at first answer", "startup_floor_rss_first_mib", "MiB",
        "startup_python_rss_mib", "bare python")
    add(f"floor server: RSS after {gets} GET /read", "startup_floor_rss_after_mib", "MiB")
    add("floor server: CPU time at first answer", "startup_floor_cpu_first_s", "s")
    add(f"floor server: GET /read mean over the {gets}", "startup_floor_gets_mean_ms", "ms")
    for kind in ("sqlite", "postgres"):
        for n in SIZES:
            k = f"startup_{kind}_{n}"
            base, blabel = ("startup_floor", "floor") if n == 0 else (f"startup_{kind}_0",
                                                                      "0 attachments")
            p = f"[{kind}, {n:,} attachments] serve"
            add(f"{p}: spawn -> first 200 GET /v2.1/", f"{k}_first_s", "s", f"{base}_first_s",
                blabel)
            add(f"{p}: spawn -> first 200 servers/detail", f"{k}_second_s", "s",
                f"{base}_second_s", blabel)
            add(f"{p}: RSS at first answer", f"{k}_rss_first_mib", "MiB",
                f"{base}_rss_first_mib", blabel)
            add(f"{p}: RSS after {gets} servers/detail", f"{k}_rss_after_mib", "MiB",
                f"{base}_rss_after_mib", blabel)
            add(f"{p}: CPU time at first answer", f"{k}_cpu_first_s", "s",
                f"{base}_cpu_first_s", blabel)
            add(f"{p}: CPU time after {gets} servers/detail", f"{k}_cpu_after_s", "s",
                f"{base}_cpu_after_s", blabel)
            add(f"{p}: servers/detail mean over the {gets}", f"{k}_gets_mean_ms", "ms",
                f"{base}_gets_mean_ms", blabel)
            add(f"{p}: threads after {gets} servers/detail", f"{k}_threads", "n",
                None if n == 0 else f"{base}_threads", blabel)
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.report import print_table

    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the figures as JSON instead of the table (to FILE: as well)")
    p.add_argument("--runs", type=int, default=3, help="starts per case (default 3)")
    p.add_argument("--gets", type=int, default=200,
                   help="GETs of servers/detail after the first answer (default 200)")
    p.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True,
                   help="also PostgreSQL at 127.0.0.1:5432 (default on)")
    p.add_argument("--state-root", type=Path, default=DEFAULT_STATE_ROOT)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # so every finally block cleans up
    args.state_root.mkdir(parents=True, exist_ok=True)
    fig: Figures = {}
    error = None
    try:
        startup_part(args.state_root, fig, runs=args.runs, gets=args.gets,
                     postgres=args.postgres)
    except Exception as exc:  # noqa: BLE001 - reported with what was measured
        error = f"{type(exc).__name__}: {exc}"
    if args.json:
        text = json.dumps({"figures": fig, "error": error, "args": vars(args)}, indent=2,
                          default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    if args.json != "-":
        print(f"\nload average at start: {fig.get('startup_loadavg_1m', math.nan):.2f} on "
              f"{os.cpu_count()} cores")
        print_table(startup_rows(fig))
    if error:
        print(f"error: {error}", file=sys.stderr)
    return 1 if error else 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
