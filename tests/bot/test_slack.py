"""SlackGateway against a real FakeSlack: names for relayed text, thread reads, people, Retry-After and the
web client's own retries, text fitted to Slack's limit, bounded caches, answers, posts and reactions."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.slack import (
    MAX_TEXT,
    SlackGateway,
    _Cache,
    fit_text,
    make_web_client,
    retry_after_seconds,
)
from tests.fakes.slack import FakeSlack
from tests.logcapture import captured_logs, log_records

TOKEN = "xoxb-gateway-test-token"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        fake.add_usergroup("S0ONCALL", "oncall", ["U1"])
        fake.add_usergroup("S0WEB", "web-team", [])
        fake.add_usergroup("S0OLD", "old-team", [], disabled=True)
        yield fake


@pytest.fixture
def unused_url() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


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


# -- Retry-After and the web client's own retries ----------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"retry-after": "0.5"}, 0.5),  # fractions, and any case of the name
        ({"Retry-After": ["2"]}, 2.0),  # aiohttp-style lists of values
        ({"Retry-After": "-3"}, 0.0),  # never a negative wait
        ({"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"}, None),  # a date: not understood
        ({"Retry-After": "soon"}, None),
        ({"Content-Type": "application/json"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, Any] | None, seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds


async def test_a_short_retry_after_is_waited_out_by_the_client(slack: FakeSlack) -> None:
    slack.fail_next("reactions.add", status=429, retry_after=0.05, times=2)
    result = await gateway(slack).call(
        "reactions.add", json={"channel": "C1", "timestamp": "1.0", "name": "eyes"}
    )
    assert result.ok
    assert len(slack.calls_to("reactions.add")) == 3
    assert slack.reactions_on("C1", "1.0") == ["eyes"]


async def test_a_long_retry_after_is_left_to_the_caller(slack: FakeSlack) -> None:
    """Holding a task asleep for 30 s would stall a channel's queue: the answer says when instead."""
    slack.fail_next("chat.postMessage", status=429, retry_after=30)
    started = time.monotonic()
    result = await gateway(slack).call("chat.postMessage", json={"channel": "C1", "text": "later"})
    assert time.monotonic() - started < 2.0
    assert (result.ok, result.error, result.transient, result.retry_after) == (
        False,
        "ratelimited",
        True,
        30.0,
    )
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert slack.messages == []


async def test_a_slack_that_cannot_be_reached_is_a_transient_failure(unused_url: str) -> None:
    unreachable = SlackGateway(make_web_client(TOKEN, base_url=f"{unused_url}/api/"))
    result = await unreachable.call("chat.postMessage", json={"channel": "C1", "text": "hello"})
    assert (result.ok, result.transient, result.error) == (False, True, "ClientConnectorError")


async def test_a_configured_api_url_without_its_trailing_slash_works(slack: FakeSlack) -> None:
    client = make_web_client(TOKEN, base_url=slack.api_url.rstrip("/"))
    ts, error = await SlackGateway(client).post_message("C1", "hello")
    assert error is None
    assert [(m["ts"], m["text"]) for m in slack.messages] == [(ts, "hello")]


# -- text that fits ----------------------------------------------------------------------------


def test_text_within_the_limit_is_left_alone() -> None:
    assert fit_text("x" * MAX_TEXT) == "x" * MAX_TEXT
    assert fit_text("short", limit=5) == "short"


def test_text_over_the_limit_is_cut_to_it_and_says_how_much_was_left_out() -> None:
    text = "a" * 1_000 + "b" * 60_000
    fitted = fit_text(text)
    assert len(fitted) == MAX_TEXT
    assert fitted.startswith("a" * 1_000 + "b")
    note = f"\n… (shortened: {len(text) - MAX_TEXT:,} more characters not shown)"
    assert note == "\n… (shortened: 22,000 more characters not shown)"
    assert fitted.endswith(note)


async def test_posted_text_is_fitted_to_slacks_limit(slack: FakeSlack) -> None:
    await gateway(slack).post_message("C1", "y" * 50_000)
    (message,) = slack.messages
    assert len(message["text"]) == MAX_TEXT
    assert message["text"].endswith("(shortened: 11,000 more characters not shown)")


# -- bounded caches ----------------------------------------------------------------------------


