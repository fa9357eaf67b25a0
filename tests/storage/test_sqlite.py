"""SQLite-specific behaviour: files on disk, pragmas, migrations, ts ordering keys, kill -9, round
trips to aiosqlite's worker thread, the clock read after the write lock, processes sharing a file."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import pytest

from storage import Binding, MessageState, StoreError, ThreadKey
from storage.base import NewFeedback, NewMessage, order_key
from storage.migrations import Migration, apply_migrations, load_migrations, split_statements
from storage.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
THREAD = ThreadKey("T1", "C1", "1700000000.000100")
T = TypeVar("T")


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

    assert {"bindings", "messages", "claims", "feedback", "leases", "schema_version"} <= tables
    assert {"order_ts", "order_key", "revision", "files", "attempts"} <= columns
    assert {"due_at", "first_attempt_at", "lease_owner", "lease_expires"} <= columns
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


def _v1_database(path: Path) -> None:
    """A database as the first release left it: schema version 1 with open rows, two of one thread
    left ``sending``."""
    with _raw(path) as conn:
        conn.executescript(load_migrations("sqlite")[0].sql)
        conn.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER)")
        conn.execute("INSERT INTO schema_version VALUES (1, 1)")
        for n, (state, received_at) in enumerate(
            [("sending", 10.0), ("sending", 11.0), ("pending", 12.0), ("delivered", 13.0)]
        ):
            ts = f"1700000001.00000{n}"
            conn.execute(
                "INSERT INTO messages (team, channel, thread_ts, ts, revision, order_ts, order_key, user,"
                " text, files, provider, session_id, state, attempts, received_at, updated_at)"
                " VALUES ('T1', 'C1', '1700000000.000100', ?, '', ?, ?, 'U2', 'hi', '[]', 'devin', 's',"
                " ?, 1, ?, ?)",
                (ts, ts, order_key(ts), state, received_at, received_at),
            )
        conn.commit()


async def test_upgrade_from_version_1_keeps_one_message_in_flight_per_thread(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    _v1_database(path)

    store = SQLiteStore(path)
    await store.init()
    try:
        assert await store.schema_version() == len(load_migrations("sqlite"))
        states = [
            (row.ts[-1], row.state)
            for row in [await store.get_message(THREAD, f"1700000001.00000{n}") for n in range(4)]
            if row is not None
        ]
        with _raw(path) as conn:
            heads = [row[0] for row in conn.execute("SELECT ts FROM messages WHERE head = 1 ORDER BY id")]
        claims = await store.claim_due("w1", limit=10, lease=30.0)
    finally:
        await store.close()
    with _raw(path) as conn:
        due = [row[0] for row in conn.execute("SELECT due_at FROM messages ORDER BY id")]

    assert states == [
        ("0", MessageState.SENDING),
        ("1", MessageState.PENDING),
        ("2", MessageState.PENDING),
        ("3", MessageState.DELIVERED),
    ]
    assert due == [10.0, 11.0, 12.0, 13.0]  # due since they were received
    assert heads == ["1700000001.000000"]  # the row kept in flight is the thread's head
    assert [(c.message.ts, c.message.attempts) for c in claims] == [("1700000001.000000", 2)]


async def test_the_head_migration_marks_the_open_rows_of_a_version_2_database(tmp_path: Path) -> None:
    """Rows stored before the head markers: each thread's sending row, else its first pending row
    by (order_key, id), and each channel's sending item, else its oldest pending item, become heads."""
    path = tmp_path / "relay.db"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.create_function("relay_now", 0, time.time)
        assert await apply_migrations(conn, load_migrations("sqlite")[:2]) == 2
        rows = [  # (thread_ts, ts, order_key, state)
            ("1.0", "1700000003.000000", 3, "pending"),
            ("1.0", "1700000002.000000", 2, "sending"),  # in flight: the head
            ("1.0", "1700000001.000000", 1, "pending"),
            ("2.0", "1700000009.000000", 8, "pending"),
            ("2.0", "1700000008.000000", 8, "pending"),  # order_key tie: the first id
            ("2.0", "1700000007.000000", 7, "delivered"),
            ("3.0", "1700000005.000000", 5, "failed"),  # nothing open: no head
        ]
        for thread_ts, ts, key, state in rows:
            await conn.execute(
                "INSERT INTO messages (team, channel, thread_ts, ts, order_ts, order_key, user, text,"
                " provider, session_id, state, received_at, updated_at, due_at)"
                " VALUES ('T1', 'C1', ?, ?, ?, ?, 'U2', 'hi', 'devin', 's', ?, 1, 1, 1)",
                (thread_ts, ts, ts, key, state),
            )
        for channel, state in [
            ("C1", "done"),
            ("C1", "pending"),
            ("C1", "pending"),
            ("C2", "pending"),
            ("C2", "sending"),
        ]:
            await conn.execute(
                "INSERT INTO feedback (channel, kind, payload, state, due_at, created_at, updated_at)"
                " VALUES (?, 'post', '{}', ?, 1, 1, 1)",
                (channel, state),
            )

        assert await apply_migrations(conn) == len(load_migrations("sqlite"))
        marked = list(
            await conn.execute_fetchall("SELECT thread_ts, ts FROM messages WHERE head = 1 ORDER BY id")
        )
        items = list(
            await conn.execute_fetchall("SELECT channel, id FROM feedback WHERE head = 1 ORDER BY id")
        )

    assert [tuple(row) for row in marked] == [("1.0", "1700000002.000000"), ("2.0", "1700000009.000000")]
    assert [tuple(row) for row in items] == [("C1", 2), ("C2", 5)]


