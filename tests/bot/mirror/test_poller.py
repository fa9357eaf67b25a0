"""The poller on a real SQLite store with stand-in providers: pace, leases, failures, wake-ups."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from bot.mirror.pace import Pace
from bot.mirror.poller import MirrorConfig, Poller
from bot.outcomes import NotFound, RateLimited, Unauthorized, Unavailable
from bot.providers.base import (
    AgentItem,
    Capability,
    ItemKind,
    Provider,
    ReadFailure,
    SessionSnapshot,
    SessionState,
)
from bot.relay.feedback import Feedback
from bot.slack import SlackGateway
from storage import Binding, MirrorMode, Store, StoreError, ThreadKey
from storage.base import FeedbackItem
from storage.sqlite import SQLiteStore

THREAD = ThreadKey("T1", "C1", "1700000000.000100")
SESSION = "devin-s1"


class Reader:
    """A provider that only reads: answers come from ``answers`` (the last one repeats)."""

    name: ClassVar[str] = "devin"
    label: ClassVar[str] = "Devin"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ_SESSION})

    def __init__(self, *answers: SessionSnapshot | ReadFailure | Exception) -> None:
        self.answers = list(answers)
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def read_session(self, session_id: str) -> SessionSnapshot | ReadFailure:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def snapshot(*texts: str, state: SessionState = SessionState.WORKING) -> SessionSnapshot:
    items = tuple(AgentItem(key=f"k{n}", kind=ItemKind.AGENT, text=t) for n, t in enumerate(texts))
    return SessionSnapshot(state=state, items=items)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = SQLiteStore(tmp_path / "relay.db")
    await opened.init()
    await opened.bind(
        Binding(key=THREAD, provider="devin", session_id=SESSION, linked_by="U1", linked_at=1.0)
    )
    yield opened
    await opened.close()


def poller(store: Store, reader: Reader | None, **config: Any) -> Poller:
    feedback = Feedback(slack=cast(SlackGateway, None), store=store, owner="test")
    providers = {"devin": cast(Provider, reader)} if reader is not None else {}
    values: dict[str, Any] = {"pace": Pace(interval=0.05, idle_max=0.2, failure_max=30.0)}
    values.update(config)
    return Poller(
        store=store,
        providers=providers,
        feedback=feedback,
        config=MirrorConfig(**values),
        owner="p1",
        rng=random.Random(1),
    )


async def until(check: Callable[[], Any], what: str) -> None:
    for _ in range(500):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


async def test_a_linked_thread_is_read_at_once_and_posts_come_from_later_reads(store: Store) -> None:
    reader = Reader(snapshot("old"), snapshot("old", "new"))
    p = poller(store, reader)
    await p.on_linked(await store.get_binding(THREAD))  # type: ignore[arg-type]
    p.start()
    try:

        async def seen() -> bool:
            watch = await store.get_watch(THREAD)
            return watch is not None and watch.last_agent_text == "new"

        await until(seen, "the second read was not stored")
    finally:
        await p.stop(1.0)
    # The status message (the thread was linked by mention) and the new message; "old" was history.
    assert await store.feedback_depth() == 2
    assert reader.reads >= 2


async def test_a_finished_session_stops_being_read_until_woken(store: Store) -> None:
    reader = Reader(snapshot("done", state=SessionState.FINISHED))
    await store.watch_thread(THREAD, "devin", SESSION)
    p = poller(store, reader)
    p.start()
    try:
        await until(lambda: reader.reads >= 1, "never read")

        async def stopped() -> bool:
            watch = await store.get_watch(THREAD)
            return watch is not None and watch.state == "finished" and watch.next_poll_at is None

        await until(stopped, "not stopped")
        reads = reader.reads
        await p.wake_thread(THREAD)
        await until(lambda: reader.reads > reads, "a wake-up did not read it again")
    finally:
        await p.stop(1.0)


async def test_a_provider_that_is_not_enabled_any_more_stops_its_watches(store: Store) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    p = poller(store, None)
    p.start()
    try:

        async def stopped() -> bool:
            watch = await store.get_watch(THREAD)
            return watch is not None and watch.next_poll_at is None

        await until(stopped, "the watch was not stopped")
    finally:
        await p.stop(1.0)


@pytest.mark.parametrize(
    ("failure", "at_least"),
    [
        (Unauthorized(), 30.0),
        (NotFound(), 30.0),
        (RateLimited(retry_after=20.0), 20.0),
        (Unavailable(), 0.09),
    ],
)
async def test_a_failed_read_pushes_the_next_one_back(
    store: Store, failure: ReadFailure, at_least: float
) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    reader = Reader(failure)
    p = poller(store, reader)
    p.start()
    try:

        async def failed() -> bool:
            watch = await store.get_watch(THREAD)
            return watch is not None and watch.failures >= 1

        await until(failed, "no failure recorded")
    finally:
        await p.stop(1.0)
    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert watch.next_poll_at is not None
    assert watch.next_poll_at - await store.now() >= at_least * 0.9 - 0.5
    assert watch.watermark is None  # nothing read: nothing moved


async def test_a_provider_failing_again_and_again_is_paused(store: Store) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    reader = Reader(Unavailable())
    p = poller(store, reader, pace=Pace(interval=0.01, idle_max=0.02, failure_max=0.02))
    p.start()
    try:
        await until(lambda: reader.reads >= 3, "not read three times")

        async def postponed() -> bool:  # the pause moves the watch on without a read
            watch = await store.get_watch(THREAD)
            return watch is not None and watch.failures >= 3

        await until(postponed, "not postponed")
    finally:
        await p.stop(1.0)


async def test_a_session_read_elsewhere_is_skipped(store: Store) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    assert await store.acquire_lease(f"mirror:devin:{SESSION}", "another-replica", 30.0)
    reader = Reader(snapshot("x"))
    p = poller(store, reader)
    p.start()
    try:
        await asyncio.sleep(0.2)  # a bounded wait in which a read would have happened
        assert reader.reads == 0
        await store.release_lease(f"mirror:devin:{SESSION}", "another-replica")
        await until(lambda: reader.reads >= 1, "not read once the lease was free")
    finally:
        await p.stop(1.0)


async def test_a_thread_in_mode_off_is_not_read(store: Store) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    await store.set_watch_mode(THREAD, MirrorMode.OFF, reset=False)
    other = ThreadKey("T1", "C1", "1700000500.000200")
    await store.bind(
        Binding(key=other, provider="devin", session_id="devin-other", linked_by="U1", linked_at=2.0)
    )
    await store.watch_thread(other, "devin", "devin-other")
    reader = Reader(snapshot("x"))
    p = poller(store, reader)
    p.start()
    try:
        await until(lambda: reader.reads >= 1, "the other thread was not read")
    finally:
        await p.stop(1.0)
    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert watch.watermark is None


async def test_a_read_that_crashes_is_logged_and_the_lease_given_back(store: Store) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    reader = Reader(RuntimeError("a bug"))
    p = poller(store, reader)
    p.start()
    try:
        await until(lambda: reader.reads >= 2, "not read again after the crash")
    finally:
        await p.stop(1.0)
    assert await store.acquire_lease(f"mirror:devin:{SESSION}", "someone-else", 1.0)


async def test_stop_cancels_a_read_that_does_not_finish(store: Store) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    reader = Reader(snapshot("x"))
    reader.gate = asyncio.Event()  # never set
    p = poller(store, reader)
    p.start()
    await until(lambda: reader.reads >= 1, "never read")
    await p.stop(0.05)
    assert await store.acquire_lease(f"mirror:devin:{SESSION}", "someone-else", 1.0)


class Failing(SQLiteStore):
    """A store whose mirror calls fail."""

    async def watch_thread(self, *args: Any, **kwargs: Any) -> None:
        raise StoreError("down")

    async def wake_watch(self, thread: ThreadKey) -> bool:
        raise StoreError("down")

    async def due_watches(self, *, limit: int, include_unset: bool) -> list[Any]:
        raise StoreError("down")


async def test_store_failures_are_logged_not_raised(tmp_path: Path) -> None:
    store = Failing(tmp_path / "relay.db")
    await store.init()
    try:
        p = poller(store, Reader(snapshot("x")))
        binding = Binding(key=THREAD, provider="devin", session_id=SESSION, linked_by="U1", linked_at=1.0)
        await p.on_linked(binding)
        await p.wake_thread(THREAD)
        p.start()
        await asyncio.sleep(0.1)
        await p.stop(1.0)
    finally:
        await store.close()


async def test_the_ts_of_a_posted_status_message_is_remembered(store: Store) -> None:
    await store.watch_thread(THREAD, "devin", SESSION)
    p = poller(store, Reader(snapshot()))
    item = FeedbackItem(
        id=1,
        team="T1",
        channel="C1",
        kind="status_post",
        payload={"thread_ts": THREAD.thread_ts},
        attempts=1,
        created_at=0.0,
        owner="x",
    )
    await p._status_posted(item, "1700000000.000999")  # what Feedback calls
    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert watch.status_ts == "1700000000.000999"
