"""Behaviour every :class:`storage.base.Store` backend must show, run against each backend.

Each backend is a parameter of the ``opener`` fixture; a PostgreSQL backend is added by listing it
in ``BACKENDS`` and teaching :func:`_opener_for` how to reach a fresh database.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from storage import Binding, MessageState, OutboxMessage, Store, StoreError, ThreadKey, open_store
from storage.base import NewMessage

BACKENDS = ["sqlite"]

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


def _opener_for(backend: str, tmp_path: Path) -> Opener:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'relay.db'}"  # tmp_path is absolute: sqlite:////tmp/...
        return Opener(lambda: open_store(url))
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture(params=BACKENDS)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    opener = _opener_for(str(request.param), tmp_path)
    yield opener
    await opener.close_all()


@pytest.fixture
async def store(opener: Opener) -> Store:
    return await opener.open()


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


async def drain(store: Store, thread: ThreadKey) -> list[str]:
    """Deliver the thread's messages one by one, as the relay worker does; return their ts."""
    delivered: list[str] = []
    while (nxt := await store.next_pending(thread)) is not None:
        sending = await store.mark_sending(nxt.id)
        assert sending is not None
        await store.finish(nxt.id, MessageState.DELIVERED, "delivered", None)
        delivered.append(nxt.ts)
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
    first = await enqueued(store, message("1700000001.000000"))
    second = await enqueued(store, message("1700000002.000000"))
    await store.mark_sending(first.id)  # the process dies during this attempt

    store = await opener.reopen(store)

    assert await store.threads_with_pending() == [THREAD]
    resumed = await store.next_pending(THREAD)
    assert resumed is not None
    assert (resumed.id, resumed.state, resumed.attempts) == (first.id, MessageState.SENDING, 1)
    still_pending = await store.get_message(THREAD, second.ts)
    assert still_pending is not None
    assert still_pending.state is MessageState.PENDING
    assert still_pending.text == "hello"


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


async def test_next_pending_follows_order_ts_numerically(store: Store) -> None:
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

    delivered = await drain(store, THREAD)

    seconds_micros = [(int(s), int(m)) for s, m in (ts.split(".") for ts in stamps)]
    assert delivered == [f"{s}.{m:06d}" for s, m in sorted(seconds_micros)]
    assert delivered[0] == "99999999.000001"
    assert delivered[-1] == "10000000000.000000"


async def test_next_pending_orders_corrections_by_edit_ts(store: Store) -> None:
    await enqueued(store, message("1700000001.000000"))
    await enqueued(store, message("1700000001.000000", revision="1700000003.000000"))
    await enqueued(store, message("1700000002.000000"))

    first = await store.next_pending(THREAD)
    assert first is not None
    assert (first.ts, first.revision) == ("1700000001.000000", "")
    assert await drain(store, THREAD) == [
        "1700000001.000000",
        "1700000002.000000",
        "1700000001.000000",
    ]


async def test_next_pending_breaks_ties_by_arrival(store: Store) -> None:
    for ts in ["1700000005.000000", "1700000004.000000", "1700000006.000000"]:
        await enqueued(store, message(ts, order_ts="1700000009.000000"))

    assert await drain(store, THREAD) == ["1700000005.000000", "1700000004.000000", "1700000006.000000"]


async def test_next_pending_returns_a_message_left_sending(store: Store) -> None:
    first = await enqueued(store, message("1700000001.000000"))
    await enqueued(store, message("1700000002.000000"))
    await store.mark_sending(first.id)

    nxt = await store.next_pending(THREAD)

    assert nxt is not None
    assert (nxt.id, nxt.state) == (first.id, MessageState.SENDING)


async def test_next_pending_ignores_other_threads_and_final_rows(store: Store) -> None:
    done = await enqueued(store, message("1700000001.000000"))
    await store.finish(done.id, MessageState.SKIPPED, "unbound", "binding removed")
    await enqueued(store, message("1700000000.000001", thread=OTHER_THREAD))

    assert await store.next_pending(THREAD) is None
    other = await store.next_pending(OTHER_THREAD)
    assert other is not None
    assert other.thread == OTHER_THREAD


async def test_attempt_cycle(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))

    first = await store.mark_sending(stored.id)
    assert first is not None
    assert (first.state, first.attempts) == (MessageState.SENDING, 1)
    assert first.updated_at >= stored.updated_at

    await store.mark_pending(stored.id, "rate_limited", "retry in 30s")
    waiting = await store.get_message(THREAD, stored.ts)
    assert waiting is not None
    assert (waiting.state, waiting.attempts) == (MessageState.PENDING, 1)
    assert (waiting.outcome, waiting.detail) == ("rate_limited", "retry in 30s")

    second = await store.mark_sending(stored.id)
    assert second is not None
    assert (second.state, second.attempts) == (MessageState.SENDING, 2)

    await store.finish(stored.id, MessageState.DELIVERED, "delivered", None)
    done = await store.get_message(THREAD, stored.ts)
    assert done is not None
    assert (done.state, done.attempts, done.outcome, done.detail) == (
        MessageState.DELIVERED,
        2,
        "delivered",
        None,
    )


