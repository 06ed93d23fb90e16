"""The simulated hosts of `python -m bench --scale` (bench/scale.py): one process runs COUNT
hosts, each a real `attachfs.agent.runner.Agent` (real planner, executor, reconciler, loop,
registration and heartbeat) on the test-only fakes (tests/fakes: FakeVirt guests, FakeHost
mounts, FakeProvider access rules, FakeMetadata sockets), all on one PostgreSQL database.

    python -m bench.scale_hosts --db-url URL --prefix sim- --first 0 --count 250 [--pool 8]
                                [--agent-workers 1] [--bell process|agent|none] [--dedicated]

Commands, one a line on stdin: `start` (a new Agent per host, all started at once: the first
start, or a restart that keeps each host's guests, mounts and rules, as a restarted agent
finds them), `stop` (every agent stopped and joined, the database engine closed), `quit`.
Events, one JSON object a line on stdout: ready, started, verified (every agent has made at
least as many passes as its start-up repair queued: one per server and one for the host),
stopped.

What differs from one agent per real host, and why (docs/bench.md, "Scale simulation"):

- the hosts of a process share ONE `Database` whose pool is `--pool` connections, no overflow
  (a real agent has its own engine: pool 20 + 20 overflow);
- `--bell process`: ONE doorbell connection (LISTEN attachfs_wake) per process; a ring
  wakes the agents that their own Listener would: the one of the host the ring names, or
  every one for a ring that names none (PostgreSQL then delivers each ring to a few
  connections, not to one per host); `--bell agent`: each agent its own Listener (the real
  thing: one connection each); `--bell none`: no LISTEN, the agents poll every [agent]
  poll_interval;
- the host registration asks `qemu-system-x86_64 --version` once per process, not once per
  agent start, and the virtiofsd orphan scan (a walk of /proc per host pass) is skipped: the
  fake guests have no virtiofsd. Both are costs of one host, not of the shared database.

`--dedicated`: each host gets its own `Database` (the real engine and pool), its own Listener
and the default [agent] workers: what one agent per real host holds, measured on a few.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from attachfs.agent import hosts as agent_hosts
from attachfs.agent import runner
from attachfs.agent.attachments import Attachments
from attachfs.agent.reconciler import Reconciler
from attachfs.agent.runner import Agent
from attachfs.config import Config, load_config
from attachfs.db import doorbell
from attachfs.db.engine import Database
from attachfs.db.tables import Server
from attachfs.notify.base import NoopNotifier
from attachfs.virt.base import BootImage
from tests.fakes.metadata import FakeMetadata
from tests.fakes.storage import FakeHost, FakeProvider
from tests.fakes.virt import FakeVirt

IMAGE = BootImage(id="img-1", name="fake", kernel=Path("/k"), initrd=Path("/i"))  # as world.py


class PooledDatabase(Database):
    """`Database` on an engine with a fixed pool (`size` connections, no overflow) that the
    hosts of one process share; sessions as `Database` makes them."""

    def __init__(self, url: str, size: int) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=size, max_overflow=0, pool_timeout=600,
                                    pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(attachfs_read_only=True),
                                     expire_on_commit=False)


class Hub:
    """One LISTEN connection for the process, standing in for each agent's own Listener: a
    ring wakes the agents that their own Listener would wake, those of the host the ring
    names (its payload), or every one for a ring that names none. Like doorbell.Listener it
    connects again after a lost connection and then wakes every agent once."""

    def __init__(self) -> None:
        self.wakers: dict[str, Callable[[], None]] = {}  # host -> its agent's wake()
        self.lock = threading.Lock()
        self.listening = threading.Event()
        self._stop = threading.Event()
        self.url = ""

    def start(self, db: Database) -> None:
        self.url = doorbell.libpq_url(db.url)
        self._stop = threading.Event()
        self.listening = threading.Event()
        threading.Thread(target=self._run, args=(self._stop, self.listening), name="hub",
                         daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def ring(self, host: str) -> None:
        with self.lock:
            wakers = list(self.wakers.values()) if not host else \
                [w for h, w in self.wakers.items() if h == host]
        for wake in wakers:
            wake()

    def _run(self, stop: threading.Event, listening: threading.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {doorbell.CHANNEL}")
                    listening.set()
                    delay = 0.1
                    self.ring("")  # whatever was rung while not listening
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0, stop_after=1):
                            self.ring(note.payload)
            except psycopg.Error:
                listening.clear()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        listening.clear()


HUB = Hub()


class SharedBell:
    """Stands in for `doorbell.Listener` in an agent: the process's hub rings it."""

    def __init__(self, _db: Database, rung: Callable[[], None], host: str = "") -> None:
        self.rung = rung
        agent: Any = getattr(rung, "__self__", None)  # the Agent whose wake() this is
        self.host = host or str(agent.config.agent.host)
        self.listening: threading.Event = HUB.listening

    def start(self) -> None:
        with HUB.lock:
            HUB.wakers[self.host] = self.rung

    def stop(self) -> None:
        with HUB.lock:
            HUB.wakers.pop(self.host, None)


