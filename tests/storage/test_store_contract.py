"""Behaviour every :class:`storage.base.Store` backend must show, run against each backend.

Each backend is a parameter of the ``database_url`` fixture: a SQLite file in the test's folder, or
a fresh database on a real PostgreSQL server (see :mod:`tests.pg`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from storage import Binding, MessageState, OutboxMessage, Purged, Store, StoreError, ThreadKey, open_store
from storage.base import Claim, FeedbackItem, NewFeedback, NewMessage, order_key

BACKENDS = ["sqlite", "postgres"]

THREAD = ThreadKey("T1", "C1", "1700000000.000100")
OTHER_THREAD = ThreadKey("T1", "C1", "1700000500.000200")


class Opener:
    """Opens stores on one database (the same one every time) and closes them all at teardown."""

    def __init__(self, make: Callable[[], Store]) -> None:
        self._make = make
        self._opened: list[Store] = []

    async def open(self) -> Store:
        store = self._make()
        self._opened.append(store)
        await store.init()
        return store

    async def reopen(self, store: Store) -> Store:
        """Close ``store`` (as a restart would) and open the same database again."""
        await store.close()
        return await self.open()

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"  # tmp_path is absolute: sqlite:////tmp/...
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
async def opener(database_url: str) -> AsyncIterator[Opener]:
    opener = Opener(lambda: open_store(database_url))
    yield opener
    await opener.close_all()


@pytest.fixture
async def store(opener: Opener) -> Store:
    return await opener.open()


class Heads:
    """The head markers as committed, read on a connection of its own (the same SQL on each backend),
    and the invariant they keep: each thread (each ``(team, channel)`` of the feedback queue) with
    open rows has exactly one head, its ``sending`` row if it has one, else its first ``pending`` row
    by ``(order_key, id)`` (by ``id``); no other row is a head."""

    _MESSAGES = (
        "SELECT team, channel, thread_ts, id, state, order_key, CASE WHEN head THEN 1 ELSE 0 END"
        " FROM messages"
    )
    _FEEDBACK = "SELECT team, channel, id, state, CASE WHEN head THEN 1 ELSE 0 END FROM feedback"

    def __init__(self, url: str) -> None:
        self._url = url

    async def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self._url.startswith("sqlite:///"):
            path = self._url.removeprefix("sqlite:///")

            def read() -> list[tuple[Any, ...]]:
                with closing(sqlite3.connect(path)) as conn:
                    return [tuple(row) for row in conn.execute(sql)]

            return await asyncio.to_thread(read)
        import asyncpg  # noqa: PLC0415 - the postgres extra

        conn = await asyncpg.connect(self._url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    @staticmethod
    def _checked(rows: list[tuple[Any, tuple[Any, ...], str, int]]) -> dict[Any, int]:
        """``rows`` as ``(group, sort key, state, head)``: check the invariant, return each group's
        head (by the rows' ids, the last item of the sort key)."""
        rightful: dict[Any, tuple[int, tuple[Any, ...]]] = {}  # group -> (rank, sort key)
        for group, key, state, _ in rows:
            if state in ("pending", "sending"):
                candidate = (0 if state == "sending" else 1, key)
                if group not in rightful or candidate < rightful[group]:
                    rightful[group] = candidate
        marked: dict[Any, list[int]] = {}
        for group, key, _, head in rows:
            if head:
                marked.setdefault(group, []).append(int(key[-1]))
        expected = {group: [int(key[-1])] for group, (_, key) in rightful.items()}
        assert marked == expected, f"head markers {marked}, rightful heads {expected}"
        return {group: ids[0] for group, ids in marked.items()}

    async def messages(self) -> dict[ThreadKey, int]:
        """Check the messages' heads; return each thread's head id."""
        rows = await self._rows(self._MESSAGES)
        return self._checked(
            [
                (ThreadKey(team, channel, ts), (key, id_), state, head)
                for team, channel, ts, id_, state, key, head in rows
            ]
        )

    async def feedback(self) -> dict[tuple[str, str], int]:
        """Check the feedback queue's heads; return each ``(team, channel)``'s head id."""
        rows = await self._rows(self._FEEDBACK)
        return self._checked(
            [((team, channel), (id_,), state, head) for team, channel, id_, state, head in rows]
        )


@pytest.fixture
def heads(database_url: str) -> Heads:
    return Heads(database_url)


def binding(key: ThreadKey = THREAD, session_id: str = "sess-1", linked_at: float = 1000.0) -> Binding:
    return Binding(key=key, provider="devin", session_id=session_id, linked_by="U1", linked_at=linked_at)


def message(
    ts: str,
    *,
    thread: ThreadKey = THREAD,
    revision: str = "",
    order_ts: str | None = None,
    text: str = "hello",
    received_at: float = 2000.0,
) -> NewMessage:
    return NewMessage(
        thread=thread,
        ts=ts,
        revision=revision,
        order_ts=order_ts if order_ts is not None else (revision or ts),
        user="U2",
        text=text,
        files="[]",
        provider="devin",
        session_id="sess-1",
        received_at=received_at,
    )


async def enqueued(store: Store, new: NewMessage) -> OutboxMessage:
    stored = await store.enqueue(new)
    assert stored is not None, f"{new.ts} was already stored"
    return stored


async def drain(store: Store) -> list[tuple[str, str]]:
    """Claim and deliver messages as the relay workers do until none is due; return the ``(ts,
    revision)`` of each thread's messages in the order they were claimed (one thread here: one claim
    at a time)."""
    delivered: list[tuple[str, str]] = []
    while claims := await store.claim_due("drain", limit=10, lease=LEASE):
        assert len({claim.message.thread for claim in claims}) == len(claims)  # one per thread
        for claim in claims:
            row = claim.message
            assert await store.complete(row.id, "drain", MessageState.DELIVERED, "delivered", None)
            delivered.append((row.ts, row.revision))
    return delivered


# -- lifecycle -------------------------------------------------------------------------------------


async def test_migrations_are_applied_once_and_survive_a_restart(opener: Opener, store: Store) -> None:
    version = await store.schema_version()
    assert version >= 1
    await store.bind(binding())

    reopened = await opener.reopen(store)

    assert await reopened.schema_version() == version
    assert await reopened.get_binding(THREAD) == binding()


async def test_close_twice_is_harmless(store: Store) -> None:
    await store.bind(binding())
    await store.close()
    await store.close()
    # closed means closed: the store refuses work instead of reopening or hanging
    with pytest.raises(StoreError):
        await store.get_binding(THREAD)


async def test_pending_and_sending_messages_survive_a_restart(opener: Opener, store: Store) -> None:
    """Crash recovery: the row in flight when the process died is still sending after a restart, and
    once its lease expires it is taken over (attempt 2) before the pending row behind it."""
    first = await enqueued(store, message("1700000001.000000"))
    second = await enqueued(store, message("1700000002.000000"))
    crashed = await claim_one(store, "dead", lease=SHORT)  # the process dies during this attempt

    store = await opener.reopen(store)

    in_flight = await store.get_message(THREAD, first.ts)
    assert in_flight is not None
    assert (in_flight.state, in_flight.attempts) == (MessageState.SENDING, 1)
    still_pending = await store.get_message(THREAD, second.ts)
    assert still_pending is not None
    assert (still_pending.state, still_pending.attempts) == (MessageState.PENDING, 0)
    assert still_pending.text == "hello"
    if await store.now() < crashed.lease_expires - 0.2:  # the restart may take longer on a busy machine
        assert await store.claim_due("heir", limit=10, lease=LEASE) == []  # the dead one's lease holds
    await asyncio.sleep(max(crashed.lease_expires - await store.now(), 0) + 0.05)
    resumed = await claim_one(store, "heir")
    assert (resumed.message.id, resumed.message.attempts) == (first.id, 2)
    assert resumed.first_attempt_at == crashed.first_attempt_at


# -- bindings --------------------------------------------------------------------------------------


async def test_bind_keeps_the_existing_binding(store: Store) -> None:
    first = await store.bind(binding(session_id="sess-1"))
    second = await store.bind(binding(session_id="sess-2", linked_at=1001.0))

    assert first == binding(session_id="sess-1")
    assert second == first
    assert await store.get_binding(THREAD) == first


async def test_bind_stores_every_field(store: Store) -> None:
    full = Binding(
        key=THREAD,
        provider="agen",
        session_id="s-9",
        linked_by="U7",
        linked_at=1234.5,
        muted=True,
        anchor_ts="1700000000.000900",
    )
    assert await store.bind(full) == full
    assert await store.get_binding(THREAD) == full


async def test_unbind_returns_the_binding_once(store: Store) -> None:
    await store.bind(binding(session_id="sess-1"))

    assert await store.unbind(THREAD) == binding(session_id="sess-1")
    assert await store.unbind(THREAD) is None
    assert await store.get_binding(THREAD) is None
    # The thread can be bound to another session afterwards.
    assert (await store.bind(binding(session_id="sess-2"))).session_id == "sess-2"


async def test_set_muted(store: Store) -> None:
    await store.bind(binding())

    assert await store.set_muted(THREAD, True) is True
    muted = await store.get_binding(THREAD)
    assert muted is not None
    assert muted.muted is True
    assert await store.set_muted(THREAD, False) is True
    unmuted = await store.get_binding(THREAD)
    assert unmuted is not None
    assert unmuted.muted is False
    assert await store.set_muted(OTHER_THREAD, True) is False
    assert await store.get_binding(OTHER_THREAD) is None


async def test_list_bindings_of_one_channel_oldest_first(store: Store) -> None:
    for thread_ts, linked_at in [("3.0", 30.0), ("1.0", 10.0), ("2.0", 20.0)]:
        await store.bind(binding(ThreadKey("T1", "C1", thread_ts), linked_at=linked_at))
    await store.bind(binding(ThreadKey("T1", "C2", "0.5"), linked_at=5.0))
    await store.bind(binding(ThreadKey("T2", "C1", "0.6"), linked_at=6.0))

    listed = await store.list_bindings("T1", "C1")

    assert [b.key.thread_ts for b in listed] == ["1.0", "2.0", "3.0"]
    assert await store.list_bindings("T9", "C9") == []


# -- outbox ----------------------------------------------------------------------------------------


async def test_enqueue_returns_the_stored_pending_row(store: Store) -> None:
    new = message("1700000001.000100", text="*fix* the build", received_at=2001.5)

    stored = await enqueued(store, new)

    assert stored.thread == THREAD
    assert (stored.ts, stored.revision, stored.order_ts) == (new.ts, "", new.ts)
    assert (stored.user, stored.text, stored.files) == ("U2", "*fix* the build", "[]")
    assert (stored.provider, stored.session_id) == ("devin", "sess-1")
    assert (stored.state, stored.attempts, stored.outcome, stored.detail) == (
        MessageState.PENDING,
        0,
        None,
        None,
    )
    assert stored.received_at == 2001.5
    assert stored.updated_at > 0
    assert await store.get_message(THREAD, new.ts) == stored


async def test_enqueue_same_identity_stores_one_row(store: Store) -> None:
    new = message("1700000001.000100")

    results = [await store.enqueue(new) for _ in range(4)]

    assert results[0] is not None
    assert results[1:] == [None, None, None]
    assert sum((await store.count_messages()).values()) == 1


async def test_concurrent_enqueue_of_one_identity_stores_one_row(store: Store) -> None:
    new = message("1700000001.000100")

    results = await asyncio.gather(*(store.enqueue(new) for _ in range(4)))

    assert len([r for r in results if r is not None]) == 1
    assert sum((await store.count_messages()).values()) == 1


async def test_corrections_are_separate_rows(store: Store) -> None:
    original = await enqueued(store, message("1700000001.000100", text="v1"))
    edit_1 = await enqueued(store, message("1700000001.000100", revision="1700000009.000000", text="v2"))
    edit_2 = await enqueued(store, message("1700000001.000100", revision="1700000010.000000", text="v3"))

    assert len({original.id, edit_1.id, edit_2.id}) == 3
    assert len({original.client_id, edit_1.client_id, edit_2.client_id}) == 3
    fetched = await store.get_message(THREAD, "1700000001.000100", "1700000009.000000")
    assert fetched is not None
    assert fetched.text == "v2"
    assert fetched.order_ts == "1700000009.000000"
    assert await store.enqueue(message("1700000001.000100", revision="1700000009.000000")) is None
    assert await store.get_message(THREAD, "1700000001.000100", "1700000011.000000") is None


async def test_same_ts_in_another_channel_is_another_message(store: Store) -> None:
    elsewhere = ThreadKey("T1", "C2", THREAD.thread_ts)
    await enqueued(store, message("1700000001.000100"))

    assert await store.enqueue(message("1700000001.000100", thread=elsewhere)) is not None
    assert await store.get_message(elsewhere, "1700000001.000100") is not None


async def test_claims_follow_order_ts_numerically(store: Store) -> None:
    stamps = [f"1700000000.{n:06d}" for n in range(0, 3700, 100)]  # microsecond-level differences
    stamps += ["9000000000.000001", "9000000000.000002", "9000000000.000003"]  # beyond float precision
    stamps += ["1700000000.000101", "1700000000.000099", "1700000001.000000"]
    stamps += ["999999999.999999", "99999999.000001", "10000000000.000000"]  # 9, 8 and 11 digit seconds
    stamps += ["1699999999.999999", "1700000000.999999", "1700000099.000000", "1800000000.000001"]
    assert len(stamps) == len(set(stamps)) == 50
    shuffled = stamps[:]
    random.Random(7).shuffle(shuffled)
    for n, ts in enumerate(shuffled):
        await enqueued(store, message(ts, received_at=3000.0 + n))

    delivered = [ts for ts, _ in await drain(store)]

    seconds_micros = [(int(s), int(m)) for s, m in (ts.split(".") for ts in stamps)]
    assert delivered == [f"{s}.{m:06d}" for s, m in sorted(seconds_micros)]
    assert delivered[0] == "99999999.000001"
    assert delivered[-1] == "10000000000.000000"


async def test_claims_order_corrections_by_edit_ts(store: Store) -> None:
    await enqueued(store, message("1700000001.000000"))
    await enqueued(store, message("1700000001.000000", revision="1700000003.000000"))
    await enqueued(store, message("1700000002.000000"))

    assert await drain(store) == [
        ("1700000001.000000", ""),
        ("1700000002.000000", ""),
        ("1700000001.000000", "1700000003.000000"),
    ]


async def test_claims_break_order_ties_by_arrival(store: Store) -> None:
    for ts in ["1700000005.000000", "1700000004.000000", "1700000006.000000"]:
        await enqueued(store, message(ts, order_ts="1700000009.000000"))

    assert [ts for ts, _ in await drain(store)] == [
        "1700000005.000000",
        "1700000004.000000",
        "1700000006.000000",
    ]


async def test_final_rows_are_not_claimed_and_threads_do_not_wait_for_each_other(store: Store) -> None:
    done = await enqueued(store, message("1700000001.000000"))
    await claim_one(store)
    assert await store.complete(done.id, "w1", MessageState.SKIPPED, "unlinked", "binding removed")
    other = await enqueued(store, message("1700000000.000001", thread=OTHER_THREAD))

    claim = await claim_one(store, "w2")  # the final row is no candidate

    assert (claim.message.id, claim.message.thread) == (other.id, OTHER_THREAD)
    # The other thread's message in flight does not hold this thread's next message back.
    behind = await enqueued(store, message("1700000002.000000"))
    assert (await claim_one(store, "w3")).message.id == behind.id


async def test_attempt_cycle(store: Store) -> None:
    """claim -> retry_later -> claim -> complete: attempts counted, the last outcome recorded."""
    stored = await enqueued(store, message("1700000001.000000"))

    first = await claim_one(store)
    assert (first.message.state, first.message.attempts) == (MessageState.SENDING, 1)
    assert first.message.updated_at >= stored.updated_at

    assert await store.retry_later(stored.id, "w1", 0.0, "rate_limited", "retry in 30s")
    waiting = await store.get_message(THREAD, stored.ts)
    assert waiting is not None
    assert (waiting.state, waiting.attempts) == (MessageState.PENDING, 1)
    assert (waiting.outcome, waiting.detail) == ("rate_limited", "retry in 30s")

    second = await claim_one(store, "w2")
    assert (second.message.state, second.message.attempts) == (MessageState.SENDING, 2)

    assert await store.complete(stored.id, "w2", MessageState.DELIVERED, "delivered", None)
    done = await store.get_message(THREAD, stored.ts)
    assert done is not None
    assert (done.state, done.attempts, done.outcome, done.detail) == (
        MessageState.DELIVERED,
        2,
        "delivered",
        None,
    )


@pytest.mark.parametrize("final", [MessageState.DELIVERED, MessageState.FAILED, MessageState.SKIPPED])
async def test_final_messages_are_never_sent_again(store: Store, final: MessageState) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store)
    assert await store.complete(stored.id, "w1", final, "done", "reason")

    assert await store.claim_due("w2", limit=10, lease=LEASE) == []
    assert await store.retry_later(stored.id, "w1", 0.0, "timeout", None) is False
    assert await store.release(stored.id, "w1") is False
    assert await store.renew(stored.id, "w1", LEASE) is False
    other = MessageState.DELIVERED if final is MessageState.FAILED else MessageState.FAILED
    assert await store.complete(stored.id, "w1", other, "late", None) is False

    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.state, row.attempts, row.outcome, row.detail) == (final, 1, "done", "reason")
    assert await store.next_due_in() is None
    assert await store.claim_due("w2", limit=10, lease=LEASE) == []


