"""Faults found when the previous version was attacked, each checked end to end against the running app.

The bot runs for real in HTTP mode on loopback against FakeSlack and the fake providers (the
in-process harness), or, for two processes on one SQLite file, as real subprocesses. Each test
asserts what a person in Slack (or an operator reading the log) would notice. Store failures that a
real SQLite file cannot produce on demand are made by replacing one method of the running store.

"Nothing more happened" is never asserted after a sleep: a later message in the same thread is a
barrier (a thread's messages are sent in order), or the row has reached a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import stamina

from storage import MessageState, OutboxMessage, StoreError
from tests.e2e.test_process import bot_env, bot_process, db_rows, link
from tests.fakes import eventually
from tests.fakes.providers import Answer, FakeProvider
from tests.fakes.slack import FakeSlack
from tests.harness import (
    ALICE,
    BOT_TOKEN,
    CHANNEL,
    DEVIN_SESSION,
    KEYS,
    SIGNING_SECRET,
    TEAM,
    Harness,
    SlackSender,
    _leak_places,
    find_secrets,
    mention_event,
    message_event,
    new_ts,
    running,
)
from tests.logcapture import captured_logs

PENDING = "hourglass_flowing_sand"
DELIVERED = "white_check_mark"
FAILED = "x"
JSON = "application/json"
OUTSIDER = "U0OUTSIDER"
SLACK_TEXT_LIMIT = 40_000  # Slack truncates message text beyond this


def sent(text: str) -> str:
    """What a provider receives for ``text`` written by alice."""
    return f"alice (via Slack): {text}"


@asynccontextmanager
async def devin_only(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Harness, FakeProvider]]:
    """agent-relay with only Devin enabled; alice is a known Slack user."""
    async with running(tmp_path, providers=("devin",), **overrides) as h:
        h.slack.add_user(ALICE, "alice")
        yield h, h.providers["devin"]


async def wait_row(
    h: Harness,
    thread: str,
    ts: str,
    condition: Callable[[OutboxMessage], bool],
    what: str,
    within: float = 5.0,
) -> OutboxMessage:
    """Poll the stored row of ``ts`` until ``condition`` holds; return it."""
    deadline = time.monotonic() + within
    row = None
    while True:
        row = await h.store.get_message(h.thread(thread), ts)
        if row is not None and condition(row):
            return row
        assert time.monotonic() < deadline, f"row {ts} never {what}: {row}"
        await asyncio.sleep(0.01)


async def wait_reaction(h: Harness, ts: str, name: str, within: float = 5.0, channel: str = CHANNEL) -> None:
    await h.slack.wait_for(lambda: name in h.slack.reactions_on(channel, ts), timeout=within)


def reply_texts(h: Harness, thread: str, channel: str = CHANNEL) -> list[str]:
    return [str(m["text"]) for m in h.slack.replies_in(channel, thread)]


def reaction_calls(h: Harness, ts: str) -> list[tuple[str, str]]:
    return [
        (call.method, str(call.args.get("name")))
        for call in h.slack.calls
        if call.method in ("reactions.add", "reactions.remove") and call.args.get("timestamp") == ts
    ]


async def barrier(h: Harness, thread: str, text: str = "barrier") -> None:
    """Reply ``text`` and wait until it is delivered: whatever the bot meant to send in this thread
    before it has been sent by then."""
    event = await h.reply(thread, text)
    await wait_row(h, thread, event["ts"], lambda r: r.state is MessageState.DELIVERED, "delivered")


def signed(raw: bytes, content_type: str = JSON) -> dict[str, str]:
    """Slack's signature over raw bytes (which need not be UTF-8)."""
    stamp = str(int(time.time()))
    digest = hmac.new(SIGNING_SECRET.encode(), b"v0:" + stamp.encode() + b":" + raw, hashlib.sha256)
    return {
        "content-type": content_type,
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": f"v0={digest.hexdigest()}",
    }


