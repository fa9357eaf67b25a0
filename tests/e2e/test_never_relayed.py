"""What never reaches a provider (issue 3): replies outside bound threads, top-level messages, bots,
system subtypes and mention commands. Every one of them is still answered HTTP 200, so that Slack
never retries an event for want of a listener.

"Not relayed" is always shown against a normal reply sent *afterwards* in the same bound thread: the
relay sends a thread's messages in order, so a wrongly queued event would reach the provider before
the normal reply does. The store is checked too: event listeners store before the ack, so when the
HTTP answer arrives a wrongly accepted event would already be a row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import (
    ALICE,
    BOT_ID,
    BOT_USER,
    CHANNEL,
    DEVIN_SESSION,
    Harness,
    mention_event,
    message_event,
    new_ts,
)

NORMAL = "the one that counts"
NORMAL_SENT = f"alice (via Slack): {NORMAL}"

EventFor = Callable[[str], dict[str, Any]]  # bound thread ts -> the event that must not be relayed


async def send(h: Harness, event: dict[str, Any], **kwargs: Any) -> None:
    response = await h.sender.event(event, **kwargs)
    assert response.status_code == 200  # answered: Slack will not retry it


async def assert_only_the_normal_reply_is_relayed(h: Harness, thread: str) -> None:
    """Reply normally in ``thread``; once it is delivered, it must be the only thing relayed."""
    event = await h.reply(thread, NORMAL)
    await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
    for name, fake in h.providers.items():
        expected = [NORMAL_SENT] if name == "devin" else []
        assert [r.text for r in fake.requests] == expected, name
    assert sum((await h.store.count_messages()).values()) == 1


async def linked_thread(h: Harness) -> str:
    h.slack.add_user(ALICE, "alice")
    return await h.link("devin")


# -- where: not in a bound thread --------------------------------------------------------------


async def test_reply_in_an_unbound_thread(relay: Harness) -> None:
    thread = await linked_thread(relay)
    other_parent = new_ts()
    await send(relay, message_event("a human parent", ts=other_parent))
    await send(relay, message_event("please do the thing", thread_ts=other_parent))
    await assert_only_the_normal_reply_is_relayed(relay, thread)
    assert relay.slack.replies_in(CHANNEL, other_parent) == []


async def test_top_level_message_in_a_channel_with_bound_threads(relay: Harness) -> None:
    thread = await linked_thread(relay)
    await relay.link("feather")
    await send(relay, message_event("please do the thing"))
    await assert_only_the_normal_reply_is_relayed(relay, thread)


async def test_thread_parent_itself_is_not_a_reply(relay: Harness) -> None:
    """Slack sets ``thread_ts == ts`` on a parent message; it is not a reply in its own thread."""
    thread = await linked_thread(relay)
    parent = new_ts()
    await send(relay, message_event("a parent", ts=parent, thread_ts=parent))
    await relay.sender.event(mention_event("link agen sess_parent", thread_ts=parent))
    await relay.wait_bound(parent)
    await send(relay, message_event("the parent again", ts=parent, thread_ts=parent))
    await assert_only_the_normal_reply_is_relayed(relay, thread)


# -- who: bots ---------------------------------------------------------------------------------

BOT_EVENTS: dict[str, EventFor] = {
    "own message": lambda t: message_event("Devin said hi", thread_ts=t, user=BOT_USER, bot_id=BOT_ID),
    "own message with profile": lambda t: message_event(
        "echo", thread_ts=t, user=BOT_USER, bot_id=BOT_ID, bot_profile={"id": BOT_ID, "name": "agent-relay"}
    ),
    "other bot, every mark": lambda t: message_event(
        "another relay speaking",
        thread_ts=t,
        user="U0OTHERBOT",
        bot_id="B0OTHER",
        bot_profile={"id": "B0OTHER", "name": "other-relay", "app_id": "A0OTHER"},
        subtype="bot_message",
    ),
    "other bot, bot_id only": lambda t: message_event(
        "another relay speaking", thread_ts=t, user="U0OTHERBOT", bot_id="B0OTHER"
    ),
    "other bot, bot_profile only": lambda t: message_event(
        "another relay speaking", thread_ts=t, user="U0OTHERBOT", bot_profile={"id": "B0OTHER", "name": "x"}
    ),
    "other bot, subtype only": lambda t: message_event(
        "legacy integration", thread_ts=t, user="U0OTHERBOT", subtype="bot_message", username="ci"
    ),
}


@pytest.mark.parametrize("make", BOT_EVENTS.values(), ids=BOT_EVENTS.keys())
async def test_bot_messages_in_a_bound_thread(relay: Harness, make: EventFor) -> None:
    thread = await linked_thread(relay)
    await send(relay, make(thread))
    await assert_only_the_normal_reply_is_relayed(relay, thread)


# -- what: subtypes that are not something a person wrote to the agent -------------------------
#
# Each event is placed in the bound thread and carries a human ``user``, so that its subtype is the
# only thing that can keep it out.


def _subtype(subtype: str, text: str, **extra: Any) -> EventFor:
    return lambda t: message_event(text, thread_ts=t, subtype=subtype, **extra)


def _deleted(thread: str) -> dict[str, Any]:
    """The deletion of a reply in ``thread`` that was never sent to the bot (so nothing is stored for
    it): only the subtype can keep its previous text from being relayed."""
    gone = new_ts()
    return message_event(
        "",
        thread_ts=thread,
        subtype="message_deleted",
        hidden=True,
        deleted_ts=gone,
        previous_message={"type": "message", "user": ALICE, "text": "oops", "ts": gone, "thread_ts": thread},
    )


SUBTYPE_EVENTS: dict[str, EventFor] = {
    "message_deleted": _deleted,
    "channel_join": _subtype("channel_join", f"<@{ALICE}> has joined the channel"),
    "channel_leave": _subtype("channel_leave", f"<@{ALICE}> has left the channel"),
    "channel_topic": _subtype("channel_topic", f"<@{ALICE}> set the channel topic: ship it", topic="ship it"),
    "channel_purpose": _subtype(
        "channel_purpose", f"<@{ALICE}> set the channel purpose: agents", purpose="agents"
    ),
    "channel_name": _subtype(
        "channel_name", f"<@{ALICE}> renamed the channel", old_name="general", name="agents"
    ),
    "message_replied": _subtype(
        "message_replied",
        "",
        hidden=True,
        message={"type": "message", "user": ALICE, "text": "parent", "reply_count": 1},
    ),
}


@pytest.mark.parametrize("make", SUBTYPE_EVENTS.values(), ids=SUBTYPE_EVENTS.keys())
async def test_system_subtypes_in_a_bound_thread(relay: Harness, make: EventFor) -> None:
    thread = await linked_thread(relay)
    await send(relay, make(thread))
    await assert_only_the_normal_reply_is_relayed(relay, thread)


async def test_message_replied_as_slack_sends_it(relay: Harness) -> None:
    """The real shape: no ``user`` at the top, the parent (with its thread) inside ``message``."""
    thread = await linked_thread(relay)
    event = {
        "type": "message",
        "subtype": "message_replied",
        "hidden": True,
        "channel": CHANNEL,
        "ts": new_ts(),
        "event_ts": new_ts(),
        "message": {"type": "message", "user": ALICE, "text": "parent", "thread_ts": thread, "ts": thread},
    }
    await send(relay, event)
    await assert_only_the_normal_reply_is_relayed(relay, thread)


# -- a mention command and its ``message`` twin ------------------------------------------------


@pytest.mark.parametrize("message_first", [True, False], ids=["message-first", "mention-first"])
async def test_mention_command_and_its_message_twin(relay: Harness, message_first: bool) -> None:
    """Slack delivers ``@agent-relay status`` twice (``app_mention`` and ``message``): the ``message``
    twin is not relayed, and the person gets one answer.

    Slack retrying the ``app_mention`` itself is covered by
    ``tests/e2e/test_commands.py::test_retried_mention_command_runs_once``."""
    thread = await linked_thread(relay)
    ts = new_ts()
    twin = message_event(f"<@{BOT_USER}> status", thread_ts=thread, ts=ts)
    mention = mention_event("status", thread_ts=thread, ts=ts)
    for event in (twin, mention) if message_first else (mention, twin):
        await send(relay, event)
    await assert_only_the_normal_reply_is_relayed(relay, thread)
    answers = relay.slack.ephemerals(CHANNEL, ALICE)
    assert len(answers) == 1, answers
    assert answers[0]["thread_ts"] == thread
    assert DEVIN_SESSION in answers[0]["text"]
    assert "Relaying is on" in answers[0]["text"]
    # The bot reacts before it replies, and handles a thread's messages in order: once a later
    # message has its reaction, a reply about an earlier one would have been posted.
    barrier = await relay.reply(thread, "barrier")
    await relay.slack.wait_for(
        lambda: relay.slack.reactions_on(CHANNEL, barrier["ts"]) == ["white_check_mark"]
    )
    assert relay.slack.replies_in(CHANNEL, thread) == []  # the status is not public
