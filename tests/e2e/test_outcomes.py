"""Every outcome of a relayed message, for every provider, as the thread and the store show it (issue 3).

The bot runs for real in HTTP mode on loopback against FakeSlack and the fake providers. Each test
links a thread, replies in it once, and checks what the provider received, what the thread shows
(reaction, reply) and the final row in the store.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from storage import MessageState, OutboxMessage
from tests.fakes import eventually
from tests.fakes.providers import Answer
from tests.harness import (
    ALICE,
    BOT_TOKEN,
    CHANNEL,
    KEYS,
    SESSIONS,
    SIGNING_SECRET,
    Harness,
    running,
)

PROVIDERS = ["devin", "feather", "agen"]
LABELS = {"devin": "Devin", "feather": "Feather", "agen": "Agen"}
TEXT = "please run the tests"
SENT = f"alice (via Slack): {TEXT}"
FORBIDDEN = ("Traceback", "Exception", "httpx", *KEYS.values(), BOT_TOKEN, SIGNING_SECRET)

# Short budgets so that retries give up quickly.
FAST_GIVE_UP: dict[str, Any] = {"relay_retry_budget": 0.5, "relay_retry_max_wait": 0.1}


@asynccontextmanager
async def linked(tmp_path: Path, provider: str, **overrides: Any) -> AsyncIterator[tuple[Harness, str]]:
    """agent-relay with only ``provider`` enabled, and a thread linked to its session."""
    async with running(tmp_path, providers=(provider,), **overrides) as h:
        h.slack.add_user(ALICE, "alice", real_name="Alice Liddell")
        thread = await h.link(provider)
        yield h, thread


async def reply_and_wait_for_answer(h: Harness, thread: str) -> tuple[dict[str, Any], str]:
    """Reply in ``thread``; wait for the bot's one thread reply; return the event and that reply."""
    event = await h.reply(thread, TEXT)
    await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, thread)) >= 1)
    replies = h.slack.replies_in(CHANNEL, thread)
    assert len(replies) == 1, replies
    text = str(replies[0]["text"])
    assert_plain(text)
    return event, text


async def settle(h: Harness, thread: str) -> None:
    """Wait until the bot has posted every reply it will post about earlier messages in ``thread``.

    The bot reacts before it replies, so a reaction alone does not show that no reply follows. A
    thread's messages are handled one at a time in order: once a later message has its reaction,
    any reply about an earlier one has been posted.
    """
    barrier = await h.reply(thread, "barrier")
    await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, barrier["ts"]) == ["white_check_mark"])


def assert_plain(text: str) -> None:
    """A reply in plain words: no exception, no library name, no secret."""
    for word in FORBIDDEN:
        assert word not in text, f"{word!r} leaked into {text!r}"


async def final_row(h: Harness, thread: str, ts: str) -> OutboxMessage:
    row = await h.store.get_message(h.thread(thread), ts)
    assert row is not None
    return row


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- delivered ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_delivered_reacts_and_says_nothing(tmp_path: Path, provider: str) -> None:
    async with linked(tmp_path, provider) as (h, thread):
        fake = h.providers[provider]
        event = await h.reply(thread, TEXT)
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
        assert [(r.session_id, r.text) for r in fake.requests] == [(SESSIONS[provider], SENT)]
        assert fake.requests[0].authorized
        assert fake.delivered_messages() == [SENT]
        await settle(h, thread)
        assert h.slack.replies_in(CHANNEL, thread) == []
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome, row.attempts) == (MessageState.DELIVERED, "delivered", 1)


# -- Devin: session not running ----------------------------------------------------------------


async def test_devin_not_running_quotes_the_detail(tmp_path: Path) -> None:
    detail = "Devin is sleeping; wake the session to continue"
    async with linked(tmp_path, "devin") as (h, thread):
        devin = h.providers["devin"]
        devin.script(Answer.not_running(detail))
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert detail in reply
        assert f"<@{ALICE}>" in reply
        assert "not delivered" in reply
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["double_vertical_bar"]
        assert devin.messages() == [SENT]  # a final answer: no retry
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome, row.detail) == (MessageState.FAILED, "not_running", detail)


async def test_devin_not_running_detail_with_slack_markup_shows_word_for_word(tmp_path: Path) -> None:
    detail = "Session <paused> by A&B: wake it at <!channel>"
    async with linked(tmp_path, "devin") as (h, thread):
        h.providers["devin"].script(Answer.not_running(detail))
        _, reply = await reply_and_wait_for_answer(h, thread)
        # Slack shows &lt; &gt; &amp; as < > &: the reader sees the detail as written, no @channel ping.
        assert "Session &lt;paused&gt; by A&amp;B: wake it at &lt;!channel&gt;" in reply
        assert "<!channel>" not in reply


# -- rejected (422) ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rejected_lists_every_error(tmp_path: Path, provider: str) -> None:
    errors: list[dict[str, Any]] = [
        {
            "loc": ["body", "message"],
            "msg": "String should have at most 10 characters",
            "type": "string_too_long",
        },
        {"loc": ["body", "client_id", 0], "msg": "Input should be a valid string", "type": "string_type"},
    ]
    async with linked(tmp_path, provider) as (h, thread):
        fake = h.providers[provider]
        fake.script(Answer.rejected(errors))
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert LABELS[provider] in reply
        assert "rejected" in reply
        assert "422" in reply
        assert "body.message" in reply
        assert "String should have at most 10 characters" in reply
        assert "body.client_id.0" in reply
        assert "Input should be a valid string" in reply
        assert reply.index("body.message") < reply.index("body.client_id.0")
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        assert len(fake.requests) == 1  # never retried
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "rejected")


