from __future__ import annotations

from tests.fakes import eventually
from tests.harness import ALICE, CHANNEL, DEVIN_SESSION, Harness


async def test_link_and_relay_one_message(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    anchor = relay.slack.messages[-1]
    assert f"<@{ALICE}>" in anchor["text"]
    assert DEVIN_SESSION in anchor["text"]
    event = await relay.reply(thread, "please run the tests")
    devin = relay.providers["devin"]
    await eventually(lambda: len(devin.requests) == 1)
    assert devin.messages(DEVIN_SESSION) == ["alice (via Slack): please run the tests"]
    await eventually(lambda: relay.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
    # The reaction comes before any reply; a thread's messages are handled in order, so once a later
    # message has its reaction, a reply to the first one would already have been posted.
    barrier = await relay.reply(thread, "barrier")
    await relay.slack.wait_for(
        lambda: relay.slack.reactions_on(CHANNEL, barrier["ts"]) == ["white_check_mark"]
    )
    assert relay.slack.replies_in(CHANNEL, thread) == []
    assert devin.messages(DEVIN_SESSION) == [
        "alice (via Slack): please run the tests",
        "alice (via Slack): barrier",
    ]