async def post_bytes(h: Harness, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    return await h.sender.client.post(f"{h.sender.url}/slack/events", content=raw, headers=headers)


def edit_event(original: dict[str, Any], new_text: str, *, edited_ts: str) -> dict[str, Any]:
    """A ``message_changed`` event for ``original``, as Slack sends it for an edit."""
    event_ts = new_ts()
    return {
        "type": "message",
        "subtype": "message_changed",
        "channel": original["channel"],
        "hidden": True,
        "message": {
            "type": "message",
            "user": original["user"],
            "text": new_text,
            "ts": original["ts"],
            "thread_ts": original["thread_ts"],
            "team": original["team"],
            "edited": {"user": original["user"], "ts": edited_ts},
        },
        "previous_message": _previous(original),
        "event_ts": event_ts,
        "ts": event_ts,
    }


def delete_event(original: dict[str, Any]) -> dict[str, Any]:
    event_ts = new_ts()
    return {
        "type": "message",
        "subtype": "message_deleted",
        "channel": original["channel"],
        "hidden": True,
        "deleted_ts": original["ts"],
        "previous_message": _previous(original),
        "event_ts": event_ts,
        "ts": event_ts,
    }


def _previous(original: dict[str, Any]) -> dict[str, Any]:
    return {key: original[key] for key in ("user", "text", "ts", "thread_ts")} | {"type": "message"}


def store_file_bytes(tmp_path: Path) -> bytes:
    """The store's files as they are on disk (the database and its write-ahead log)."""
    return b"".join(path.read_bytes() for path in sorted(tmp_path.glob("relay.db*")))


def problems_in(log: str) -> list[str]:
    """Log lines at ERROR or above, and any line carrying a traceback."""
    found = []
    for line in log.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a line that is not ours (a subprocess's stderr): only tracebacks count
            if "Traceback" in line:
                found.append(line[:200])
            continue
        if record.get("level") in ("error", "critical") or "Traceback" in line or record.get("exception"):
            exception = str(record.get("exception") or "").strip().splitlines()
            found.append(
                f"{record.get('level')} {str(record.get('event'))[:80]}: {exception[-1] if exception else ''}"
            )
    return found


class FailFirst:
    """Wraps a store method: the first ``times`` calls raise :class:`StoreError`, the rest go through."""

    def __init__(self, method: Callable[..., Any], times: int) -> None:
        self._method = method
        self.times = times
        self.failed = 0
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.failed < self.times:
            self.failed += 1
            raise StoreError("disk I/O error (injected by the test)")
        return await self._method(*args, **kwargs)


# -- 1. a link during a store failure ----------------------------------------------------------


async def test_slash_link_during_a_store_failure_links_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with devin_only(tmp_path) as (h, fake):
        bind = FailFirst(h.store.bind, times=1)
        monkeypatch.setattr(h.store, "bind", bind)
        await h.sender.command(f"link devin {DEVIN_SESSION}")
        await h.slack.wait_for(lambda: len(h.slack.responses) == 1)
        assert bind.failed == 1

        # The person who asked is told, privately, that nothing was linked.
        ((_tag, answer),) = h.slack.responses
        assert answer.get("response_type") == "ephemeral", answer
        assert re.search(r"nothing was (changed|linked)", str(answer["text"])), answer["text"]
        # Nothing is stored...
        assert await h.store.list_bindings(TEAM, CHANNEL) == []
        # ...and the anchor the bot had posted does not stay behind claiming a link.
        (posted,) = h.slack.calls_to("chat.postMessage")  # the anchor...
        assert posted.args.get("channel") == CHANNEL
        (deleted,) = h.slack.deleted  # ...taken back
        assert "linked this thread" in str(deleted["text"])
        assert [(c.args.get("channel"), c.args.get("ts")) for c in h.slack.calls_to("chat.delete")] == [
            (CHANNEL, deleted["ts"])
        ]
        assert h.slack.messages == []
        await h.settle()
        assert h.slack.ephemeral_messages == []  # told once, through the command's response_url

        # Once the store answers again the same command links.
        thread = await h.link("devin")
        assert [b.key.thread_ts for b in await h.store.list_bindings(TEAM, CHANNEL)] == [thread]
        assert fake.requests == []


async def test_mention_link_whose_run_fails_is_made_when_slack_delivers_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with devin_only(tmp_path) as (h, fake):
        bind = FailFirst(h.store.bind, times=1)
        monkeypatch.setattr(h.store, "bind", bind)
        parent = new_ts()
        event = mention_event(f"link devin {DEVIN_SESSION}", thread_ts=parent)
        body = h.sender.event_body(event, event_id="EvLinkInThread")

        first = await h.sender.post_raw(body, h.sender._headers(body, JSON))
        print(f"\n(1) mention link while the store fails: HTTP {first.status_code}")
        assert bind.failed == 1
        assert first.status_code != 200, "Slack would not deliver the event again"
        assert await h.store.get_binding(h.thread(parent)) is None

        # Slack delivers the same event again.
        retry = {
            **h.sender._headers(body, JSON),
            "x-slack-retry-num": "1",
            "x-slack-retry-reason": "http_error",
        }
        second = await h.sender.post_raw(body, retry)
        assert second.status_code == 200, second.text
        binding = await h.store.get_binding(h.thread(parent))
        assert binding is not None
        assert (binding.provider, binding.session_id, binding.linked_by) == ("devin", DEVIN_SESSION, ALICE)
        # A further delivery (Slack's next retry, crossing our answer) links nothing twice.
        third = {
            **h.sender._headers(body, JSON),
            "x-slack-retry-num": "2",
            "x-slack-retry-reason": "http_error",
        }
        assert (await h.sender.post_raw(body, third)).status_code == 200
        await h.settle()

        told = reply_texts(h, parent)
        assert len(told) == 1, told  # the thread is told once
        assert "linked this thread" in told[0]
        # The link is real: a reply in the thread reaches Devin.
        reply = await h.reply(parent, "hello")
        await wait_reaction(h, reply["ts"], DELIVERED)
        assert fake.messages() == [sent("hello")]


# -- 2. a store failure right after the provider took a message --------------------------------


@pytest.fixture
def no_store_retry_waits() -> Iterator[None]:
    """The engine retries a store write it must not lose (stamina); the waits add nothing here."""
    stamina.set_testing(True, attempts=5)
    try:
        yield
    finally:
        stamina.set_testing(False)


@pytest.mark.usefixtures("no_store_retry_waits")
async def test_store_failing_to_record_a_delivery_does_not_send_it_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with devin_only(tmp_path) as (h, fake):
        thread = await h.link("devin")
        complete = FailFirst(h.store.complete, times=2)
        monkeypatch.setattr(h.store, "complete", complete)
        event = await h.reply(thread, "record me")
        await wait_reaction(h, event["ts"], DELIVERED)
        assert complete.failed == 2
        assert complete.calls >= 3
        row = await wait_row(h, thread, event["ts"], lambda r: r.state.final, "final")
        assert (row.state, row.attempts) == (MessageState.DELIVERED, 1)
        await barrier(h, thread)
        assert fake.messages() == [sent("record me"), sent("barrier")]
        assert fake.delivered_messages() == [sent("record me"), sent("barrier")]
        await h.settle()
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED]
        assert h.slack.replies_in(CHANNEL, thread) == []


# -- 3. a Retry-After longer than the retry budget ---------------------------------------------


@pytest.mark.parametrize(
    "retry_after", ["3600", "Fri, 01 Jan 2100 00:00:00 GMT"], ids=["seconds", "http-date-2100"]
)
async def test_retry_after_beyond_the_budget_tells_the_thread_at_once(
    tmp_path: Path, retry_after: str
) -> None:
    budget = 3.0
    async with devin_only(tmp_path, relay_retry_budget=budget) as (h, fake):
        fake.script(Answer.status(429, headers={"Retry-After": retry_after}))
        thread = await h.link("devin")
        started = time.monotonic()
        event = await h.reply(thread, "not in an hour")
        await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, thread)) == 1, timeout=budget + 5)
        took = time.monotonic() - started
        print(
            f"\n(3) Retry-After {retry_after!r}: the thread was told after {took:.2f}s (budget {budget:g}s)"
        )
        assert took < budget / 2, "the thread was not told promptly"
        (told,) = reply_texts(h, thread)
        assert f"<@{ALICE}>" in told
        assert "not delivered" in told
        assert "429" in told
        assert len(fake.requests) == 1
        row = await wait_row(h, thread, event["ts"], lambda r: r.state.final, "final")
        assert (row.state, row.outcome) == (MessageState.FAILED, "gave_up")
        await wait_reaction(h, event["ts"], FAILED)
        # The thread is not stuck: its next message goes through.
        after = await h.reply(thread, "next one")
        await wait_reaction(h, after["ts"], DELIVERED)
        assert fake.messages() == [sent("not in an hour"), sent("next one")]
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == [FAILED]


