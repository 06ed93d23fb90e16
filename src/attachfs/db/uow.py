"""The unit of work: one transaction, with the repositories that work inside it.

`write()` commits when its block ends and rolls back on any error; `read()` is a read-only
snapshot (on SQLite it does not queue behind writers: see db/engine.py). Database errors are
translated here, so callers never see SQLAlchemy:
- a unique constraint that refuses the write (two requests raced for one share, tag or name):
  errors.Duplicate (a 409 at the API);
- a value the database cannot hold or compare (PostgreSQL: a NUL in text): errors.BadRequest,
  it is the caller's input;
- anything else from the driver (connection lost, lock timeout): errors.ServiceUnavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from attachfs.db.doorbell import CHANNEL, listens
from attachfs.db.engine import Database
from attachfs.db.repositories import (
    SqlActions,
    SqlAttachments,
    SqlHosts,
    SqlMigrations,
    SqlServers,
    SqlShares,
)
from attachfs.errors import BadRequest, Duplicate, ServiceUnavailable

log = logging.getLogger(__name__)


class SqlRepositories:
    def __init__(self, s: Session, listens: bool = False) -> None:
        self.session = s
        self.listens = listens  # PostgreSQL: agents in other processes hear NOTIFY
        self.rung: list[str | None] = []
        self.servers = SqlServers(s)
        self.attachments = SqlAttachments(s)
        self.shares = SqlShares(s)
        self.actions = SqlActions(s)
        self.hosts = SqlHosts(s)
        self.migrations = SqlMigrations(s)

    def flush(self) -> None:
        self.session.flush()

    def ring(self, host: str | None) -> None:
        # NOTIFY is transactional: delivered when this transaction commits, never if it
        # rolls back; and it costs no commit of its own (a ring in a transaction after the
        # write cost one more WAL flush: measured, attach POST p50 7.9 -> see docs/bench.md).
        if self.listens:
            self.session.execute(text("SELECT pg_notify(:channel, :host)"),
                                 {"channel": CHANNEL, "host": host or ""})
        self.rung.append(host)


def duplicate_message(exc: IntegrityError) -> str:
    """What the loser of a uniqueness race is told (constraint names: db/tables.py)."""
    text = str(exc.orig)
    if "tag" in text:
        return "Tag is already used by another share on this server"
    if "share_mapping" in text or "share_id" in text:
        return "Share is already attached to this server"
    return "The request conflicts with a concurrent change"


class SqlUnitOfWork:
    """`woken`: called with each host a committed transaction rang (this process's own
    agent, in `attachfs serve`); agents in other processes hear PostgreSQL's NOTIFY."""

    def __init__(self, db: Database,
                 woken: Callable[[str | None], None] = lambda host: None) -> None:
        self.db = db
        self.woken = woken
        self.listens = listens(db)

    @contextmanager
    def write(self) -> Iterator[SqlRepositories]:
        with translated_errors(), self.db.session() as s:
            repos = SqlRepositories(s, self.listens)
            yield repos
        for host in repos.rung:  # committed
            self.woken(host)

    @contextmanager
    def read(self) -> Iterator[SqlRepositories]:
        with translated_errors(), self.db.read() as s:
            yield SqlRepositories(s)


@contextmanager
def translated_errors() -> Iterator[None]:
    try:
        yield
    except IntegrityError as exc:
        raise Duplicate(duplicate_message(exc)) from exc
    except DataError as exc:
        raise BadRequest("Invalid input: a value contains characters the database cannot "
                         "store (such as NUL)") from exc
    except DBAPIError as exc:
        log.error("database error: %s", exc)
        raise ServiceUnavailable("The database is busy; retry the request") from exc
