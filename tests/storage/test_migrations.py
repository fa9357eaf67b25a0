"""The migration runner (:mod:`storage.migrations`): what an operator sees when the shipped migration
files are broken, when the database file belongs to something else, and when several replicas start
on one file at once.

A failed migration, a newer schema and the upgrade path are in ``tests/storage/test_sqlite.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import aiosqlite
import pytest

from storage import StoreError
from storage.base import NewFeedback
from storage.migrations import apply_migrations, load_migrations
from storage.sqlite import SQLiteStore


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder standing in for the package data of ``storage/migrations/sqlite/``."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "__init__.py").write_text("")

    def files(package: str) -> Path:
        assert package == "storage.migrations.sqlite"
        return folder

    monkeypatch.setattr("storage.migrations.resources.files", files)
    return folder


def write(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text(f"CREATE TABLE t{name[:4]} (x INTEGER);\n", encoding="utf-8")


def test_migrations_are_read_in_version_order_whatever_the_folder_order(shipped: Path) -> None:
    write(shipped, "0003_c.sql", "0001_a.sql", "0002_b-2.sql")
    (shipped / "README.md").write_text("not a migration")
    migrations = load_migrations("sqlite")
    assert [(m.version, m.name) for m in migrations] == [
        (1, "0001_a.sql"),
        (2, "0002_b-2.sql"),
        (3, "0003_c.sql"),
    ]
    assert migrations[0].sql == "CREATE TABLE t0001 (x INTEGER);\n"


@pytest.mark.parametrize(
    ("names", "listed"),
    [
        (("0001_a.sql", "0003_c.sql"), "0001_a.sql, 0003_c.sql"),
        (("0002_b.sql", "0003_c.sql"), "0002_b.sql, 0003_c.sql"),
        (("0001_a.sql", "0001_again.sql", "0002_b.sql"), None),
    ],
    ids=["a-gap", "not-from-one", "a-number-twice"],
)
def test_misnumbered_migrations_are_refused_naming_the_files(
    shipped: Path, names: tuple[str, ...], listed: str | None
) -> None:
    write(shipped, *names)
    with pytest.raises(StoreError) as refused:
        load_migrations("sqlite")
    message = str(refused.value)
    assert message.startswith("sqlite migrations must be numbered 1, 2, 3, ... without gaps: ")
    for name in names:
        assert name in message
    if listed is not None:
        assert message.endswith(listed)


async def test_misnumbered_migrations_stop_the_store_opening_and_leave_no_file_behind(
    shipped: Path, tmp_path: Path
) -> None:
    write(shipped, "0001_a.sql", "0003_c.sql")
    db = tmp_path / "relay.db"
    with pytest.raises(StoreError, match="without gaps"):
        await SQLiteStore(db).init()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "t0001" not in tables  # nothing was applied


async def test_a_database_of_another_program_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """DATABASE_URL pointing at some other program's SQLite file that has its own ``schema_version``."""
    db = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE schema_version (app TEXT, applied TEXT)")
        conn.execute("INSERT INTO schema_version VALUES ('their-app', '2024-01-01')")
        conn.commit()
    with pytest.raises(StoreError) as refused:
        await SQLiteStore(db).init()
    assert str(refused.value).startswith(f"cannot open the SQLite database {db}: ")
    assert "schema_version" in str(refused.value)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT * FROM schema_version").fetchall() == [("their-app", "2024-01-01")]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"schema_version"}


async def test_replicas_upgrading_together_apply_the_new_migration_once(tmp_path: Path) -> None:
    """Three replicas restarted at once on a file at schema version 1: each finds the new migration to
    apply, one applies it, the others find it applied inside their own transaction."""
    db = tmp_path / "relay.db"
    shipped = load_migrations("sqlite")
    async with aiosqlite.connect(db, isolation_level=None) as conn:
        await conn.execute_fetchall("PRAGMA journal_mode=WAL")
        assert await apply_migrations(conn, shipped[:1]) == 1
    stores = [SQLiteStore(db) for _ in range(3)]
    try:
        await asyncio.gather(*(store.init() for store in stores))
        assert [await store.schema_version() for store in stores] == [len(shipped)] * 3
        # The feedback queue (migration 2) exists once and works for all of them.
        assert await stores[0].enqueue_feedback([NewFeedback(channel="C1", kind="post", payload={})]) == 1
        assert await stores[2].feedback_depth() == 1
    finally:
        for store in stores:
            await store.close()


async def test_a_store_opening_a_new_file_waits_for_another_process_creating_its_schema(
    tmp_path: Path,
) -> None:
    """Two replicas started at the same moment on a new file: while the first holds the write lock
    (creating the schema), the second must wait for it (``busy_timeout`` is 5 s), not fail.

    Before the fix: ``PRAGMA journal_mode=WAL`` on a file not yet in WAL mode answers "database is
    locked" at once, without waiting, so the second replica does not start ("cannot open the SQLite
    database …: database is locked"). Three stores opening one new file at once hit it about once in
    thirty tries; an existing WAL file never.
    """
    db = tmp_path / "relay.db"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # the other replica, part-way through its migrations
        other.execute("CREATE TABLE their_progress (x INTEGER)")
        finished = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        finished.start()
        store = SQLiteStore(db)
        try:
            started = time.monotonic()
            await store.init()
            assert time.monotonic() - started >= 0.2  # it waited for the other one
            assert await store.schema_version() == len(load_migrations("sqlite"))
        finally:
            finished.join()
            await store.close()
    finally:
        other.close()
