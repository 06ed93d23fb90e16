"""Leases on a share of the share service, so that one agent at a time (on any host) changes
its access rules: a row per share (share_service_locks), taken and given back in short
transactions of their own, so no database transaction is open while the service is asked."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import CursorResult, or_, update
from sqlalchemy.exc import IntegrityError

from attachfs.db.engine import Database
from attachfs.db.tables import ShareServiceLock, utcnow

# A rule change holds its share's lease for a look-up and a change (a few requests); a lease
# older than this is a dead holder's and is taken over.
LEASE_SECONDS = 120.0


@contextlib.contextmanager
def share_lease(db: Database, share_id: str, host: str) -> Iterator[bool]:
    """Yields whether this caller (an agent of `host`) holds the share's lease; False when
    another holds it (the caller asks again later). A lease older than LEASE_SECONDS (its
    holder died) is taken over."""
    token = f"{host}:{uuid.uuid4().hex[:12]}"  # each taking is its own
    with contextlib.suppress(IntegrityError), db.session() as s:
        if s.get(ShareServiceLock, share_id) is None:
            s.add(ShareServiceLock(share_id=share_id))
    now = utcnow()
    with db.session() as s:
        result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
            update(ShareServiceLock)
            .where(ShareServiceLock.share_id == share_id,
                   or_(ShareServiceLock.holder.is_(None),
                       ShareServiceLock.updated_at < now - dt.timedelta(seconds=LEASE_SECONDS)))
            .values(holder=token, updated_at=now))
        taken = result.rowcount == 1
    try:
        yield taken
    finally:
        if taken:
            with db.session() as s:
                s.execute(update(ShareServiceLock)
                          .where(ShareServiceLock.share_id == share_id,
                                 ShareServiceLock.holder == token)
                          .values(holder=None, updated_at=utcnow()))