# -- 4. PROVIDER_TIMEOUT caps the whole attempt ------------------------------------------------


async def test_provider_timeout_caps_an_answer_that_trickles(tmp_path: Path) -> None:
    # The answer's headers come at once, then one byte every 0.5 s: no single read ever waits a
    # second, so only a cap on the whole call ends it. The whole trickle would take 12 s. With a
    # 1 s budget the first timeout is final, so the thread shows what ended the attempt.
    trickle_seconds = 24 * 0.5
    async with devin_only(tmp_path, provider_timeout=1.0, relay_retry_budget=1.0) as (h, fake):
        slow_session, other_session = "devin-trickle", "devin-prompt"
        fake.script(Answer.trickle(interval=0.5, size=24), session_id=slow_session)
        slow = await h.link("devin", slow_session)
        other = await h.link("devin", other_session)
        posted = time.monotonic()
        stuck = await h.reply(slow, "trickled")
        await fake.wait_for(lambda: len(fake.requests) == 1)
        trickling = fake.requests[0]

        # While it trickles, another thread is served at once.
        other_posted = time.monotonic()
        meanwhile = await h.reply(other, "meanwhile")
        await fake.wait_for(lambda: len(fake.delivered_messages(other_session)) == 1)
        other_took = time.monotonic() - other_posted
        assert trickling.ended_at is None, "the trickle was over before the other thread was served"
        await wait_reaction(h, meanwhile["ts"], DELIVERED)

        await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, slow)) == 1, timeout=trickle_seconds)
        told_after = time.monotonic() - posted
        await fake.wait_for(lambda: trickling.ended_at is not None, timeout=trickle_seconds)
        assert trickling.ended_at is not None
        cut_after = trickling.ended_at - trickling.received_at
        print(
            f"\n(4) trickle cut after {cut_after:.2f}s ({trickling.bytes_sent} of 24 bytes), thread told "
            f"after {told_after:.2f}s; the other thread was delivered in {other_took:.2f}s"
        )
        assert other_took < 1.0
        assert cut_after < 2.0, "the attempt was not capped at PROVIDER_TIMEOUT"
        assert told_after < 3.0
        assert trickling.status is None  # the answer never completed
        (told,) = reply_texts(h, slow)
        assert "not delivered" in told
        assert "did not answer in time" in told
        row = await wait_row(h, slow, stuck["ts"], lambda r: r.state.final, "final")
        assert (row.state, row.outcome, row.attempts) == (MessageState.FAILED, "gave_up", 1)
        # The slow thread goes on with its next message.
        after = await h.reply(slow, "after the trickle")
        await wait_reaction(h, after["ts"], DELIVERED)
        assert fake.messages(slow_session) == [sent("trickled"), sent("after the trickle")]
        assert fake.delivered_messages(slow_session) == [sent("after the trickle")]