async def test_mark_sending_again_after_a_crash_counts_the_attempt(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await store.mark_sending(stored.id)

    again = await store.mark_sending(stored.id)

    assert again is not None
    assert (again.state, again.attempts) == (MessageState.SENDING, 2)


@pytest.mark.parametrize("final", [MessageState.DELIVERED, MessageState.FAILED, MessageState.SKIPPED])
async def test_final_messages_are_never_sent_again(store: Store, final: MessageState) -> None:
    stored = await enqueued(store, message("1700000001.000000"))
    await store.mark_sending(stored.id)
    await store.finish(stored.id, final, "done", "reason")

    assert await store.mark_sending(stored.id) is None
    await store.mark_pending(stored.id, "timeout", None)
    other = MessageState.DELIVERED if final is MessageState.FAILED else MessageState.FAILED
    await store.finish(stored.id, other, "late", None)

    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.state, row.attempts, row.outcome, row.detail) == (final, 1, "done", "reason")
    assert await store.next_pending(THREAD) is None


async def test_mark_sending_unknown_id_returns_none(store: Store) -> None:
    assert await store.mark_sending(424242) is None


async def test_mark_pending_needs_a_sending_message(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))

    await store.mark_pending(stored.id, "timeout", "late")

    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.state, row.outcome, row.detail) == (MessageState.PENDING, None, None)


async def test_pending_message_can_be_skipped(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000"))

    await store.finish(stored.id, MessageState.SKIPPED, "unbound", "binding removed")

    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.state, row.attempts, row.outcome) == (MessageState.SKIPPED, 0, "unbound")


async def test_replace_pending_text_only_while_pending(store: Store) -> None:
    stored = await enqueued(store, message("1700000001.000000", text="tpyo"))
    files = '[{"name": "a.png", "permalink": "https://x/a.png"}]'

    assert await store.replace_pending_text(THREAD, stored.ts, "typo", files) is True
    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.text, row.files, row.state) == ("typo", files, MessageState.PENDING)

    await store.mark_sending(stored.id)
    assert await store.replace_pending_text(THREAD, stored.ts, "too late", "[]") is False
    row = await store.get_message(THREAD, stored.ts)
    assert row is not None
    assert (row.text, row.files) == ("typo", files)


async def test_replace_pending_text_leaves_corrections_and_unknown_messages(store: Store) -> None:
    original = await enqueued(store, message("1700000001.000000", text="v1"))
    await store.mark_sending(original.id)
    await store.finish(original.id, MessageState.DELIVERED, "delivered", None)
    await enqueued(store, message("1700000001.000000", revision="1700000002.000000", text="v2"))

    assert await store.replace_pending_text(THREAD, "1700000001.000000", "v3", "[]") is False
    correction = await store.get_message(THREAD, "1700000001.000000", "1700000002.000000")
    assert correction is not None
    assert correction.text == "v2"
    assert await store.replace_pending_text(THREAD, "1700000099.000000", "x", "[]") is False


async def test_threads_with_pending_oldest_first(store: Store) -> None:
    quiet = ThreadKey("T1", "C1", "1700000900.000000")
    stuck = ThreadKey("T1", "C3", "1700000800.000000")
    await enqueued(store, message("1700000010.000000", thread=OTHER_THREAD, received_at=300.0))
    await enqueued(store, message("1700000011.000000", thread=THREAD, received_at=200.0))
    await enqueued(store, message("1700000012.000000", thread=THREAD, received_at=400.0))
    done = await enqueued(store, message("1700000013.000000", thread=quiet, received_at=50.0))
    await store.finish(done.id, MessageState.FAILED, "not_found", "session gone")
    left_sending = await enqueued(store, message("1700000014.000000", thread=stuck, received_at=250.0))
    await store.mark_sending(left_sending.id)

    assert await store.threads_with_pending() == [THREAD, stuck, OTHER_THREAD]


async def test_threads_with_pending_empty(store: Store) -> None:
    assert await store.threads_with_pending() == []


async def test_last_message_is_the_most_recently_received(store: Store) -> None:
    assert await store.last_message(THREAD) is None
    await enqueued(store, message("1700000003.000000", received_at=100.0))
    latest = await enqueued(store, message("1700000001.000000", received_at=300.0))
    await enqueued(store, message("1700000002.000000", received_at=200.0))
    await store.finish(latest.id, MessageState.DELIVERED, "delivered", None)
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
    await store.finish(delivered.id, MessageState.DELIVERED, "delivered", None)
    sending = await enqueued(store, message("1700000002.000000"))
    await store.mark_sending(sending.id)
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
