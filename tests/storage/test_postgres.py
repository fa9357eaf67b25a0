"""PostgreSQL-specific behaviour: wake-ups across replicas, the LISTEN connection coming back,
migrations under an advisory lock, the database's one-in-flight rule, health checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from storage import MessageState, StoreError, ThreadKey
from storage.base import NewFeedback, NewMessage
from storage.migrations import Migration, load_migrations
from storage.postgres import PostgresStore, apply_migrations
from tests.pg import PgServer

THREAD = ThreadKey("T1", "C1", "1700000000.000100")
TIMEOUT = 10.0  # bound on every wait for something the server does on its own
POLL = 0.02


def new_message(ts: str, thread: ThreadKey = THREAD) -> NewMessage:
    return NewMessage(thread, ts, "", ts, "U2", "hi", "[]", "devin", "sess-1", 1.0)


class Stores:
    def __init__(self, url: str) -> None:
        self.url = url
        self._opened: list[PostgresStore] = []

    async def open(self) -> PostgresStore:
        store = PostgresStore(self.url)
        self._opened.append(store)
        await store.init()
        return store

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[Stores]:
    opened = Stores(pg_url)
    yield opened
    await opened.close_all()


class Wakes:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self._event = asyncio.Event()

    def __call__(self, kind: str) -> None:
        self.seen.append(kind)
        self._event.set()

    async def wait_for(self, kind: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            while kind not in self.seen:
                self._event.clear()
                await self._event.wait()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll the server until ``check`` is true, for at most TIMEOUT seconds."""
    for _ in range(int(TIMEOUT / POLL)):
        if await check():
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"still not {what} after {TIMEOUT}s")


async def _listeners(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        )
    finally:
        await conn.close()


async def test_a_replica_is_woken_by_anothers_work(stores: Stores) -> None:
    a, b = await stores.open(), await stores.open()
    wakes = Wakes()
    b.add_wake_listener(wakes)

    assert await a.enqueue(new_message("1700000001.000000")) is not None
    await wakes.wait_for("messages")
    assert await a.enqueue_feedback([NewFeedback(channel="C1", kind="post", payload={"n": 1})]) == 1
    await wakes.wait_for("feedback")

    wakes.seen.clear()
    (claim,) = await a.claim_due("a", limit=5, lease=30.0)
    assert await a.complete(claim.message.id, "a", MessageState.DELIVERED, "delivered", None)
    await wakes.wait_for("messages")

    # A fenced change that stores feedback notifies both kinds from its one statement.
    assert await a.enqueue(new_message("1700000002.000000")) is not None
    (claim,) = await a.claim_due("a", limit=5, lease=30.0)
    wakes.seen.clear()
    told = [NewFeedback(channel="C2", kind="post", payload={"n": 2})]
    assert await a.retry_later(claim.message.id, "a", 0.0, "timeout", None, feedback=told)
    await wakes.wait_for("messages")
    await wakes.wait_for("feedback")
    (item, *_) = await a.claim_feedback("f", limit=5, lease=30.0)
    wakes.seen.clear()
    assert await a.feedback_done(item.id, "f")
    await wakes.wait_for("feedback")


