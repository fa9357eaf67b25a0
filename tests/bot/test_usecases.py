"""``list`` when ``auth.test`` gave no workspace address (:meth:`bot.usecases.UseCases.list_channel`): each
thread's link comes from Slack (``chat.getPermalink``), and a thread Slack gives none for is still
listed.

With the address known (what ``auth.test`` normally says) the links are built without a Slack call:
``tests/e2e/test_commands.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.policy import Policy
from bot.render.control import ControlText
from bot.slack import SlackGateway, make_web_client
from bot.usecases import Invocation, UseCases
from storage import Binding, ThreadKey
from storage.sqlite import SQLiteStore
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import FakeSlack
from tests.harness import BOT_TOKEN, KEYS, make_settings

TEAM, CHANNEL = "T0TEAM", "C0CHANNEL"
THREADS = ("1800000000.000100", "1800000000.000200", "1800000000.000300")


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "relay.db")
    await opened.init()
    for n, ts in enumerate(THREADS):
        await opened.bind(Binding(ThreadKey(TEAM, CHANNEL, ts), "devin", f"devin-{n}", "U0ALICE", 1.8e9 + n))
    yield opened
    await opened.close()


async def test_list_without_a_workspace_address_asks_slack_for_each_link(
    tmp_path: Path, slack: FakeSlack, store: SQLiteStore
) -> None:
    async with FakeProvider("devin", KEYS["devin"]) as devin:
        settings = make_settings(tmp_path, slack, {"devin": devin})
        gateway = SlackGateway(make_web_client(BOT_TOKEN, base_url=slack.api_url))
        usecases = UseCases(
            store=store,
            slack=gateway,
            policy=Policy(settings, gateway),
            providers={},
            anchor_text=lambda user, ref: "",
            workspace_url=None,
        )
        slack.fail_next("chat.getPermalink", status=200, retry_after=None, error="message_not_found")
        listing = await usecases.list_channel(Invocation(TEAM, CHANNEL, "U0BOB"))

    assert listing.total == 3
    assert [(e.binding.key.thread_ts, e.permalink) for e in listing.entries] == [
        (THREADS[0], None),  # Slack would not say
        (THREADS[1], f"https://fake.slack.test/archives/{CHANNEL}/p1800000000000200"),
        (THREADS[2], f"https://fake.slack.test/archives/{CHANNEL}/p1800000000000300"),
    ]
    asked = [(c.args["channel"], c.args["message_ts"]) for c in slack.calls_to("chat.getPermalink")]
    assert asked == [(CHANNEL, ts) for ts in THREADS]
    lines = ControlText({}, aside_prefix="!aside").listing(listing).text.splitlines()
    assert lines[1] == f"• thread {THREADS[0]}: devin session `devin-0`, linked by <@U0ALICE>"
    assert lines[2].startswith(f"• <https://fake.slack.test/archives/{CHANNEL}/p1800000000000200|thread>: ")