async def test_replace_pending_text_only_while_pending(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000", text="tpyo"))
    files = '[{"name": "a.png", "permalink": "https://x/a.png"}]'

    assert await store.replace_pending_text(THREAD, stored.ts, "typo", files) is True
    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.text, row.files, row.state) == ("typo", files, MessageState.PENDING)

    await claim_one(store)
    assert await store.replace_pending_text(THREAD, stored.ts, "too late", "[]") is False
    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.text, row.files) == ("typo", files)


async def test_replace_pending_text_leaves_corrections_and_unknown_messages(store: Store) -> None:
    original = await enqueued(store, message("1700000001.000000", text="v1"))
    await claim_one(store)
    assert await store.complete(original.id, "w1", MessageState.DELIVERED, "delivered", None)
    await enqueued(store, message("1700000001.000000", revision="1700000002.000000", text="v2"))

    assert await store.replace_pending_text(THREAD, "1700000001.000000", "v3", "[]") is False
    correction = await store.get_message(THREAD, "1700000001.000000", "1700000002.000000")
    assert correction is not None
    assert correction.text == "v2"
    assert await store.replace_pending_text(THREAD, "1700000099.000000", "x", "[]") is False


async def test_last_message_is_the_most_recently_received(store: Store) -> None:
    assert await store.last_message(THREAD) is None
    await enqueued(store, message("1700000003.000000", received_at=100.0))
    latest = await enqueued(store, message("1700000001.000000", received_at=300.0))
    await enqueued(store, message("1700000002.000000", received_at=200.0))
    assert (await claim_one(store)).message.id == latest.id  # first by ts
    assert await store.complete(latest.id, "w1", MessageState.DELIVERED, "delivered", None)
    await enqueued(store, message("1700000004.000000", thread=OTHER_THREAD, received_at=900.0))

    last = await store.last_message(THREAD)

    assert last is not None
    assert (last.ts, last.state) == ("1700000001.000000", MessageState.DELIVERED)