# -- 5. deleted, edited or unlinked while waiting for a retry ----------------------------------

RETRY_WAIT = {"relay_retry_budget": 10.0, "relay_retry_max_wait": 1.0}


async def waiting_for_retry(h: Harness, fake: FakeProvider, thread: str, text: str) -> dict[str, Any]:
    """Reply ``text``; its first attempt gets 503; return once it waits (about 1 s) for its retry."""
    fake.script(Answer.status(503))
    event = await h.reply(thread, text)
    await wait_row(
        h,
        thread,
        event["ts"],
        lambda r: r.state is MessageState.PENDING and r.attempts == 1,
        "waiting for a retry",
    )
    assert fake.messages() == [sent(text)]
    return event


async def test_message_deleted_while_waiting_for_a_retry_is_not_sent_again(tmp_path: Path) -> None:
    async with devin_only(tmp_path, **RETRY_WAIT) as (h, fake):
        thread = await h.link("devin")
        doomed = await waiting_for_retry(h, fake, thread, "wrong thread, sorry")
        await h.sender.event(delete_event(doomed))
        row = await wait_row(h, thread, doomed["ts"], lambda r: r.state.final, "final", within=1.0)
        assert row.state is MessageState.SKIPPED
        await barrier(h, thread)
        assert fake.messages() == [sent("wrong thread, sorry"), sent("barrier")]
        assert fake.delivered_messages() == [sent("barrier")]
        await h.settle()
        assert h.slack.replies_in(CHANNEL, thread) == []


async def test_message_edited_while_waiting_for_a_retry_is_sent_with_its_new_text(tmp_path: Path) -> None:
    async with devin_only(tmp_path, **RETRY_WAIT) as (h, fake):
        thread = await h.link("devin")
        waiting = await waiting_for_retry(h, fake, thread, "deploy to prod")
        await h.sender.event(edit_event(waiting, "deploy to staging", edited_ts=new_ts()))
        row = await wait_row(h, thread, waiting["ts"], lambda r: True, "stored")
        assert (row.state, row.text) == (MessageState.PENDING, "deploy to staging")  # edited while waiting
        await wait_reaction(h, waiting["ts"], DELIVERED)
        await barrier(h, thread)
        assert fake.messages() == [sent("deploy to prod"), sent("deploy to staging"), sent("barrier")]
        assert fake.delivered_messages() == [sent("deploy to staging"), sent("barrier")]
        await h.settle()
        assert h.slack.reactions_on(CHANNEL, waiting["ts"]) == [DELIVERED]
        assert h.slack.replies_in(CHANNEL, thread) == []


async def unlink_while_waiting(h: Harness, fake: FakeProvider) -> tuple[str, dict[str, Any]]:
    thread = await h.link("devin")
    waiting = await waiting_for_retry(h, fake, thread, "are you still there?")
    await h.sender.event(mention_event("unlink", thread_ts=thread))
    assert await h.store.get_binding(h.thread(thread)) is None
    assert (await wait_row(h, thread, waiting["ts"], lambda r: True, "stored")).state is MessageState.PENDING
    # The retry falls due about a second later and finds the thread unlinked: the row is final.
    row = await wait_row(h, thread, waiting["ts"], lambda r: r.state.final, "final", within=5.0)
    assert row.state is MessageState.SKIPPED
    await h.settle()
    return thread, waiting


async def test_message_unlinked_while_waiting_for_a_retry_is_not_sent_again(tmp_path: Path) -> None:
    async with devin_only(tmp_path, **RETRY_WAIT) as (h, fake):
        thread, _waiting = await unlink_while_waiting(h, fake)
        assert fake.messages() == [sent("are you still there?")]
        assert fake.delivered_messages() == []
        assert any("unlinked" in text for text in reply_texts(h, thread))


