"""The retention job: one replica at a time, in batches, only what is old enough."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.metrics import Metrics
from bot.retention import DAY, Retention
from storage import MessageState, Purged, Store, StoreError, ThreadKey, open_store
from storage.base import NewMessage
from tests.logcapture import captured_logs, log_records


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    await store.init()
    yield store
    await store.close()


async def deliver(store: Store, n: int, first: int = 0) -> list[ThreadKey]:
    threads = []
    for i in range(first, first + n):
        thread = ThreadKey("T1", "C1", f"1700000{i:03d}.000000")
        new = NewMessage(
            thread,
            f"1700001{i:03d}.000000",
            "",
            f"1700001{i:03d}.000000",
            "U1",
            "private words",
            "[]",
            "devin",
            "s",
            1.0,
        )
        assert await store.enqueue(new) is not None
        threads.append(thread)
    claims = await store.claim_due("w", limit=n, lease=30)
    assert len(claims) == n
    for claim in claims:
        assert await store.complete(claim.message.id, "w", MessageState.DELIVERED, "delivered", None)
    return threads


async def texts(store: Store, threads: list[ThreadKey]) -> list[str]:
    rows = [await store.last_message(thread) for thread in threads]
    return [row.text for row in rows if row is not None]


def purged(metrics: Metrics, table: str) -> float | None:
    return metrics.registry.get_sample_value("agent_relay_retention_purged_total", {"table": table})


async def test_one_replica_purges_in_batches_what_is_older_than_the_days(store: Store) -> None:
    threads = await deliver(store, 5)
    metrics = Metrics()
    tiny = 0.05 / DAY  # 50 ms
    first = Retention(store, days=tiny, owner="r1", metrics=metrics, batch=2, pause=0.0)
    second = Retention(store, days=tiny, owner="r2", batch=2, pause=0.0)

    assert await Retention(store, days=1.0, owner="r1").run_once() == Purged()  # nothing a day old
    assert await texts(store, threads) == ["private words"] * 5
    await asyncio.sleep(0.1)
    assert await second.run_once() == Purged()  # r1 held the lease since its pass above
    assert await first.run_once() == Purged(messages=5, feedback=0)

    assert await texts(store, threads) == [""] * 5
    assert purged(metrics, "messages") == 5
    assert (await store.count_messages())[MessageState.DELIVERED] == 5  # rows and counts stay
    assert await first.run_once() == Purged()  # nothing twice


async def test_the_lease_passes_to_another_replica_when_it_expires(store: Store) -> None:
    await deliver(store, 1)
    await asyncio.sleep(0.1)
    first = Retention(store, days=0.05 / DAY, owner="r1", interval=1.0)
    second = Retention(store, days=0.05 / DAY, owner="r2", interval=1.0)
    assert await first.run_once() == Purged(messages=1)
    later = await deliver(store, 1, first=1)
    await asyncio.sleep(0.1)

    assert await second.run_once() == Purged()  # r1's pass holds the lease for its interval
    assert await texts(store, later) == ["private words"]
    await asyncio.sleep(1.0)
    assert await second.run_once() == Purged(messages=1)
    assert await texts(store, later) == [""]


async def test_the_job_runs_on_its_own_after_its_first_delay(store: Store) -> None:
    threads = await deliver(store, 2)
    await asyncio.sleep(0.1)
    job = Retention(store, days=0.05 / DAY, owner="r1", first_delay=0.05, interval=60.0)
    job.start()
    try:
        async with asyncio.timeout(10):
            while await texts(store, threads) != ["", ""]:  # noqa: ASYNC110 - polling the store
                await asyncio.sleep(0.02)
    finally:
        await job.stop()


async def test_a_failed_pass_is_logged_and_the_next_one_runs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = await deliver(store, 1)
    await asyncio.sleep(0.1)
    real = store.purge_before
    failures: list[float] = []

    async def flaky(cutoff: float, *, batch: int) -> Purged:
        if not failures:
            failures.append(cutoff)
            raise StoreError("database is locked")
        return await real(cutoff, batch=batch)

    monkeypatch.setattr(store, "purge_before", flaky)
    job = Retention(store, days=0.05 / DAY, owner="r1", first_delay=0.0, interval=0.05)
    with captured_logs() as log:
        job.start()
        try:
            async with asyncio.timeout(10):
                while await texts(store, threads) != [""]:  # noqa: ASYNC110 - polling the store
                    await asyncio.sleep(0.02)
        finally:
            await job.stop()
    assert len(failures) == 1
    assert [r["error"] for r in log_records(log) if r["event"] == "retention_failed"] == [
        "database is locked"
    ]


async def test_a_pass_stops_when_another_replica_took_its_lease(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = await deliver(store, 3)
    await asyncio.sleep(0.1)
    answers = iter([True, False])

    async def lease(_name: str, _owner: str, _ttl: float) -> bool:
        return next(answers)

    monkeypatch.setattr(store, "acquire_lease", lease)
    job = Retention(store, days=0.05 / DAY, owner="r1", batch=1, pause=0.0)

    assert await job.run_once() == Purged(messages=1)  # one batch, then the lease was gone
    assert sorted(await texts(store, threads)) == ["", "private words", "private words"]
