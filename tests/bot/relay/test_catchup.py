"""The catch-up after ``@agent-relay link …`` in an existing thread (:mod:`bot.relay.catchup`): the replies
written while the link was being made are read from Slack and relayed like any event, by the same
rules; a catch-up that fails leaves the link standing.

Replies arriving before and after the link, and a failed thread read, are in
``tests/e2e/test_real_messages.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.render.control import UNEXPECTED_ERROR
from storage import MessageState, StoreError
from tests.harness import (
    AGEN_SESSION,
    ALICE,
    BOB,
    BOT_ID,
    BOT_USER,
    CHANNEL,
    Harness,
    mention_event,
    message_event,
    new_ts,
    running,
)
from tests.logcapture import captured_logs, log_records

LINKED = f":link: <@{ALICE}> linked this thread to Agen session"


def remembered(h: Harness, event: dict[str, Any]) -> dict[str, Any]:
    """``event`` as Slack keeps it in the thread (``conversations.replies`` returns it)."""
    h.slack.remember(CHANNEL, {k: v for k, v in event.items() if k not in ("channel", "channel_type")})
    return event


def human_thread(h: Harness) -> str:
    parent = new_ts()
    remembered(h, message_event("can an agent look at this?", ts=parent, user=BOB))
    return parent


async def test_caught_up_replies_follow_the_same_rules_as_events(tmp_path: Path) -> None:
    """Between the link mention and the bot storing the link, someone wrote an instruction, a reply
    kept out with the aside prefix, and another bot posted: only the instruction reaches the agent."""
    with captured_logs() as log:
        async with running(tmp_path, providers=("agen",)) as h:
            parent = human_thread(h)
            link = mention_event(f"link agen {AGEN_SESSION}", thread_ts=parent, ts=new_ts())
            remembered(h, link)
            instruction = remembered(h, message_event("rerun the flaky test", thread_ts=parent))
            aside = remembered(h, message_event("!aside not for the agent", thread_ts=parent, user=BOB))
            other_bot = remembered(
                h,
                message_event(
                    "build #12 passed",
                    thread_ts=parent,
                    user="U0CIBOT",
                    bot_id="B0CIBOT",
                    subtype="bot_message",
                ),
            )
            own = remembered(
                h, message_event("an earlier answer of ours", thread_ts=parent, user=BOT_USER, bot_id=BOT_ID)
            )
            await h.sender.event(link)
            await h.wait_bound(parent)
            agen = h.providers["agen"]
            await agen.wait_for(lambda: len(agen.delivered_messages()) == 1)
            assert agen.messages() == [f"{ALICE} (via Slack): rerun the flaky test"]
            stored = await h.store.get_message(h.thread(parent), instruction["ts"])
            assert stored is not None
            assert stored.state in (MessageState.SENDING, MessageState.DELIVERED)
            for skipped in (aside, other_bot, own):
                assert await h.store.get_message(h.thread(parent), skipped["ts"]) is None
    (caught_up,) = [r for r in log_records(log) if r.get("event") == "thread_caught_up"]
    assert (caught_up["thread"], caught_up["queued"]) == (parent, 1)


async def test_a_catch_up_that_fails_leaves_the_link_made_and_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails while a caught-up reply is being queued. The binding was stored already, so the
    thread must be told it is linked, and nobody told that nothing was changed.

    Before the fix: the catch-up's exception comes back through ``asyncio.wait_for(asyncio.shield(task))``
    into the mention listener, so the link mention fails (HTTP 500 to Slack), the person who linked is
    told "Sorry, something went wrong …; nothing was changed" although the thread is linked, the link
    is never announced, and Slack's retry only answers "This thread is already linked" (the retry
    finds the binding, so it runs no catch-up: the reply written meanwhile is never relayed).
    """
    with captured_logs() as log:
        async with running(tmp_path, providers=("agen",)) as h:
            parent = human_thread(h)
            link = mention_event(f"link agen {AGEN_SESSION}", thread_ts=parent, ts=new_ts())
            remembered(h, link)
            remembered(h, message_event("rerun the flaky test", thread_ts=parent))
            enqueue = h.store.enqueue
            failures = 0

            async def flaky_enqueue(message: Any) -> Any:
                nonlocal failures
                if failures < 1:
                    failures += 1
                    raise StoreError("database is locked")
                return await enqueue(message)

            monkeypatch.setattr(h.store, "enqueue", flaky_enqueue)
            body = h.sender.event_body(link)
            answer = await h.sender.post_raw(body, h.sender._headers(body, "application/json"))
            await h.settle()
            assert failures == 1
            assert await h.store.get_binding(h.thread(parent)) is not None
            told = [str(m["text"]) for m in h.slack.ephemerals(CHANNEL, ALICE)]
            assert UNEXPECTED_ERROR not in told
            replies = [str(m["text"]) for m in h.slack.replies_in(CHANNEL, parent)]
            assert [t for t in replies if t.startswith(LINKED)], replies
            assert answer.status_code == 200
    assert [r for r in log_records(log) if r.get("event") == "thread_catch_up_failed"]