async def test_message_unlinked_while_waiting_for_a_retry_keeps_no_hourglass(tmp_path: Path) -> None:
    # What a person sees on the message afterwards: an hourglass says "still trying", which is no
    # longer true once the thread is unlinked and the message dropped.
    async with devin_only(tmp_path, **RETRY_WAIT) as (h, fake):
        _thread, waiting = await unlink_while_waiting(h, fake)
        assert (PENDING, "reactions.add") in [
            (name, method) for method, name in reaction_calls(h, waiting["ts"])
        ]
        assert PENDING not in h.slack.reactions_on(CHANNEL, waiting["ts"]), reaction_calls(h, waiting["ts"])


# -- 6. unsigned and malformed requests --------------------------------------------------------


async def test_malformed_and_unsigned_requests_are_refused_quietly(tmp_path: Path) -> None:
    with captured_logs() as log:
        async with devin_only(tmp_path) as (h, fake):
            thread = await h.link("devin")
            valid = h.sender.event_body(message_event("forged", thread_ts=thread))
            signed_bodies = {
                "invalid JSON": b'{"type": "event_callback", "event": {',
                "not UTF-8": b'{"type": "event_callback", "x": "\xff\xfe\xc3"}',
                "10,000 [": b"[" * 10_000,
                "10,000 nested arrays": b"[" * 10_000 + b"]" * 10_000,
                "10,000 nested objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
                "500 levels in an event": b'{"event": ' + b"[" * 500 + b"]" * 500 + b"}",
            }
            cases = {f"{name} (signed)": (raw, signed(raw)) for name, raw in signed_bodies.items()}
            cases["timestamp abc"] = (
                valid.encode(),
                {**h.sender._headers(valid, JSON), "x-slack-request-timestamp": "abc"},
            )
            cases["unsigned garbage"] = (bytes(range(256)) * 4, {})
            cases["unsigned garbage, fresh timestamp"] = (
                b"\x00\x81garbage\xfe",
                {"x-slack-request-timestamp": str(int(time.time())), "x-slack-signature": "v0=00"},
            )
            statuses = {}
            for name, (raw, headers) in cases.items():
                statuses[name] = (await post_bytes(h, raw, headers)).status_code
            print(f"\n(6) answers: {statuses}")

            # 100 unsigned garbage requests, some with a fresh timestamp and a made-up signature.
            before = len(log.getvalue())
            rng = random.Random(6)
            garbage_statuses = []
            for i in range(100):
                raw = rng.randbytes(rng.randint(0, 3000))
                headers = [
                    {},
                    {"content-type": JSON},
                    {
                        "content-type": JSON,
                        "x-slack-request-timestamp": str(int(time.time())),
                        "x-slack-signature": "v0=" + rng.randbytes(32).hex(),
                    },
                    {
                        "content-type": "application/x-www-form-urlencoded",
                        "x-slack-request-timestamp": str(int(time.time())),
                        "x-slack-signature": rng.randbytes(8).hex(),
                    },
                ][i % 4]
                garbage_statuses.append((await post_bytes(h, raw, headers)).status_code)
            garbage_problems = problems_in(log.getvalue()[before:])
            print(
                f"(6) 100 unsigned garbage requests: answers {sorted(set(garbage_statuses))}, "
                f"{len(garbage_problems)} error lines"
            )
            # Still serving: a real reply is relayed.
            event = await h.reply(thread, "still here")
            await wait_reaction(h, event["ts"], DELIVERED)
            assert fake.messages() == [sent("still here")]

    problems = problems_in(log.getvalue())
    bad = {name: status for name, status in statuses.items() if status not in (400, 401)}
    assert bad == {}, f"answered other than 400/401: {bad}; first error line: {problems[:1]}"
    assert [s for s in garbage_statuses if s not in (400, 401)] == []
    assert garbage_problems == []
    assert problems == [], "\n".join(problems[:5])


async def test_a_signed_event_with_an_absurd_ts_gets_no_500(tmp_path: Path) -> None:
    absurd = "9" * 5000 + ".000100"
    with captured_logs() as log:
        async with devin_only(tmp_path) as (h, fake):
            thread = await h.link("devin")
            original = await h.reply(thread, "original")
            await wait_reaction(h, original["ts"], DELIVERED)
            events = {
                "ts": message_event("absurd ts", thread_ts=thread, ts=absurd),
                "thread_ts": message_event("absurd thread", thread_ts=absurd),
                "edited ts": edit_event(original, "edited at an absurd time", edited_ts=absurd),
                "mention ts": mention_event("status", thread_ts=thread, ts=absurd),
            }
            statuses = {}
            for name, event in events.items():
                body = h.sender.event_body(event)
                statuses[name] = (await h.sender.post_raw(body, h.sender._headers(body, JSON))).status_code
            print(f"\n(6) 5,000-digit ts: answers {statuses}")
            # Still serving, and the thread is not stuck behind anything the absurd events left.
            await barrier(h, thread, "after the absurd ones")
            assert fake.messages()[0] == sent("original")
            assert fake.messages()[-1] == sent("after the absurd ones")
    problems = problems_in(log.getvalue())
    bad = {name: s for name, s in statuses.items() if not (200 <= s < 300 or 400 <= s < 500)}
    assert bad == {}, f"answered 5xx: {bad}; first error line: {problems[:1]}"
    assert problems == [], "\n".join(problems[:3])