async def test_last_message_ties_go_to_the_later_insert(store: Store) -> None:
    await enqueued(store, message("1700000001.000000", received_at=100.0))
    await enqueued(store, message("1700000002.000000", received_at=100.0))

    last = await store.last_message(THREAD)

    assert last is not None
    assert last.ts == "1700000002.000000"


async def test_count_messages_per_state(store: Store) -> None:
    assert await store.count_messages() == dict.fromkeys(MessageState, 0)
    delivered = await enqueued(store, message("1700000001.000000"))
    await claim_one(store)
    assert await store.complete(delivered.id, "w1", MessageState.DELIVERED, "delivered", None)
    sending = await enqueued(store, message("1700000002.000000"))
    assert (await claim_one(store)).message.id == sending.id
    await enqueued(store, message("1700000003.000000"))
    await enqueued(store, message("1700000004.000000"))
    await enqueued(store, message("1700000005.000000", thread=OTHER_THREAD))

    in_thread = await store.count_messages(THREAD)
    everywhere = await store.count_messages()

    assert in_thread == {
        MessageState.PENDING: 2,
        MessageState.SENDING: 1,
        MessageState.DELIVERED: 1,
        MessageState.FAILED: 0,
        MessageState.SKIPPED: 0,
    }
    assert everywhere[MessageState.PENDING] == 3
    assert sum(everywhere.values()) == 5
    assert await store.count_messages(ThreadKey("T9", "C9", "1.0")) == dict.fromkeys(MessageState, 0)


# -- claims ----------------------------------------------------------------------------------------


async def test_claim_once_even_after_a_restart(opener: Opener, store: Store) -> None:
    assert await store.claim("command", "C1:1700000001.000000") is True
    assert await store.claim("command", "C1:1700000001.000000") is False
    assert await store.claim("outsider-notice", "C1:1700000001.000000") is True
    assert await store.claim("command", "C1:1700000002.000000") is True

    store = await opener.reopen(store)

    assert await store.claim("command", "C1:1700000001.000000") is False


async def test_concurrent_claims_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.claim("command", "k") for _ in range(5)))

    assert sorted(results) == [False, False, False, False, True]


async def test_unclaim_lets_the_next_claim_win(opener: Opener, store: Store) -> None:
    assert await store.claim("mention", "T1:C1:1.0") is True
    await store.unclaim("mention", "T1:C1:1.0")
    await store.unclaim("mention", "never-claimed")  # harmless

    assert await store.claim("mention", "T1:C1:1.0") is True
    assert await store.claim("mention", "T1:C1:1.0") is False
    store = await opener.reopen(store)
    assert await store.claim("mention", "T1:C1:1.0") is False


# -- the database clock ----------------------------------------------------------------------------


async def test_now_is_the_database_clock_in_unix_seconds(store: Store) -> None:
    first = await store.now()
    second = await store.now()

    assert abs(first - time.time()) < 60  # the test server runs on this machine
    assert second >= first


# -- leased claims ---------------------------------------------------------------------------------

LEASE = 30.0  # long enough never to expire during a test that does not wait for it
SHORT = 0.5  # a lease or delay a test waits out (the checks before it expires must run within it)


def in_thread(n: int) -> ThreadKey:
    return ThreadKey("T1", "C1", f"1700000{n:03d}.000000")


async def claim_one(store: Store, owner: str = "w1", lease: float = LEASE) -> Claim:
    claims = await store.claim_due(owner, limit=10, lease=lease)
    assert len(claims) == 1, claims
    return claims[0]


async def wait_until_due(store: Store) -> None:
    """Sleep (on the database clock) until the earliest future pending message is due."""
    due_in = await store.next_due_in()
    assert due_in is not None
    await asyncio.sleep(due_in + 0.02)


async def test_claim_due_claims_the_first_message_of_each_thread_oldest_first(store: Store) -> None:
    # Enqueued one after another, so each is due a little after the one before.
    b1 = await enqueued(store, message("1700000001.000000", thread=in_thread(2)))
    a1 = await enqueued(store, message("1700000005.000000", thread=in_thread(1)))
    await enqueued(store, message("1700000003.000000", thread=in_thread(1), order_ts="1700000009.000000"))
    await enqueued(store, message("1700000002.000000", thread=in_thread(2)))
    c1 = await enqueued(store, message("1700000004.000000", thread=in_thread(3)))

    before = await store.now()
    claims = await store.claim_due("w1", limit=10, lease=LEASE)

    assert [c.message.id for c in claims] == [b1.id, a1.id, c1.id]
    for claim in claims:
        assert claim.owner == "w1"
        assert claim.now >= before
        assert claim.lease_expires == pytest.approx(claim.now + LEASE)
        assert claim.first_attempt_at == claim.now
        assert (claim.message.state, claim.message.attempts) == (MessageState.SENDING, 1)
        assert await store.get_message(claim.message.thread, claim.message.ts) == claim.message


async def test_claim_due_takes_at_most_limit(store: Store) -> None:
    for n in range(5):
        await enqueued(store, message(f"1700000001.00000{n}", thread=in_thread(n)))

    first = await store.claim_due("w1", limit=2, lease=LEASE)
    second = await store.claim_due("w2", limit=2, lease=LEASE)
    third = await store.claim_due("w3", limit=2, lease=LEASE)

    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert len({c.message.id for c in first + second + third}) == 5
    assert await store.claim_due("w1", limit=0, lease=LEASE) == []


async def test_nothing_behind_a_message_in_flight_is_claimed(store: Store) -> None:
    first = await enqueued(store, message("1700000001.000000"))
    second = await enqueued(store, message("1700000002.000000"))

    assert (await claim_one(store)).message.id == first.id
    assert await store.claim_due("w2", limit=10, lease=LEASE) == []

    assert await store.complete(first.id, "w1", MessageState.DELIVERED, "delivered", None) is True
    assert (await claim_one(store, "w2")).message.id == second.id


async def test_a_due_message_behind_one_not_yet_due_waits(store: Store) -> None:
    later = await enqueued(store, message("1700000002.000000"))  # due now
    earlier = await enqueued(store, replace(message("1700000001.000000"), delay=SHORT))  # sorts first

    assert await store.claim_due("w1", limit=10, lease=LEASE) == []
    due_in = await store.next_due_in()
    assert due_in is not None
    assert 0 < due_in <= SHORT

    await wait_until_due(store)
    assert (await claim_one(store)).message.id == earlier.id
    assert await store.complete(earlier.id, "w1", MessageState.DELIVERED, "delivered", None)
    assert (await claim_one(store)).message.id == later.id


