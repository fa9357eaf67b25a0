"""Socket Mode, the default run mode: the bot connects out to Slack over a WebSocket (here a fake one)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.runtime import Runtime
from storage import ThreadKey
from tests.fakes import eventually
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import TEAM, FakeSlack
from tests.harness import ALICE, BOT_TOKEN, CHANNEL, DEVIN_SESSION, KEYS, make_settings, message_event

APP_TOKEN = "xapp-1-A0APP-0000000000000-TESTapptoken0123456789abcdef"


async def wait_bound(runtime: Runtime, thread_ts: str, within: float = 5.0) -> None:
    """Wait until the link has been stored: a reply before that would not be relayed."""
    assert runtime.deps is not None
    store = runtime.deps.store
    deadline = time.monotonic() + within
    while await store.get_binding(ThreadKey(TEAM, CHANNEL, thread_ts)) is None:
        assert time.monotonic() < deadline, f"thread {thread_ts} was never bound"
        await asyncio.sleep(0.01)


def envelope(event: dict[str, object], event_id: str) -> dict[str, object]:
    return {
        "team_id": TEAM,
        "api_app_id": "A0APP",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": "U0BOT", "is_bot": True}],
    }


async def test_link_and_relay_over_socket_mode(tmp_path: Path) -> None:
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider("devin", KEYS["devin"]) as devin:
        slack.app_token = APP_TOKEN
        slack.add_user(ALICE, "alice")
        settings = make_settings(
            tmp_path, slack, {"devin": devin}, slack_app_token=APP_TOKEN, slack_signing_secret=None
        )
        runtime = Runtime(settings, mode="socket")
        await runtime.start()
        try:
            assert slack.socket_connected
            await slack.socket_send(
                "slash_commands",
                {
                    "team_id": TEAM,
                    "channel_id": CHANNEL,
                    "user_id": ALICE,
                    "command": "/agent",
                    "text": f"link devin {DEVIN_SESSION}",
                    "response_url": slack.response_url("socket"),
                    "trigger_id": "t.1",
                },
            )
            await eventually(lambda: len(slack.messages) == 1)
            thread = str(slack.messages[0]["ts"])
            await wait_bound(runtime, thread)
            reply = message_event("over the socket", thread_ts=thread)
            # Slack redelivers an unacknowledged envelope: the provider must still get one message.
            await slack.socket_send("events_api", envelope(reply, "Ev1"))
            await slack.socket_send("events_api", envelope(reply, "Ev1"), retry_attempt=1)
            await eventually(lambda: slack.reactions_on(CHANNEL, reply["ts"]) == ["white_check_mark"])
            # A thread's messages are sent in order: once a later one is delivered, a second copy
            # of the first would have been sent too.
            later = message_event("and one more", thread_ts=thread)
            await slack.socket_send("events_api", envelope(later, "Ev2"))
            await eventually(lambda: slack.reactions_on(CHANNEL, later["ts"]) == ["white_check_mark"])
            assert devin.messages(DEVIN_SESSION) == [
                "alice (via Slack): over the socket",
                "alice (via Slack): and one more",
            ]
        finally:
            await runtime.stop()
        await eventually(lambda: not slack.socket_connected)
        devin.assert_no_violations()