# -- 7. acknowledge first, answer later --------------------------------------------------------


async def test_mention_commands_and_notices_are_acknowledged_before_slow_slack_answers(
    tmp_path: Path,
) -> None:
    slow = 4.0  # longer than the 3 s Slack waits for an acknowledgement
    async with devin_only(tmp_path) as (h, fake):
        # One channel per case: a channel's Slack calls go one at a time, so the answers come in
        # about ``slow`` seconds together rather than one after the other.
        status_thread = await h.link("devin", channel="C0STATUS")
        mute_thread = await h.link("devin", "devin-mute", channel="C0MUTE")
        outsider_thread = await h.link("devin", "devin-outsider", channel="C0OUTSIDER")
        unlinked_parent = new_ts()
        for method in ("chat.postEphemeral", "chat.postMessage"):
            h.slack.delay(method, slow)

        events = {
            "status": mention_event("status", thread_ts=status_thread, channel="C0STATUS"),
            "mute": mention_event("mute", thread_ts=mute_thread, channel="C0MUTE"),
            "greeting": mention_event("hello?", thread_ts=unlinked_parent, channel="C0GREET"),
            "outsider notice": message_event(
                "hi from elsewhere",
                thread_ts=outsider_thread,
                channel="C0OUTSIDER",
                user=OUTSIDER,
                user_team="T0OTHER",
            ),
        }
        took = {}
        first_sent = time.monotonic()
        for name, event in events.items():
            started = time.monotonic()
            await h.sender.event(event)
            took[name] = round(time.monotonic() - started, 3)
        print(f"\n(7) acknowledged after (s), Slack answering in {slow:g}s: {took}")
        assert {name: t for name, t in took.items() if t >= 1.0} == {}

        # The answers still arrive.
        await h.slack.wait_for(lambda: len(h.slack.ephemerals("C0STATUS", ALICE)) == 1, timeout=slow + 6)
        await h.slack.wait_for(lambda: len(h.slack.ephemerals("C0GREET", ALICE)) == 1, timeout=slow + 6)
        await h.slack.wait_for(lambda: len(reply_texts(h, mute_thread, "C0MUTE")) == 1, timeout=slow + 6)
        await h.slack.wait_for(
            lambda: len(reply_texts(h, outsider_thread, "C0OUTSIDER")) == 1, timeout=slow + 6
        )
        answered_after = time.monotonic() - first_sent
        print(f"(7) every answer was in Slack {answered_after:.2f}s after the first event")
        assert answered_after >= slow * 0.9  # Slack really was that slow
        assert "linked to Devin session" in str(h.slack.ephemerals("C0STATUS", ALICE)[0]["text"])
        assert "paused relaying" in reply_texts(h, mute_thread, "C0MUTE")[0]
        assert "outside this organisation" in reply_texts(h, outsider_thread, "C0OUTSIDER")[0]
        binding = await h.store.get_binding(h.thread(mute_thread, "C0MUTE"))
        assert binding is not None
        assert binding.muted
        assert fake.requests == []


async def test_mention_list_is_acknowledged_before_slow_slack_answers(tmp_path: Path) -> None:
    # ``@agent-relay list`` answers with a permalink per linked thread: Slack calls, which must not
    # hold up the acknowledgement either (with 50 linked threads, 50 calls in a row). Here two
    # threads and 2 s a call: 4 s in a row, past the 3 s Slack waits.
    slow = 2.0
    async with devin_only(tmp_path) as (h, fake):
        threads = [await h.link("devin", f"devin-list{i}") for i in range(2)]
        for method in ("chat.getPermalink", "chat.postEphemeral"):
            h.slack.delay(method, slow)
        started = time.monotonic()
        await h.sender.event(mention_event("list", thread_ts=threads[0]))
        took = time.monotonic() - started
        print(f"\n(7) @agent-relay list acknowledged after {took:.2f}s, Slack answering in {slow:g}s")
        await h.slack.wait_for(lambda: len(h.slack.ephemerals(CHANNEL, ALICE)) == 1, timeout=3 * slow + 5)
        listing = str(h.slack.ephemerals(CHANNEL, ALICE)[0]["text"])
        assert "devin-list0" in listing
        assert "devin-list1" in listing
        assert took < 1.0
        assert fake.requests == []


# -- 8. secrets in provider words and in what people paste --------------------------------------


