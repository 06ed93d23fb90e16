"""Migration 0005 (share names per namespace) on a database that already has rows, on SQLite
and PostgreSQL; and the migrated schema matches the tables' declarations."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from attachfs.db.engine import alembic_config, migrate, newest_revision, schema_revision
from attachfs.db.tables import Base
from tests.conftest import PG_ADMIN_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    import psycopg

    name = f"attachfs_migrate_{os.getpid()}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _share(conn: sa.Connection, uuid: str, name: str, project: str, scope: str) -> None:
    conn.execute(sa.text(
        "INSERT INTO shares (uuid, name, project_id, user_id, size_gib, scope, status, "
        "created_at) VALUES (:u, :n, :p, 'someone', 1, :s, 'available', :t)"),
        {"u": uuid, "n": name, "p": project, "s": scope, "t": dt.datetime(2026, 1, 1)})


def test_0005_keeps_rows_and_scopes_names(empty_db: str) -> None:
    command.upgrade(alembic_config(empty_db), "0004")
    engine = sa.create_engine(empty_db)
    try:
        with engine.begin() as conn:
            _share(conn, "u1", "data", "p1", "instance")
            _share(conn, "u2", "home", "p1", "project")
            _share(conn, "u3", "pub", "p9", "global")
            conn.execute(sa.text("INSERT INTO share_access (share_id, host, access_level, "
                                 "locked, created_at) VALUES ('u1', 'h', 'rw', true, :t)"),
                         {"t": dt.datetime(2026, 1, 1)})
        migrate(empty_db)
        with engine.begin() as conn:
            rows = conn.execute(sa.text("SELECT uuid, name FROM shares ORDER BY uuid")).all()
            assert [tuple(r) for r in rows] == [("u1", "data"), ("u2", "home"), ("u3", "pub")]
            assert conn.execute(sa.text("SELECT share_id FROM share_access")).scalar() == "u1"
            _share(conn, "u4", "data", "p2", "instance")  # another project: its own name
            _share(conn, "u5", "data", "p9", "global")  # the global namespace: its own
            _share(conn, "u6", "pub", "p1", "instance")  # a project name under a global one
        for dup in (("u7", "data", "p1", "project"), ("u8", "data", "p7", "global")):
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
                _share(conn, *dup)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


def test_each_migration_is_named_after_its_revision() -> None:
    """migrate() skips alembic on a database already at the newest file's revision, which it
    reads from the file names: each file must be named after its revision, in one chain."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    for rev in script.walk_revisions():
        assert Path(rev.path).name.split("_", 1)[0] == rev.revision
    assert script.get_heads() == [newest_revision()]


def test_a_database_at_the_newest_revision_is_left_alone(empty_db: str) -> None:
    assert schema_revision(empty_db) is None
    migrate(empty_db)
    assert schema_revision(empty_db) == newest_revision()
    migrate(empty_db)  # a restart: nothing to do
    assert schema_revision(empty_db) == newest_revision()
