"""SQLite's write-ahead log is copied into the database file by the Database's own thread,
not by whichever commit crosses the automatic checkpoint's mark."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from attachfs.db import engine as engine_module
from attachfs.db.engine import Database, migrate
from attachfs.db.tables import Host


def test_the_log_is_checkpointed_by_the_database_thread(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    migrate(url)
    runs: list[tuple[str, int, int]] = []  # (thread, frames in the log, frames copied)
    real = engine_module.checkpoint

    def watched(db: Database) -> tuple[int, int]:
        frames, copied = real(db)
        runs.append((threading.current_thread().name, frames, copied))
        return frames, copied

    monkeypatch.setattr(engine_module, "checkpoint", watched)
    monkeypatch.setattr(engine_module, "CHECKPOINT_EVERY", 0.05)
    db = Database(url)
    try:
        with db.session() as s:
            assert s.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0  # not in commits
        for i in range(50):
            with db.session() as s:
                s.add(Host(uuid=f"u{i}", name=f"h{i}"))
        deadline = time.monotonic() + 10
        while not any(frames for _, frames, _ in runs) and time.monotonic() < deadline:
            time.sleep(0.05)
        thread, frames, copied = next(r for r in runs if r[1])
        assert thread == "sqlite-checkpoint" and frames == copied > 0  # all of it, there
        with db.read() as s:
            assert s.execute(text("SELECT count(*) FROM hosts")).scalar() == 50
    finally:
        db.dispose()
    assert db.checkpoints is not None and db.checkpoints.thread is not None
    db.checkpoints.thread.join(timeout=5)
    assert not db.checkpoints.thread.is_alive()  # it ends with its database
