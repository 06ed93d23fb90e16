"""Engine, sessions and migrations. SQLite gets WAL and a busy timeout; writers use
BEGIN IMMEDIATE so concurrent requests queue instead of failing with 'database is locked'."""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20,
            max_overflow=20,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Writers take the lock up front (no deadlock-prone lock upgrade later); readers
            # (Database.read) start a plain WAL snapshot and never wait for a writer.
            read_only = conn.get_execution_options().get("attachfs_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # only when migrating (~0.4 s import)

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent). A SQLite file is switched to WAL
    here, once, before any engine opens it (the mode is kept in the file), so two engines
    never race to change it."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    if schema_revision(url) == newest_revision():
        return  # a restart: alembic is not even imported (~0.4 s and ~15 MiB)
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def newest_revision() -> str:
    """The newest migration's revision: by our convention each file is named after its
    revision (`0010_migrations.py` is revision "0010"; tests/unit/test_migrations.py checks)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def schema_revision(url: str) -> str | None:
    """The revision the database is at, or None (no database or no schema yet)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:
        return None
    finally:
        engine.dispose()


CHECKPOINT_EVERY = 1.0  # s between a SQLite database's checkpoints (while it has writers)


def _no_automatic_checkpoint(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


class Checkpointer:
    """Copies the write-ahead log into a SQLite database file, every CHECKPOINT_EVERY s, in a
    daemon thread started by the first write (PASSIVE: it waits for no reader or writer, and
    sqlite3 lets go of the GIL while it works). It ends with its Database (dispose, or the
    Database collected: the thread holds only a weak reference)."""

    def __init__(self, db: Database) -> None:
        # Checkpoints run here, not in whichever commit crosses SQLite's 1,000-page mark: that
        # commit took ~5 ms longer (attach POST p99 5.4 ms with the automatic checkpoint,
        # 1.5 ms without, in process).
        event.listen(db.engine, "connect", _no_automatic_checkpoint)
        self._db = weakref.ref(db)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is not None:
            return
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="sqlite-checkpoint",
                                               daemon=True)
                self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_EVERY):
            db = self._db()
            if db is None:
                return
            try:
                checkpoint(db)
            except (DBAPIError, sqlite3.Error) as exc:  # the next round tries again
                log.warning("SQLite checkpoint of %s failed: %s", db.url, exc)
            del db


def checkpoint(db: Database) -> tuple[int, int]:
    """A PASSIVE checkpoint, outside any transaction (a pooled connection's own, raw: the
    engine would begin one first); (frames in the log, frames copied into the file)."""
    conn = db.engine.raw_connection()
    try:
        _busy, frames, copied = conn.driver_connection.execute(  # type: ignore[union-attr]
            "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames), int(copied)
    finally:
        conn.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer: AbstractContextManager[object] = (
            threading.RLock() if url.startswith("sqlite") else nullcontext())
        self._readers = sessionmaker(self.engine.execution_options(attachfs_read_only=True),
                                     expire_on_commit=False)
        self.checkpoints = Checkpointer(self) if url.startswith("sqlite") else None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any error. On SQLite the
        writers of this process take turns on a lock of their own first: waiting for SQLite's
        lock is its busy handler's sleep-and-retry (1, 2, 5, 10 ms...), which left the
        database idle between writers (measured: 8 concurrent attach clients)."""
        if self.checkpoints is not None:
            self.checkpoints.start()
        with self._writer, self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (on SQLite it does not queue behind writers)."""
        with self._readers() as s, s.begin():
            yield s

    def dispose(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.stop()
        self.engine.dispose()
