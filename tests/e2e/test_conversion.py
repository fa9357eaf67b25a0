"""Slack mrkdwn reaches the agent as the plain text the person saw (issue 3).

End to end: a reply with Slack's markup goes through the running bot and the fake provider records
the text it received.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.providers import FakeProvider
from tests.harness import ALICE, BOB, CHANNEL, SESSIONS, Harness, running


async def relayed_text(h: Harness, provider: str, slack_text: str, *, user: str = ALICE) -> str:
    """Link a thread to ``provider``, reply ``slack_text`` in it, return what the provider received."""
    thread = await h.link(provider)
    event = await h.reply(thread, slack_text, user=user)
    await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
    fake: FakeProvider = h.providers[provider]
    texts = fake.messages(SESSIONS[provider])
    assert len(texts) == 1, texts
    return texts[0]


@pytest.mark.parametrize(
    ("slack_text", "plain"),
    [
        ("<@U0BOB> can you look?", "@bob can you look?"),
        ("see <#C123|general> first", "see #general first"),
        ("read <https://x.y/z|the docs>", "read the docs (https://x.y/z)"),
        ("&lt;b&gt; &amp;", "<b> &"),
        ("open <https://x.y/z>", "open https://x.y/z"),
        ("&amp;lt; stays escaped once", "&lt; stays escaped once"),
    ],
    ids=["user", "channel", "labelled-link", "entities", "bare-link", "double-escape"],
)
async def test_each_token_becomes_plain_text(relay: Harness, slack_text: str, plain: str) -> None:
    relay.slack.add_user(ALICE, "alice", real_name="Alice Liddell")
    relay.slack.add_user(BOB, "bob", real_name="Bob Builder")
    assert await relayed_text(relay, "devin", slack_text) == f"alice (via Slack): {plain}"


@pytest.mark.parametrize("provider", ["devin", "feather", "agen"])
async def test_everything_at_once_for_every_provider(tmp_path: Path, provider: str) -> None:
    async with running(tmp_path, providers=(provider,)) as h:
        h.slack.add_user(ALICE, "alice", real_name="Alice Liddell")
        h.slack.add_user(BOB, "bob", real_name="Bob Builder")
        text = await relayed_text(
            h, provider, "<@U0BOB> see <#C123|general> and <https://x.y/z|the docs>: &lt;b&gt; &amp;"
        )
        assert text == "alice (via Slack): @bob see #general and the docs (https://x.y/z): <b> &"


async def test_author_is_the_display_name_not_the_real_name_or_id(relay: Harness) -> None:
    relay.slack.add_user(BOB, "bobby", real_name="Robert Tables")
    text = await relayed_text(relay, "agen", "hello", user=BOB)
    assert text == "bobby (via Slack): hello"


async def test_author_without_display_name_falls_back_to_real_name(relay: Harness) -> None:
    relay.slack.add_user(BOB, "", real_name="Robert Tables")
    text = await relayed_text(relay, "feather", "<@U0BOB> hi", user=BOB)
    assert text == "Robert Tables (via Slack): @Robert Tables hi"
