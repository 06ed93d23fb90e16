"""Several compute hosts on this one machine, for the multi-host vm tests: one `attachfs api`
and one agent per host, all on one PostgreSQL database. Each agent runs in its own network
namespace (its own address on a veth link to the root namespace, which is its storage address
and, with it, its identity on the storage side besides its Ceph ID); it enters only the
network namespace (`nsenter --net`), so its host mounts are in the machine's mount namespace
where the test can look at them. The agents share one libvirtd: each names its guests'
domains after its host ([libvirt] domains_per_host), as separate machines would have separate
libvirtds. Reaching PostgreSQL and libvirtd over their unix sockets needs no route out of a
namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from harness import host as hosthelp
from harness.cloud import toml_of
from harness.process import Proc, free_port, wait_for
from harness.serve import IMAGES_DIR

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_SOCKET_DIR = "/var/run/postgresql"
ATTACHFS = str(Path(sys.executable).with_name("attachfs"))
HEARTBEAT, DOWN_AFTER = 1.0, 6.0  # s: a killed agent's host is down within seconds


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    """One simulated compute host: its namespace, address, state and agent process."""

    name: str
    netns: str
    address: str
    state: Path
    config: Path
    agent: subprocess.Popen[bytes] | None = None

    @property
    def owner(self) -> str:
        return f"{self.name}:{self.state.resolve()}"

    @property
    def mount_root(self) -> Path:
        return self.state / "mounts"

    def start(self) -> None:
        log = (self.state / "agent.log").open("ab")
        enter = ["nsenter", f"--net=/var/run/netns/{self.netns}"] if self.netns else []
        self.agent = subprocess.Popen(
            [*enter, ATTACHFS, "agent", "--config", str(self.config)], stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """The host fails: its agent dies at once; its guests, mounts and daemons stay."""
        if self.agent is not None and self.agent.poll() is None:
            os.killpg(self.agent.pid, signal.SIGKILL)
            self.agent.wait(30)
        self.agent = None

    def fence(self) -> None:
        """What an operator's fencing does to a failed host before evacuating from it: its
        guests stop running (paused here, so their domains, host mounts and virtiofsd stay for
        the host's return). Without it the old guest keeps using a built-in share, which the
        storage cannot cut off."""
        for domain in self.guests():
            subprocess.run(["virsh", "-c", "qemu:///system", "suspend", domain],
                           check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            os.killpg(self.agent.pid, signal.SIGTERM)
            try:
                self.agent.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.agent.pid, signal.SIGKILL)
                self.agent.wait(30)
        self.agent = None

    def console(self, server: str) -> str:
        path = self.state / "console" / f"{server}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def guests(self) -> list[str]:
        """This host's domains in libvirtd (running or not)."""
        out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        return [d for d in out if d.startswith("attachfs-") and self._owned(d)]

    def _owned(self, domain: str) -> bool:
        meta = subprocess.run(["virsh", "-c", "qemu:///system", "metadata", domain,
                               "urn:attachfs:owner:1"], capture_output=True, text=True,
                              timeout=30).stdout
        return self.owner in meta

    def host_mounts(self) -> list[Path]:
        from attachfs.storage import mountinfo

        return mountinfo.mount_points(self.mount_root.resolve())

    def virtiofsd_pids(self) -> list[int]:
        return hosthelp.virtiofsd_pids(self.mount_root)


@dataclass
class Cloud:
    api: Proc
    hosts: dict[str, Host]
    db_url: str
    shares_root: Path
    http: httpx.Client = field(init=False)
    admin: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        version = {"OpenStack-API-Version": "compute 2.97"}
        self.http = httpx.Client(base_url=self.api.url, timeout=60,
                                 headers={"X-Auth-Token": "alice:p1", **version})
        self.admin = httpx.Client(base_url=self.api.url, timeout=60,
                                  headers={"X-Auth-Token": "admin:admin", **version})

    def services(self) -> dict[str, dict[str, Any]]:
        r = self.admin.get("/v2.1/os-services")
        r.raise_for_status()
        return {s["host"]: s for s in r.json()["services"]}

    def wait_host(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.services().get(name)
            return s if s is not None and s["state"] == state else None
        return wait_for(f"host {name} {state}", check, timeout, interval=0.5)

    def server(self, sid: str, version: str = "2.97") -> dict[str, Any]:
        r = self.admin.get(f"/v2.1/servers/{sid}",
                           headers={"OpenStack-API-Version": f"compute {version}"})
        r.raise_for_status()
        body: dict[str, Any] = r.json()["server"]
        return body

    def wait_status(self, sid: str, status: str, timeout: float = 240) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.server(sid)
            if s["status"] == "ERROR":
                raise RuntimeError(f"server {sid} went to ERROR: {s.get('fault')}")
            return s if s["status"] == status and s["OS-EXT-STS:task_state"] is None else None
        return wait_for(f"server {sid} {status}", check, timeout, interval=0.5)

    def wait_mapping(self, sid: str, share: str, status: str, timeout: float = 180) -> None:
        def check() -> bool:
            r = self.admin.get(f"/v2.1/servers/{sid}/shares/{share}")
            return r.status_code == 200 and r.json()["share"]["status"] == status
        wait_for(f"attachment {share} {status}", check, timeout, interval=0.5)

    def access_rules(self, share: str) -> list[str]:
        """The hosts holding a built-in share's access rule, as its provider has them."""
        url = self.db_url.replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT host FROM share_access WHERE share_id = %s ORDER BY host",
                                (share,)).fetchall()
        return [r[0] for r in rows]


def _database() -> tuple[str, str]:
    """A throw-away database: (SQLAlchemy URL over TCP for the API, over the unix socket for
    the agents in their namespaces)."""
    name = f"attachfs_hosts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return (f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            f"postgresql+psycopg://postgres@/{name}?host={PG_SOCKET_DIR}")


def _drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _network(netns: str, link: str, subnet: int) -> str:
    """A namespace with lo up and a veth link to the root namespace; the namespace's end is
    10.231.<subnet>.2 (its address)."""
    with contextlib.suppress(subprocess.CalledProcessError):
        ip("netns", "del", netns)
    with contextlib.suppress(subprocess.CalledProcessError):
        ip("link", "del", link)
    ip("netns", "add", netns)
    ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
    ip("link", "set", f"{link}p", "netns", netns)
    ip("addr", "add", f"10.231.{subnet}.1/30", "dev", link)
    ip("link", "set", link, "up")
    ip("-n", netns, "addr", "add", f"10.231.{subnet}.2/30", "dev", f"{link}p")
    ip("-n", netns, "link", "set", f"{link}p", "up")
    ip("-n", netns, "link", "set", "lo", "up")
    return f"10.231.{subnet}.2"


@contextmanager
def cloud(base: Path, names: tuple[str, ...] = ("host-a", "host-b"), *,
          settings: dict[str, object] | None = None, netns: bool = True) -> Iterator[Cloud]:
    """The API and one agent per host, started; everything removed afterwards (guests of
    these hosts, their mounts, namespaces, links, the database). `settings`: more config for
    the API and every agent (a share service). `netns` False: the agents stay in this
    network namespace (services on loopback, such as Manila and a Ceph monitor, are reachable;
    each host is still its own Ceph ID)."""
    extra = settings or {}
    api_url, agent_url = _database()
    shares_root = base / "shares"
    shares_root.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:4]
    hosts: dict[str, Host] = {}
    api: Proc | None = None
    try:
        api_state = base / "api"
        api_state.mkdir(parents=True, exist_ok=True)
        api_config = api_state / "attachfs.toml"
        api_config.write_text(toml_of({
            "state_dir": str(api_state), "database_url": api_url,
            "images.dir": str(IMAGES_DIR), "storage.root": str(shares_root),
            "agent.down_after": DOWN_AFTER, **extra}))
        port = free_port()
        api = Proc([ATTACHFS, "api", "--config", str(api_config), "--listen",
                    f"127.0.0.1:{port}"], api_state / "api.log", port)
        api.start("/v2.1/", timeout=90)
        for n, name in enumerate(names, start=1):
            ns, link = (f"afs{tag}{n}", f"vafs{tag}{n}") if netns else ("", "")
            address = _network(ns, link, n) if netns else "127.0.0.1"
            state = base / name
            state.mkdir(parents=True, exist_ok=True)
            config = state / "attachfs.toml"
            config.write_text(toml_of({
                "state_dir": str(state), "database_url": agent_url,
                "images.dir": str(IMAGES_DIR), "storage.root": str(shares_root),
                "agent.host": name, "agent.heartbeat_interval": HEARTBEAT,
                "agent.down_after": DOWN_AFTER, "agent.share_transports": ["virtiofs"],
                "manila.host_address": address, "libvirt.domains_per_host": True, **extra}))
            hosts[name] = Host(name, ns, address, state, config)
            hosts[name].start()
        c = Cloud(api, hosts, api_url, shares_root)
        for name in names:
            c.wait_host(name, "up", timeout=90)
        yield c
    finally:
        for h in hosts.values():
            h.stop()
            hosthelp.destroy_guests(h.owner)
            hosthelp.remove_state(h.state)
            if h.netns:
                with contextlib.suppress(subprocess.CalledProcessError):
                    ip("netns", "del", h.netns)
        if api is not None:
            api.stop()
        hosthelp.remove_state(base)  # the built-in shares' filesystems
        _drop(api_url)
