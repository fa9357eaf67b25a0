"""SlackGateway against a real FakeSlack: names for relayed text, thread reads, people."""

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


# -- channel names (conversations.info) --------------------------------------------------------


async def test_channel_names_are_cached_refusals_too_but_not_transient_failures(slack: FakeSlack) -> None:
    slack.add_channel("C0DEV", "dev")
    slack.add_channel("G0OPS", "ops", is_private=True)
    cached = gateway(slack)
    assert await cached.channel_name("C0DEV") == "dev"
    assert await cached.channel_name("C0DEV") == "dev"
    assert await cached.channel_name("G0OPS") == "ops"
    slack.fail_next("conversations.info", status=200, retry_after=None, error="channel_not_found")
    assert await cached.channel_name("C0SECRET") is None
    assert await cached.channel_name("C0SECRET") is None  # the refusal is remembered
    slack.fail_next("conversations.info", status=503, retry_after=None, error="service_unavailable", times=3)
    assert await cached.channel_name("C0LATER") is None  # Slack was down: ask again next time
    assert await cached.channel_name("C0LATER") == "c0later"
    asked = [call.args["channel"] for call in slack.calls_to("conversations.info")]
    assert asked == ["C0DEV", "G0OPS", "C0SECRET", "C0LATER", "C0LATER", "C0LATER", "C0LATER"]


# -- thread replies (conversations.replies) ----------------------------------------------------


def _remember(slack: FakeSlack, ts: str, thread: str = "1800000000.000100", **extra: str) -> None:
    slack.remember(
        "C1", {"type": "message", "user": "U1", "text": f"at {ts}", "ts": ts, "thread_ts": thread, **extra}
    )


async def test_thread_replies_are_the_newer_ones_oldest_first_without_the_parent(slack: FakeSlack) -> None:
    parent = "1800000000.000100"
    slack.remember("C1", {"type": "message", "user": "U1", "text": "parent", "ts": parent})
    for ts in ("1800000000.000400", "1800000000.000200", "1800000000.000300", "1800000001.000000"):
        _remember(slack, ts)
    _remember(slack, "1800000000.000500", thread="1800000000.000999")  # another thread
    replies = await gateway(slack).thread_replies("C1", parent, after="1800000000.000200")
    assert [m["ts"] for m in replies] == ["1800000000.000300", "1800000000.000400", "1800000001.000000"]
    [call] = slack.calls_to("conversations.replies")
    assert (call.args["channel"], call.args["ts"], call.args["oldest"]) == ("C1", parent, "1800000000.000200")


async def test_thread_replies_follow_the_cursor_a_few_pages_at_most(slack: FakeSlack) -> None:
    parent = "1800000000.000100"
    slack.remember("C1", {"type": "message", "user": "U1", "text": "parent", "ts": parent})
    for n in range(1, 1200):
        _remember(slack, f"1800000000.{100 + n:06d}")
    replies = await gateway(slack).thread_replies("C1", parent, after=parent)
    assert len(replies) == 1000  # 5 pages of 200
    assert replies[0]["ts"] == "1800000000.000101"
    assert replies == sorted(replies, key=lambda m: m["ts"])
    cursors = [call.args.get("cursor") for call in slack.calls_to("conversations.replies")]
    assert cursors == [None, "200", "400", "600", "800"]


async def test_a_failed_thread_read_is_no_replies(slack: FakeSlack) -> None:
    slack.fail_next("conversations.replies", status=200, retry_after=None, error="missing_scope")
    assert await gateway(slack).thread_replies("C1", "1800000000.000100", after="1800000000.000100") == []
    assert (
        await gateway(slack).thread_replies("C1", "1800000000.000100", after="1.0") == []
    )  # thread_not_found


# -- people ------------------------------------------------------------------------------------


async def test_a_grid_members_organisation_comes_from_enterprise_user(slack: FakeSlack) -> None:
    slack.add_user("W0SAM", "sam", team_id="T0SISTER", enterprise_id="E0ORG")
    slack.add_user("U0PLAIN", "plain", team_id="T0OTHER")
    users = gateway(slack)
    sam = await users.user("W0SAM")
    assert sam is not None
    assert (sam.team_id, sam.enterprise_id) == ("T0SISTER", "E0ORG")
    plain = await users.user("U0PLAIN")
    assert plain is not None
    assert (plain.team_id, plain.enterprise_id) == ("T0OTHER", None)
