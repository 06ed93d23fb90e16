"""Helpers for `attachfs.bench`: the floor server, the API-only server, subprocesses, statistics,
console-log tailing.

The *floor* is the least any request of the compute API can cost on this machine: an HTTP round
trip through the same stack (uvicorn + Starlette, sync handler in the thread pool) plus, for a
write, one committed INSERT through `attachfs.db.engine.make_engine` (same SQLite pragmas, same
BEGIN IMMEDIATE), for a read one SELECT of a row by primary key.

    python -m attachfs.bench_floor floor --db-url URL --port PORT
    python -m attachfs.bench_floor api --state-dir DIR --db-url URL --port PORT
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

FLOOR_TABLE = "bench_floor"


# ---- statistics --------------------------------------------------------------------------------

def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of samples in seconds; NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(name: str, samples: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds, and the count, under keys NAME_p50_ms etc."""
    return {f"{name}_p50_ms": pct(samples, 50) * 1000, f"{name}_p99_ms": pct(samples, 99) * 1000,
            f"{name}_mean_ms": (statistics.fmean(samples) * 1000) if samples else math.nan,
            f"{name}_n": float(len(samples))}


def timed(client: httpx.Client, method: str, url: str, expect: int, **kw: Any) -> float:
    """One request; its wall time in seconds. A wrong status is an error, never a timing."""
    t0 = time.perf_counter()
    r = client.request(method, url, **kw)
    dt = time.perf_counter() - t0
    if r.status_code != expect:
        raise RuntimeError(f"{method} {url}: HTTP {r.status_code} (wanted {expect}): {r.text[:300]}")
    return dt


def sample(client: httpx.Client, method: str, url: str, expect: int, n: int, warmup: int = 5,
           **kw: Any) -> list[float]:
    for _ in range(warmup):
        timed(client, method, url, expect, **kw)
    return [timed(client, method, url, expect, **kw) for _ in range(n)]


def wait_for(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def server_status(client: httpx.Client, sid: str, wanted: str) -> bool:
    r = client.get(f"/v2.1/servers/{sid}")
    r.raise_for_status()
    server = r.json()["server"]
    if server["status"] == "ERROR":
        raise RuntimeError(f"server {sid} went to ERROR: {server.get('fault')}")
    return bool(server["status"] == wanted and server["OS-EXT-STS:task_state"] is None)


def mapping_status(client: httpx.Client, url: str, wanted: str) -> bool:
    r = client.get(url)
    if r.status_code == 404:
        return wanted == "gone"
    r.raise_for_status()
    status = r.json()["share"]["status"]
    if status == "error":
        raise RuntimeError(f"attachment went to error: {r.text[:300]}")
    return bool(status == wanted)


# ---- guest console logs ---------------------------------------------------------------------

TAIL_POLL = 0.02  # seconds between reads of a console log (and API polls while tailing)


def stats(name: str, samples: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds (nearest rank), and the count; nothing without samples."""
    if not samples:
        return {}
    return {f"{name}_p50_ms": pct(samples, 50) * 1000, f"{name}_p95_ms": pct(samples, 95) * 1000,
            f"{name}_mean_ms": statistics.fmean(samples) * 1000,
            f"{name}_n": float(len(samples))}


class ConsoleTail:
    """The text a console log gains from now on: the file is kept open and only the new bytes
    are read (QEMU appends to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.text = ""
        self._file: IO[bytes] | None = None

    def read(self) -> str:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open between reads
            except FileNotFoundError:
                return self.text
            self._file.seek(self.offset)
        data = self._file.read()
        if data:
            self.text += data.decode(errors="replace")
        return self.text

    def wait(self, needle: str, timeout: float, tick: Callable[[], None] | None = None) -> float:
        """perf_counter() of the first read that shows `needle` (late by <= TAIL_POLL)."""
        deadline = time.monotonic() + timeout
        while True:
            if needle in self.read():
                return time.perf_counter()
            if tick is not None:
                tick()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not on the console of {self.path.name} after "
                                   f"{timeout:.0f}s; it shows:\n{self.text[-2000:]}")
            time.sleep(TAIL_POLL)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@contextlib.contextmanager
def tail(path: Path) -> Iterator[ConsoleTail]:
    t = ConsoleTail(path)
    try:
        yield t
    finally:
        t.close()


# ---- subprocesses ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A server in its own process (so client and server do not share a GIL), logged to a file."""

    def __init__(self, argv: list[str], log: Path, port: int) -> None:
        self.argv, self.log, self.port = argv, log, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, probe: str, timeout: float = 60) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        with httpx.Client(base_url=self.url, timeout=5) as c:
            wait_for(f"{self.argv[:3]} to answer", lambda: self._answers(c, probe), timeout, 0.1)

    def _answers(self, client: httpx.Client, probe: str) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.argv[:3]} exited {self.proc.returncode}:\n{self.tail()}")
        try:
            return client.get(probe).status_code < 500
        except httpx.TransportError:
            return False

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(argv: list[str], log: Path, port: int, probe: str) -> Iterator[Proc]:
    proc = Proc(argv, log, port)
    try:
        proc.start(probe)
        yield proc
    finally:
        proc.stop()