def test_a_full_cache_forgets_the_entry_used_longest_ago() -> None:
    cache: _Cache[str] = _Cache(ttl=60.0, size=2)
    cache.put("a", "first")
    cache.put("b", "second")
    assert cache.get("a") == "first"  # "a" is now the most recently used
    cache.put("c", "third")
    assert len(cache) == 2
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("first", None, "third")
    cache.put("a", "again")  # an update makes no room
    assert len(cache) == 2
    assert cache.get("a") == "again"


def test_a_cache_entry_expires_after_its_ttl() -> None:
    cache: _Cache[str] = _Cache(ttl=0.0)
    cache.put("a", "gone at once")
    assert cache.get("a") is None


# -- answering and posting ---------------------------------------------------------------------


async def test_respond_answers_a_slash_command_privately(slack: FakeSlack) -> None:
    assert await gateway(slack).respond(slack.response_url("cmd1"), "only you see this") is True
    assert slack.responses_for("cmd1") == [
        {"text": "only you see this", "response_type": "ephemeral", "replace_original": False}
    ]


async def test_respond_to_a_dead_or_expired_response_url_is_false(slack: FakeSlack, unused_url: str) -> None:
    with captured_logs() as log:
        assert await gateway(slack).respond(f"{unused_url}/response/gone", "hello?") is False
        assert await gateway(slack).respond(f"{slack.url}/no-such-hook", "hello?") is False  # HTTP 404
    failed = [r for r in log_records(log) if r.get("event") == "slack_respond_failed"]
    assert [r["error"] for r in failed] == ["ClientConnectorError"]


async def test_post_message_in_a_thread_with_blocks(slack: FakeSlack) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    ts, error = await gateway(slack).post_message("C1", "hi", thread_ts="1800000000.000100", blocks=blocks)
    assert error is None
    assert slack.replies_in("C1", "1800000000.000100") == [
        {
            "type": "message",
            "channel": "C1",
            "ts": ts,
            "thread_ts": "1800000000.000100",
            "text": "hi",
            "blocks": blocks,
            "user": "U0BOT",
            "bot_id": "B0BOT",
            "username": None,  # posted under the app's own name
        }
    ]
    (call,) = slack.calls_to("chat.postMessage")
    assert (call.args["unfurl_links"], call.args["unfurl_media"]) == (False, False)


async def test_post_message_refused_says_slacks_error(slack: FakeSlack) -> None:
    slack.fail_next("chat.postMessage", status=200, retry_after=None, error="not_in_channel")
    assert await gateway(slack).post_message("C1", "hi") == (None, "not_in_channel")
    assert slack.messages == []


async def test_delete_message(slack: FakeSlack) -> None:
    slack_gateway = gateway(slack)
    ts, _ = await slack_gateway.post_message("C1", "take me back")
    assert ts is not None
    assert await slack_gateway.delete_message("C1", ts) is True
    assert slack.messages == []
    assert [m["text"] for m in slack.deleted] == ["take me back"]
    slack.fail_next("chat.delete", status=200, retry_after=None, error="message_not_found")
    assert await slack_gateway.delete_message("C1", ts) is False


async def test_a_reaction_already_there_or_already_gone_is_success_and_not_logged(slack: FakeSlack) -> None:
    slack_gateway = gateway(slack)
    with captured_logs() as log:
        assert await slack_gateway.add_reaction("C1", "1.0", "eyes") is True
        assert await slack_gateway.add_reaction("C1", "1.0", "eyes") is True  # already_reacted
        assert await slack_gateway.remove_reaction("C1", "1.0", "eyes") is True
        assert await slack_gateway.remove_reaction("C1", "1.0", "eyes") is True  # no_reaction
        slack.fail_next("reactions.add", status=200, retry_after=None, error="message_not_found")
        assert await slack_gateway.add_reaction("C1", "1.0", "x") is False
    assert slack.reactions_on("C1", "1.0") == []
    failed = [r for r in log_records(log) if r.get("event") == "slack_call_failed"]
    assert [(r["method"], r["error"]) for r in failed] == [("reactions.add", "message_not_found")]


async def test_permalink(slack: FakeSlack) -> None:
    slack_gateway = gateway(slack)
    assert await slack_gateway.permalink("C1", "1800000000.000100") == (
        "https://fake.slack.test/archives/C1/p1800000000000100"
    )
    slack.fail_next("chat.getPermalink", status=200, retry_after=None, error="message_not_found")
    assert await slack_gateway.permalink("C1", "1800000000.000100") is None