async def test_the_database_allows_one_message_in_flight_per_thread(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.init()
    await store.close()
    with _raw(path) as conn:
        for ts in ["1700000001.000000", "1700000002.000000"]:
            conn.execute(
                "INSERT INTO messages (team, channel, thread_ts, ts, order_ts, order_key, user, text,"
                " provider, session_id, state, received_at, updated_at, due_at)"
                " VALUES ('T1', 'C1', '1.0', ?, ?, 0, 'U', 'x', 'devin', 's', 'pending', 0, 0, 0)",
                (ts, ts),
            )
        conn.execute("UPDATE messages SET state = 'sending' WHERE ts = '1700000001.000000'")
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("UPDATE messages SET state = 'sending' WHERE ts = '1700000002.000000'")
        for _ in range(2):
            conn.execute(
                "INSERT INTO feedback (channel, kind, payload, state, due_at, created_at, updated_at)"
                " VALUES ('C1', 'post', '{}', 'pending', 0, 0, 0)"
            )
        conn.execute("UPDATE feedback SET state = 'sending' WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("UPDATE feedback SET state = 'sending' WHERE id = 2")
        # One head per thread and per channel, too.
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("UPDATE messages SET head = 1 WHERE ts = '1700000002.000000'")
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("UPDATE feedback SET head = 1 WHERE id = 2")


# -- health ------------------------------------------------------------------------------------------


async def test_check_passes_on_a_healthy_file_and_in_memory(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.check()
    assert sqlite_store.lost is False

    memory = SQLiteStore(":memory:")
    await memory.init()
    try:
        await memory.check()
        assert memory.lost is False
    finally:
        await memory.close()


async def test_check_finds_a_deleted_database(tmp_path: Path, sqlite_store: SQLiteStore) -> None:
    (tmp_path / "relay.db").unlink()

    with pytest.raises(StoreError, match="deleted or replaced"):
        await sqlite_store.check()
    assert sqlite_store.lost is True
    # A new file at the same place is not the database this process has open.
    other = SQLiteStore(tmp_path / "relay.db")
    await other.init()
    await other.close()
    with pytest.raises(StoreError, match="deleted or replaced"):
        await sqlite_store.check()
    assert sqlite_store.lost is True


async def test_check_finds_a_replaced_database(tmp_path: Path, sqlite_store: SQLiteStore) -> None:
    replacement = tmp_path / "other.db"
    other = SQLiteStore(replacement)
    await other.init()
    await other.close()
    replacement.replace(tmp_path / "relay.db")

    with pytest.raises(StoreError, match="deleted or replaced"):
        await sqlite_store.check()
    assert sqlite_store.lost is True


async def test_check_finds_a_database_it_cannot_write(sqlite_store: SQLiteStore) -> None:
    conn = sqlite_store._conn
    assert conn is not None
    await conn.execute("PRAGMA query_only = ON")  # as a read-only file or full disk would

    with pytest.raises(StoreError, match=r"readonly|read-only|query_only"):
        await sqlite_store.check()
    assert sqlite_store.lost is False  # not gone: it may recover

    await conn.execute("PRAGMA query_only = OFF")
    await sqlite_store.check()


async def test_check_on_a_closed_store_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    await store.init()
    await store.close()

    with pytest.raises(StoreError, match="init"):
        await store.check()


async def test_wake_listeners_run_right_after_the_commit(sqlite_store: SQLiteStore) -> None:
    seen: list[tuple[str, int]] = []

    def record(kind: str) -> None:
        seen.append((kind, len(seen)))

    sqlite_store.add_wake_listener(record)
    thread = ThreadKey("T1", "C1", "1.0")
    new = NewMessage(thread, "1.1", "", "1.1", "U2", "hi", "[]", "devin", "s", 1.0)

    assert await sqlite_store.enqueue(new) is not None
    assert seen == [("messages", 0)]  # already called when enqueue returns
    assert await sqlite_store.enqueue(new) is None
    assert await sqlite_store.enqueue_feedback([NewFeedback(channel="C1", kind="post", payload={})]) == 1
    assert await sqlite_store.claim_due("w1", limit=1, lease=30.0) != []
    assert seen == [("messages", 0), ("feedback", 1)]  # nothing for a duplicate or a claim


# -- round trips to aiosqlite's worker thread ------------------------------------------------------


class RoundTrips:
    """Counts the calls a store makes to its aiosqlite worker thread (each one a round trip)."""

    def __init__(self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        conn = store._conn
        assert conn is not None
        self.count = 0
        run: Callable[..., Awaitable[Any]] = conn._execute  # aiosqlite's hand-off to its thread

        async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await run(fn, *args, **kwargs)

        monkeypatch.setattr(conn, "_execute", counting)

    async def of(self, operation: Awaitable[T]) -> tuple[T, int]:
        before = self.count
        result = await operation
        return result, self.count - before


async def test_a_relayed_message_costs_few_round_trips(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: every round trip is a hand-off to the worker thread and back. A single
    statement needs no BEGIN/COMMIT, a write no second SELECT, feedback one INSERT."""
    thread = ThreadKey("T1", "C1", "1.0")
    await sqlite_store.bind(Binding(thread, "devin", "s", "U1", 1.0))
    told = [
        NewFeedback(channel="C1", kind="reaction_remove", payload={"name": "hourglass"}, team="T1"),
        NewFeedback(channel="C1", kind="reaction_add", payload={"name": "white_check_mark"}, team="T1"),
    ]
    trips = RoundTrips(sqlite_store, monkeypatch)
    new = NewMessage(thread, "1.1", "", "1.1", "U2", "hi", "[]", "devin", "s", 1.0)
    costs: dict[str, int] = {}

    _, costs["get_binding"] = await trips.of(sqlite_store.get_binding(thread))
    row, costs["enqueue"] = await trips.of(sqlite_store.enqueue(new))
    claims, costs["claim_due"] = await trips.of(sqlite_store.claim_due("w1", limit=8, lease=30.0))
    (claim,) = claims
    _, costs["renew"] = await trips.of(sqlite_store.renew(claim.message.id, "w1", 30.0))
    done, costs["complete with 2 feedback items"] = await trips.of(
        sqlite_store.complete(
            claim.message.id, "w1", MessageState.DELIVERED, "delivered", None, feedback=told
        )
    )
    items, costs["claim_feedback"] = await trips.of(sqlite_store.claim_feedback("f1", limit=8, lease=30.0))
    (item,) = items
    ok, costs["feedback_done"] = await trips.of(sqlite_store.feedback_done(item.id, "f1"))
    late, costs["complete fenced off"] = await trips.of(
        sqlite_store.complete(claim.message.id, "w1", MessageState.DELIVERED, "delivered", None)
    )
    _, costs["next_due_in"] = await trips.of(sqlite_store.next_due_in())
    _, costs["next_feedback_due_in"] = await trips.of(sqlite_store.next_feedback_due_in())

    assert row is not None
    assert (done, ok, late) == (True, True, False)
    assert costs == {
        "get_binding": 1,
        "enqueue": 1,
        "claim_due": 1,
        "renew": 1,
        "complete with 2 feedback items": 1,  # BEGIN IMMEDIATE, UPDATE, INSERT, COMMIT: one trip
        "claim_feedback": 1,
        "feedback_done": 1,
        "complete fenced off": 1,
        "next_due_in": 1,
        "next_feedback_due_in": 1,
    }


async def test_an_outcome_and_its_feedback_commit_together_or_not_at_all(sqlite_store: SQLiteStore) -> None:
    """The one-trip transaction: a statement failing after the fenced update takes the update back
    with it, raises StoreError, and leaves no transaction open on the connection."""
    new = NewMessage(THREAD, "1.1", "", "1.1", "U2", "hi", "[]", "devin", "s", 1.0)
    await sqlite_store.bind(Binding(THREAD, "devin", "s", "U1", 1.0))
    assert await sqlite_store.enqueue(new) is not None
    (claim,) = await sqlite_store.claim_due("w1", limit=1, lease=30.0)
    told = [NewFeedback(channel="C1", kind="reaction_add", payload={"name": "white_check_mark"}, team="T1")]
    conn = sqlite_store._conn
    assert conn is not None
    await conn.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON feedback BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )

    with pytest.raises(StoreError, match="refused"):
        await sqlite_store.complete(
            claim.message.id, "w1", MessageState.DELIVERED, "delivered", None, feedback=told
        )

    assert not conn.in_transaction
    kept = await sqlite_store.get_message(THREAD, "1.1")
    assert kept is not None
    assert kept.state is MessageState.SENDING
    assert await sqlite_store.feedback_depth() == 0
    await conn.execute("DROP TRIGGER refuse")
    assert await sqlite_store.complete(
        claim.message.id, "w1", MessageState.DELIVERED, "delivered", None, feedback=told
    )
    done = await sqlite_store.get_message(THREAD, "1.1")
    assert done is not None
    assert done.state is MessageState.DELIVERED
    assert await sqlite_store.feedback_depth() == 1


async def test_feedback_items_are_stored_in_order_by_one_insert_per_hundred(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [NewFeedback(channel="C1", kind="post", payload={"n": n}, team="T1") for n in range(250)]
    items.insert(1, NewFeedback(channel="C1", kind="post", payload={"n": "dup"}, team="T1", dedupe_key="k"))
    items.insert(120, NewFeedback(channel="C1", kind="post", payload={"n": "dup"}, team="T1", dedupe_key="k"))
    trips = RoundTrips(sqlite_store, monkeypatch)

    added, cost = await trips.of(sqlite_store.enqueue_feedback(items))

    assert added == 251
    assert cost == 1  # more than 100 items: BEGIN IMMEDIATE, 3 INSERTs, COMMIT, in one trip
    seen: list[object] = []
    while claimed := await sqlite_store.claim_feedback("f1", limit=8, lease=30.0):
        (item,) = claimed
        seen.append(item.payload["n"])
        assert await sqlite_store.feedback_done(item.id, "f1")
    assert seen == [0, "dup", *range(1, 250)]


async def test_a_claim_reads_the_clock_after_waiting_for_the_write_lock(tmp_path: Path) -> None:
    """Another connection holds the write lock for a while: the claim waits for it (busy_timeout)
    and its time, lease and first attempt are those of the moment it got the lock, not earlier."""
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.init()
    try:
        assert await store.enqueue(NewMessage(THREAD, "1.1", "", "1.1", "U2", "hi", "[]", "devin", "s", 1.0))
        with _raw(path) as rival:
            rival.isolation_level = None
            rival.execute("BEGIN IMMEDIATE")
            claiming = asyncio.create_task(store.claim_due("w1", limit=5, lease=30.0))
            await asyncio.sleep(0.3)
            assert not claiming.done()
            released_at = time.time()
            rival.execute("COMMIT")
        (claim,) = await asyncio.wait_for(claiming, 10)
    finally:
        await store.close()

    assert claim.now >= released_at
    assert claim.first_attempt_at == claim.now
    assert claim.lease_expires == pytest.approx(claim.now + 30.0)


async def _vm_steps_per_operation(path: Path, backlog: int) -> dict[str, int]:
    """SQLite virtual machine instructions (the progress handler, called at every one) of each kind
    of change to a thread with ``backlog`` pending messages."""
    store = SQLiteStore(path)
    await store.init()
    try:
        for n in range(backlog):
            ts = f"{1700000100 + n}.000000"
            assert await store.enqueue(NewMessage(THREAD, ts, "", ts, "U2", "hi", "[]", "devin", "s", 1.0))
        conn = store._conn
        assert conn is not None
        steps = 0

        def step() -> int:
            nonlocal steps
            steps += 1
            return 0  # go on

        await conn.set_progress_handler(step, 1)
        costs: dict[str, int] = {}

        async def measured(name: str, operation: Awaitable[T]) -> T:
            before = steps
            result = await operation
            costs[name] = steps - before
            return result

        (claim,) = await measured("claim_due", store.claim_due("w1", limit=32, lease=30.0))
        late = NewMessage(
            THREAD, "1700000000.500000", "", "1700000000.500000", "U2", "hi", "[]", "devin", "s", 1.0
        )
        await measured("enqueue behind the head in flight", store.enqueue(late))
        assert await measured(
            "complete", store.complete(claim.message.id, "w1", MessageState.DELIVERED, "delivered", None)
        )
        (claim,) = await measured("claim_due again", store.claim_due("w1", limit=32, lease=30.0))
        assert claim.message.ts == late.ts
        assert await measured("retry_later", store.retry_later(claim.message.id, "w1", 0.0, "timeout", None))
        earlier = replace(late, ts="1700000000.100000", order_ts="1700000000.100000")
        await measured("enqueue before the pending head", store.enqueue(earlier))
        assert await measured("drop_pending of the head", store.drop_pending(THREAD, earlier.ts)) is not None
        (claim,) = await store.claim_due("w1", limit=32, lease=30.0)
        assert await measured("release", store.release(claim.message.id, "w1"))
        return costs
    finally:
        await store.close()


async def test_changes_to_a_thread_cost_the_same_however_deep_its_backlog(tmp_path: Path) -> None:
    """A claim reads the heads only, and every change touches the old and the new head by indexed
    lookups: 20 or 2,000 messages waiting in the thread make no difference beyond a B-tree level
    (a claim that probed every pending row for an earlier one cost ~100 times as much at 2,000)."""
    shallow = await _vm_steps_per_operation(tmp_path / "shallow.db", 20)
    deep = await _vm_steps_per_operation(tmp_path / "deep.db", 2000)

    assert deep.keys() == shallow.keys()
    for operation, steps in shallow.items():
        assert deep[operation] <= steps * 1.5 + 20, (operation, steps, deep[operation])


# -- several processes on one file ----------------------------------------------------------------

_CLAIM_LOOP = textwrap.dedent(
    """
    import asyncio, json, random, sys, time
    from storage import MessageState
    from storage.sqlite import SQLiteStore

    async def main(path, owner):
        store = SQLiteStore(path)
        await store.init()
        rng = random.Random(owner)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            claims = await store.claim_due(owner, limit=2, lease=30.0)
            if not claims:
                counts = await store.count_messages()
                if counts[MessageState.PENDING] + counts[MessageState.SENDING] == 0:
                    break
                await asyncio.sleep(0.002)
                continue
            for claim in claims:
                await asyncio.sleep(rng.random() * 0.002)
                end = time.time()
                ok = await store.complete(claim.message.id, owner, MessageState.DELIVERED, "delivered", None)
                print(json.dumps({
                    "id": claim.message.id, "thread": claim.message.thread.thread_ts,
                    "order_ts": claim.message.order_ts, "start": claim.now, "end": end, "ok": ok,
                }), flush=True)
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def _python(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE
    )


async def test_processes_sharing_a_file_send_each_message_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.init()
    rng = random.Random(5)
    expected: dict[str, list[str]] = {}
    for n in range(10):
        thread = ThreadKey("T1", "C1", f"1700000{n:03d}.000000")
        stamps = [f"{1700001000 + n * 100}.{m:06d}" for m in range(10)]
        expected[thread.thread_ts] = stamps
        for ts in rng.sample(stamps, len(stamps)):
            assert await store.enqueue(NewMessage(thread, ts, "", ts, "U2", "hi", "[]", "devin", "s", 1.0))
    await store.close()

    children = [await _python("-c", _CLAIM_LOOP, str(path), f"proc-{n}") for n in range(3)]
    async with asyncio.timeout(90):
        outputs = [(await child.communicate())[0] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0]

    events = [json.loads(line) for out in outputs for line in out.decode().splitlines()]
    assert all(event["ok"] for event in events)
    assert sorted(event["id"] for event in events) == list(range(1, 101))
    assert sum(1 for out in outputs if out.strip()) >= 2  # the processes really did share the work
    for thread_ts, stamps in expected.items():
        attempts = sorted((e for e in events if e["thread"] == thread_ts), key=lambda e: e["start"])
        assert [e["order_ts"] for e in attempts] == stamps
        for before, after in itertools.pairwise(attempts):
            assert before["end"] <= after["start"], f"two messages of {thread_ts} in flight at once"


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
async def test_a_killed_process_leaves_its_claim_to_another_once_the_lease_expires(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.init()
    new = NewMessage(
        THREAD, "1700000001.000000", "", "1700000001.000000", "U2", "hi", "[]", "devin", "s", 1.0
    )
    stored = await store.enqueue(new)
    assert stored is not None
    child = textwrap.dedent(
        f"""
        import asyncio, json, os, signal
        from storage.sqlite import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r})
            await store.init()
            (claim,) = await store.claim_due("doomed", limit=5, lease=1.0)
            print(json.dumps({{"id": claim.message.id, "lease_expires": claim.lease_expires}}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    try:
        proc = await _python("-c", child)
        out, _ = await proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        claimed = json.loads(out)
        assert claimed["id"] == stored.id

        if await store.now() < claimed["lease_expires"] - 0.2:
            assert await store.claim_due("heir", limit=5, lease=30.0) == []  # still the dead one's
        await asyncio.sleep(max(claimed["lease_expires"] - await store.now(), 0) + 0.05)
        (taken,) = await store.claim_due("heir", limit=5, lease=30.0)
    finally:
        await store.close()

    assert (taken.message.id, taken.message.attempts, taken.owner) == (stored.id, 2, "heir")
