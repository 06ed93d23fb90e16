"""A whole agent on fakes: real database (SQLite), real planner, executor and runner; fake
guests, host mounts, provider and metadata sockets. Rows are made the way the API makes them."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

from attachfs.agent.attachments import Attachments
from attachfs.agent.reconciler import PassResult, Reconciler
from attachfs.agent.runner import Agent
from attachfs.config import Config, load_config
from attachfs.db.engine import Database, migrate
from attachfs.db.tables import Server, ShareMapping
from attachfs.metadata.sockets import MetadataSockets
from attachfs.notify.base import NoopNotifier
from attachfs.virt.base import BootImage
from tests.fakes.metadata import FakeMetadata
from tests.fakes.storage import FakeHost, FakeProvider
from tests.fakes.virt import FakeVirt

HOST = "fake-host"
IMAGE = BootImage(id="img-1", name="fake", kernel=Path("/k"), initrd=Path("/i"))


@dataclass
class World:
    config: Config
    db: Database
    virt: FakeVirt
    host: FakeHost
    provider: FakeProvider
    metadata: FakeMetadata
    reconciler: Reconciler
    agent: Agent
    name: str = HOST  # this world's host

    # ---- rows, as the API writes them ----------------------------------------------------------
    def server(self, running: bool = False, task: str | None = None, **kw: object) -> str:
        uuid = str(uuidlib.uuid4())
        with self.db.session() as s:
            s.add(Server(uuid=uuid, name="vm", project_id="p1", user_id="alice", host=self.name,
                         flavor_id="1", image_id=IMAGE.id, vcpus=1, memory_mib=128,
                         vm_state="active" if running else "stopped", task_state=task,
                         power_intent="on" if running else "off", meta={}, generation=1,
                         observed_generation=1, **kw))
        return uuid

    def servers(self, count: int) -> list[str]:
        """Many stopped servers at once (bulk insert)."""
        uuids = [str(uuidlib.uuid4()) for _ in range(count)]
        with self.db.session() as s:
            s.execute(insert(Server), [dict(
                uuid=u, name="vm", project_id="p1", user_id="alice", host=HOST, flavor_id="1",
                image_id=IMAGE.id, vcpus=1, memory_mib=128, vm_state="stopped",
                task_state=None, power_intent="off", meta={}, generation=1,
                observed_generation=1, config_drive=False) for u in uuids])
        return uuids

    def attach(self, server: str, n: int, status: str = "attaching", ro: bool = False,
               export: str | None = None) -> int:
        with self.db.session() as s:
            m = ShareMapping(uuid=str(uuidlib.uuid4()), instance_uuid=server, share_id=f"sh{n}",
                             status=status, tag=f"t{n}", export_location=export or f"local:/s{n}",
                             share_proto="LOCAL", read_only=ro, user_id="alice",
                             project_id="p1", request_id=f"req-{n}")
            s.add(m)
            s.flush()
            return m.id

    def set(self, server: str, **fields: object) -> None:
        """Change desired state as the API does (a new generation)."""
        with self.db.session() as s:
            row = s.get(Server, server)
            assert row is not None
            for key, value in fields.items():
                setattr(row, key, value)
            row.generation += 1

    def set_status(self, mapping_id: int, status: str) -> None:
        with self.db.session() as s:
            row = s.get(ShareMapping, mapping_id)
            assert row is not None
            row.status = status

    def row(self, server: str) -> Server:
        with self.db.read() as s:
            row = s.get(Server, server)
            assert row is not None
            return row

    def mapping(self, mapping_id: int) -> ShareMapping | None:
        with self.db.read() as s:
            return s.get(ShareMapping, mapping_id)

    # ---- the agent ---------------------------------------------------------------------------
    def reconcile(self, server: str) -> PassResult:
        return self.reconciler.reconcile(server)

    def converge(self, server: str, passes: int = 20) -> int:
        """Passes until one has nothing to do and nothing to wait for; how many it took."""
        for n in range(1, passes + 1):
            p, _, _ = self.reconciler.plan_for(server)
            if not p.steps and p.wait is None:
                return n - 1
            self.reconcile(server)
        raise AssertionError(f"server {server} did not converge in {passes} passes: {p.names}")

    def restart_agent(self) -> None:
        """What a restarted agent has: the same database, host and guests; no memory."""
        self.reconciler = Reconciler(self.config, self.db, self.reconciler.a, lambda: [IMAGE])
        self.agent = Agent(self.reconciler)

    def mount_path(self, n: int, ro: bool = False) -> Path:
        return self.config.mount_root / (f"sh{n}" + ("-ro" if ro else ""))


def make_world(tmp: Path, slots: int = 8, unplug_delay: int = 0, *, name: str = HOST,
               db_url: str = "", provider: FakeProvider | None = None) -> World:
    """One host's agent on fakes. Several worlds on one `db_url` and `provider` are several
    hosts of one cloud (each its own guests and mounts, one database and one storage)."""
    config = load_config(None, {"state_dir": str(tmp / "state"), "agent.host": name,
                                "agent.detach_timeout": 5.0, "database_url": db_url})
    migrate(config.db_url)
    db = Database(config.db_url)
    host, provider = FakeHost(), provider if provider is not None else FakeProvider()
    virt = FakeVirt(slots, unplug_delay, mounts=host.mounts)
    metadata = FakeMetadata()
    attachments = Attachments(config, db, provider, {"LOCAL": host}, virt,  # type: ignore[arg-type]
                              metadata, NoopNotifier(), mounts=host)  # type: ignore[arg-type]
    reconciler = Reconciler(config, db, attachments, lambda: [IMAGE])
    return World(config, db, virt, host, provider, metadata, reconciler, Agent(reconciler),
                 name)


__all__ = ["World", "make_world", "MetadataSockets"]
