"""The unit of work: one transaction, with the repositories that work inside it.

`write()` commits when its block ends and rolls back on any error; a unique constraint that
refuses the write (two requests raced for one share, tag or name) becomes errors.Duplicate, a
409 at the API, so callers never see SQLAlchemy. `read()` is a read-only snapshot (on SQLite
it does not queue behind writers: see db/engine.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from attachfs.db.engine import Database
from attachfs.db.repositories import SqlActions, SqlAttachments, SqlServers, SqlShares
from attachfs.errors import Duplicate


class SqlRepositories:
    def __init__(self, s: Session) -> None:
        self.session = s
        self.servers = SqlServers(s)
        self.attachments = SqlAttachments(s)
        self.shares = SqlShares(s)
        self.actions = SqlActions(s)

    def flush(self) -> None:
        self.session.flush()


def duplicate_message(exc: IntegrityError) -> str:
    """What the loser of a uniqueness race is told (constraint names: db/tables.py)."""
    text = str(exc.orig)
    if "tag" in text:
        return "Tag is already used by another share on this server"
    if "share_mapping" in text or "share_id" in text:
        return "Share is already attached to this server"
    return "The request conflicts with a concurrent change"


class SqlUnitOfWork:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def write(self) -> Iterator[SqlRepositories]:
        try:
            with self.db.session() as s:
                yield SqlRepositories(s)
        except IntegrityError as exc:
            raise Duplicate(duplicate_message(exc)) from exc

    @contextmanager
    def read(self) -> Iterator[SqlRepositories]:
        with self.db.read() as s:
            yield SqlRepositories(s)