async def test_the_listen_connection_comes_back_after_it_was_killed(stores: Stores) -> None:
    a, b = await stores.open(), await stores.open()
    wakes = Wakes()
    b.add_wake_listener(wakes)
    assert await _listeners(stores.url) == 2

    admin = await asyncpg.connect(stores.url)
    try:
        killed = await admin.fetchval(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    finally:
        await admin.close()
    assert killed == 2
    await wakes.wait_for("messages")  # reconnected: told to look for whatever it missed

    async def both_listening() -> bool:
        return await _listeners(stores.url) == 2

    await until(both_listening, "listening again")

    wakes.seen.clear()
    assert await a.enqueue(new_message("1700000001.000000")) is not None
    await wakes.wait_for("messages")  # a NOTIFY of a's reached b's new connection


async def test_replicas_starting_together_migrate_once(stores: Stores) -> None:
    replicas = [PostgresStore(stores.url) for _ in range(4)]
    try:
        await asyncio.gather(*(replica.init() for replica in replicas))
        versions = {await replica.schema_version() for replica in replicas}
    finally:
        for replica in replicas:
            await replica.close()

    assert versions == {len(load_migrations("postgres"))}


async def test_a_newer_schema_is_refused(stores: Stores) -> None:
    store = await stores.open()
    await store.close()
    conn = await asyncpg.connect(stores.url)
    try:
        await conn.execute("UPDATE schema_version SET version = 99")
    finally:
        await conn.close()

    with pytest.raises(StoreError, match="newer"):
        await stores.open()


async def test_a_failed_migration_leaves_the_previous_schema(pg_url: str) -> None:
    migrations = [
        Migration(1, "0001_a.sql", "CREATE TABLE a (x integer);"),
        Migration(2, "0002_b.sql", "CREATE TABLE b (x integer);\nINSERT INTO nowhere VALUES (1);"),
    ]
    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(StoreError, match=r"0002_b\.sql"):
            await apply_migrations(conn, migrations)
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        version = await conn.fetchval("SELECT version FROM schema_version")

        fixed = [migrations[0], Migration(2, "0002_b.sql", "CREATE TABLE b (x integer);")]
        assert await apply_migrations(conn, fixed) == 2
        assert await apply_migrations(conn, fixed) == 2
        # The advisory lock was given back each time.
        assert await conn.fetchval("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await conn.close()

    assert "a" in tables
    assert "b" not in tables
    assert version == 1


async def test_the_database_allows_one_message_in_flight_per_thread(stores: Stores) -> None:
    store = await stores.open()
    first = await store.enqueue(new_message("1700000001.000000"))
    second = await store.enqueue(new_message("1700000002.000000"))
    await store.enqueue_feedback([NewFeedback(channel="C1", kind="post", payload={}) for _ in range(2)])
    assert first is not None
    assert second is not None
    conn = await asyncpg.connect(stores.url)
    try:
        await conn.execute("UPDATE messages SET state = 'sending' WHERE id = $1", first.id)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE messages SET state = 'sending' WHERE id = $1", second.id)
        await conn.execute("UPDATE feedback SET state = 'sending' WHERE id = 1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE feedback SET state = 'sending' WHERE id = 2")
    finally:
        await conn.close()


async def test_a_message_left_sending_without_a_lease_is_claimable(stores: Stores) -> None:
    """No code of this version leaves a sending row without a lease (the unleased relay did): such a
    row is taken over at once (attempts + 1), never stuck, and nothing behind it goes first."""
    store = await stores.open()
    stuck = await store.enqueue(new_message("1700000001.000000"))
    behind = await store.enqueue(new_message("1700000002.000000"))
    assert stuck is not None
    assert behind is not None
    conn = await asyncpg.connect(stores.url)
    try:
        await conn.execute("UPDATE messages SET state = 'sending', attempts = 1 WHERE id = $1", stuck.id)
    finally:
        await conn.close()

    (claim,) = await store.claim_due("w1", limit=5, lease=30.0)

    assert (claim.message.id, claim.message.attempts, claim.owner) == (stuck.id, 2, "w1")
    assert await store.claim_due("w2", limit=5, lease=30.0) == []


_RIVAL_SENDING_ROW = (
    'INSERT INTO messages (team, channel, thread_ts, ts, order_ts, order_key, "user", text,'
    " provider, session_id, state, received_at, updated_at, due_at, lease_owner, lease_expires)"
    " VALUES ($1, $2, $3, '1700000001.000000', '1700000001.000000', 1700000001000000, 'U2', 'hi',"
    " 'devin', 's', 'sending', 1, 1, 1, 'rival', relay_now() + 60)"
)


async def _claim_waits(conn: asyncpg.Connection[asyncpg.Record]) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT COUNT(*) > 0 FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


async def _heads(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT ts, state FROM messages WHERE head ORDER BY id")
    finally:
        await conn.close()
    return [(row["ts"], row["state"]) for row in rows]


async def test_a_claim_skips_a_thread_whose_head_another_transaction_is_moving(stores: Stores) -> None:
    """Another transaction puts a row of the thread in flight that the claim's snapshot cannot see:
    its trigger took the head marker from the pending head (and holds that row), so the claim skips
    the thread at once instead of waiting, and after the commit the new row is the head."""
    store = await stores.open()
    head = await store.enqueue(new_message("1700000002.000000"))
    assert head is not None
    rival = await asyncpg.connect(stores.url)
    try:
        tx = rival.transaction()
        await tx.start()
        await rival.execute(_RIVAL_SENDING_ROW, THREAD.team, THREAD.channel, THREAD.thread_ts)
        async with asyncio.timeout(TIMEOUT):
            claims = await store.claim_due("w1", limit=5, lease=30.0)
        await tx.commit()
    finally:
        await rival.close()

    assert claims == []
    assert await _heads(stores.url) == [("1700000001.000000", "sending")]
    assert await store.claim_due("w1", limit=5, lease=30.0) == []  # the rival's lease holds
    row = await store.get_message(THREAD, head.ts)
    assert row is not None
    assert (row.state, row.attempts) == (MessageState.PENDING, 0)


async def test_a_claim_that_meets_a_concurrent_one_claims_nothing_and_raises_nothing(stores: Stores) -> None:
    """The one-in-flight index is the last line, should a row ever go in flight past the head
    markers (here a rival with its triggers switched off, which takes a superuser): the claim's
    update waits for it on the index, then fails there; the store tries again, runs into it again,
    and returns no claim instead of an error."""
    store = await stores.open()
    head = await store.enqueue(new_message("1700000002.000000"))
    assert head is not None
    rival = await asyncpg.connect(stores.url)
    try:
        if not await rival.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("switching triggers off for one session takes a superuser")
        tx = rival.transaction()
        await tx.start()
        await rival.execute("SET LOCAL session_replication_role = replica")  # no triggers: no head moves
        await rival.execute(_RIVAL_SENDING_ROW, THREAD.team, THREAD.channel, THREAD.thread_ts)
        claiming = asyncio.create_task(store.claim_due("w1", limit=5, lease=30.0))

        await until(lambda: _claim_waits(rival), "waiting on the rival's row")
        assert not claiming.done()
        await tx.commit()
        async with asyncio.timeout(TIMEOUT):
            claims = await claiming
    finally:
        await rival.close()

    assert claims == []
    row = await store.get_message(THREAD, head.ts)
    assert row is not None
    assert (row.state, row.attempts) == (MessageState.PENDING, 0)


async def test_enqueues_into_one_thread_take_turns_on_its_head(stores: Stores) -> None:
    """A rival transaction stored the thread's first row (its head, uncommitted): an enqueue of an
    earlier message into the same thread waits for the thread's lock, then sees the rival's row and
    takes the head from it, instead of both becoming heads of a thread they each saw empty."""
    store = await stores.open()
    rival = await asyncpg.connect(stores.url)
    try:
        tx = rival.transaction()
        await tx.start()
        await rival.execute(
            'INSERT INTO messages (team, channel, thread_ts, ts, order_ts, order_key, "user", text,'
            " provider, session_id, state, received_at, updated_at, due_at)"
            " VALUES ($1, $2, $3, '1700000002.000000', '1700000002.000000', 1700000002000000, 'U2', 'hi',"
            " 'devin', 's', 'pending', 1, 1, 1)",
            THREAD.team,
            THREAD.channel,
            THREAD.thread_ts,
        )
        enqueuing = asyncio.create_task(store.enqueue(new_message("1700000001.000000")))
        await until(lambda: _claim_waits(rival), "waiting for the thread's lock")
        assert not enqueuing.done()
        await tx.commit()
        async with asyncio.timeout(TIMEOUT):
            stored = await enqueuing
    finally:
        await rival.close()

    assert stored is not None
    assert await _heads(stores.url) == [("1700000001.000000", "pending")]
    (claim,) = await store.claim_due("w1", limit=5, lease=30.0)
    assert claim.message.id == stored.id


async def test_the_database_allows_one_head_per_thread(stores: Stores) -> None:
    store = await stores.open()
    await store.enqueue(new_message("1700000001.000000"))
    second = await store.enqueue(new_message("1700000002.000000"))
    await store.enqueue_feedback([NewFeedback(channel="C1", kind="post", payload={}) for _ in range(2)])
    assert second is not None
    conn = await asyncpg.connect(stores.url)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE messages SET head = true WHERE id = $1", second.id)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE feedback SET head = true WHERE id = 2")
    finally:
        await conn.close()


async def test_the_head_migration_marks_the_open_rows_of_a_version_1_database(pg_url: str) -> None:
    """Rows stored before the head markers: each thread's sending row, else its first pending row,
    and each channel's sending item, else its oldest pending item, become heads."""
    first, heads = load_migrations("postgres")[:1], load_migrations("postgres")
    conn = await asyncpg.connect(pg_url)
    try:
        assert await apply_migrations(conn, first) == 1
        rows = [  # (thread_ts, ts, state)
            ("1.0", "1700000003.000000", "pending"),
            ("1.0", "1700000002.000000", "sending"),  # in flight: the head
            ("1.0", "1700000001.000000", "pending"),
            ("2.0", "1700000009.000000", "pending"),
            ("2.0", "1700000008.000000", "pending"),  # the first by ts
            ("2.0", "1700000007.000000", "delivered"),
            ("3.0", "1700000005.000000", "failed"),  # nothing open: no head
        ]
        for thread_ts, ts, state in rows:
            await conn.execute(
                'INSERT INTO messages (team, channel, thread_ts, ts, order_ts, order_key, "user", text,'
                " provider, session_id, state, received_at, updated_at, due_at)"
                " VALUES ('T1', 'C1', $1, $2, $2, $3, 'U2', 'hi', 'devin', 's', $4, 1, 1, 1)",
                thread_ts,
                ts,
                int(ts.replace(".", "")),
                state,
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
                " VALUES ($1, 'post', '{}', $2, 1, 1, 1)",
                channel,
                state,
            )

        assert await apply_migrations(conn, heads) == len(heads)
        marked = [
            (r["thread_ts"], r["ts"])
            for r in await conn.fetch("SELECT * FROM messages WHERE head ORDER BY id")
        ]
        items = [
            (r["channel"], r["id"]) for r in await conn.fetch("SELECT * FROM feedback WHERE head ORDER BY id")
        ]
    finally:
        await conn.close()

    assert marked == [("1.0", "1700000002.000000"), ("2.0", "1700000008.000000")]
    assert items == [("C1", 2), ("C2", 5)]


async def test_check_fails_once_the_database_is_gone(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    store = PostgresStore(url)
    try:
        await store.init()
        await store.check()
        assert store.lost is False

        pg_server.drop_database(url)

        with pytest.raises(StoreError) as caught:
            await store.check()
        assert store.lost is False  # a server can come back; the engine decides what to do
    finally:
        await store.close()
    assert "PostgreSQL" in str(caught.value)


async def test_close_is_harmless_twice_and_refuses_work(stores: Stores) -> None:
    store = await stores.open()
    await store.close()
    await store.close()

    with pytest.raises(StoreError, match="init"):
        await store.check()
    with pytest.raises(StoreError, match="init"):
        await store.claim_due("w1", limit=1, lease=1.0)
