"""Every event the manifest subscribes to has a listener: Slack gets 200, never a 404 that it would retry."""

from __future__ import annotations

import pytest

from bot.manifest import BOT_EVENTS
from tests.fakes import eventually
from tests.harness import DEVIN_SESSION, Harness, mention_event, message_event

CHANNEL_TYPES = {
    "message.channels": "channel",
    "message.groups": "group",
    "message.im": "im",
    "message.mpim": "mpim",
}


def test_every_subscribed_message_event_is_covered_here() -> None:
    assert set(BOT_EVENTS) == {"app_mention", *CHANNEL_TYPES}


@pytest.mark.parametrize("subscription", sorted(CHANNEL_TYPES))
async def test_message_events_of_every_conversation_type_are_acknowledged(
    relay: Harness, subscription: str
) -> None:
    event = message_event("hello", channel="D0DIRECT", channel_type=CHANNEL_TYPES[subscription])
    response = await relay.sender.event(event)
    assert response.status_code == 200


async def test_app_mention_is_acknowledged_and_answered(relay: Harness) -> None:
    response = await relay.sender.event(mention_event("help"))
    assert response.status_code == 200
    await eventually(lambda: len(relay.slack.ephemerals()) == 1)
    assert "/agent link" in relay.slack.ephemerals()[0]["text"]


async def test_a_thread_in_a_direct_message_can_be_linked_and_steered(relay: Harness) -> None:
    thread = await relay.link("devin", channel="D0DIRECT")
    await relay.sender.event(
        message_event("from the DM", channel="D0DIRECT", channel_type="im", thread_ts=thread)
    )
    devin = relay.providers["devin"]
    await eventually(lambda: len(devin.delivered_messages(DEVIN_SESSION)) == 1)
    assert devin.delivered_messages(DEVIN_SESSION)[0].endswith("from the DM")