@pytest.mark.parametrize("kind", ["not_running", "rejected"])
async def test_provider_words_quoting_other_secrets_are_not_shown_or_stored(
    tmp_path: Path, kind: str
) -> None:
    async with running(tmp_path) as h:  # every provider configured: every key is a secret here
        h.slack.add_user(ALICE, "alice")
        quoted = [KEYS["feather"], BOT_TOKEN, SIGNING_SECRET, KEYS["agen"], KEYS["devin"]]
        words = "Session suspended; keys seen: " + " / ".join(quoted)
        # The harness's own leak check (run again when the harness stops) finds every one of them.
        assert len(set(find_secrets(h.settings, {"provider words": words}))) == len(quoted)
        if kind == "not_running":
            answer = Answer.not_running(words)
        else:
            answer = Answer.rejected([{"loc": ["body", "message"], "msg": words, "type": "value_error"}])
        h.providers["devin"].script(answer)
        thread = await h.link("devin")
        event = await h.reply(thread, "are you there?")
        await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, thread)) == 1)
        await h.settle()

        (told,) = reply_texts(h, thread)
        shown = "Session suspended; keys seen: " + " / ".join(["[redacted]"] * len(quoted))
        assert shown in told  # the provider's words, without the secrets
        row = await wait_row(h, thread, event["ts"], lambda r: r.state.final, "final")
        assert row.detail is not None
        assert shown in row.detail
        # Everywhere the harness looks on the way out, the words arrived, without the secrets: the
        # check covers this path.
        places = _leak_places(h.slack, h.providers, "", tmp_path / "relay.db")
        assert shown in places["slack calls"]
        assert any(shown in text for where, text in places.items() if where.startswith("store file"))
        assert find_secrets(h.settings, places) == []


async def test_a_pasted_secret_is_replaced_before_it_is_stored_or_sent(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.slack.add_user(ALICE, "alice")
        thread = await h.link("devin")
        event = message_event(f"try key {KEYS['feather']} with token {BOT_TOKEN} please", thread_ts=thread)
        await h.sender.event(event, event_id="EvPasted")
        await h.sender.event(event, event_id="EvPasted", retry_num=1)  # Slack's retry of it
        await wait_reaction(h, event["ts"], DELIVERED)
        await barrier(h, thread)
        await h.settle()

        assert h.providers["devin"].messages() == [
            sent("try key [redacted] with token [redacted] please"),
            sent("barrier"),
        ]
        store_bytes = store_file_bytes(tmp_path)
        for secret in (KEYS["feather"], BOT_TOKEN):
            assert secret.encode() not in store_bytes
        assert b"try key [redacted] with token [redacted] please" in store_bytes
        notices = h.slack.ephemerals(CHANNEL, ALICE)
        assert len(notices) == 1, notices  # told once, although Slack delivered the event twice
        assert "[redacted]" in str(notices[0]["text"])
        assert notices[0]["thread_ts"] == thread
        assert h.slack.replies_in(CHANNEL, thread) == []


# -- 9. replies longer than Slack takes --------------------------------------------------------


@pytest.mark.parametrize("kind", ["rejected", "not_running"])
async def test_a_huge_provider_answer_is_shortened_to_fit_slack(tmp_path: Path, kind: str) -> None:
    huge = ("This session cannot take messages right now. " * 5000)[:200_000]
    assert len(huge) == 200_000
    async with devin_only(tmp_path) as (h, fake):
        if kind == "rejected":
            fake.script(Answer.rejected([{"loc": ["body", "message"], "msg": huge, "type": "value_error"}]))
        else:
            fake.script(Answer.not_running(huge))
        thread = await h.link("devin")
        await h.reply(thread, "hello")
        await h.slack.wait_for(lambda: len(h.slack.replies_in(CHANNEL, thread)) == 1)
        # What a person asking for the thread's status is shown is bounded too.
        await h.sender.event(mention_event("status", thread_ts=thread))
        await h.settle()

        posts = [c for c in h.slack.calls_to("chat.postMessage") if c.args.get("thread_ts") == thread]
        assert len(posts) == 1
        text = str(posts[0].args["text"])
        (status,) = h.slack.calls_to("chat.postEphemeral")
        status_text = str(status.args["text"])
        print(f"\n(9) {kind}: Slack was asked to post {len(text):,} characters, status {len(status_text):,}")
        assert len(text) <= SLACK_TEXT_LIMIT
        assert "shortened" in text
        assert text.startswith(f"<@{ALICE}>")
        assert "This session cannot take messages right now." in text
        assert len(status_text) <= SLACK_TEXT_LIMIT
        for call in h.slack.calls:
            assert len(json.dumps(call.args)) <= SLACK_TEXT_LIMIT + 2_000, call.method


# -- 10. a fractional Retry-After from Slack ---------------------------------------------------


@pytest.mark.parametrize("times", [1, 3], ids=["client-retry", "queue-retry"])
async def test_a_fractional_retry_after_from_slack_is_honoured(tmp_path: Path, times: int) -> None:
    # times=1: slack_sdk's retry handler waits; times=3 outlasts its two retries, so the feedback
    # queue stores the retry. The client's waits are half a second (not a crash, not rounded to a
    # whole second); the queue's wait is at least half a second (it also waits for its next poll).
    with captured_logs() as log:
        async with devin_only(tmp_path) as (h, fake):
            fake.script(Answer.status(503), Answer.delivered())
            thread = await h.link("devin")
            h.slack.fail_next("reactions.add", status=429, retry_after=0.5, times=times)
            event = await h.reply(thread, "react after half a second")
            await wait_reaction(h, event["ts"], DELIVERED, within=10)
            await h.settle()
            calls = [c for c in h.slack.calls_to("reactions.add") if c.args.get("timestamp") == event["ts"]]
            assert [str(c.args["name"]) for c in calls] == [PENDING] * (times + 1) + [DELIVERED]
            gaps = [
                round(b.received_at - a.received_at, 3) for a, b in itertools.pairwise(calls[: times + 1])
            ]
            print(f"\n(10) Retry-After 0.5 x{times}: waits between attempts {gaps}")
            assert all(gap >= 0.45 for gap in gaps), gaps
            client_gaps = gaps[:2]  # slack_sdk's own retries (at most two)
            assert all(gap < 0.95 for gap in client_gaps), gaps
            assert h.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED]  # no ⏳ left
            assert fake.delivered_messages() == [sent("react after half a second")]
    text = log.getvalue()
    assert "ValueError" not in text
    assert problems_in(text) == []


