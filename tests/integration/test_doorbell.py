"""Waking agents across processes (issue 12, item 3): on PostgreSQL an attach rings every
listening agent at once (LISTEN/NOTIFY), and a listener that lost its connection comes back
and looks once for what it may have missed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from attachfs.config import load_config
from attachfs.db import doorbell
from attachfs.service import build_api, open_parts
from tests.conftest import create_server, create_share, make_image_dir, settle_server

pytestmark = pytest.mark.postgres


class Bell:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()


def test_an_attach_rings_a_listening_agent(pg_url: str, tmp_path: Path) -> None:
    config = load_config(None, {"state_dir": str(tmp_path / "state"), "database_url": pg_url,
                                "images.dir": str(make_image_dir(tmp_path)),
                                "agent.host": "test-host"})
    parts = open_parts(config)
    bell = Bell()
    listener = doorbell.Listener(parts.db, bell)
    listener.start()
    try:
        assert listener.listening.wait(10)
        assert bell.event.wait(5)  # the look for what was rung before it listened
        bell.event.clear()
        with TestClient(build_api(parts)) as client:
            client.headers.update({"X-Auth-Token": "alice:p1",
                                   "OpenStack-API-Version": "compute 2.97"})
            sid = create_server(client)
            assert bell.event.wait(5)
            settle_server(parts, sid)
            share = create_share(client)
            bell.event.clear()
            t0 = time.monotonic()
            r = client.post(f"/v2.1/servers/{sid}/shares",
                            json={"share": {"share_id": share["id"]}})
            assert r.status_code == 201, r.text
            assert bell.event.wait(5)
            print(f"\nattach committed -> agent rung: {(time.monotonic() - t0) * 1000:.1f} ms")
    finally:
        listener.stop()
        parts.db.dispose()
        parts.builtin.volumes.unmount_all()


def test_ring_on_sqlite_is_nothing(tmp_path: Path) -> None:
    config = load_config(None, {"state_dir": str(tmp_path / "state"),
                                "images.dir": str(make_image_dir(tmp_path))})
    parts = open_parts(config)
    try:
        assert not doorbell.listens(parts.db)
        doorbell.ring(parts.db)  # no error, nothing to do
    finally:
        parts.db.dispose()


def test_libpq_url_keeps_credentials() -> None:
    assert doorbell.libpq_url("postgresql+psycopg://u:p@127.0.0.1:5432/db") == \
        "postgresql://u:p@127.0.0.1:5432/db"


def test_a_lost_connection_comes_back_and_looks_once(pg_url: str, tmp_path: Path) -> None:
    config = load_config(None, {"state_dir": str(tmp_path / "state"), "database_url": pg_url,
                                "images.dir": str(make_image_dir(tmp_path))})
    parts = open_parts(config)
    bell = Bell()
    listener = doorbell.Listener(parts.db, bell)
    listener.start()
    try:
        assert listener.listening.wait(10) and bell.event.wait(5)
        bell.event.clear()
        with parts.db.session() as s:  # the server drops the listener's connection
            s.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"))
        assert bell.event.wait(15), "no look after reconnecting"
        assert listener.listening.wait(10)
        bell.event.clear()
        doorbell.ring(parts.db)
        assert bell.event.wait(5)
    finally:
        listener.stop()
        parts.db.dispose()


def test_a_ring_wakes_only_the_servers_host(pg_url: str, tmp_path: Path) -> None:
    """With a thousand hosts, a change costs one look, not a thousand."""
    config = load_config(None, {"state_dir": str(tmp_path / "state"), "database_url": pg_url,
                                "images.dir": str(make_image_dir(tmp_path)),
                                "agent.host": "test-host"})
    parts = open_parts(config)
    mine, other = Bell(), Bell()
    listeners = [doorbell.Listener(parts.db, mine, "test-host"),
                 doorbell.Listener(parts.db, other, "other-host")]
    for listener in listeners:
        listener.start()
    try:
        assert all(listener.listening.wait(10) for listener in listeners)
        time.sleep(0.5)  # the looks each makes once it listens
        mine.count = other.count = 0
        doorbell.ring(parts.db, "test-host")
        doorbell.ring(parts.db, None)  # every host
        wait_until = time.monotonic() + 5
        while time.monotonic() < wait_until and (mine.count < 2 or other.count < 1):
            time.sleep(0.05)
        time.sleep(0.5)
        assert (mine.count, other.count) == (2, 1)
    finally:
        for listener in listeners:
            listener.stop()
