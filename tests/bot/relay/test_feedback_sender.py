"""The feedback sender (:class:`bot.relay.feedback.Feedback`): the durable queue of Slack calls drained
against a real SQLite store and FakeSlack.

What the thread (and an operator reading the store or the log) notices: which calls Slack received,
in what order, what became of each queued item (``done``/``failed``/still queued, and its last error),
and what was logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.relay.feedback import Feedback, FeedbackConfig, post, reaction
from bot.slack import SlackGateway, make_web_client
from storage import StoreError, ThreadKey
from storage.base import NewFeedback
from storage.sqlite import SQLiteStore
from tests.fakes import eventually
from tests.fakes.slack import FakeSlack
from tests.logcapture import captured_logs, log_records

TOKEN = "xoxb-feedback-sender-test-token"
THREAD = ThreadKey("T0TEAM", "C0ONE", "1800000000.000100")
MESSAGE_TS = "1800000000.000200"

Row = tuple[str, str, int, str | None]  # kind, state, attempts, last_error


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "feedback.db")
    await opened.init()
    yield opened
    await opened.close()


@pytest.fixture
async def senders(slack: FakeSlack, store: SQLiteStore) -> AsyncIterator[Callable[..., Feedback]]:
    """Make senders (one per process); every one made is stopped at the end."""
    made: list[Feedback] = []

    def make(owner: str = "w1", **config: Any) -> Feedback:
        values: dict[str, Any] = {"lease": 5.0, "poll_interval": 0.05} | config
        sender = Feedback(
            slack=SlackGateway(make_web_client(TOKEN, base_url=slack.api_url)),
            store=store,
            owner=owner,
            config=FeedbackConfig(**values),
        )
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.stop(0.5)


def rows(store: SQLiteStore) -> list[Row]:
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        return [
            (str(kind), str(state), int(attempts), error)
            for kind, state, attempts, error in conn.execute(
                "SELECT kind, state, attempts, last_error FROM feedback ORDER BY id"
            )
        ]


async def drained(store: SQLiteStore, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while await store.feedback_depth() > 0:
        assert time.monotonic() < deadline, f"the queue never drained: {rows(store)}"
        await asyncio.sleep(0.01)


def reply(text: str) -> NewFeedback:
    return post(THREAD, text, thread_ts=THREAD.thread_ts)


def add(name: str) -> NewFeedback:
    return reaction("reaction_add", THREAD, MESSAGE_TS, name)


def events(log: Any, name: str) -> list[dict[str, Any]]:
    return [r for r in log_records(log) if r.get("event") == name]


# -- what Slack answers ------------------------------------------------------------------------


async def test_an_item_of_an_unknown_kind_fails_without_a_slack_call_and_the_channel_goes_on(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback]
) -> None:
    """An item a newer version queued (a kind this one does not know) must not block its channel."""
    unknown = NewFeedback(channel=THREAD.channel, team=THREAD.team, kind="pin", payload={"channel": "C0ONE"})
    await store.enqueue_feedback([unknown, reply("after the unknown one")])
    senders().start()
    await drained(store)
    assert rows(store) == [("pin", "failed", 1, "unknown kind pin"), ("post", "done", 1, None)]
    assert [call.method for call in slack.calls] == ["chat.postMessage"]
    assert [m["text"] for m in slack.replies_in("C0ONE", THREAD.thread_ts)] == ["after the unknown one"]


async def test_a_final_slack_error_is_given_up_at_once_logged_and_the_channel_goes_on(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback]
) -> None:
    slack.fail_next("chat.postMessage", status=200, retry_after=None, error="channel_not_found")
    with captured_logs() as log:
        await store.enqueue_feedback([reply("lost"), add("x")])
        senders().start()
        await drained(store)
    assert rows(store) == [("post", "failed", 1, "channel_not_found"), ("reaction_add", "done", 1, None)]
    assert len(slack.calls_to("chat.postMessage")) == 1  # not tried again
    assert slack.reactions_on("C0ONE", MESSAGE_TS) == ["x"]
    (gave_up,) = events(log, "feedback_gave_up")
    assert (gave_up["level"], gave_up["method"], gave_up["error"], gave_up["attempts"]) == (
        "warning",
        "chat.postMessage",
        "channel_not_found",
        1,
    )


async def test_a_reaction_already_there_or_already_gone_counts_as_done(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback]
) -> None:
    await store.enqueue_feedback(
        [add("eyes"), add("eyes"), reaction("reaction_remove", THREAD, MESSAGE_TS, "hourglass_flowing_sand")]
    )
    senders().start()
    await drained(store)
    assert [state for _, state, _, _ in rows(store)] == ["done", "done", "done"]
    assert [c.method for c in slack.calls] == ["reactions.add", "reactions.add", "reactions.remove"]
    assert slack.reactions_on("C0ONE", MESSAGE_TS) == ["eyes"]


async def test_rate_limits_are_retried_in_order_and_the_channel_waits(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback]
) -> None:
    """The web client retries a short Retry-After twice itself; then the queue stores a next attempt
    time. The channel's later reply waits for the reaction, so the thread sees them in order."""
    slack.fail_next("reactions.add", status=429, retry_after=0.01, times=4)
    await store.enqueue_feedback([add("hourglass_flowing_sand"), reply("then this")])
    senders().start()
    await drained(store)
    assert rows(store) == [("reaction_add", "done", 2, "ratelimited"), ("post", "done", 1, None)]
    assert [c.method for c in slack.calls] == ["reactions.add"] * 5 + ["chat.postMessage"]
    assert slack.reactions_on("C0ONE", MESSAGE_TS) == ["hourglass_flowing_sand"]