def simulate(bell: str) -> None:
    """The process-wide stand-ins listed in the module's docstring."""
    qemu = agent_hosts.qemu_version()
    agent_hosts.qemu_version = lambda: qemu
    runner.kill_orphaned_virtiofsd = lambda _r: None  # type: ignore[assignment]
    if bell == "process":
        doorbell.Listener = SharedBell  # type: ignore[misc, assignment]
    elif bell == "none":
        doorbell.listens = lambda _db: False  # type: ignore[assignment]


@dataclass
class Host:
    """What survives an agent restart on a host: its guests, its mounts, its sockets."""

    config: Config
    virt: FakeVirt
    mounts: FakeHost
    metadata: FakeMetadata
    servers: int = 0
    agent: Agent | None = None
    thread: threading.Thread | None = None
    db: Database | None = field(default=None, repr=False)  # --dedicated: its own


def make_host(name: str, state: Path, url: str, workers: int | None) -> Host:
    over: dict[str, Any] = {"state_dir": str(state / name), "agent.host": name,
                            "database_url": url, "notifications.driver": "noop",
                            "log_level": "WARNING"}
    if workers is not None:
        over["agent.workers"] = workers
    config = load_config(None, over)
    mounts = FakeHost()
    return Host(config, FakeVirt(mounts=mounts.mounts), mounts, FakeMetadata())


class Hosts:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.provider = FakeProvider()  # the storage side: access rules per (share, host)
        workers = None if args.dedicated else args.agent_workers
        self.hosts = [make_host(f"{args.prefix}{i:04d}", Path(args.state), args.db_url, workers)
                      for i in range(args.first, args.first + args.count)]
        self.db: Database | None = None
        self.watcher: threading.Thread | None = None

    def _count_servers(self) -> None:
        db = Database(self.args.db_url)
        try:
            with db.read() as s:
                rows = s.execute(select(Server.host, func.count()).group_by(Server.host)).all()
            counts = {str(host): int(n) for host, n in rows}
        finally:
            db.dispose()
        for h in self.hosts:
            h.servers = counts.get(h.config.agent.host, 0)

    def start(self) -> None:
        if not self.hosts[0].servers:
            self._count_servers()
        if not self.args.dedicated:
            self.db = PooledDatabase(self.args.db_url, self.args.pool)
            if self.args.bell == "process":
                HUB.start(self.db)
        for h in self.hosts:
            db = Database(self.args.db_url) if self.args.dedicated else self.db
            assert db is not None
            h.db = db
            attachments = Attachments(h.config, db, self.provider, {"LOCAL": h.mounts}, h.virt,
                                      h.metadata, NoopNotifier(),  # type: ignore[arg-type]
                                      mounts=h.mounts)
            h.agent = Agent(Reconciler(h.config, db, attachments, lambda: [IMAGE]))
        t0 = time.time()
        for h in self.hosts:  # all at once, as after a power cut or a fleet-wide upgrade
            assert h.agent is not None
            h.thread = threading.Thread(target=h.agent.run, name=h.config.agent.host,
                                        daemon=True)
            h.thread.start()
        emit("started", t=t0, threads=threading.active_count())
        self.watcher = threading.Thread(target=self._watch, args=(t0,), daemon=True)
        self.watcher.start()

    def _watch(self, t0: float) -> None:
        """`verified`: every agent made as many passes as its repair queued."""
        while True:
            agents = [(h.agent, h.servers + 1) for h in self.hosts]
            if any(a is None for a, _ in agents):
                return
            if all(a is not None and a.health.passes >= n for a, n in agents):
                emit("verified", t=time.time(), after=time.time() - t0)
                return
            time.sleep(0.05)

    def stop(self) -> None:
        t0 = time.time()
        for h in self.hosts:
            if h.agent is not None:
                h.agent.stop()
        for h in self.hosts:
            if h.thread is not None:
                h.thread.join(timeout=120)
            h.agent, h.thread = None, None
            if self.args.dedicated and h.db is not None:
                h.db.dispose()
        HUB.stop()
        if self.db is not None:
            self.db.dispose()
            self.db = None
        emit("stopped", t=time.time(), after=time.time() - t0)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale_hosts")
    p.add_argument("--db-url", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--prefix", default="sim-")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--agent-workers", type=int, default=1)
    p.add_argument("--bell", choices=["process", "agent", "none"], default="process")
    p.add_argument("--dedicated", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    simulate("agent" if args.dedicated else args.bell)
    hosts = Hosts(args)
    emit("ready", hosts=len(hosts.hosts))
    for line in sys.stdin:
        command = line.strip()
        if command == "start":
            hosts.start()
        elif command == "stop":
            hosts.stop()
        elif command == "quit":
            break
    hosts.stop()


if __name__ == "__main__":
    main()