# -- 11. two processes on one SQLite file -----------------------------------------------------

PER_THREAD = 10


async def deliver_to(senders: list[SlackSender], event: dict[str, Any]) -> None:
    """Post one event, signed, with one event_id, to every sender's process at once."""
    body = senders[0].event_body(event)
    answers = await asyncio.gather(*(s.post_raw(body, s._headers(body, JSON)) for s in senders))
    assert [a.status_code for a in answers] == [200] * len(senders), [a.text for a in answers]


def tally(label: str, fake: FakeProvider, sessions: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(("sent", "delivered", "duplicated", "reordered", "lost"), 0)
    for session in sessions:
        expected = [sent(f"{session} m{i}") for i in range(PER_THREAD)]
        got = fake.messages(session)
        unique = list(dict.fromkeys(got))
        counts["sent"] += len(expected)
        counts["delivered"] += len(fake.delivered_messages(session))
        counts["duplicated"] += len(got) - len(unique)
        counts["lost"] += len(set(expected) - set(got))
        ranks = [expected.index(text) for text in unique if text in expected]
        counts["reordered"] += sum(1 for a, b in itertools.pairwise(ranks) if a > b)
    print(f"\n(11) {label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


async def test_two_processes_on_one_sqlite_file_deliver_each_message_once_in_order(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider("devin", KEYS["devin"]) as devin:
        slack.add_user(ALICE, "alice")
        env = bot_env(slack, devin, db, RELAY_POLL_INTERVAL="0.2")
        async with (
            bot_process(env, tmp_path, "one") as one,
            bot_process(env, tmp_path, "two") as two,
            httpx.AsyncClient(timeout=10) as client,
        ):
            senders = [SlackSender(url=bot.url, client=client, slack=slack) for bot in (one, two)]
            rng = random.Random(11)

            async def run(label: str, to: Callable[[], list[SlackSender]]) -> dict[str, int]:
                sessions = [f"devin-{label}{t}" for t in range(3)]
                threads = {s: await link(rng.choice(senders), slack, db, s) for s in sessions}

                async def one_thread(session: str) -> None:
                    for i in range(PER_THREAD):
                        await deliver_to(to(), message_event(f"{session} m{i}", thread_ts=threads[session]))

                await asyncio.gather(*(one_thread(s) for s in sessions))
                rows = len(sessions) * PER_THREAD

                def finished() -> bool:
                    ours = set(threads.values())
                    states = [
                        state
                        for thread, state in db_rows(db, "SELECT thread_ts, state FROM messages")
                        if thread in ours
                    ]
                    return states == ["delivered"] * rows

                with contextlib.suppress(AssertionError):
                    await eventually(finished, timeout=20)
                return tally(label, devin, sessions)

            both = await run("both", lambda: senders)
            spread = await run("spread", lambda: [rng.choice(senders)])
            for bot in (one, two):
                assert bot.process.returncode is None, bot.log.read_text()[-2000:]
            logs = [bot.log.read_text() for bot in (one, two)]
            finished_by = [log.count('"event": "message_finished"') for log in logs]
            print(f"(11) messages finished by each process: {finished_by}")
            problems = [problem for log in logs for problem in problems_in(log)]
        devin.assert_no_violations()
    for counts in (both, spread):
        assert counts == {"sent": 30, "delivered": 30, "duplicated": 0, "reordered": 0, "lost": 0}
    assert problems == [], problems[:3]
