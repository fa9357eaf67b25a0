"""SlackGateway against a real FakeSlack: user-group handles for relayed text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.slack import SlackGateway, make_web_client
from tests.fakes.slack import FakeSlack

TOKEN = "xoxb-gateway-test-token"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        fake.add_usergroup("S0ONCALL", "oncall", ["U1"])
        fake.add_usergroup("S0WEB", "web-team", [])
        fake.add_usergroup("S0OLD", "old-team", [], disabled=True)
        yield fake


def gateway(slack: FakeSlack, *, cache_ttl: float = 3600.0) -> SlackGateway:
    return SlackGateway(make_web_client(TOKEN, base_url=slack.api_url), cache_ttl=cache_ttl)


async def test_one_list_call_answers_for_every_group(slack: FakeSlack) -> None:
    slack_gateway = gateway(slack)
    assert await slack_gateway.usergroup_handle("S0ONCALL") == "oncall"
    assert await slack_gateway.usergroup_handle("S0WEB") == "web-team"
    assert await slack_gateway.usergroup_handle("S0OLD") == "old-team"  # disabled groups too
    assert await slack_gateway.usergroup_handle("S0NONE") is None
    [call] = slack.calls_to("usergroups.list")
    assert call.args.get("include_disabled") == "true"
    assert call.token == TOKEN


async def test_handles_are_cached_until_the_ttl_runs_out(slack: FakeSlack) -> None:
    cached = gateway(slack)
    assert await cached.usergroup_handle("S0NEW") is None
    slack.add_usergroup("S0NEW", "new-team", [])
    assert await cached.usergroup_handle("S0NEW") is None  # still the first answer
    assert len(slack.calls_to("usergroups.list")) == 1

    expiring = gateway(slack, cache_ttl=0.0)
    assert await expiring.usergroup_handle("S0ONCALL") == "oncall"
    slack.usergroups["S0ONCALL"]["handle"] = "on-call"
    assert await expiring.usergroup_handle("S0ONCALL") == "on-call"
    assert len(slack.calls_to("usergroups.list")) == 3


async def test_a_failed_refresh_keeps_the_old_handles_and_asks_again(slack: FakeSlack) -> None:
    slack_gateway = gateway(slack, cache_ttl=0.0)
    slack.fail_next("usergroups.list", status=200, retry_after=None, error="missing_scope")
    assert await slack_gateway.usergroup_handle("S0ONCALL") is None  # nothing known yet
    assert await slack_gateway.usergroup_handle("S0ONCALL") == "oncall"
    slack.fail_next("usergroups.list", status=200, retry_after=None, error="ratelimited")
    assert await slack_gateway.usergroup_handle("S0ONCALL") == "oncall"  # the previous answer
    assert len(slack.calls_to("usergroups.list")) == 3