async def test_the_order_window_sorts_messages_that_arrive_out_of_order(store: Store) -> None:
    # Slack delivers the later message first; both wait out the window and go in ts order.
    second = await enqueued(store, replace(message("1700000002.000000"), delay=SHORT))
    first = await enqueued(store, replace(message("1700000001.000000"), delay=SHORT))

    assert await store.claim_due("w1", limit=10, lease=LEASE) == []
    await wait_until_due(store)
    await asyncio.sleep(SHORT)  # both are due now

    assert (await claim_one(store)).message.id == first.id
    await store.complete(first.id, "w1", MessageState.DELIVERED, "delivered", None)
    assert (await claim_one(store)).message.id == second.id


async def test_next_due_in_and_oldest_due_age(store: Store) -> None:
    assert await store.next_due_in() is None
    assert await store.oldest_due_age() is None

    await enqueued(store, replace(message("1700000001.000000"), delay=60.0))
    due_in = await store.next_due_in()
    assert due_in is not None
    assert 59 < due_in <= 60
    assert await store.oldest_due_age() is None

    await enqueued(store, message("1700000002.000000", thread=OTHER_THREAD))
    await asyncio.sleep(0.05)
    age = await store.oldest_due_age()
    assert age is not None
    assert 0.05 <= age < 5
    due_in = await store.next_due_in()
    assert due_in is not None
    assert 58 < due_in <= 60

    claim = await claim_one(store)
    await store.complete(claim.message.id, "w1", MessageState.DELIVERED, "delivered", None)
    assert await store.oldest_due_age() is None


async def test_next_due_in_counts_leases_that_will_expire(store: Store) -> None:
    await enqueued(store, message("1700000001.000000"))
    await enqueued(store, replace(message("1700000009.000000", thread=OTHER_THREAD), delay=60.0))
    claim = await claim_one(store, "w1", lease=5.0)

    due_in = await store.next_due_in()  # the lease expires before the other row is due

    assert due_in is not None
    assert 4 < due_in <= 5
    assert await store.renew(claim.message.id, "w1", 120.0)
    due_in = await store.next_due_in()  # renewed: now the pending row comes first
    assert due_in is not None
    assert 58 < due_in <= 60


async def test_next_due_in_wakes_a_poller_in_time_to_take_over_an_expired_lease(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    first = await claim_one(store, "w1", lease=SHORT)

    due_in = await store.next_due_in()
    assert due_in is not None
    assert 0 < due_in <= SHORT
    await wait_until_due(store)

    taken = await claim_one(store, "w2")
    assert (taken.message.id, taken.message.attempts) == (stored.id, 2)
    assert taken.now >= first.lease_expires - 0.001
    assert await store.next_due_in() == pytest.approx(LEASE, abs=1.0)  # w2's lease
    assert await store.complete(stored.id, "w2", MessageState.DELIVERED, "delivered", None)
    assert await store.next_due_in() is None  # nothing pending, nothing in flight


async def test_an_expired_lease_is_taken_over(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    first = await claim_one(store, "w1", lease=SHORT)

    assert await store.claim_due("w2", limit=10, lease=LEASE) == []  # still w1's
    await asyncio.sleep(SHORT + 0.05)
    second = await claim_one(store, "w2")

    assert second.message.id == stored.id
    assert (second.owner, second.message.state, second.message.attempts) == ("w2", MessageState.SENDING, 2)
    assert second.first_attempt_at == first.first_attempt_at  # the retry budget counts from the first
    assert second.now > first.lease_expires - 0.001


async def test_a_worker_whose_lease_was_taken_over_is_fenced(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store, "w1", lease=SHORT)
    await asyncio.sleep(SHORT + 0.05)
    await claim_one(store, "w2")
    taken = await store.get_message(THREAD, stored.ts)
    notice = [NewFeedback(channel="C1", kind="post", payload={"text": "late"})]

    assert await store.renew(stored.id, "w1", LEASE) is False
    assert (
        await store.complete(stored.id, "w1", MessageState.DELIVERED, "delivered", None, feedback=notice)
        is False
    )
    assert await store.retry_later(stored.id, "w1", 5.0, "timeout", None, feedback=notice) is False
    assert await store.release(stored.id, "w1") is False

    assert await store.get_message(THREAD, stored.ts) == taken
    assert await store.feedback_depth() == 0
    # The new owner is not disturbed.
    assert await store.complete(stored.id, "w2", MessageState.DELIVERED, "delivered", None) is True


async def test_an_expired_lease_nobody_took_over_is_still_the_owners(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store, "w1", lease=0.05)
    await asyncio.sleep(0.1)

    assert await store.renew(stored.id, "w1", LEASE) is True
    assert await store.claim_due("w2", limit=10, lease=LEASE) == []  # renewed: not expired any more
    assert await store.complete(stored.id, "w1", MessageState.DELIVERED, "delivered", None) is True


async def test_renew_keeps_the_row_from_being_taken_over(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store, "w1", lease=SHORT)

    assert await store.renew(stored.id, "w1", 5.0) is True
    assert await store.renew(stored.id, "w2", 5.0) is False  # not w2's lease
    await asyncio.sleep(SHORT + 0.05)

    assert await store.claim_due("w2", limit=10, lease=LEASE) == []
    assert await store.renew(424242, "w1", 5.0) is False


async def test_fenced_calls_need_a_message_in_flight(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))

    assert await store.renew(stored.id, "w1", LEASE) is False
    assert await store.complete(stored.id, "w1", MessageState.DELIVERED, "delivered", None) is False
    assert await store.retry_later(stored.id, "w1", 1.0, "timeout", None) is False
    assert await store.release(stored.id, "w1") is False
    assert await store.get_message(THREAD, stored.ts) == stored
    # Unknown ids: nothing to fence, nothing changed.
    assert await store.complete(424242, "w1", MessageState.DELIVERED, "delivered", None) is False
    assert await store.retry_later(424242, "w1", 1.0, "timeout", None) is False
    assert await store.release(424242, "w1") is False
    assert await store.count_messages() == {**dict.fromkeys(MessageState, 0), MessageState.PENDING: 1}


async def test_complete_records_the_outcome_once(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store)

    assert await store.complete(stored.id, "w1", MessageState.FAILED, "not_found", "session gone") is True
    assert await store.complete(stored.id, "w1", MessageState.DELIVERED, "delivered", None) is False

    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.state, row.attempts, row.outcome, row.detail) == (
        MessageState.FAILED,
        1,
        "not_found",
        "session gone",
    )
    assert await store.claim_due("w1", limit=10, lease=LEASE) == []


async def test_complete_needs_a_final_state(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store)

    with pytest.raises(ValueError, match="final state"):
        await store.complete(stored.id, "w1", MessageState.PENDING, "x", None)
    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert row.state is MessageState.SENDING


async def test_complete_enqueues_its_feedback_in_the_same_transaction(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store)
    told = [
        NewFeedback(channel="C1", kind="reaction_remove", payload={"name": "hourglass"}, team="T1"),
        NewFeedback(channel="C1", kind="reaction_add", payload={"name": "white_check_mark"}, team="T1"),
    ]

    assert await store.complete(stored.id, "w1", MessageState.DELIVERED, "delivered", None, feedback=told)

    assert await store.feedback_depth() == 2
    item = await claim_feedback_one(store)
    assert (item.team, item.channel, item.kind, item.payload) == (
        "T1",
        "C1",
        "reaction_remove",
        {"name": "hourglass"},
    )


