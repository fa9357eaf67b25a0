"""SQLite-specific behaviour: files on disk, pragmas, migrations, ts ordering keys, kill -9."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import aiosqlite
import pytest

from storage import MessageState, StoreError, ThreadKey
from storage.base import order_key
from storage.migrations import Migration, apply_migrations, load_migrations, split_statements
from storage.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
THREAD = ThreadKey("T1", "C1", "1700000000.000100")


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "relay.db")
    await store.init()
    yield store
    await store.close()


def _raw(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path))


@pytest.mark.parametrize(
    ("ts", "key"),
    [
        ("1700000000.000100", 1_700_000_000_000_100),
        ("1700000000.000101", 1_700_000_000_000_101),
        ("999999999.999999", 999_999_999_999_999),
        ("1700000000", 1_700_000_000_000_000),
        ("1700000000.5", 1_700_000_000_500_000),
        ("", 0),
        ("not-a-ts", 0),
        ("1700000000.0000001", 0),  # more than microseconds
        ("-1.000000", 0),
        ("99999999999999999999.000000", 0),  # beyond a 64-bit integer
    ],
)
def test_order_key(ts: str, key: int) -> None:
    assert order_key(ts) == key


async def test_init_creates_the_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "relay.db"
    store = SQLiteStore(path)
    await store.init()
    await store.close()

    assert path.is_file()
    with _raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_schema_version_is_the_last_shipped_migration(sqlite_store: SQLiteStore) -> None:
    shipped = load_migrations("sqlite")

    assert shipped[0].name == "0001_init.sql"
    assert await sqlite_store.schema_version() == shipped[-1].version


async def test_schema_has_the_documented_tables(tmp_path: Path, sqlite_store: SQLiteStore) -> None:
    with _raw(tmp_path / "relay.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        (rows,) = conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()

    assert {"bindings", "messages", "claims", "schema_version"} <= tables
    assert {"order_ts", "order_key", "revision", "files", "attempts"} <= columns
    assert rows == 1


async def test_memory_database_is_private_and_temporary() -> None:
    first, second = SQLiteStore(":memory:"), SQLiteStore(":memory:")
    await first.init()
    await second.init()
    try:
        assert await first.schema_version() >= 1
        assert await first.claim("k", "v") is True
        assert await second.claim("k", "v") is True
    finally:
        await first.close()
        await second.close()


async def test_use_before_init_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")

    with pytest.raises(StoreError, match="init"):
        await store.get_binding(THREAD)


async def test_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = SQLiteStore(blocker / "relay.db")

    with pytest.raises(StoreError, match="cannot open"):
        await store.init()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.init()
    await store.close()
    with _raw(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
        conn.commit()

    with pytest.raises(StoreError, match="newer"):
        await SQLiteStore(path).init()


async def test_finish_rejects_a_state_that_is_not_final(sqlite_store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="final state"):
        await sqlite_store.finish(1, MessageState.PENDING, "x", None)


async def test_a_failed_migration_leaves_the_previous_schema(tmp_path: Path) -> None:
    migrations = [
        Migration(1, "0001_a.sql", "CREATE TABLE a (x INTEGER);"),
        Migration(2, "0002_b.sql", "CREATE TABLE b (x INTEGER);\nINSERT INTO nowhere VALUES (1);"),
    ]
    async with aiosqlite.connect(tmp_path / "m.db", isolation_level=None) as conn:
        with pytest.raises(StoreError, match=r"0002_b\.sql"):
            await apply_migrations(conn, migrations)
        tables = {row[0] for row in await conn.execute_fetchall("SELECT name FROM sqlite_master")}
        (version,) = next(iter(await conn.execute_fetchall("SELECT version FROM schema_version")))

        # Fixed, the migration applies on the next start; applying again changes nothing.
        fixed = [migrations[0], Migration(2, "0002_b.sql", "CREATE TABLE b (x INTEGER);")]
        assert await apply_migrations(conn, fixed) == 2
        assert await apply_migrations(conn, fixed) == 2

    assert "a" in tables
    assert "b" not in tables
    assert version == 1


def test_split_statements_respects_strings_comments_and_triggers() -> None:
    sql = textwrap.dedent(
        """
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT ';');
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'a;b';
        END;
        INSERT INTO t VALUES ('no trailing semicolon')
        """
    )

    statements = split_statements(sql)

    assert len(statements) == 3
    assert statements[0].endswith("CREATE TABLE t (x TEXT DEFAULT ';');")
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")
    assert statements[2] == "INSERT INTO t VALUES ('no trailing semicolon')"


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
async def test_enqueued_message_survives_kill_9(tmp_path: Path) -> None:
    """The outbox row is on disk when enqueue returns, even if the process dies right after."""
    path = tmp_path / "relay.db"
    child = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from storage import ThreadKey
        from storage.base import NewMessage
        from storage.sqlite import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r})
            await store.init()
            thread = ThreadKey("T1", "C1", "1700000000.000100")
            new = NewMessage(thread, "1700000001.000000", "", "1700000001.000000", "U2", "hi", "[]",
                             "devin", "sess-1", 1.0)
            assert await store.enqueue(new) is not None
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}
    )
    assert await proc.wait() == -signal.SIGKILL

    store = SQLiteStore(path)
    await store.init()
    try:
        row = await store.get_message(THREAD, "1700000001.000000")
    finally:
        await store.close()
    assert row is not None
    assert (row.state, row.text) == (MessageState.PENDING, "hi")