def floor_argv(db_url: str, port: int) -> list[str]:
    return [sys.executable, "-m", "attachfs.bench_floor", "floor", "--db-url", db_url,
            "--port", str(port)]


def api_argv(state_dir: Path, db_url: str, port: int) -> list[str]:
    return [sys.executable, "-m", "attachfs.bench_floor", "api", "--state-dir", str(state_dir),
            "--db-url", db_url, "--port", str(port)]


# ---- cleanup and report -----------------------------------------------------------------------

LIBVIRT_URI = "qemu:///system"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def foreign_guests() -> list[str]:
    import libvirt

    conn = libvirt.open(LIBVIRT_URI)
    try:
        return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if d.name().startswith("attachfs-")]
    finally:
        conn.close()


def destroy_own_guest(server_id: str) -> None:
    """Last resort when serve died before deleting the server: our guest, by its exact name."""
    import libvirt

    conn = libvirt.open(LIBVIRT_URI)
    try:
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            if dom.name() == f"attachfs-{server_id}":
                print(f"cleanup: destroying leftover guest {dom.name()}", flush=True)
                dom.destroy()
    finally:
        conn.close()


def remove_state(state: Path) -> None:
    from attachfs.storage import mountinfo

    # built-in share filesystems are the service's own storage: they go with the state
    for point in mountinfo.mount_points((state / "shares").resolve()):
        mountinfo.run(["umount", "-l", str(point)])
    mounts = mountinfo.mount_points(state.resolve())
    if mounts:
        print(f"cleanup: NOT removing {state}: still mounted: {mounts}")
        return
    shutil.rmtree(state, ignore_errors=True)


def drop_pg(name: str) -> None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        print(f"cleanup: dropping database {name} failed: {exc}")


def print_table(table: list[tuple[str, str, str, str]]) -> None:
    head = ("figure", "value", "baseline", "ratio")
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(4)]
    for r in [head, tuple("-" * w for w in widths), *table]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())



# ---- the servers -------------------------------------------------------------------------------

def floor_app(db_url: str) -> Any:
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from attachfs.db.engine import make_engine

    engine = make_engine(db_url)
    meta = MetaData()
    table = Table(FLOOR_TABLE, meta, Column("id", Integer, primary_key=True, autoincrement=True),
                  Column("payload", String(255)))
    meta.create_all(engine)
    with engine.begin() as conn:
        if conn.scalar(select(table.c.id).where(table.c.id == 1)) is None:
            conn.execute(insert(table).values(id=1, payload="first row"))

    def ping(_request: Request) -> Response:  # HTTP only, no database
        return JSONResponse({"ok": True})

    def write(_request: Request) -> Response:  # one committed INSERT
        with engine.begin() as conn:
            row_id = conn.execute(insert(table).values(payload="x" * 64)).inserted_primary_key
        return JSONResponse({"id": row_id[0] if row_id else None}, status_code=201)

    def read(_request: Request) -> Response:  # one SELECT by primary key, in a transaction
        with engine.begin() as conn:
            row = conn.execute(select(table).where(table.c.id == 1)).one()
        return JSONResponse({"id": row.id, "payload": row.payload})

    return Starlette(routes=[Route("/ping", ping), Route("/write", write, methods=["POST"]),
                             Route("/read", read)])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m attachfs.bench_floor")
    p.add_argument("mode", choices=["floor", "api"])
    p.add_argument("--db-url", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state-dir", default="")
    args = p.parse_args(argv)
    if args.mode == "floor":
        app = floor_app(args.db_url)
    else:  # the compute API alone: no agent, no guests, no metadata service
        from attachfs.config import load_config
        from attachfs.service import build_api, open_parts

        config = load_config(None, {"state_dir": args.state_dir, "database_url": args.db_url,
                                    "log_level": "WARNING"})
        app = build_api(open_parts(config))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