async def test_transient_errors_are_given_up_after_the_last_attempt(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback]
) -> None:
    slack.fail_next("reactions.add", status=429, retry_after=0.01, times=1000)
    with captured_logs() as log:
        await store.enqueue_feedback([add("white_check_mark"), reply("still said")])
        senders(max_attempts=3).start()
        await drained(store)
    assert rows(store) == [("reaction_add", "failed", 3, "ratelimited"), ("post", "done", 1, None)]
    assert len(slack.calls_to("reactions.add")) == 3 * 3  # three attempts, each tried three times
    assert slack.reactions_on("C0ONE", MESSAGE_TS) == []
    (gave_up,) = events(log, "feedback_gave_up")
    assert (gave_up["method"], gave_up["error"], gave_up["attempts"]) == ("reactions.add", "ratelimited", 3)


# -- the store ---------------------------------------------------------------------------------


async def test_a_failing_claim_is_logged_and_the_queue_is_sent_once_the_store_answers(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = store.claim_feedback
    failures = 0

    async def flaky_claim(owner: str, *, limit: int, lease: float) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise StoreError("database is locked")
        return await claim(owner, limit=limit, lease=lease)

    monkeypatch.setattr(store, "claim_feedback", flaky_claim)
    with captured_logs() as log:
        await store.enqueue_feedback([reply("eventually")])
        senders().start()
        await drained(store)
    assert failures == 2
    assert [m["text"] for m in slack.replies_in("C0ONE", THREAD.thread_ts)] == ["eventually"]
    failed = events(log, "feedback_claim_failed")
    assert [r["level"] for r in failed] == ["error", "error"]
    assert all("database is locked" in str(r.get("exception")) for r in failed)


async def test_an_item_whose_outcome_could_not_be_recorded_is_sent_again_after_its_lease(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaction was added but the store did not take ``done``: the item stays leased, is taken again
    once the lease runs out, and Slack's ``already_reacted`` then ends it. Logged, not lost."""
    done = store.feedback_done
    failures = 0

    async def flaky_done(item_id: int, owner: str) -> bool:
        nonlocal failures
        if failures < 1:
            failures += 1
            raise StoreError("disk I/O error")
        return await done(item_id, owner)

    monkeypatch.setattr(store, "feedback_done", flaky_done)
    with captured_logs() as log:
        await store.enqueue_feedback([add("white_check_mark")])
        senders(lease=0.3).start()
        await drained(store)
    assert rows(store) == [("reaction_add", "done", 2, None)]
    assert len(slack.calls_to("reactions.add")) == 2
    assert slack.reactions_on("C0ONE", MESSAGE_TS) == ["white_check_mark"]
    (crashed,) = events(log, "feedback_send_crashed")
    assert crashed["level"] == "error"
    assert "disk I/O error" in str(crashed.get("exception"))


# -- concurrency and stopping ------------------------------------------------------------------


async def test_no_more_calls_in_flight_than_the_concurrency(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback]
) -> None:
    slack.delay("chat.postMessage", 0.1)
    await store.enqueue_feedback([post(ThreadKey("T0TEAM", f"C{n}", "1.0"), f"to C{n}") for n in range(3)])
    senders(concurrency=1).start()
    await drained(store)
    arrived = [call.received_at for call in slack.calls_to("chat.postMessage")]
    assert len(arrived) == 3
    assert all(later - earlier >= 0.095 for earlier, later in itertools.pairwise(arrived))
    assert sorted(m["text"] for m in slack.messages) == ["to C0", "to C1", "to C2"]


async def test_items_claimed_while_stopping_are_handed_back_unsent(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = store.claim_feedback
    claimed, release = asyncio.Event(), asyncio.Event()

    async def slow_claim(owner: str, *, limit: int, lease: float) -> Any:
        items = await claim(owner, limit=limit, lease=lease)
        if items and not release.is_set():
            claimed.set()
            await release.wait()  # the stop begins while this claim is in hand
        return items

    monkeypatch.setattr(store, "claim_feedback", slow_claim)
    await store.enqueue_feedback([reply("not yet")])
    first = senders("w1")
    first.start()
    await asyncio.wait_for(claimed.wait(), 5)
    stopping = asyncio.create_task(first.stop(1.0))
    await asyncio.sleep(0)  # the stop has begun: the sender is closing
    release.set()
    await asyncio.wait_for(stopping, 5)

    assert slack.calls == []
    assert rows(store) == [("post", "pending", 1, "shutdown")]  # at once claimable by anyone
    second = senders("w2")  # the next start, or another replica
    second.start()
    await drained(store)
    assert [m["text"] for m in slack.messages] == ["not yet"]


async def test_stop_waits_for_a_slow_call_only_until_the_deadline_and_keeps_it_queued(
    slack: FakeSlack, store: SQLiteStore, senders: Callable[..., Feedback]
) -> None:
    slack.delay("chat.postMessage", 5.0)
    await store.enqueue_feedback([reply("slow")])
    sender = senders()
    sender.start()
    await eventually(lambda: len(slack.calls_to("chat.postMessage")) == 1)
    started = time.monotonic()
    await sender.stop(0.2)
    assert time.monotonic() - started < 1.5
    # Not recorded as done or failed: its lease runs out and whoever runs next sends it.
    assert rows(store) == [("post", "sending", 1, None)]
    assert await store.feedback_depth() == 1