# -- unauthorized (401/403) --------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_refused_key_is_named_but_never_shown(tmp_path: Path, provider: str, status: int) -> None:
    async with linked(tmp_path, provider) as (h, thread):
        fake = h.providers[provider]
        # The provider's answer names the key: the thread and the store must still not show it.
        fake.script(Answer.status(status, {"detail": f"bad key {KEYS[provider]}"}))
        event, reply = await reply_and_wait_for_answer(h, thread)
        label = LABELS[provider]
        assert f"{label} refused the API key configured for it" in reply
        assert str(status) in reply
        assert KEYS[provider] not in reply
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        assert len(fake.requests) == 1  # a bad key is not retried
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "unauthorized")
        assert KEYS[provider] not in (row.detail or "")


# -- not found (404) ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_unknown_session_names_the_session(tmp_path: Path, provider: str) -> None:
    async with linked(tmp_path, provider) as (h, thread):
        fake = h.providers[provider]
        fake.script(Answer.status(404))
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert f"{LABELS[provider]} has no session" in reply
        assert SESSIONS[provider] in reply
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        assert len(fake.requests) == 1
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "not_found")


# -- transient failures past the retry budget --------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limited_past_the_budget_gives_up_in_plain_words(tmp_path: Path, provider: str) -> None:
    async with linked(tmp_path, provider, **FAST_GIVE_UP) as (h, thread):
        fake = h.providers[provider]
        fake.set_default(Answer.status(429))
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert "not delivered" in reply
        assert "rate limited" in reply
        assert "send it again" in reply
        assert len(fake.requests) >= 2  # retried before giving up
        assert set(fake.messages()) == {SENT}
        # the hourglass showed while waiting and was taken away at the end
        added = [
            c.args["name"] for c in h.slack.calls_to("reactions.add") if c.args["timestamp"] == event["ts"]
        ]
        assert added == ["hourglass_flowing_sand", "x"]
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "gave_up")
        assert row.attempts == len(fake.requests)
        assert f"after {row.attempts} attempts" in reply


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_server_errors_past_the_budget_give_up_in_plain_words(
    tmp_path: Path, provider: str, status: int
) -> None:
    async with linked(tmp_path, provider, **FAST_GIVE_UP) as (h, thread):
        fake = h.providers[provider]
        fake.set_default(Answer.status(status))
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert "not delivered" in reply
        assert f"{LABELS[provider]} is unavailable" in reply
        assert f"HTTP {status}" in reply
        assert "send it again" in reply
        assert len(fake.requests) >= 2
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "gave_up")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_server_error_then_success_is_delivered_once(tmp_path: Path, provider: str) -> None:
    async with linked(tmp_path, provider) as (h, thread):
        fake = h.providers[provider]
        fake.script(Answer.status(503), Answer.delivered())
        event = await h.reply(thread, TEXT)
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
        assert fake.messages() == [SENT, SENT]
        assert fake.delivered_messages() == [SENT]
        await settle(h, thread)
        assert h.slack.replies_in(CHANNEL, thread) == []
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.attempts) == (MessageState.DELIVERED, 2)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_hanging_provider_did_not_answer_in_time(tmp_path: Path, provider: str) -> None:
    async with linked(tmp_path, provider, provider_timeout=0.3, **FAST_GIVE_UP) as (h, thread):
        fake = h.providers[provider]
        fake.set_default(Answer.hang())
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert "not delivered" in reply
        assert f"{LABELS[provider]} did not answer in time" in reply
        assert fake.requests
        assert all(r.status is None for r in fake.requests)
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "gave_up")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_connection_refused_gives_up_in_plain_words(tmp_path: Path, provider: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with linked(tmp_path, provider, **{f"{provider}_api_url": closed}, **FAST_GIVE_UP) as (h, thread):
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert "not delivered" in reply
        assert f"could not connect to {LABELS[provider]}" in reply
        assert h.providers[provider].requests == []
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "gave_up")
        assert row.attempts >= 2


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_dropped_connection_gives_up_in_plain_words(tmp_path: Path, provider: str) -> None:
    async with linked(tmp_path, provider, **FAST_GIVE_UP) as (h, thread):
        fake = h.providers[provider]
        fake.set_default(Answer.drop())
        event, reply = await reply_and_wait_for_answer(h, thread)
        assert "not delivered" in reply
        assert LABELS[provider] in reply
        assert len(fake.requests) >= 2
        row = await final_row(h, thread, event["ts"])
        assert (row.state, row.outcome) == (MessageState.FAILED, "gave_up")


# -- one outcome per message -------------------------------------------------------------------


async def test_each_message_gets_its_own_outcome(relay: Harness) -> None:
    """Three threads, three providers, three different answers: each thread shows its own."""
    relay.slack.add_user(ALICE, "alice")
    relay.providers["devin"].script(Answer.not_running("Session is suspended"))
    relay.providers["feather"].script(Answer.status(404))
    threads = {name: await relay.link(name) for name in PROVIDERS}
    events = {name: await relay.reply(threads[name], TEXT) for name in PROVIDERS}
    expected = {"devin": "double_vertical_bar", "feather": "x", "agen": "white_check_mark"}
    await eventually(
        lambda: all(relay.slack.reactions_on(CHANNEL, events[n]["ts"]) == [r] for n, r in expected.items())
    )
    for name in PROVIDERS:
        assert relay.providers[name].messages(SESSIONS[name]) == [SENT]
    for thread in threads.values():
        await settle(relay, thread)
    assert len(relay.slack.replies_in(CHANNEL, threads["devin"])) == 1
    assert len(relay.slack.replies_in(CHANNEL, threads["feather"])) == 1
    assert relay.slack.replies_in(CHANNEL, threads["agen"]) == []
