"""Shared fixtures: a real app on a real database (SQLite file, or PostgreSQL on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from attachfs.config import Config, load_config
from attachfs.db.tables import Base, Server
from attachfs.service import Parts, build_api, open_parts
from attachfs.storage import mountinfo

# The session's real Keystone (`keystone` fixture), for tests/keystone, tests/manila and
# tests/clients alike, its real Ceph (`ceph_cluster`), for tests/ceph, tests/manila and
# tests/clients, and its real Manila (`manila`, `manila_keystone`, `manila_cephfs`), for
# tests/manila and tests/clients; its NFS-Ganesha (`ganesha_server`), for tests/nfs. And how the
# suite splits over two workers (tests/parallel.py).
pytest_plugins = ["tests.keystone_fixture", "tests.ceph_fixture", "tests.manila_fixture",
                  "tests.nfs_fixture", "tests.parallel"]

PG_ADMIN_URL = os.environ.get("ATTACHFS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_database() -> str:
    import psycopg

    name = f"attachfs_test_{os.getpid()}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = _pg_database()
    yield url
    import psycopg

    admin = PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI (`CI=true`), a test that skips because a capability is missing (root, libvirt,
    the guest image, a real Keystone or Manila) fails instead: a green CI run never hides an
    untested part of the product."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() == "true" and not hasattr(report,
                                                                                     "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which needs every capability: {reason}"


def make_image_dir(root: Path) -> Path:
    """An image catalogue entry (image.json + files): the API lists images, it never boots them."""
    d = root / "images" / "debian-busybox"
    d.mkdir(parents=True)
    (d / "vmlinuz").write_bytes(b"kernel")
    (d / "initrd.img").write_bytes(b"initrd")
    (d / "image.json").write_text(json.dumps({
        "id": "7d0e2b4e-35a5-5b43-9d9c-2a5d1a0c9e11", "name": "debian-busybox",
        "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0"}))
    return root / "images"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    url = ""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    return load_config(None, {"state_dir": str(tmp_path / "state"), "database_url": url,
                              "images.dir": str(make_image_dir(tmp_path)),
                              "agent.host": "test-host"})


@pytest.fixture
def parts(config: Config) -> Iterator[Parts]:
    parts = open_parts(config)
    if parts.db.url.startswith("postgresql"):
        with parts.db.session() as s:  # a clean slate per test on the shared database
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            s.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    yield parts
    parts.db.dispose()
    parts.builtin.volumes.unmount_all()


@pytest.fixture(scope="session", autouse=True)
def _unmount_share_filesystems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Built-in shares are loop-mounted images: whatever a test left mounted under this
    session's temporary directory is unmounted when the session ends (vm tests' state
    directories are cleaned by their own harness; other sessions' mounts are not ours)."""
    yield
    for point in reversed(mountinfo.mount_points(tmp_path_factory.getbasetemp().resolve())):
        mountinfo.run(["umount", "-l", str(point)])


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
def client(parts: Parts, wakes: Wakes) -> Iterator[TestClient]:
    with TestClient(build_api(parts, wakes)) as c:
        c.headers.update({"X-Auth-Token": "alice:p1",
                          "OpenStack-API-Version": "compute 2.97"})
        yield c


IMAGE = "debian-busybox"


def create_server(client: TestClient, name: str = "vm1", token: str | None = None,
                  **extra: object) -> str:
    headers = {"X-Auth-Token": token} if token else {}
    r = client.post("/v2.1/servers", json={"server": {"name": name, "flavorRef": "1",
                                                      "imageRef": IMAGE, **extra}},
                    headers=headers)
    assert r.status_code == 202, r.text
    return str(r.json()["server"]["id"])


def settle_server(parts: Parts, server_id: str, vm_state: str = "stopped") -> None:
    """Put a server where the agent would leave it after booting/stopping (no guest here:
    these API tests check validation and bookkeeping; tests/vm boot real guests)."""
    with parts.db.session() as s:
        row = s.get(Server, server_id)
        assert row is not None
        row.vm_state, row.task_state = vm_state, None
        row.power_intent = "off" if vm_state == "stopped" else "on"
        row.observed_generation = row.generation


def converge(reconciler: Any, server_id: str, timeout: float = 60) -> None:
    """Passes of one server as the agent's runner makes them (a pass may ask to be run again
    after a delay: the share service still applying a rule) until one is done."""
    from attachfs.agent.reconciler import Next

    deadline = time.monotonic() + timeout
    while True:
        result = reconciler.reconcile(server_id)
        if result.next == Next.DONE:
            return
        assert time.monotonic() < deadline, f"server {server_id} not converged: {result.why}"
        time.sleep(min(result.after, 1.0))


def create_share(client: TestClient, name: str | None = None, scope: str = "instance",
                 token: str | None = None, **extra: object) -> dict[str, object]:
    name = name or f"fs-{uuid.uuid4().hex[:8]}"
    headers = {"X-Auth-Token": token} if token else {}
    r = client.put(f"/v2.1/os-filesystem/{name}",
                   json={"fs_entry": {"size": 1, "scope": scope, **extra}}, headers=headers)
    assert r.status_code == 201, r.text
    entry: dict[str, object] = r.json()["fs_entry"]
    return entry
