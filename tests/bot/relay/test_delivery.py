"""The delivery engine (:mod:`bot.relay.delivery`) at its edges, through the running bot: a restart
with messages waiting, a provider no longer enabled, a message whose thread was unlinked before its
first attempt, a store that fails while claiming, and a provider call that outlasts the lease.

The bot runs for real in HTTP mode (the in-process harness); each test checks what the provider
received, what the thread shows, what the store holds and, where an operator would look, the log.
The guarantees under load, faults and signals are in ``tests/e2e/test_delivery.py`` and
``tests/e2e/test_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from storage import MessageState, OutboxMessage, StoreError
from tests.fakes.providers import Answer
from tests.harness import ALICE, CHANNEL, FEATHER_SESSION, Harness, mention_event, running
from tests.logcapture import captured_logs, log_records

PENDING = "hourglass_flowing_sand"
DELIVERED = "white_check_mark"
FAILED = "x"


def sent(text: str) -> str:
    return f"alice (via Slack): {text}"


async def final_row(h: Harness, thread: str, ts: str, within: float = 8.0) -> OutboxMessage:
    deadline = time.monotonic() + within
    while True:
        row = await h.store.get_message(h.thread(thread), ts)
        if row is not None and row.state.final:
            return row
        assert time.monotonic() < deadline, f"row {ts} never reached a final state: {row}"
        await asyncio.sleep(0.01)


def logged(log: Any, name: str) -> list[dict[str, Any]]:
    return [r for r in log_records(log) if r.get("event") == name]


def reaction_calls(h: Harness, ts: str) -> list[tuple[str, str]]:
    return [
        (call.method, str(call.args.get("name")))
        for call in h.slack.calls
        if call.method in ("reactions.add", "reactions.remove") and call.args.get("timestamp") == ts
    ]


# -- restarts ----------------------------------------------------------------------------------


async def test_messages_waiting_at_a_stop_are_sent_in_order_at_the_next_start(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), relay_retry_budget=300.0) as h:
        h.slack.add_user(ALICE, "alice")
        h.providers["devin"].set_default(Answer.status(503))
        thread = await h.link("devin")
        first = await h.reply(thread, "first")
        second = await h.reply(thread, "second")
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, first["ts"]) == [PENDING])

    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",)) as h:
            h.slack.add_user(ALICE, "alice")
            devin = h.providers["devin"]
            one, two = await final_row(h, thread, first["ts"]), await final_row(h, thread, second["ts"])
            assert (one.state, two.state) == (MessageState.DELIVERED, MessageState.DELIVERED)
            assert devin.delivered_messages() == [sent("first"), sent("second")]
            await h.settle()
            assert h.slack.reactions_on(CHANNEL, first["ts"]) == [DELIVERED]
            assert h.slack.reactions_on(CHANNEL, second["ts"]) == [DELIVERED]

    (resumed,) = logged(log, "relay_resumed")
    assert resumed["messages"] == 2
    (started,) = logged(log, "agent_relay_started")
    assert started["resumed_messages"] == 2


async def test_a_thread_whose_provider_is_no_longer_enabled_is_told_so(tmp_path: Path) -> None:
    """Feather's key was removed and the bot restarted: a reply in a thread linked to Feather is not
    sent anywhere, and its author is told why."""
    async with running(tmp_path, providers=("devin", "feather")) as h:
        thread = await h.link("feather")

    async with running(tmp_path, providers=("devin",)) as h:
        event = await h.reply(thread, "are you there?")
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome, row.detail) == (
            MessageState.FAILED,
            "refused",
            "the feather provider is not enabled any more.",
        )
        assert row.session_id == FEATHER_SESSION
        await h.settle()
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == [FAILED]
        assert [m["text"] for m in h.slack.replies_in(CHANNEL, thread)] == [
            f"<@{ALICE}> your message was not sent to feather: the feather provider is not enabled any more."
        ]
        assert h.providers["devin"].requests == []


# -- a thread unlinked before the first attempt ------------------------------------------------


async def test_a_message_whose_thread_is_unlinked_before_it_is_sent_is_skipped_quietly(
    tmp_path: Path,
) -> None:
    """The order window still holds the reply when the thread is unlinked: it is never sent, and as no
    ⏳ was ever shown, no reaction call is made for it at all."""
    async with running(tmp_path, providers=("devin",), relay_order_window=1.0) as h:
        thread = await h.link("devin")
        event = await h.reply(thread, "never mind")
        await h.sender.event(mention_event("unlink", thread_ts=thread))
        await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, thread)) == 1)
        assert "unlinked this thread" in str(h.slack.replies_in(CHANNEL, thread)[0]["text"])
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome, row.detail) == (
            MessageState.SKIPPED,
            "unlinked",
            "the thread was unlinked",
        )
        await h.settle()
        assert h.providers["devin"].requests == []
        assert reaction_calls(h, event["ts"]) == []


# -- store failures ----------------------------------------------------------------------------


async def test_a_store_failing_to_claim_is_logged_and_the_message_is_sent_once_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",), relay_poll_interval=0.05) as h:
            h.slack.add_user(ALICE, "alice")
            thread = await h.link("devin")
            claim_due = h.store.claim_due
            failures = 0

            async def flaky_claim(owner: str, *, limit: int, lease: float) -> Any:
                nonlocal failures
                if failures < 2:
                    failures += 1
                    raise StoreError("database is locked")
                return await claim_due(owner, limit=limit, lease=lease)

            monkeypatch.setattr(h.store, "claim_due", flaky_claim)
            event = await h.reply(thread, "through a locked store")
            row = await final_row(h, thread, event["ts"])
            assert (row.state, row.attempts) == (MessageState.DELIVERED, 1)
            assert h.providers["devin"].messages() == [sent("through a locked store")]
            assert failures == 2

    failed = logged(log, "relay_claim_failed")
    assert [(r["level"], r["failures"]) for r in failed] == [("error", 1), ("error", 2)]


# -- a provider call longer than the lease -----------------------------------------------------

LONG_CALL: dict[str, Any] = {"relay_lease_seconds": 1.0, "provider_timeout": 6.0}


async def test_a_call_longer_than_the_lease_keeps_its_lease_and_is_recorded_once(tmp_path: Path) -> None:
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",), **LONG_CALL) as h:
            h.slack.add_user(ALICE, "alice")
            devin = h.providers["devin"]
            devin.script(Answer.slow(2.5))  # two and a half leases
            thread = await h.link("devin")
            event = await h.reply(thread, "take your time")
            row = await final_row(h, thread, event["ts"])
            assert (row.state, row.attempts) == (MessageState.DELIVERED, 1)
            assert devin.messages() == [sent("take your time")]
            await h.settle()
            assert reaction_calls(h, event["ts"]) == [("reactions.add", DELIVERED)]
    for name in ("relay_lease_lost", "relay_lease_renew_failed", "relay_reclaimed_own_attempt"):
        assert logged(log, name) == [], name


@pytest.mark.parametrize("renewal", ["fails", "is-refused"])
async def test_a_call_whose_lease_ran_out_is_not_sent_again_and_is_recorded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renewal: str
) -> None:
    """The store does not take the renewals (it fails, or says the lease is gone): the lease runs out
    while the provider is still answering, and the engine claims the row again. It must not start a
    second attempt beside the one under way; that one records the delivery, once."""
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",), **LONG_CALL) as h:
            h.slack.add_user(ALICE, "alice")
            devin = h.providers["devin"]
            devin.script(Answer.slow(2.5))
            thread = await h.link("devin")

            async def renew(message_id: int, owner: str, lease: float) -> bool:
                if renewal == "fails":
                    raise StoreError("database is locked")
                return False

            monkeypatch.setattr(h.store, "renew", renew)
            event = await h.reply(thread, "outlast the lease")
            row = await final_row(h, thread, event["ts"])
            assert row.state is MessageState.DELIVERED
            assert devin.messages() == [sent("outlast the lease")]
            assert len(devin.requests) == 1
            await h.settle()
            assert reaction_calls(h, event["ts"]) == [("reactions.add", DELIVERED)]
            assert h.slack.replies_in(CHANNEL, thread) == []
            finished = [r for r in logged(log, "message_finished") if r.get("ts") == event["ts"]]
            assert [r["outcome"] for r in finished] == ["delivered"]

    assert logged(log, "relay_reclaimed_own_attempt"), "the lease never ran out: the test proves nothing"
    expected = "relay_lease_renew_failed" if renewal == "fails" else "relay_lease_lost"
    assert logged(log, expected)
