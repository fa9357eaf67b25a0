"""The store's mirror watches (``mirror_watch``), against every backend: the contract the poller uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import asyncpg
import pytest

from storage import Binding, MirrorMode, MirrorProgress, Store, ThreadKey, open_store
from storage.base import NewFeedback
from storage.migrations import apply_migrations as apply_sqlite_migrations
from storage.migrations import load_migrations
from storage.postgres import apply_migrations as apply_pg_migrations

THREAD = ThreadKey("T1", "C1", "1700000000.000100")
OTHER = ThreadKey("T1", "C1", "1700000500.000200")


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = open_store(url)
    await opened.init()
    yield opened
    await opened.close()


async def bound(store: Store, thread: ThreadKey = THREAD, session: str = "devin-s1", at: float = 1.0) -> None:
    await store.bind(Binding(key=thread, provider="devin", session_id=session, linked_by="U1", linked_at=at))
    await store.watch_thread(thread, "devin", session)


def progress(**changes: object) -> MirrorProgress:
    values: dict[str, object] = {
        "watermark": '{"key": "e1"}',
        "state": "working",
        "status_text": "working",
        "last_agent_text": "hi",
        "idle_polls": 0,
        "failures": 0,
        "next_poll_in": 60.0,
    }
    values.update(changes)
    return MirrorProgress(**values)  # type: ignore[arg-type]


async def test_a_new_watch_is_due_now_and_never_read(store: Store) -> None:
    await bound(store)

    watch = await store.get_watch(THREAD)

    assert watch is not None
    assert (watch.provider, watch.session_id) == ("devin", "devin-s1")
    assert (watch.mode, watch.watermark) == (None, None)
    assert watch.next_poll_at is not None
    assert watch.next_poll_at <= await store.now()
    assert [w.thread for w in await store.due_watches(limit=10, include_unset=True)] == [THREAD]


async def test_record_poll_stores_progress_and_feedback_together(store: Store) -> None:
    await bound(store)
    item = NewFeedback(channel="C1", team="T1", kind="post", payload={"text": "a"}, dedupe_key="mirror:k1")

    assert await store.record_poll(THREAD, "devin", "devin-s1", progress(), feedback=[item])
    assert await store.record_poll(THREAD, "devin", "devin-s1", progress(), feedback=[item])

    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert (watch.watermark, watch.state, watch.status_text, watch.last_agent_text) == (
        '{"key": "e1"}',
        "working",
        "working",
        "hi",
    )
    assert await store.feedback_depth() == 1  # the dedupe key stored it once
    assert await store.due_watches(limit=10, include_unset=True) == []  # due in a minute


async def test_record_poll_of_another_session_changes_nothing(store: Store) -> None:
    await bound(store)
    await store.watch_thread(THREAD, "devin", "devin-s2")  # linked again, to another session
    item = NewFeedback(channel="C1", team="T1", kind="post", payload={"text": "a"})

    assert not await store.record_poll(THREAD, "devin", "devin-s1", progress(), feedback=[item])

    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert watch.watermark is None
    assert watch.session_id == "devin-s2"
    assert await store.feedback_depth() == 0


async def test_a_stopped_watch_is_not_due_until_woken(store: Store) -> None:
    await bound(store)
    await store.record_poll(THREAD, "devin", "devin-s1", progress(state="finished", next_poll_in=None))
    assert await store.due_watches(limit=10, include_unset=True) == []

    assert await store.wake_watch(THREAD)
    assert not await store.wake_watch(OTHER)

    [watch] = await store.due_watches(limit=10, include_unset=True)
    assert (watch.thread, watch.idle_polls) == (THREAD, 0)


async def test_due_watches_follow_the_mode_and_the_default(store: Store) -> None:
    await bound(store)
    await bound(store, OTHER, at=2.0)
    assert await store.set_watch_mode(OTHER, MirrorMode.OFF, reset=False)

    assert [w.thread for w in await store.due_watches(limit=10, include_unset=True)] == [THREAD]
    assert await store.due_watches(limit=10, include_unset=False) == []

    await store.set_watch_mode(THREAD, MirrorMode.FINAL, reset=False)
    await store.set_watch_mode(OTHER, MirrorMode.ON, reset=False)
    assert {w.thread for w in await store.due_watches(limit=10, include_unset=False)} == {THREAD, OTHER}
    assert len(await store.due_watches(limit=1, include_unset=False)) == 1
    assert not await store.set_watch_mode(ThreadKey("T1", "C9", "1.0"), MirrorMode.ON, reset=False)


async def test_setting_the_mode_can_forget_the_watermark(store: Store) -> None:
    await bound(store)
    await store.record_poll(THREAD, "devin", "devin-s1", progress(idle_polls=3))

    await store.set_watch_mode(THREAD, MirrorMode.OFF, reset=False)
    kept = await store.get_watch(THREAD)
    await store.set_watch_mode(THREAD, MirrorMode.ON, reset=True)
    forgotten = await store.get_watch(THREAD)

    assert kept is not None
    assert (kept.mode, kept.watermark) == (MirrorMode.OFF, '{"key": "e1"}')
    assert forgotten is not None
    assert (forgotten.mode, forgotten.watermark) == (MirrorMode.ON, None)
    assert forgotten.idle_polls == 0


async def test_linking_again_starts_the_watch_afresh_but_keeps_the_mode(store: Store) -> None:
    await bound(store)
    await store.set_watch_mode(THREAD, MirrorMode.FINAL, reset=False)
    await store.set_watch_status_ts(THREAD, "1700000000.000900")
    await store.record_poll(THREAD, "devin", "devin-s1", progress(failures=2))

    await store.watch_thread(THREAD, "devin", "devin-s9", status_ts="1700000000.000100")

    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert (watch.session_id, watch.mode, watch.watermark, watch.state) == (
        "devin-s9",
        MirrorMode.FINAL,
        None,
        None,
    )
    assert (watch.status_ts, watch.status_text, watch.failures) == ("1700000000.000100", None, 0)


async def test_status_ts_is_remembered(store: Store) -> None:
    await bound(store)
    assert await store.set_watch_status_ts(THREAD, "1700000000.000900")
    assert not await store.set_watch_status_ts(OTHER, "1700000000.000900")
    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert watch.status_ts == "1700000000.000900"


async def test_session_watches_are_every_thread_of_the_session(store: Store) -> None:
    await bound(store, THREAD, at=2.0)
    await bound(store, OTHER, at=1.0)
    await bound(store, ThreadKey("T1", "C2", "1700000600.000300"), session="devin-other", at=3.0)

    watches = await store.session_watches("devin", "devin-s1")

    assert [w.thread for w in watches] == [OTHER, THREAD]  # oldest link first


async def test_unlinking_removes_the_watch(store: Store) -> None:
    await bound(store)
    await store.unbind(THREAD)

    assert await store.get_watch(THREAD) is None
    assert await store.due_watches(limit=10, include_unset=True) == []


async def test_a_watch_survives_a_restart(store: Store, url: str) -> None:
    await bound(store)
    await store.record_poll(THREAD, "devin", "devin-s1", progress())
    before = await store.get_watch(THREAD)
    again = open_store(url)
    await again.init()
    try:
        after = await again.get_watch(THREAD)
    finally:
        await again.close()

    assert after == before


async def test_two_pollers_of_one_session_have_one_lease_holder(store: Store) -> None:
    await bound(store)
    name = "mirror:devin:devin-s1"

    won = await asyncio.gather(*(store.acquire_lease(name, f"p{n}", 30.0) for n in range(5)))

    assert sorted(won) == [False, False, False, False, True]


async def _database_at_version_2(url: str) -> None:
    """A database as the release before the mirror left it, with one slash-linked thread."""
    insert = (
        "INSERT INTO bindings (team, channel, thread_ts, provider, session_id, linked_by, linked_at,"
        " muted, anchor_ts) VALUES ('T1', 'C1', '1700000000.000100', 'devin', 'devin-old', 'U1', 1.0,"
    )
    if url.startswith("sqlite"):
        async with aiosqlite.connect(url.removeprefix("sqlite:///"), isolation_level=None) as conn:
            await apply_sqlite_migrations(conn, load_migrations("sqlite")[:2])
            await conn.execute(insert + " 0, '1700000000.000100')")
        return
    pg = await asyncpg.connect(url)
    try:
        await apply_pg_migrations(pg, load_migrations("postgres")[:2])
        await pg.execute(insert + " false, '1700000000.000100')")
    finally:
        await pg.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_threads_linked_before_the_upgrade_are_watched_after_it(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    )
    await _database_at_version_2(url)

    upgraded = open_store(url)
    await upgraded.init()
    try:
        watch = await upgraded.get_watch(THREAD)
        due = await upgraded.due_watches(limit=10, include_unset=True)
        version = await upgraded.schema_version()
    finally:
        await upgraded.close()

    assert version >= 3
    assert watch is not None
    assert (watch.session_id, watch.status_ts, watch.watermark) == ("devin-old", THREAD.thread_ts, None)
    assert [w.thread for w in due] == [THREAD]
