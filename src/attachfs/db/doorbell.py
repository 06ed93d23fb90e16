"""Waking agents in other processes without polling the database in a loop: on PostgreSQL,
the API rings after each commit that changed desired state (`NOTIFY attachfs_wake`) and every
agent listening (`LISTEN attachfs_wake`) looks for work at once. The agents' periodic look
stays, much slower, as the safety net for a ring missed while a connection was down.

SQLite has no such bell: there the API and the agent share one process (`attachfs serve`) and
the API wakes the agent directly; an agent in another process polls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import make_url

from attachfs.db.engine import Database

log = logging.getLogger(__name__)
CHANNEL = "attachfs_wake"
# What agents changed, as their notifications say it, for the API processes' event streams
# (the web console): one JSON object per notification about a server (notify/hub.py).
CHANGES = "attachfs_changes"


def listens(db: Database) -> bool:
    return db.url.startswith("postgresql")


def ring(db: Database, host: str | None = None) -> None:
    """The agent of `host` (None: every listening agent): look for work now. Only that host's
    agent wakes, so a change costs one look, not one per host. Best effort: a failure is
    logged (the agents' periodic look finds the change anyway)."""
    if not listens(db):
        return
    try:
        with db.session() as s:
            s.execute(text("SELECT pg_notify(:channel, :host)"),
                      {"channel": CHANNEL, "host": host or ""})
    except Exception as exc:  # noqa: BLE001 - the safety net covers it
        log.warning("could not ring the agents: %s", exc)


def libpq_url(sqlalchemy_url: str) -> str:
    """The libpq connection string of a SQLAlchemy URL (postgresql+psycopg://...)."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def announce(db: Database, payload: str) -> None:
    """Tell the API processes listening on CHANGES (best effort: a console that misses it
    reloads what it shows within seconds anyway)."""
    try:
        with db.session() as s:
            s.execute(text("SELECT pg_notify(:channel, :payload)"),
                      {"channel": CHANGES, "payload": payload})
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("could not announce a change: %s", exc)


class Listener:
    """A thread holding one connection that LISTENs on `channel` and calls `rung()` per
    notification (or `heard(payload)`, when given); after a lost connection it connects again
    (backoff up to 5 s) and calls `rung()` once, since rings may have been missed meanwhile.
    `listening` says whether it is connected."""

    def __init__(self, db: Database, rung: Callable[[], None], host: str = "", *,
                 channel: str = CHANNEL, heard: Callable[[str], None] | None = None) -> None:
        self.url = libpq_url(db.url)
        self.rung = rung
        self.host = host  # rings for another host are not for us ("": hear every ring)
        self.channel, self.heard = channel, heard
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"listen-{self.channel}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg  # only where an agent listens (PostgreSQL)

        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    delay = 0.1
                    self.rung()  # whatever was rung while not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0, stop_after=1):
                            if self.heard is not None:
                                self.heard(note.payload)
                            elif not self.host or note.payload in ("", self.host):
                                self.rung()
            except psycopg.Error as exc:
                if self.listening.is_set():
                    log.warning("doorbell: connection lost (%s); connecting again", exc)
                self.listening.clear()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.listening.clear()
