"""Delivery guarantees (issue 4): never lose, duplicate or reorder a relayed message.

The bot runs for real in HTTP mode on loopback against FakeSlack and the fake providers (the
in-process harness). Each test checks what the provider received, what the thread shows and what the
store holds. Crash and signal behaviour of the real process is in ``test_process.py``.

"Nothing happened" is never asserted after a sleep: a later message in the same thread is used as a
barrier. A thread's messages reach the provider in ts order, so once a later message is delivered,
anything the bot would have sent before it (a correction, a retry) has been sent too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from storage import MessageState, OutboxMessage
from tests.fakes.providers import Answer, FakeProvider
from tests.harness import (
    AGEN_SESSION,
    ALICE,
    BOT_USER,
    CHANNEL,
    DEVIN_SESSION,
    Harness,
    message_event,
    new_ts,
    running,
)

PENDING = "hourglass_flowing_sand"
DELIVERED = "white_check_mark"
FAILED = "x"


def sent(text: str) -> str:
    """What Devin receives for ``text`` written by alice."""
    return f"alice (via Slack): {text}"


@asynccontextmanager
async def devin(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Harness, FakeProvider]]:
    """agent-relay with only Devin enabled; alice is a known Slack user."""
    async with running(tmp_path, providers=("devin",), **overrides) as h:
        h.slack.add_user(ALICE, "alice")
        yield h, h.providers["devin"]


async def row_of(h: Harness, thread: str, ts: str, revision: str = "") -> OutboxMessage:
    row = await h.store.get_message(h.thread(thread), ts, revision)
    assert row is not None, f"message {ts} was never stored"
    return row


async def wait_state(h: Harness, thread: str, ts: str, state: MessageState) -> OutboxMessage:
    """Wait until the stored row of ``ts`` reaches ``state``; return it."""
    rows: list[OutboxMessage | None] = [None]

    async def poll() -> None:
        while True:
            rows[0] = await h.store.get_message(h.thread(thread), ts)
            if rows[0] is not None and rows[0].state is state:
                return
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), 5.0)
    except TimeoutError:
        raise AssertionError(f"row {ts} is {rows[0]}, never {state}") from None
    assert rows[0] is not None
    return rows[0]


async def wait_reaction(h: Harness, ts: str, reaction: str) -> None:
    await h.slack.wait_for(lambda: reaction in h.slack.reactions_on(CHANNEL, ts))


def reaction_calls(h: Harness, ts: str) -> list[tuple[str, str]]:
    """``(method, reaction)`` of every reactions.add/remove call on ``ts``, in call order."""
    return [
        (call.method, str(call.args.get("name")))
        for call in h.slack.calls
        if call.method in ("reactions.add", "reactions.remove") and call.args.get("timestamp") == ts
    ]


def edit_event(
    original: dict[str, Any], new_text: str, *, edited_ts: str | None = None, **inner: Any
) -> dict[str, Any]:
    """A ``message_changed`` event for ``original`` (as Slack sends it for an edit or an unfurl)."""
    message = {
        "type": "message",
        "user": original["user"],
        "text": new_text,
        "ts": original["ts"],
        "thread_ts": original["thread_ts"],
        "team": original["team"],
        **inner,
    }
    if edited_ts is not None:
        message["edited"] = {"user": original["user"], "ts": edited_ts}
    event_ts = new_ts()
    return {
        "type": "message",
        "subtype": "message_changed",
        "channel": original["channel"],
        "hidden": True,
        "message": message,
        "previous_message": as_previous(original),
        "event_ts": event_ts,
        "ts": event_ts,
    }


def as_previous(original: dict[str, Any]) -> dict[str, Any]:
    """The ``previous_message`` Slack attaches to an edit or a deletion of ``original``."""
    return {key: original[key] for key in ("user", "text", "ts", "thread_ts")} | {"type": "message"}


def delete_event(original: dict[str, Any]) -> dict[str, Any]:
    event_ts = new_ts()
    return {
        "type": "message",
        "subtype": "message_deleted",
        "channel": original["channel"],
        "hidden": True,
        "deleted_ts": original["ts"],
        "previous_message": as_previous(original),
        "event_ts": event_ts,
        "ts": event_ts,
    }


def report(label: str, streams: list[tuple[list[str], list[str]]]) -> None:
    """Print sent / received / duplicated / out-of-order totals over ``(expected, got)`` pairs, one per
    thread. Out of order: adjacent received messages in the wrong order."""
    sent_count = received = duplicated = out_of_order = 0
    for expected, got in streams:
        position = {text: i for i, text in enumerate(expected)}
        ranks = [position[text] for text in got if text in position]
        sent_count += len(expected)
        received += len(got)
        duplicated += len(got) - len(set(got))
        out_of_order += sum(1 for a, b in itertools.pairwise(ranks) if a > b)
    print(
        f"\n{label}: sent {sent_count}, provider received {received}, "
        f"duplicated {duplicated}, out of order {out_of_order}"
    )


async def barrier(h: Harness, fake: FakeProvider, thread: str, text: str = "barrier") -> None:
    """Reply ``text`` in ``thread`` and wait until the provider has it: everything the bot meant to
    send in this thread before it has been sent by then."""
    event = await h.reply(thread, text)
    await wait_state(h, thread, event["ts"], MessageState.DELIVERED)
    assert sent(text) in fake.messages()


# -- (a) Slack retries and the mention double delivery ----------------------------------------


async def test_retries_and_mention_double_delivery_make_one_call(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        thread = await h.link("devin")
        plain = [message_event(f"message {i}", thread_ts=thread) for i in range(3)]
        # "hey @bot please rebase": Slack sends it as `message` and as `app_mention`, each with its
        # own event_id; a leading mention that is not a command is relayed the same way.
        mentioned = [
            message_event(f"hey <@{BOT_USER}> please rebase", thread_ts=thread),
            message_event(f"<@{BOT_USER}> please rerun the tests", thread_ts=thread),
        ]
        deliveries: list[tuple[dict[str, Any], str]] = [(e, f"EvPlain{i}") for i, e in enumerate(plain)]
        for i, event in enumerate(mentioned):
            as_mention = {k: v for k, v in event.items() if k != "channel_type"} | {"type": "app_mention"}
            deliveries += [(event, f"EvMsg{i}"), (as_mention, f"EvMention{i}")]
        for event, event_id in deliveries:
            await h.sender.event(event, event_id=event_id)
        # Slack's retries (same event_id, x-slack-retry-num 1..3), some arriving together.
        for retry in (1, 2, 3):
            await asyncio.gather(*(h.sender.event(e, event_id=eid, retry_num=retry) for e, eid in deliveries))
        everything = [*plain, *mentioned]
        for event in everything:
            await wait_reaction(h, event["ts"], DELIVERED)
        await barrier(h, fake, thread)

        texts = fake.messages(DEVIN_SESSION)
        print(f"\n(a) deliveries sent: {len(deliveries) * 4}, provider requests: {len(texts)}")
        assert len(texts) == len(everything) + 1, texts
        assert texts[:3] == [sent(f"message {i}") for i in range(3)]
        assert "please rebase" in texts[3]
        assert texts[3].startswith("alice (via Slack): hey ")
        assert "please rerun the tests" in texts[4]
        counts = await h.store.count_messages(h.thread(thread))
        assert counts[MessageState.DELIVERED] == len(everything) + 1
        assert sum(counts.values()) == len(everything) + 1
        # Nothing in the thread but the anchor's own thread: no help text for the mentions.
        assert h.slack.replies_in(CHANNEL, thread) == []


# -- (b) per-thread order ------------------------------------------------------------------------


async def test_fifty_concurrent_events_reach_the_provider_in_ts_order(tmp_path: Path) -> None:
    # Slack's concurrent deliveries arrive in any order: here a shuffled burst, posted all at once.
    # The order window puts them back in ts order. It must outlast the burst's arrival (0.4-0.7 s
    # for these 50 on 2 busy cores), hence 2 s.
    async with devin(tmp_path, relay_order_window=2.0) as (h, fake):
        thread = await h.link("devin")
        events = [message_event(f"m{i:02d}", thread_ts=thread) for i in range(50)]
        shuffled = list(events)
        random.Random(50).shuffle(shuffled)
        await asyncio.gather(*(h.sender.event(e) for e in shuffled))
        await fake.wait_for(lambda: len(fake.delivered_messages()) >= 50, timeout=20)
        got = fake.messages(DEVIN_SESSION)
        expected = [sent(f"m{i:02d}") for i in range(50)]
        report("(b1) one thread, 50 shuffled", [(expected, got)])
        assert got == expected


async def test_events_arriving_out_of_order_are_sent_in_ts_order(tmp_path: Path) -> None:
    # Slack may deliver a thread's events out of order (concurrent requests); the order window puts
    # them back in ts order. Here the burst arrives scrambled, one event after the other (each
    # acknowledged, so stored, before the next is posted), well within a 2 s window.
    async with devin(tmp_path, relay_order_window=2.0) as (h, fake):
        thread = await h.link("devin")
        events = [message_event(f"m{i}", thread_ts=thread) for i in range(10)]
        scrambled = [events[i] for i in (9, 3, 7, 0, 5, 1, 8, 2, 6, 4)]
        for event in scrambled:
            await h.sender.event(event)
        await fake.wait_for(lambda: len(fake.delivered_messages()) >= 10, timeout=10)
        expected = [sent(f"m{i}") for i in range(10)]
        report("(b) one thread, 10 scrambled one by one", [(expected, fake.messages())])
        assert fake.messages() == expected


async def test_ten_threads_in_parallel_each_keep_their_order(tmp_path: Path) -> None:
    # Each thread gets a shuffled burst of 10, posted all at once; the bursts follow one another
    # without waiting for any delivery, so the threads' order windows (1 s) and sends overlap. A
    # burst arrives in about 0.1-0.2 s, well within its thread's window (100 events posted at once
    # take over a second to arrive here, which would make a test of the window itself flaky).
    async with devin(tmp_path, relay_order_window=1.0) as (h, fake):
        sessions = [f"devin-order{t}" for t in range(10)]
        threads = [await h.link("devin", s) for s in sessions]
        shuffle = random.Random(50).shuffle
        for t, thread in enumerate(threads):
            burst = [message_event(f"t{t}-m{i}", thread_ts=thread) for i in range(10)]
            shuffle(burst)
            await asyncio.gather(*(h.sender.event(e) for e in burst))
        await fake.wait_for(lambda: len(fake.delivered_messages()) >= 100, timeout=20)
        expected = {session: [sent(f"t{t}-m{i}") for i in range(10)] for t, session in enumerate(sessions)}
        report("(b2) 10 threads, 100 shuffled", [(expected[s], fake.messages(s)) for s in sessions])
        assert len(fake.messages()) == 100
        for session in sessions:
            assert fake.messages(session) == expected[session], session


async def test_one_thread_sends_one_message_at_a_time(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        fake.set_default(Answer.slow(0.1))
        thread = await h.link("devin")
        events = [message_event(f"m{i}", thread_ts=thread) for i in range(4)]
        await asyncio.gather(*(h.sender.event(e) for e in events))
        peak = 0
        deadline = time.monotonic() + 10
        while len(fake.delivered_messages()) < 4:
            assert time.monotonic() < deadline, f"delivered only {fake.delivered_messages()}"
            peak = max(peak, sum(1 for r in fake.requests if r.status is None))
            await asyncio.sleep(0.005)
        assert peak == 1
        assert fake.messages() == [sent(f"m{i}") for i in range(4)]


async def test_relay_concurrency_bounds_calls_in_flight(tmp_path: Path) -> None:
    async with devin(tmp_path, relay_concurrency=2) as (h, fake):
        fake.set_default(Answer.slow(0.3))
        threads = [await h.link("devin", f"devin-bound{t}") for t in range(5)]
        await asyncio.gather(*(h.reply(thread, f"to {t}") for t, thread in enumerate(threads)))
        peak = 0
        deadline = time.monotonic() + 10
        while len(fake.delivered_messages()) < 5:
            assert time.monotonic() < deadline, f"delivered only {fake.delivered_messages()}"
            peak = max(peak, sum(1 for r in fake.requests if r.status is None))
            await asyncio.sleep(0.005)
        assert peak == 2  # never more than RELAY_CONCURRENCY, and threads did run side by side
        assert sorted(fake.messages()) == sorted(sent(f"to {t}") for t in range(5))


# -- (c)-(f) retries ---------------------------------------------------------------------------


async def test_server_errors_then_success_delivered_once_with_pending_reaction(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        fake.script(Answer.status(503), Answer.status(503), Answer.delivered())
        thread = await h.link("devin")
        event = await h.reply(thread, "retry me")
        await wait_reaction(h, event["ts"], DELIVERED)
        assert [r.status for r in fake.requests] == [503, 503, 200]
        assert fake.delivered_messages() == [sent("retry me")]
        assert reaction_calls(h, event["ts"]) == [
            ("reactions.add", PENDING),
            ("reactions.remove", PENDING),
            ("reactions.add", DELIVERED),
        ]
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED]
        row = await row_of(h, thread, event["ts"])
        assert (row.state, row.attempts) == (MessageState.DELIVERED, 3)
        # The reaction comes before any reply: once a later message is through, a reply would be there.
        await barrier(h, fake, thread)
        assert h.slack.replies_in(CHANNEL, thread) == []
        assert fake.delivered_messages() == [sent("retry me"), sent("barrier")]


async def test_rate_limit_retry_after_is_honoured(tmp_path: Path) -> None:
    # relay_retry_max_wait is 0.3 s in tests: only Retry-After can make the bot wait a second.
    async with devin(tmp_path) as (h, fake):
        fake.script(Answer.status(429, headers={"Retry-After": "1"}), Answer.delivered())
        thread = await h.link("devin")
        event = await h.reply(thread, "rate limited")
        await wait_reaction(h, event["ts"], DELIVERED)
        first, second = fake.requests
        assert (first.status, second.status) == (429, 200)
        gap = second.received_at - first.received_at
        print(f"\n(d) gap between the 429 and the retry: {gap:.3f}s")
        assert gap >= 0.95
        assert fake.delivered_messages() == [sent("rate limited")]


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (Answer.rejected(), "rejected"),
        (Answer.status(404), "not_found"),
        (Answer.status(401, {"detail": "Invalid API key"}), "unauthorized"),
        (Answer.status(403, {"detail": "Forbidden"}), "unauthorized"),
        (Answer.not_running("Session is suspended"), "not_running"),
    ],
    ids=["422", "404", "401", "403", "not-running"],
)
async def test_final_answers_are_sent_once(tmp_path: Path, answer: Answer, outcome: str) -> None:
    async with devin(tmp_path) as (h, fake):
        fake.script(answer)
        thread = await h.link("devin")
        event = await h.reply(thread, "final")
        await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, thread)) == 1)
        # The reply is posted after the row is final, so no retry can follow.
        assert fake.messages() == [sent("final")]
        assert PENDING not in [name for _, name in reaction_calls(h, event["ts"])]
        row = await row_of(h, thread, event["ts"])
        assert (row.state, row.outcome, row.attempts) == (MessageState.FAILED, outcome, 1)
        await barrier(h, fake, thread)
        assert fake.messages() == [sent("final"), sent("barrier")]


async def test_provider_down_past_the_budget_says_not_delivered(tmp_path: Path) -> None:
    async with devin(tmp_path, relay_retry_budget=0.6, relay_retry_max_wait=0.1) as (h, fake):
        fake.set_default(Answer.status(503))
        thread = await h.link("devin")
        event = await h.reply(thread, "anyone there?")
        await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, thread)) == 1)
        reply = str(h.slack.replies_in(CHANNEL, thread)[0]["text"])
        assert f"<@{ALICE}>" in reply
        assert "not delivered" in reply
        assert "Devin is unavailable" in reply
        assert "503" in reply
        assert len(fake.requests) >= 2
        row = await row_of(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "gave_up")
        assert row.attempts == len(fake.requests)
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == [FAILED]


# -- (g) a slow or failing thread holds up no other --------------------------------------------


async def test_hanging_thread_does_not_hold_up_another(tmp_path: Path) -> None:
    async with devin(tmp_path, provider_timeout=5.0, shutdown_deadline=0.5) as (h, fake):
        slow_session, fast_session = "devin-slowthread", "devin-fastthread"
        fake.answers_by_session[slow_session] = Answer.hang()
        slow = await h.link("devin", slow_session)
        fast = await h.link("devin", fast_session)
        stuck = await h.reply(slow, "A1")
        await h.reply(slow, "A2")
        await fake.wait_for(lambda: len(fake.requests) == 1)
        events = [await h.reply(fast, f"B{i}") for i in range(3)]
        for event in events:
            await wait_reaction(h, event["ts"], DELIVERED)
        assert fake.delivered_messages(fast_session) == [sent(f"B{i}") for i in range(3)]
        # A1 is still waiting for its answer, and A2 waits behind it.
        assert fake.messages(slow_session) == [sent("A1")]
        assert (await row_of(h, slow, stuck["ts"])).state is MessageState.SENDING
        assert h.slack.reactions_on(CHANNEL, stuck["ts"]) == []


async def test_failing_thread_holds_no_slot(tmp_path: Path) -> None:
    # One provider call at a time, and thread A keeps failing: B is still delivered at once. A's retry
    # budget (30 s) outlasts the wait for B's reaction (5 s), so B cannot get through merely because
    # A gave up: only because A's waits between attempts hold no slot.
    async with devin(tmp_path, relay_concurrency=1, relay_retry_budget=30.0) as (h, fake):
        failing_session = "devin-failing"
        fake.answers_by_session[failing_session] = Answer.status(503)
        failing = await h.link("devin", failing_session)
        fine = await h.link("devin", "devin-fine")
        stuck = await h.reply(failing, "A1")
        await wait_reaction(h, stuck["ts"], PENDING)
        event = await h.reply(fine, "B1")
        await wait_reaction(h, event["ts"], DELIVERED)
        assert fake.delivered_messages("devin-fine") == [sent("B1")]
        assert (await row_of(h, failing, stuck["ts"])).state in (MessageState.PENDING, MessageState.SENDING)


# -- (h) Agen client_id ------------------------------------------------------------------------


async def test_agen_retries_carry_the_same_client_id(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("agen",)) as h:
        h.slack.add_user(ALICE, "alice")
        agen = h.providers["agen"]
        agen.script(Answer.status(503), Answer.status(502), Answer.delivered())
        thread = await h.link("agen")
        first = await h.reply(thread, "one")
        await wait_reaction(h, first["ts"], DELIVERED)
        second = await h.reply(thread, "two")
        await wait_reaction(h, second["ts"], DELIVERED)
        ids = [r.client_id for r in agen.requests]
        assert len(ids) == 4
        assert ids[0] is not None
        assert ids[0] == ids[1] == ids[2]
        assert ids[3] is not None
        assert ids[3] != ids[0]
        assert agen.delivered_messages(AGEN_SESSION) == [sent("one"), sent("two")]


# -- (i) Slack feedback failures ---------------------------------------------------------------


async def test_failing_reactions_do_not_resend_a_delivered_message(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        thread = await h.link("devin")
        # 500 three times: the Slack client's first call and its two retries all fail.
        h.slack.fail_next("reactions.add", status=500, retry_after=None, error="internal_error", times=3)
        event = await h.reply(thread, "feedback breaks")
        await fake.wait_for(lambda: len(fake.requests) == 1)
        await wait_state(h, thread, event["ts"], MessageState.DELIVERED)
        # The Slack client retried the reaction (5xx) before giving up on it.
        await h.slack.wait_for(lambda: len(h.slack.calls_to("reactions.add")) >= 3, timeout=8.0)
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == []
        await barrier(h, fake, thread)
        assert fake.messages() == [sent("feedback breaks"), sent("barrier")]
        assert (await row_of(h, thread, event["ts"])).attempts == 1


async def test_failing_reply_does_not_resend_a_rejected_message(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        fake.script(Answer.rejected())
        thread = await h.link("devin")
        h.slack.fail_next("reactions.add", status=200, retry_after=None, error="channel_not_found", times=10)
        h.slack.fail_next("chat.postMessage", status=200, retry_after=None, error="channel_not_found")
        event = await h.reply(thread, "rejected and unseen")
        await wait_state(h, thread, event["ts"], MessageState.FAILED)
        await h.slack.wait_for(lambda: len(h.slack.calls_to("chat.postMessage")) >= 2)  # anchor + reply
        await barrier(h, fake, thread)
        assert fake.messages() == [sent("rejected and unseen"), sent("barrier")]
        row = await row_of(h, thread, event["ts"])
        assert (row.state, row.outcome, row.attempts) == (MessageState.FAILED, "rejected", 1)


async def test_failing_pending_reaction_does_not_break_the_retry(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        fake.script(Answer.status(503), Answer.delivered())
        thread = await h.link("devin")
        h.slack.fail_next("reactions.add", status=200, retry_after=None, error="channel_not_found", times=10)
        event = await h.reply(thread, "retry while Slack is broken")
        await wait_state(h, thread, event["ts"], MessageState.DELIVERED)
        assert [r.status for r in fake.requests] == [503, 200]
        assert fake.delivered_messages() == [sent("retry while Slack is broken")]


async def test_slack_connection_dropped_on_the_pending_reaction_does_not_stop_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # slack_sdk lets aiohttp.ServerDisconnectedError (not an OSError) out after its own retries.
    async with devin(tmp_path) as (h, fake):
        assert h.runtime.deps is not None
        gateway = h.runtime.deps.slack
        real_add = gateway.add_reaction

        async def add_reaction(channel: str, ts: str, name: str) -> bool:
            if name == PENDING:
                raise aiohttp.ServerDisconnectedError()
            return await real_add(channel, ts, name)

        monkeypatch.setattr(gateway, "add_reaction", add_reaction)
        fake.script(Answer.status(503), Answer.delivered())
        thread = await h.link("devin")
        event = await h.reply(thread, "retry without an hourglass")
        await wait_state(h, thread, event["ts"], MessageState.DELIVERED)
        assert [r.status for r in fake.requests] == [503, 200]
        await wait_reaction(h, event["ts"], DELIVERED)


async def test_slack_rate_limit_on_a_reaction_is_retried_by_the_client(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        thread = await h.link("devin")
        h.slack.fail_next("reactions.add", status=429, retry_after=1)
        event = await h.reply(thread, "react despite 429")
        await wait_reaction(h, event["ts"], DELIVERED)
        calls = [c for c in h.slack.calls_to("reactions.add") if c.args.get("timestamp") == event["ts"]]
        assert len(calls) == 2
        assert fake.messages() == [sent("react despite 429")]


# -- (j) edits and deletions -------------------------------------------------------------------


async def test_edit_of_a_delivered_message_is_sent_as_a_correction(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        thread = await h.link("devin")
        original = await h.reply(thread, "please run teh tests")
        await wait_reaction(h, original["ts"], DELIVERED)
        later = await h.reply(thread, "and then lint")
        await wait_reaction(h, later["ts"], DELIVERED)
        edit = edit_event(original, "please run the unit tests", edited_ts=new_ts())
        await h.sender.event(edit, event_id="EvEdit1")
        await h.sender.event(edit, event_id="EvEdit1", retry_num=1)
        await h.sender.event(edit, event_id="EvEdit1", retry_num=2)
        await barrier(h, fake, thread, "last")
        texts = fake.messages(DEVIN_SESSION)
        assert len(texts) == 4, texts
        assert texts[:2] == [sent("please run teh tests"), sent("and then lint")]
        correction = texts[2]
        assert "edited" in correction
        assert "please run teh tests" in correction  # which message it corrects
        assert correction.endswith("please run the unit tests")
        assert texts[3] == sent("last")
        row = await row_of(h, thread, original["ts"], edit["message"]["edited"]["ts"])
        assert row.state is MessageState.DELIVERED


async def test_edit_of_a_pending_message_replaces_its_text(tmp_path: Path) -> None:
    # "first" takes 2 s to answer (within the 5 s provider timeout), so "secnod" waits behind it,
    # still pending, while it is edited.
    async with devin(tmp_path, provider_timeout=5.0) as (h, fake):
        fake.script(Answer.slow(2.0))
        thread = await h.link("devin")
        await h.reply(thread, "first")
        await fake.wait_for(lambda: len(fake.requests) == 1)
        waiting = await h.reply(thread, "secnod")
        edit = edit_event(waiting, "second", edited_ts=new_ts())
        await h.sender.event(edit)
        assert (await row_of(h, thread, waiting["ts"])).state is MessageState.PENDING
        await barrier(h, fake, thread)
        assert fake.messages() == [sent("first"), sent("second"), sent("barrier")]


async def test_edit_while_waiting_for_a_retry_sends_the_new_text(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        fake.script(Answer.status(429, headers={"Retry-After": "1"}), Answer.delivered())
        thread = await h.link("devin")
        waiting = await h.reply(thread, "deploy to prod")
        await wait_reaction(h, waiting["ts"], PENDING)  # the first attempt failed; a retry is due
        await h.sender.event(edit_event(waiting, "deploy to staging", edited_ts=new_ts()))
        await barrier(h, fake, thread)
        assert fake.delivered_messages() == [sent("deploy to staging"), sent("barrier")]
        assert fake.messages() == [sent("deploy to prod"), sent("deploy to staging"), sent("barrier")]


async def test_edits_off_relays_no_edit(tmp_path: Path) -> None:
    async with devin(tmp_path, relay_edits=False) as (h, fake):
        thread = await h.link("devin")
        original = await h.reply(thread, "original")
        await wait_reaction(h, original["ts"], DELIVERED)
        await h.sender.event(edit_event(original, "changed", edited_ts=new_ts()))
        await barrier(h, fake, thread)
        assert fake.messages() == [sent("original"), sent("barrier")]


async def test_deletions_and_unfurls_are_not_relayed(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        thread = await h.link("devin")
        original = await h.reply(thread, "see https://example.com")
        await wait_reaction(h, original["ts"], DELIVERED)
        unfurl = edit_event(
            original,
            original["text"],
            attachments=[{"from_url": "https://example.com", "title": "Example"}],
        )
        await h.sender.event(unfurl)
        await h.sender.event(delete_event(original))
        # A message the bot never saw (posted and deleted while it was down, say): its deletion
        # carries its text, and no earlier row of the same ts would stop it from being relayed.
        unseen = message_event("deleted before the bot saw it", thread_ts=thread)
        await h.sender.event(delete_event(unseen))
        await barrier(h, fake, thread)
        assert fake.messages() == [sent("see https://example.com"), sent("barrier")]
        assert await h.store.get_message(h.thread(thread), unseen["ts"]) is None
        assert h.slack.replies_in(CHANNEL, thread) == []


# -- shutdown ----------------------------------------------------------------------------------


async def test_shutdown_makes_no_new_attempt_and_keeps_the_message(tmp_path: Path) -> None:
    async with devin(tmp_path) as (h, fake):
        fake.set_default(Answer.status(503))
        thread = await h.link("devin")
        event = await h.reply(thread, "survive the restart")
        await wait_reaction(h, event["ts"], PENDING)  # waiting for a retry
        db = h.settings.database_url.removeprefix("sqlite:///")
        before = len(fake.requests)
        await h.runtime.stop()
        after = len(fake.requests) - before
        print(f"\nrequests after the shutdown began: {after}")
        assert after <= 1  # at most the attempt that was already under way
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (state,) = conn.execute("SELECT state FROM messages WHERE ts = ?", (event["ts"],)).fetchone()
        assert state == MessageState.PENDING.value  # parked, resumed at the next start


async def test_a_message_deleted_before_it_was_sent_is_dropped(tmp_path: Path) -> None:
    async with devin(tmp_path, relay_order_window=1.0) as (h, fake):
        thread = await h.link("devin")
        doomed = await h.reply(thread, "oops, wrong thread")
        await h.sender.event(delete_event(doomed))
        kept = await h.reply(thread, "the real message")
        # A later message as a barrier: "kept" gets its reaction before any reply it would get, and
        # once the barrier has its reaction, any reply to "kept" has been posted.
        last = await h.reply(thread, "barrier")
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, last["ts"]) == [DELIVERED])
        assert fake.messages() == [sent("the real message"), sent("barrier")]
        assert h.slack.reactions_on(CHANNEL, kept["ts"]) == [DELIVERED]
        row = await row_of(h, thread, doomed["ts"])
        assert row.state is MessageState.SKIPPED
        assert h.slack.reactions_on(CHANNEL, doomed["ts"]) == []
        assert h.slack.replies_in(CHANNEL, thread) == []