async def test_retry_later_makes_the_message_due_again_later(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    first = await claim_one(store)
    notice = [NewFeedback(channel="C1", kind="post", payload={"text": "retrying"})]

    assert await store.retry_later(stored.id, "w1", SHORT, "rate_limited", "retry after 1s", feedback=notice)

    waiting = await store.get_message(THREAD, stored.ts)
    assert waiting is not None
    assert (waiting.state, waiting.attempts, waiting.outcome, waiting.detail) == (
        MessageState.PENDING,
        1,
        "rate_limited",
        "retry after 1s",
    )
    assert await store.feedback_depth() == 1
    assert await store.claim_due("w1", limit=10, lease=LEASE) == []
    due_in = await store.next_due_in()
    assert due_in is not None
    assert 0 < due_in <= SHORT

    await wait_until_due(store)
    again = await claim_one(store, "w2")
    assert (again.message.id, again.message.attempts) == (stored.id, 2)
    assert again.first_attempt_at == first.first_attempt_at


async def test_first_attempt_at_survives_a_restart(opener: Opener, store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    first = await claim_one(store)
    await store.retry_later(stored.id, "w1", 0.0, "timeout", None)

    store = await opener.reopen(store)

    again = await claim_one(store, "w9")
    assert (again.message.id, again.message.attempts) == (stored.id, 2)
    assert again.first_attempt_at == first.first_attempt_at


async def test_release_hands_the_message_back_without_counting_the_attempt(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    first = await claim_one(store)
    await asyncio.sleep(0.01)

    assert await store.release(stored.id, "w1") is True

    parked = await store.get_message(THREAD, stored.ts)
    assert parked is not None
    assert (parked.state, parked.attempts) == (MessageState.PENDING, 0)
    again = await claim_one(store, "w2")  # due at once
    assert again.message.attempts == 1
    assert again.first_attempt_at > first.first_attempt_at  # no attempt counted: the budget starts anew

    await store.retry_later(stored.id, "w2", 0.0, "timeout", None)
    third = await claim_one(store, "w3")
    assert await store.release(stored.id, "w3") is True
    fourth = await claim_one(store, "w4")
    assert fourth.message.attempts == 2
    assert fourth.first_attempt_at == again.first_attempt_at == third.first_attempt_at


async def test_drop_pending_skips_an_original_not_yet_sent(store: Store) -> None:
    first = await enqueued(store, message("1700000001.000000"))
    second = await enqueued(store, message("1700000002.000000"))
    await enqueued(store, message("1700000002.000000", revision="1700000003.000000"))

    dropped = await store.drop_pending(THREAD, first.ts)

    assert dropped is not None
    assert (dropped.id, dropped.state, dropped.outcome) == (first.id, MessageState.SKIPPED, "deleted")
    assert dropped.attempts == 0  # skipped without an attempt
    assert await store.get_message(THREAD, first.ts) == dropped
    assert await store.drop_pending(THREAD, first.ts) is None  # already final
    assert await store.drop_pending(THREAD, "1700000099.000000") is None
    assert await store.drop_pending(OTHER_THREAD, second.ts) is None
    # The thread goes on with the next message; a message in flight is not dropped.
    claim = await claim_one(store)
    assert claim.message.id == second.id
    assert await store.drop_pending(THREAD, second.ts) is None
    correction = await store.get_message(THREAD, second.ts, "1700000003.000000")
    assert correction is not None
    assert correction.state is MessageState.PENDING


# -- head markers: each thread's one candidate, kept by every change -------------------------------


async def test_the_head_moves_with_every_change_of_a_thread(store: Store, heads: Heads) -> None:
    """Every kind of change, and after each the marker on the thread's rightful head (and only there,
    in every thread: ``heads.messages()`` checks them all)."""

    async def head() -> int | None:
        return (await heads.messages()).get(THREAD)

    assert await head() is None
    b = await enqueued(store, message("1700000005.000000"))
    assert await head() == b.id  # the first open row of the thread
    c = await enqueued(store, message("1700000007.000000"))
    assert await head() == b.id  # behind the head
    other = await enqueued(store, message("1700000601.000000", thread=OTHER_THREAD))
    assert (await heads.messages())[OTHER_THREAD] == other.id  # threads keep heads of their own
    a = await enqueued(store, message("1700000003.000000"))
    assert await head() == a.id  # a late arrival that sorts before the pending head takes its place
    assert await store.enqueue(message("1700000003.000000")) is None  # a duplicate changes nothing
    assert await head() == a.id
    assert await store.replace_pending_text(THREAD, a.ts, "edited", "[]")
    assert await head() == a.id

    claims = await store.claim_due("w1", limit=10, lease=LEASE)
    assert sorted(claim.message.id for claim in claims) == sorted([a.id, other.id])
    assert await head() == a.id  # claimed: the head is now the thread's sending row
    assert await store.complete(other.id, "w1", MessageState.DELIVERED, "delivered", None)
    assert OTHER_THREAD not in await heads.messages()  # nothing open there any more
    z = await enqueued(store, message("1700000002.000000"))
    assert await head() == a.id  # sorts before the head, but the head is in flight: it waits
    assert await store.complete(a.id, "w1", MessageState.DELIVERED, "delivered", None)
    assert await head() == z.id  # the first pending row by order_key: the late arrival

    assert (await claim_one(store, "w2")).message.id == z.id
    y = await enqueued(store, message("1700000001.500000"))  # sorts before z, which is in flight
    assert await head() == z.id
    assert await store.retry_later(z.id, "w2", 0.0, "timeout", None)
    assert await head() == y.id  # back to pending behind an earlier pending row: that one is the head

    assert (await claim_one(store, "w3")).message.id == y.id
    x = await enqueued(store, message("1700000001.000000"))
    assert await store.release(y.id, "w3")
    assert await head() == x.id  # released behind an earlier pending row

    assert await store.drop_pending(THREAD, c.ts) is not None  # not the head: it stays
    assert await head() == x.id
    assert await store.drop_pending(THREAD, x.ts) is not None  # the head: the next pending row
    assert await head() == y.id

    assert await drain(store) == [(y.ts, ""), (z.ts, ""), (b.ts, "")]
    assert await head() is None
    assert await heads.messages() == {}


async def test_a_claim_takes_only_heads(store: Store, heads: Heads) -> None:
    """A thread whose head is not due yet claims nothing, however many of its rows are due; a thread
    whose head is in flight neither."""
    waits = await enqueued(store, replace(message("1700000001.000000"), delay=60.0))
    for n in range(2, 40):
        await enqueued(store, message(f"17000000{n:02d}.000000"))
    busy = [
        await enqueued(store, message(f"17000006{n:02d}.000000", thread=OTHER_THREAD)) for n in range(1, 30)
    ]
    (claim,) = await store.claim_due("w1", limit=10, lease=LEASE)
    assert claim.message.id == busy[0].id

    assert await store.claim_due("w2", limit=10, lease=LEASE) == []
    assert await heads.messages() == {THREAD: waits.id, OTHER_THREAD: busy[0].id}


# -- feedback queue --------------------------------------------------------------------------------


def note(channel: str, n: int, *, team: str = "T1", dedupe_key: str | None = None) -> NewFeedback:
    return NewFeedback(channel=channel, kind="post", payload={"n": n}, team=team, dedupe_key=dedupe_key)


async def claim_feedback_one(store: Store, owner: str = "f1", lease: float = LEASE) -> FeedbackItem:
    items = await store.claim_feedback(owner, limit=10, lease=lease)
    assert len(items) == 1, items
    return items[0]


async def test_feedback_is_first_in_first_out_per_channel(store: Store) -> None:
    assert await store.enqueue_feedback([note("C1", 1), note("C2", 1), note("C1", 2)]) == 3
    assert await store.enqueue_feedback([note("C1", 3)]) == 1
    assert await store.enqueue_feedback([]) == 0

    seen: dict[str, list[int]] = {"C1": [], "C2": []}
    rounds = 0
    while items := await store.claim_feedback("f1", limit=10, lease=LEASE):
        assert len({item.channel for item in items}) == len(items)  # one per channel at a time
        for item in items:
            seen[item.channel].append(int(str(item.payload["n"])))
            assert await store.feedback_done(item.id, "f1") is True
        rounds += 1

    assert seen == {"C1": [1, 2, 3], "C2": [1]}
    assert rounds == 3
    assert await store.feedback_depth() == 0


async def test_feedback_item_as_claimed(store: Store) -> None:
    payload = {"text": "Ünïcode ✓", "blocks": [{"type": "section"}], "n": 1, "ok": True, "none": None}
    await store.enqueue_feedback([NewFeedback(channel="C1", kind="update", payload=payload, team="T1")])
    before = await store.now()

    item = await claim_feedback_one(store, "f1")

    assert (item.team, item.channel, item.kind, item.payload) == ("T1", "C1", "update", payload)
    assert (item.attempts, item.owner) == (1, "f1")
    assert before - 5 < item.created_at <= before


async def test_feedback_of_one_channel_waits_for_the_item_in_flight(store: Store) -> None:
    await store.enqueue_feedback([note("C1", 1), note("C1", 2)])
    first = await claim_feedback_one(store, "f1")

    assert await store.claim_feedback("f2", limit=10, lease=LEASE) == []
    assert await store.feedback_depth() == 2
    assert await store.feedback_done(first.id, "f1") is True
    assert await store.feedback_done(first.id, "f1") is False  # once
    second = await claim_feedback_one(store, "f2")
    assert second.payload == {"n": 2}


async def test_channels_of_two_teams_are_separate_queues(store: Store) -> None:
    await store.enqueue_feedback([note("C1", 1, team="T1"), note("C1", 1, team="T2")])

    items = await store.claim_feedback("f1", limit=10, lease=LEASE)

    assert sorted(item.team for item in items) == ["T1", "T2"]


async def test_feedback_dedupe_key_stores_one_item(store: Store) -> None:
    assert (
        await store.enqueue_feedback(
            [note("C1", 1, dedupe_key="react:1"), note("C1", 2, dedupe_key="react:1")]
        )
        == 1
    )
    assert await store.enqueue_feedback([note("C1", 3, dedupe_key="react:1"), note("C1", 4)]) == 1
    item = await claim_feedback_one(store)
    await store.feedback_done(item.id, "f1")
    assert await store.enqueue_feedback([note("C1", 5, dedupe_key="react:1")]) == 0  # done items count too

    assert item.payload == {"n": 1}
    assert await store.feedback_depth() == 1


async def test_feedback_retry_keeps_the_channel_in_order(store: Store) -> None:
    await store.enqueue_feedback([note("C1", 1), note("C1", 2), note("C2", 1)])
    first, other = await store.claim_feedback("f1", limit=10, lease=LEASE)
    assert (first.channel, other.channel) == ("C1", "C2")

    assert await store.feedback_retry(first.id, "f1", SHORT, "ratelimited") is True
    assert await store.feedback_retry(first.id, "f1", SHORT, "ratelimited") is False  # not in flight
    assert await store.claim_feedback("f1", limit=10, lease=LEASE) == []  # C1's first item waits
    assert await store.feedback_depth() == 3
    await asyncio.sleep(SHORT + 0.05)

    again = await claim_feedback_one(store, "f2")
    assert (again.id, again.attempts) == (first.id, 2)


async def test_feedback_failed_is_final(store: Store) -> None:
    await store.enqueue_feedback([note("C1", 1), note("C1", 2)])
    first = await claim_feedback_one(store)

    assert await store.feedback_failed(first.id, "f1", "channel_not_found") is True
    assert await store.feedback_failed(first.id, "f1", "again") is False
    assert await store.feedback_depth() == 1
    second = await claim_feedback_one(store)
    assert second.payload == {"n": 2}
    assert await store.feedback_done(second.id, "f1") is True
    assert await store.claim_feedback("f1", limit=10, lease=LEASE) == []


async def test_next_feedback_due_in(store: Store) -> None:
    assert await store.next_feedback_due_in() is None
    await store.enqueue_feedback([note("C1", 1), note("C2", 1)])
    assert await store.next_feedback_due_in() is None  # due now: nothing in the future

    first, second = await store.claim_feedback("f1", limit=10, lease=5.0)
    due_in = await store.next_feedback_due_in()  # the leases will expire
    assert due_in is not None
    assert 4 < due_in <= 5

    assert await store.feedback_retry(first.id, "f1", 2.0, "ratelimited")
    due_in = await store.next_feedback_due_in()  # the retry is due before the other lease expires
    assert due_in is not None
    assert 1 < due_in <= 2
    assert await store.feedback_failed(second.id, "f1", "channel_not_found")
    assert await store.feedback_depth() == 1
    due_in = await store.next_feedback_due_in()
    assert due_in is not None
    assert 1 < due_in <= 2
    assert await store.next_due_in() is None  # the message queue is another matter


async def test_next_feedback_due_in_wakes_a_poller_in_time_to_take_over(store: Store) -> None:
    await store.enqueue_feedback([note("C1", 1)])
    first = await claim_feedback_one(store, "f1", lease=SHORT)

    due_in = await store.next_feedback_due_in()
    assert due_in is not None
    assert 0 < due_in <= SHORT
    await asyncio.sleep(due_in + 0.02)

    taken = await claim_feedback_one(store, "f2")
    assert (taken.id, taken.attempts) == (first.id, 2)
    assert await store.feedback_done(taken.id, "f2")
    assert await store.next_feedback_due_in() is None


async def test_feedback_in_flight_is_taken_over_when_its_lease_expires(store: Store) -> None:
    await store.enqueue_feedback([note("C1", 1), note("C1", 2)])
    first = await claim_feedback_one(store, "f1", lease=SHORT)
    await asyncio.sleep(SHORT + 0.05)

    taken = await claim_feedback_one(store, "f2")

    assert (taken.id, taken.attempts, taken.owner) == (first.id, 2, "f2")
    assert await store.feedback_done(first.id, "f1") is False
    assert await store.feedback_retry(first.id, "f1", 0.0, "x") is False
    assert await store.feedback_failed(first.id, "f1", "x") is False
    assert await store.claim_feedback("f3", limit=10, lease=LEASE) == []  # still one in flight
    assert await store.feedback_done(first.id, "f2") is True


async def test_the_head_of_a_channel_moves_with_every_change(store: Store, heads: Heads) -> None:
    c1, c2 = ("T1", "C1"), ("T1", "C2")
    assert await heads.feedback() == {}
    assert await store.enqueue_feedback([note("C1", 1), note("C2", 1), note("C1", 2)]) == 3
    marked = await heads.feedback()
    first = marked[c1]
    assert set(marked) == {c1, c2}

    claimed = {item.channel: item for item in await store.claim_feedback("f1", limit=10, lease=LEASE)}
    assert claimed["C1"].id == first
    assert await heads.feedback() == marked  # claimed: the heads are the channels' sending items
    assert await store.enqueue_feedback([note("C1", 3)]) == 1
    assert await heads.feedback() == marked  # behind the item in flight

    assert await store.feedback_retry(first, "f1", 0.0, "ratelimited")
    assert (await heads.feedback())[c1] == first  # pending again, still the oldest
    assert (await claim_feedback_one(store, "f2")).id == first
    assert await store.feedback_done(first, "f2")
    second = (await heads.feedback())[c1]
    assert second != first  # the next item by id
    assert await store.feedback_done(claimed["C2"].id, "f1")
    assert c2 not in await heads.feedback()

    item = await claim_feedback_one(store, "f3")
    assert (item.id, item.payload) == (second, {"n": 2})
    assert await store.feedback_failed(second, "f3", "channel_not_found")
    third = await claim_feedback_one(store, "f3")
    assert third.payload == {"n": 3}
    assert await heads.feedback() == {c1: third.id}
    assert await store.feedback_done(third.id, "f3")
    assert await heads.feedback() == {}


# -- singleton leases ------------------------------------------------------------------------------


async def test_a_singleton_lease_has_one_owner_at_a_time(store: Store) -> None:
    assert await store.acquire_lease("poll:devin:s1", "r1", SHORT) is True
    assert await store.acquire_lease("poll:devin:s1", "r2", LEASE) is False
    assert await store.acquire_lease("poll:devin:s2", "r2", LEASE) is True  # another name
    assert await store.acquire_lease("poll:devin:s1", "r1", SHORT) is True  # ours: renewed

    await asyncio.sleep(SHORT + 0.05)
    assert await store.acquire_lease("poll:devin:s1", "r2", LEASE) is True  # expired: taken
    assert await store.acquire_lease("poll:devin:s1", "r1", LEASE) is False


async def test_release_lease_frees_it_for_others(store: Store) -> None:
    assert await store.acquire_lease("job", "r1", LEASE) is True
    await store.release_lease("job", "r2")  # not r2's: nothing happens
    assert await store.acquire_lease("job", "r2", LEASE) is False

    await store.release_lease("job", "r1")
    assert await store.acquire_lease("job", "r2", LEASE) is True
    await store.release_lease("never-held", "r1")


async def test_concurrent_acquirers_of_a_lease_have_one_winner(opener: Opener, store: Store) -> None:
    others = [await opener.open() for _ in range(3)]
    results = await asyncio.gather(
        *(s.acquire_lease("job", f"r{n}", LEASE) for n, s in enumerate([store, *others]))
    )

    assert sorted(results) == [False, False, False, True]


# -- wake-ups --------------------------------------------------------------------------------------


WAKE_TIMEOUT = 5.0


class Wakes:
    """Records wake-up callbacks; ``wait_for`` waits (boundedly) until a kind was seen."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._event = asyncio.Event()

    def __call__(self, kind: str) -> None:
        self.seen.append(kind)
        self._event.set()

    async def wait_for(self, kind: str) -> None:
        async with asyncio.timeout(WAKE_TIMEOUT):
            while kind not in self.seen:
                self._event.clear()
                await self._event.wait()


async def test_wake_listeners_are_told_of_claimable_work(store: Store) -> None:
    wakes = Wakes()
    store.add_wake_listener(wakes)

    stored = await enqueued(store, message("1700000001.000000"))
    await wakes.wait_for("messages")
    await store.enqueue_feedback([note("C1", 1)])
    await wakes.wait_for("feedback")

    wakes.seen.clear()
    await claim_one(store)
    notice = [note("C1", 2)]
    assert await store.complete(stored.id, "w1", MessageState.DELIVERED, "delivered", None, feedback=notice)
    await wakes.wait_for("messages")  # the thread's next message may go now
    await wakes.wait_for("feedback")


async def test_a_failing_wake_listener_does_not_fail_the_store(store: Store) -> None:
    def broken(kind: str) -> None:
        raise RuntimeError(f"listener bug on {kind}")

    wakes = Wakes()
    store.add_wake_listener(broken)
    store.add_wake_listener(wakes)

    assert await store.enqueue(message("1700000001.000000")) is not None
    await wakes.wait_for("messages")


# -- concurrency -----------------------------------------------------------------------------------


async def test_concurrent_claimers_deliver_every_message_once_in_order(
    opener: Opener, store: Store, heads: Heads
) -> None:
    """5 stores on one database (5 replicas, or processes on one SQLite file), 2 workers each, claim
    200 messages of 20 threads and complete, retry or hand back each attempt at random."""
    threads = [ThreadKey("T1", f"C{n % 4}", f"1700000{n:03d}.000000") for n in range(20)]
    rng = random.Random(11)
    expected: dict[ThreadKey, list[int]] = {}
    for n, thread in enumerate(threads):
        stamps = [f"{1700001000 + n * 100}.{m:06d}" for m in range(10)]
        shuffled = stamps[:]
        rng.shuffle(shuffled)
        for ts in shuffled:
            await enqueued(store, message(ts, thread=thread))
        expected[thread] = [order_key(ts) for ts in stamps]
    stores = [store, *[await opener.open() for _ in range(4)]]
    in_flight: dict[ThreadKey, int] = {}
    completed: list[tuple[ThreadKey, int, int]] = []  # (thread, order key, message id)
    violations: list[str] = []

    async def worker(replica: Store, owner: str, seed: int) -> None:
        choose = random.Random(seed)
        while len(completed) < 200:
            claims = await replica.claim_due(owner, limit=3, lease=LEASE)
            if not claims:
                await asyncio.sleep(0.002)
                continue
            for claim in claims:
                row = claim.message
                if row.thread in in_flight:
                    violations.append(f"{row.id} claimed while {in_flight[row.thread]} is in flight")
                in_flight[row.thread] = row.id
            for claim in claims:
                row = claim.message
                await asyncio.sleep(choose.random() * 0.003)
                roll = choose.random()
                # Noted before the call: the row stays sending, and nothing behind it is claimed,
                # until the call has committed.
                del in_flight[row.thread]
                if roll < 0.7:
                    completed.append((row.thread, order_key(row.order_ts), row.id))
                    ok = await replica.complete(row.id, owner, MessageState.DELIVERED, "delivered", None)
                elif roll < 0.9:
                    ok = await replica.retry_later(row.id, owner, 0.005, "timeout", None)
                else:
                    ok = await replica.release(row.id, owner)
                if not ok:
                    violations.append(f"{owner} lost the lease of {row.id}")

    async with asyncio.timeout(120):
        await asyncio.gather(
            *(worker(s, f"r{n}-w{w}", n * 10 + w) for n, s in enumerate(stores) for w in range(2))
        )

    assert violations == []
    assert len(completed) == 200
    assert len({message_id for _, _, message_id in completed}) == 200
    for thread in threads:
        assert [key for t, key, _ in completed if t == thread] == expected[thread]
    counts = await store.count_messages()
    assert counts[MessageState.DELIVERED] == 200
    assert sum(counts.values()) == 200
    assert await heads.messages() == {}


async def test_concurrent_feedback_claimers_keep_each_channel_in_order(
    opener: Opener, store: Store, heads: Heads
) -> None:
    channels = [f"C{n}" for n in range(5)]
    for n in range(8):
        await store.enqueue_feedback([note(channel, n) for channel in channels])
    stores = [store, *[await opener.open() for _ in range(2)]]
    done: dict[str, list[int]] = {channel: [] for channel in channels}
    in_flight: set[str] = set()
    violations: list[str] = []

    async def worker(replica: Store, owner: str) -> None:
        while sum(len(v) for v in done.values()) < 40:
            items = await replica.claim_feedback(owner, limit=2, lease=LEASE)
            if not items:
                await asyncio.sleep(0.002)
                continue
            for item in items:
                if item.channel in in_flight:
                    violations.append(f"two items of {item.channel} in flight")
                in_flight.add(item.channel)
            for item in items:
                await asyncio.sleep(0.001)
                in_flight.discard(item.channel)
                done[item.channel].append(int(str(item.payload["n"])))
                if not await replica.feedback_done(item.id, owner):
                    violations.append(f"{owner} lost {item.id}")

    async with asyncio.timeout(60):
        await asyncio.gather(*(worker(s, f"f{n}") for n, s in enumerate(stores)))

    assert violations == []
    assert done == {channel: list(range(8)) for channel in channels}
    assert await store.feedback_depth() == 0
    assert await heads.feedback() == {}


# -- takeovers, retention, opening without migrating -----------------------------------------------


async def raw(database_url: str, sql: str) -> list[tuple[object, ...]]:
    """Run ``sql`` on the database behind the store, bypassing it (to see what the API does not)."""
    if database_url.startswith("sqlite:///"):
        import sqlite3  # noqa: PLC0415

        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db, db:
            return [tuple(row) for row in db.execute(sql).fetchall()]
    import asyncpg  # noqa: PLC0415

    pg = await asyncpg.connect(database_url)
    try:
        return [tuple(row) for row in await pg.fetch(sql)]
    finally:
        await pg.close()


async def test_a_claim_says_whether_it_took_over_an_expired_lease(store: Store) -> None:
    await enqueued(store, message("1700000001.000000"))
    await enqueued(store, message("1700000002.000000", thread=OTHER_THREAD))
    first = await store.claim_due("w1", limit=1, lease=SHORT)
    assert [c.taken_over for c in first] == [False]
    await asyncio.sleep(SHORT + 0.05)

    claims = {c.message.id: c for c in await store.claim_due("w2", limit=10, lease=LEASE)}

    assert len(claims) == 2
    assert claims[first[0].message.id].taken_over is True
    (fresh,) = [c for c in claims.values() if c.message.id != first[0].message.id]
    assert (fresh.taken_over, fresh.message.attempts) == (False, 1)


async def test_a_message_retried_later_is_not_a_takeover(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await claim_one(store, "w1")
    assert await store.retry_later(stored.id, "w1", 0.0, "unavailable", None)

    again = await claim_one(store, "w2")

    assert (again.message.attempts, again.taken_over) == (2, False)


async def finished(store: Store, ts: str, thread: ThreadKey, state: MessageState) -> OutboxMessage:
    stored = await enqueued(store, message(ts, thread=thread, text=f"secret plan {ts}"))
    claim = await claim_one(store, f"w-{ts}")
    assert await store.complete(claim.message.id, claim.owner, state, state.value, "detail")
    row = await store.get_message(thread, ts)
    assert row is not None
    assert row.id == stored.id
    return row


async def test_purge_blanks_the_text_of_final_messages_only(store: Store) -> None:
    await store.bind(binding())
    files = '[{"name": "plan.txt", "permalink": "https://x.test/p"}]'
    delivered = await finished(store, "1700000001.000000", in_thread(1), MessageState.DELIVERED)
    failed = await finished(store, "1700000002.000000", in_thread(2), MessageState.FAILED)
    new = replace(message("1700000003.000000", thread=in_thread(3)), files=files)
    assert await store.enqueue(new) is not None
    skipped = await store.drop_pending(in_thread(3), new.ts)
    assert skipped is not None
    sending = await enqueued(store, message("1700000004.000000", thread=in_thread(4), text="in flight"))
    await claim_one(store, "w-sending")
    pending = await enqueued(store, replace(message("1700000005.000000", thread=in_thread(5)), delay=60.0))
    counts = await store.count_messages()
    cutoff = await store.now() + 1

    assert await store.purge_before(delivered.updated_at - 1, batch=500) == Purged()  # none so old
    assert await store.purge_before(cutoff, batch=500) == Purged(messages=3, feedback=0)

    for before in (delivered, failed, skipped):
        after = await store.get_message(before.thread, before.ts)
        assert after == replace(before, text="", files="[]")  # state, outcome, times: all kept
    for before in (sending, pending):
        after = await store.get_message(before.thread, before.ts)
        assert after is not None
        assert (after.text, after.files) == (before.text, before.files)
    assert await store.count_messages() == counts
    assert await store.get_binding(THREAD) == binding()
    assert await store.purge_before(cutoff, batch=500) == Purged()  # counted once


async def test_purge_goes_in_batches(store: Store) -> None:
    for n in range(5):
        await finished(store, f"1700000001.00000{n}", in_thread(n), MessageState.DELIVERED)
    cutoff = await store.now() + 1

    sizes = [(await store.purge_before(cutoff, batch=2)).messages for _ in range(4)]

    assert sizes == [2, 2, 1, 0]
    assert await store.purge_before(cutoff, batch=0) == Purged()


async def test_purge_removes_finished_feedback_and_keeps_dedupe_keys(database_url: str, store: Store) -> None:
    await store.enqueue_feedback(
        [note("C1", 1), note("C2", 1), note("C3", 1, dedupe_key="notice:C3"), note("C4", 1), note("C5", 1)]
    )
    items = {item.channel: item for item in await store.claim_feedback("f1", limit=10, lease=LEASE)}
    assert await store.feedback_done(items["C1"].id, "f1")
    assert await store.feedback_failed(items["C2"].id, "f1", "channel_not_found")
    assert await store.feedback_done(items["C3"].id, "f1")
    assert await store.feedback_retry(items["C4"].id, "f1", 60.0, "ratelimited")  # pending again
    # C5 stays in flight.
    await store.enqueue_feedback([note("C1", 2)])  # pending, behind nothing
    cutoff = await store.now() + 1

    assert await store.purge_before(cutoff, batch=500) == Purged(messages=0, feedback=3)

    assert await store.feedback_depth() == 3  # C4 (pending), C5 (sending), C1's second item
    rows = await raw(database_url, "SELECT channel, payload FROM feedback ORDER BY id")
    assert rows == [("C3", "{}"), ("C4", '{"n":1}'), ("C5", '{"n":1}'), ("C1", '{"n":2}')]
    assert await store.enqueue_feedback([note("C3", 2, dedupe_key="notice:C3")]) == 0  # still once
    assert await store.purge_before(cutoff, batch=500) == Purged()


async def test_open_existing_creates_nothing(database_url: str) -> None:
    fresh = open_store(database_url)
    try:
        if database_url.startswith("sqlite:///"):
            with pytest.raises(StoreError, match="does not exist"):
                await fresh.open_existing()
            assert not await asyncio.to_thread(os.path.exists, database_url.removeprefix("sqlite:///"))
        else:  # an empty PostgreSQL database: opened, and left empty
            await fresh.open_existing()
            with pytest.raises(StoreError):
                await fresh.migrations_missing()
    finally:
        await fresh.close()
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    if not database_url.startswith("sqlite:///"):
        assert await raw(database_url, tables) == []


async def test_open_existing_sees_missing_migrations(database_url: str, store: Store) -> None:
    latest = await store.latest_schema_version()
    assert latest == await store.schema_version() >= 1
    existing = open_store(database_url)
    await existing.open_existing()
    await existing.open_existing()  # already open: nothing more
    try:
        assert await existing.migrations_missing() == 0
        await existing.check()
        await raw(database_url, "UPDATE schema_version SET version = version - 1")
        assert await existing.migrations_missing() == 1
        assert await existing.schema_version() == latest - 1
    finally:
        await existing.close()
    await raw(database_url, "UPDATE schema_version SET version = version + 1")


async def test_heads_stay_right_while_replicas_enqueue_drop_and_claim_at_once(
    opener: Opener, store: Store, heads: Heads
) -> None:
    """4 stores (replicas) on one database: two enqueue into 3 threads in random ts order (late
    arrivals sort before rows already stored, in flight or pending) and drop some pending rows,
    while 3 workers claim and complete, retry or release at random. Every committed state keeps one
    head per thread (checked over and over while they run), nothing is stuck, no thread has two
    rows in flight, and every row not dropped is delivered once."""
    threads = [ThreadKey("T1", "C1", f"1700000{n:03d}.000000") for n in range(3)]
    replicas = [store, *[await opener.open() for _ in range(3)]]
    rng = random.Random(7)
    stamps = [f"{1700001000 + n}.{m:06d}" for n in range(20) for m in range(3)]  # 60, unique per channel
    rng.shuffle(stamps)
    planned = [(threads[n % 3], ts) for n, ts in enumerate(stamps)]
    enqueued_ids: dict[int, ThreadKey] = {}
    dropped: set[int] = set()
    delivered: list[int] = []
    in_flight: dict[ThreadKey, int] = {}
    violations: list[str] = []
    enqueuing = 2

    async def enqueuer(replica: Store, work: list[tuple[ThreadKey, str]], seed: int) -> None:
        nonlocal enqueuing
        choose = random.Random(seed)
        for thread, ts in work:
            row = await replica.enqueue(message(ts, thread=thread))
            assert row is not None
            enqueued_ids[row.id] = thread
            if choose.random() < 0.15:
                gone = await replica.drop_pending(thread, ts)  # dropped unless already claimed
                if gone is not None:
                    dropped.add(gone.id)
            await asyncio.sleep(choose.random() * 0.004)
        enqueuing -= 1

    async def worker(replica: Store, owner: str, seed: int) -> None:
        choose = random.Random(seed)
        while enqueuing or len(delivered) + len(dropped) < len(enqueued_ids):
            claims = await replica.claim_due(owner, limit=2, lease=LEASE)
            if not claims:
                await asyncio.sleep(0.002)
                continue
            for claim in claims:
                row = claim.message
                if row.thread in in_flight:
                    violations.append(f"{row.id} claimed while {in_flight[row.thread]} is in flight")
                in_flight[row.thread] = row.id
            for claim in claims:
                row = claim.message
                await asyncio.sleep(choose.random() * 0.003)
                del in_flight[row.thread]
                roll = choose.random()
                if roll < 0.7:
                    delivered.append(row.id)
                    ok = await replica.complete(row.id, owner, MessageState.DELIVERED, "delivered", None)
                elif roll < 0.85:
                    ok = await replica.retry_later(row.id, owner, 0.0, "timeout", None)
                else:
                    ok = await replica.release(row.id, owner)
                if not ok:
                    violations.append(f"{owner} lost the lease of {row.id}")

    checks = 0

    async def watcher() -> None:
        nonlocal checks
        while enqueuing or len(delivered) + len(dropped) < len(enqueued_ids):
            await heads.messages()  # raises on a committed state without the right heads
            checks += 1
            await asyncio.sleep(0.005)

    async with asyncio.timeout(120):
        await asyncio.gather(
            enqueuer(replicas[0], planned[0::2], 1),
            enqueuer(replicas[1], planned[1::2], 2),
            *(worker(replicas[1 + n], f"w{n}", 10 + n) for n in range(3)),
            watcher(),
        )

    assert violations == []
    assert checks > 0
    assert len(enqueued_ids) == 60
    assert sorted(delivered + list(dropped)) == sorted(enqueued_ids)
    assert len(set(delivered)) == len(delivered)
    assert await heads.messages() == {}


async def test_channel_heads_stay_right_while_replicas_enqueue_and_claim_at_once(
    opener: Opener, store: Store, heads: Heads
) -> None:
    """Batches naming the same channels in opposite orders are stored at once by several replicas
    (never waiting for each other crosswise), while workers claim, retry and finish items: every
    committed state keeps one head per channel, and every item is done once."""
    replicas = [store, *[await opener.open() for _ in range(3)]]
    channels = ["C1", "C2", "C3"]
    batches = [[note(channel, n) for channel in (channels if n % 2 else channels[::-1])] for n in range(20)]
    done: list[int] = []
    in_flight: set[tuple[str, str]] = set()
    violations: list[str] = []
    enqueuing = 2

    async def enqueuer(replica: Store, work: list[list[NewFeedback]]) -> None:
        nonlocal enqueuing
        for batch in work:
            assert await replica.enqueue_feedback(batch) == len(batch)
        enqueuing -= 1

    async def worker(replica: Store, owner: str, seed: int) -> None:
        choose = random.Random(seed)
        while enqueuing or len(done) < 60:
            items = await replica.claim_feedback(owner, limit=2, lease=LEASE)
            if not items:
                await asyncio.sleep(0.002)
                continue
            for item in items:
                if (item.team, item.channel) in in_flight:
                    violations.append(f"two items of {item.channel} in flight")
                in_flight.add((item.team, item.channel))
            for item in items:
                await asyncio.sleep(choose.random() * 0.002)
                in_flight.discard((item.team, item.channel))
                if choose.random() < 0.8:
                    done.append(item.id)
                    ok = await replica.feedback_done(item.id, owner)
                else:
                    ok = await replica.feedback_retry(item.id, owner, 0.0, "ratelimited")
                if not ok:
                    violations.append(f"{owner} lost {item.id}")

    async def watcher() -> None:
        while enqueuing or len(done) < 60:
            await heads.feedback()
            await asyncio.sleep(0.005)

    async with asyncio.timeout(120):
        await asyncio.gather(
            enqueuer(replicas[0], batches[0::2]),
            enqueuer(replicas[1], batches[1::2]),
            *(worker(replicas[1 + n], f"f{n}", n) for n in range(3)),
            watcher(),
        )

    assert violations == []
    assert len(set(done)) == len(done) == 60
    assert await store.feedback_depth() == 0
    assert await heads.feedback() == {}
