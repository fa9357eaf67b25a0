"""Building the bot's dependencies (:func:`bot.deps.build_deps`): who the bot is, from ``auth.test``.

Slack that cannot be reached at all is in ``tests/bot/test_cli.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.deps import StartupError, build_deps, close_deps
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import FakeSlack
from tests.harness import BOT_TOKEN, KEYS, make_settings


async def test_a_bot_token_slack_refuses_stops_start_up_naming_slacks_error(tmp_path: Path) -> None:
    async with (
        FakeSlack(bot_token="xoxb-the-token-slack-knows") as slack,
        FakeProvider("devin", KEYS["devin"]) as devin,
    ):
        settings = make_settings(tmp_path, slack, {"devin": devin})  # the harness's token: not Slack's
        with pytest.raises(StartupError) as refused:
            await build_deps(settings)
    assert str(refused.value) == "Slack refused SLACK_BOT_TOKEN (invalid_auth)"
    assert BOT_TOKEN not in str(refused.value)
    assert refused.value.__cause__ is None  # no chained traceback of the Slack error
    assert refused.value.__suppress_context__
    assert not (tmp_path / "relay.db").exists()  # refused before the store was opened
    assert [call.method for call in slack.calls] == ["auth.test"]


async def test_the_bots_identity_comes_from_auth_test(tmp_path: Path) -> None:
    async with (
        FakeSlack(bot_token=BOT_TOKEN, enterprise_id="E0ORG") as slack,
        FakeProvider("devin", KEYS["devin"]) as devin,
    ):
        deps = await build_deps(make_settings(tmp_path, slack, {"devin": devin}))
        try:
            identity = deps.identity
            assert (identity.user_id, identity.bot_id, identity.team_id, identity.enterprise_id) == (
                "U0BOT",
                "B0BOT",
                "T0TEAM",
                "E0ORG",
            )
            assert identity.url == "https://fake.slack.test/"
            assert not identity.is_enterprise_install
            assert list(deps.providers) == ["devin"]
        finally:
            await close_deps(deps)
