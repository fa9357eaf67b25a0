"""Listeners are plain functions: called here directly with a ``Deps``, no Bolt app, no HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from slack_bolt.context.async_context import AsyncBoltContext

from bot.deps import Deps, build_deps, close_deps
from handlers.mentions import on_mention
from handlers.messages import on_message
from storage import Binding, MessageState, ThreadKey
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import BOT_USER, TEAM, FakeSlack
from tests.harness import (
    ALICE,
    BOT_TOKEN,
    CHANNEL,
    DEVIN_SESSION,
    KEYS,
    make_settings,
    mention_event,
    message_event,
)


@pytest.fixture
async def deps(tmp_path: Path) -> AsyncIterator[tuple[Deps, FakeSlack]]:
    async with FakeSlack(bot_token=BOT_TOKEN) as slack:
        devin = FakeProvider("devin", KEYS["devin"])
        await devin.start()
        try:
            built = await build_deps(make_settings(tmp_path, slack, {"devin": devin}))
            try:
                yield built, slack
            finally:
                await close_deps(built)
        finally:
            await devin.stop()


async def test_the_identity_comes_from_auth_test_once(deps: tuple[Deps, FakeSlack]) -> None:
    built, slack = deps
    assert built.identity.user_id == BOT_USER
    assert built.identity.team_id == TEAM
    assert len(slack.calls_to("auth.test")) == 1


async def test_a_message_listener_called_directly_stores_the_reply(deps: tuple[Deps, FakeSlack]) -> None:
    built, _ = deps
    thread = "1800000000.000001"
    key = ThreadKey(TEAM, CHANNEL, thread)
    await built.store.bind(Binding(key, "devin", DEVIN_SESSION, linked_by=ALICE, linked_at=1.0))
    event = message_event("hello agent", thread_ts=thread, ts="1800000000.000002")
    await on_message(event, AsyncBoltContext(team_id=TEAM), built)
    stored = await built.store.get_message(key, "1800000000.000002")
    assert stored is not None
    assert stored.state is MessageState.PENDING
    assert stored.text == "hello agent"


async def test_a_mention_listener_called_directly_queues_its_answer(deps: tuple[Deps, FakeSlack]) -> None:
    built, slack = deps
    event = mention_event("help", thread_ts="1800000000.000010")
    await on_mention(event, AsyncBoltContext(team_id=TEAM), built)
    assert slack.ephemerals(CHANNEL, ALICE) == []  # queued, not posted: nothing waits for Slack
    [item] = await built.store.claim_feedback("test", limit=10, lease=5.0)
    assert item.kind == "ephemeral"
    assert item.payload["user"] == ALICE
    assert "/agent link" in str(item.payload["text"])
