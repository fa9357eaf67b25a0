"""The heartbeat behind /livez, the store gauges of /metrics, and the metrics' label rules."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.app import event_type
from bot.health import Heartbeat
from bot.metrics import Metrics, StoreGauges, retry_label
from storage import NewFeedback, StoreError, open_store
from tests.fakes import eventually
from tests.logcapture import captured_logs, log_records


async def test_the_heartbeat_notices_a_blocked_event_loop() -> None:
    metrics = Metrics()
    heartbeat = Heartbeat(metrics, interval=0.01, stale_after=1.0)
    assert not heartbeat.alive  # not started
    heartbeat.start()
    try:
        await asyncio.sleep(0.05)
        assert heartbeat.alive

        time.sleep(1.1)  # noqa: ASYNC251 - the point: nothing else runs on the loop meanwhile
        assert not heartbeat.alive
        assert heartbeat.age >= 1.1

        last = heartbeat.beat_at
        while heartbeat.beat_at == last:  # noqa: ASYNC110 - the loop runs again, so does the (late) beat
            await asyncio.sleep(0)
        assert heartbeat.alive
        lag = metrics.registry.get_sample_value("agent_relay_event_loop_lag_seconds")
        assert lag is not None
        assert lag >= 1.0
    finally:
        await heartbeat.stop()
    assert not heartbeat.alive


@pytest.mark.parametrize(
    ("header", "label"),
    [(None, "0"), ("", "0"), ("0", "0"), ("1", "1"), ("3", "3"), ("17", "3"), ("x", "0"), ("9" * 50, "0")],
)
def test_the_retry_label_is_one_of_four_values(header: str | None, label: str) -> None:
    assert retry_label(header) == label


def test_the_event_type_label() -> None:
    assert event_type({"type": "event_callback", "event": {"type": "message"}}) == "message"
    assert event_type({"command": "/agent", "text": "help"}) == "slash_command"
    assert event_type({"type": "app_rate_limited", "team_id": "T1"}) == "app_rate_limited"
    assert event_type({"type": "x" * 500}) == "x" * 64
    assert event_type({}) == "unknown"


async def test_store_gauges_keep_their_values_while_the_store_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    await store.init()
    metrics = Metrics()
    gauges = StoreGauges(metrics, store, interval=0.01)

    def depth() -> float | None:
        return metrics.registry.get_sample_value("agent_relay_feedback_queue_items")

    try:
        await store.enqueue_feedback([NewFeedback(channel="C1", kind="post", payload={"text": "x"})])
        with captured_logs() as log:
            gauges.start()
            await eventually(lambda: depth() == 1)
            real = store.feedback_depth

            async def failing() -> int:
                raise StoreError("database is locked")

            monkeypatch.setattr(store, "feedback_depth", failing)
            await eventually(lambda: "store_metrics_failed" in log.getvalue())
            assert depth() == 1  # the last value read stays
            monkeypatch.setattr(store, "feedback_depth", real)
            await store.enqueue_feedback([NewFeedback(channel="C2", kind="post", payload={"text": "y"})])
            await eventually(lambda: depth() == 2)
        assert [r["event"] for r in log_records(log)].count("store_metrics_failed") == 1  # said once
    finally:
        await gauges.stop()
        await store.close()
