"""Who may steer, and what cannot steer: loops, outsiders, access policy, asides and mute, odd and
hostile input, secrets, and request signatures (issue 5).

Everything runs end to end: the bot in HTTP mode on loopback against FakeSlack and the fake providers.
"Not relayed" is always shown against a later message that *is* relayed in the same thread: per-thread
order means an earlier message the bot wrongly queued would have reached the provider first.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier

from bot.providers import AgenProvider, DevinProvider, FeatherProvider, Provider
from tests.fakes import eventually
from tests.fakes.providers import Answer, FakeProvider
from tests.harness import (
    ALICE,
    BOB,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    CHANNEL,
    DEVIN_SESSION,
    FEATHER_SESSION,
    KEYS,
    SIGNING_SECRET,
    TEAM,
    Harness,
    mention_event,
    message_event,
    new_ts,
    running,
)
from tests.logcapture import captured_logs, log_records

OTHER_CHANNEL = "C0OTHER"
CAROL = "U0CAROL"
ADMIN = "U0ADMIN"
OUTSIDER = "U0OUTSIDER"


# -- helpers -----------------------------------------------------------------------------------


async def slash(h: Harness, text: str, *, user: str = ALICE, channel: str = CHANNEL) -> str:
    """Run ``/agent text`` and return the text of the answer sent to its response_url."""
    before = len(h.slack.responses)
    await h.sender.command(text, user=user, channel=channel)
    await h.slack.wait_for(lambda: len(h.slack.responses) > before)
    _tag, body = h.slack.responses[before]
    assert body.get("response_type") == "ephemeral", body
    return str(body["text"])


async def mention(h: Harness, text: str, *, thread_ts: str, user: str = ALICE) -> None:
    await h.sender.event(mention_event(text, thread_ts=thread_ts, user=user))
    await h.settle()  # answers are queued before Slack is acknowledged, then sent


def ephemeral_texts(h: Harness, user: str) -> list[str]:
    return [str(m["text"]) for m in h.slack.ephemerals(CHANNEL, user)]


def reply_texts(h: Harness, thread_ts: str) -> list[str]:
    return [str(m["text"]) for m in h.slack.replies_in(CHANNEL, thread_ts)]


async def relayed_until(h: Harness, thread_ts: str, text: str, provider: str = "devin") -> list[str]:
    """Send a normal reply ``text`` and wait until it is delivered; return everything the provider got.

    Rows are sent in thread order, so anything wrongly queued before ``text`` shows up first.
    """
    event = await h.reply(thread_ts, text)
    await eventually(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
    return h.providers[provider].messages()


async def stored(h: Harness, thread_ts: str, ts: str) -> bool:
    return await h.store.get_message(h.thread(thread_ts), ts) is not None


# -- 1. loops ----------------------------------------------------------------------------------


async def test_bot_messages_in_a_bound_thread_are_never_relayed(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    bot_events = [
        message_event("from another bot", thread_ts=thread, bot_id="B0OTHER"),
        message_event(
            "bot with a profile", thread_ts=thread, bot_profile={"id": "B0OTHER", "name": "other-bot"}
        ),
        message_event("legacy bot message", thread_ts=thread, subtype="bot_message", bot_id="B0OTHER"),
        message_event("bot_message with a user", thread_ts=thread, subtype="bot_message"),
        message_event("our own words", thread_ts=thread, user=BOT_USER),
        message_event("our own words, as a bot", thread_ts=thread, user=BOT_USER, bot_id=BOT_ID),
    ]
    for event in bot_events:
        await relay.sender.event(event)

    assert await relayed_until(relay, thread, "a human speaks") == ["alice (via Slack): a human speaks"]
    for event in bot_events:
        assert not await stored(relay, thread, event["ts"]), event["text"]
        assert relay.slack.reactions_on(CHANNEL, event["ts"]) == []


async def test_another_relay_bot_mentioning_us_triggers_nothing(relay: Harness) -> None:
    thread = await relay.link("devin")
    posted = len(relay.slack.messages)
    # Another agent-relay installation (or any bot) writes "@agent-relay status" in the thread, as
    # both the app_mention and the message event Slack would send.
    ts = new_ts()
    other = {"bot_id": "B0OTHERRELAY", "user": "U0OTHERRELAY"}
    await relay.sender.event(mention_event("status", thread_ts=thread, ts=ts, **other))
    await relay.sender.event(message_event(f"<@{BOT_USER}> status", thread_ts=thread, ts=ts, **other))
    await relay.sender.event(
        mention_event("please rerun the tests", thread_ts=thread, bot_profile={"id": "B0OTHERRELAY"})
    )
    await relay.sender.event(mention_event("link devin devin-abc", bot_id="B0OTHERRELAY"))

    assert await relayed_until(relay, thread, "human") == ["U0ALICE (via Slack): human"]
    assert len(relay.slack.messages) == posted  # no reply, no anchor
    assert relay.slack.ephemeral_messages == []
    assert relay.slack.calls_to("chat.postEphemeral") == []
    assert not await stored(relay, thread, ts)


# -- 2. outsiders ------------------------------------------------------------------------------


async def test_outsiders_are_not_relayed_and_the_thread_is_told_once(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    anchor_count = len(relay.slack.messages)
    first = await relay.reply(thread, "hello from elsewhere", user=OUTSIDER, user_team="T0OTHER")
    second = await relay.reply(thread, "me again", user=OUTSIDER, source_team="T0OTHER")
    third = await relay.reply(thread, "and again", user=OUTSIDER, user_team="T0OTHER", source_team="T0OTHER")
    # A member of the installing team (Slack Connect events carry user_team for everyone) is relayed.
    member = await relay.reply(thread, "I work here", user_team=TEAM, source_team=TEAM)
    await eventually(lambda: relay.slack.reactions_on(CHANNEL, member["ts"]) == ["white_check_mark"])

    assert relay.providers["devin"].messages() == ["alice (via Slack): I work here"]
    for event in (first, second, third):
        assert not await stored(relay, thread, event["ts"])
    notices = reply_texts(relay, thread)
    assert len(notices) == 1, notices
    assert "outside this organisation" in notices[0]
    assert len(relay.slack.messages) == anchor_count + 1


async def test_outsider_notice_is_per_thread(relay: Harness) -> None:
    one = await relay.link("devin")
    two = await relay.link("feather")
    await relay.reply(one, "hi", user=OUTSIDER, user_team="T0OTHER")
    await relay.reply(two, "hi", user=OUTSIDER, user_team="T0OTHER")
    await relay.reply(one, "hi again", user=OUTSIDER, user_team="T0OTHER")
    assert len(reply_texts(relay, one)) == 1
    assert len(reply_texts(relay, two)) == 1


async def test_outsiders_cannot_steer_with_mention_commands(relay: Harness) -> None:
    parent = new_ts()
    await relay.sender.event(
        mention_event(f"link devin {DEVIN_SESSION}", thread_ts=parent, user=OUTSIDER, user_team="T0OTHER")
    )
    thread = await relay.link("devin")
    await relay.sender.event(mention_event("mute", thread_ts=thread, user=OUTSIDER, user_team="T0OTHER"))
    assert await relay.store.get_binding(relay.thread(parent)) is None
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None
    assert not binding.muted
    # the outsider is told why, once per command
    await relay.slack.wait_for(lambda: len(ephemeral_texts(relay, OUTSIDER)) == 2)
    for told in ephemeral_texts(relay, OUTSIDER):
        assert "outside this organisation" in told


async def test_allowed_external_team_is_relayed(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), allowed_external_teams="T0PARTNER, T0OTHER") as h:
        h.slack.add_user(OUTSIDER, "partner person", team_id="T0OTHER")
        thread = await h.link("devin")
        event = await h.reply(thread, "hello from a partner", user=OUTSIDER, user_team="T0OTHER")
        await eventually(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
        # A team not on the list is still kept out.
        stranger = await h.reply(thread, "and me?", user="U0STRANGER", source_team="T0STRANGER")
        assert await relayed_until(h, thread, "done") == [
            "partner person (via Slack): hello from a partner",
            "U0ALICE (via Slack): done",
        ]
        assert not await stored(h, thread, stranger["ts"])
        assert len(reply_texts(h, thread)) == 1  # the notice, for the stranger only


# -- 3. access policy --------------------------------------------------------------------------


async def test_allow_link_user_ids(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), allow_link=ALICE) as h:
        text = await slash(h, f"link devin {DEVIN_SESSION}", user=BOB)
        assert "allow list" in text
        assert "link" in text
        assert h.slack.messages == []
        assert await h.store.list_bindings(TEAM, CHANNEL) == []
        # The same refusal for linking from inside a thread.
        parent = new_ts()
        await mention(h, f"link devin {DEVIN_SESSION}", thread_ts=parent, user=BOB)
        assert any("allow list" in t for t in ephemeral_texts(h, BOB))
        assert await h.store.get_binding(h.thread(parent)) is None
        # The listed user may.
        thread = await h.link("devin", user=ALICE)
        binding = await h.store.get_binding(h.thread(thread))
        assert binding is not None
        assert binding.linked_by == ALICE
        assert h.providers["devin"].requests == []


async def test_allow_link_admins(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), allow_link="admins") as h:
        h.slack.add_user(ADMIN, "admin", is_admin=True)
        h.slack.add_user(CAROL, "owner", is_owner=True)
        h.slack.add_user(BOB, "bob")
        text = await slash(h, f"link devin {DEVIN_SESSION}", user=BOB)
        assert "admin" in text.lower()
        # An unknown user (users.info fails) is refused too: the policy fails closed.
        assert "admin" in (await slash(h, f"link devin {DEVIN_SESSION}", user="U0NOBODY")).lower()
        assert h.slack.messages == []
        await h.link("devin", user=ADMIN)
        await h.link("devin", user=CAROL)
        bindings = await h.store.list_bindings(TEAM, CHANNEL)
        assert sorted(b.linked_by for b in bindings) == sorted([ADMIN, CAROL])


async def test_allow_link_user_group(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), allow_link="S0GROUP") as h:
        h.slack.add_usergroup("S0GROUP", "oncall", [BOB, CAROL])
        assert "allow list" in await slash(h, f"link devin {DEVIN_SESSION}", user=ALICE)
        assert h.slack.messages == []
        thread = await h.link("devin", user=BOB)
        binding = await h.store.get_binding(h.thread(thread))
        assert binding is not None
        assert binding.linked_by == BOB
        assert len(await h.store.list_bindings(TEAM, CHANNEL)) == 1


async def test_allowed_channels(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), allowed_channels=OTHER_CHANNEL) as h:
        text = await slash(h, f"link devin {DEVIN_SESSION}")
        assert "not enabled in this channel" in text
        parent = new_ts()
        await mention(h, f"link devin {DEVIN_SESSION}", thread_ts=parent)
        assert any("not enabled in this channel" in t for t in ephemeral_texts(h, ALICE))
        assert h.slack.messages == []
        assert await h.store.list_bindings(TEAM, CHANNEL) == []
        await h.link("devin", channel=OTHER_CHANNEL)
        assert len(await h.store.list_bindings(TEAM, OTHER_CHANNEL)) == 1


async def test_provider_channels(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin", "feather"), devin_channels=OTHER_CHANNEL) as h:
        text = await slash(h, f"link devin {DEVIN_SESSION}")
        assert "Devin sessions cannot be linked in this channel" in text
        assert h.slack.messages == []
        feather_thread = await h.link("feather")
        devin_thread = await h.link("devin", channel=OTHER_CHANNEL)
        bindings = await h.store.list_bindings(TEAM, CHANNEL)
        assert [(b.provider, b.key.thread_ts) for b in bindings] == [("feather", feather_thread)]
        other = await h.store.list_bindings(TEAM, OTHER_CHANNEL)
        assert [(b.provider, b.key.thread_ts) for b in other] == [("devin", devin_thread)]


UNLINK_REFUSAL = "only the person who linked this thread or a workspace admin can unlink it"


async def test_allow_unlink_default_linker_and_admins(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    relay.slack.add_user(BOB, "bob")
    relay.slack.add_user(ADMIN, "admin", is_admin=True)
    by_linker = await relay.link("devin")
    by_admin = await relay.link("feather")

    await mention(relay, "unlink", thread_ts=by_linker, user=BOB)
    refusals = ephemeral_texts(relay, BOB)
    assert len(refusals) == 1
    assert UNLINK_REFUSAL in refusals[0].lower()
    assert await relay.store.get_binding(relay.thread(by_linker)) is not None
    assert reply_texts(relay, by_linker) == []

    await mention(relay, "unlink", thread_ts=by_linker, user=ALICE)
    assert await relay.store.get_binding(relay.thread(by_linker)) is None
    assert any("unlinked" in t for t in reply_texts(relay, by_linker))

    await mention(relay, "unlink", thread_ts=by_admin, user=ADMIN)
    assert await relay.store.get_binding(relay.thread(by_admin)) is None
    assert any("unlinked" in t for t in reply_texts(relay, by_admin))


async def test_allow_unlink_everyone(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), allow_unlink="everyone") as h:
        thread = await h.link("devin")
        await mention(h, "unlink", thread_ts=thread, user=BOB)
        assert await h.store.get_binding(h.thread(thread)) is None
        assert ephemeral_texts(h, BOB) == []


async def test_allow_unlink_listed_user(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), allow_unlink=f"linker,{CAROL}") as h:
        thread = await h.link("devin")
        await mention(h, "unlink", thread_ts=thread, user=BOB)
        assert any("can unlink it" in t for t in ephemeral_texts(h, BOB))
        assert await h.store.get_binding(h.thread(thread)) is not None
        await mention(h, "unlink", thread_ts=thread, user=CAROL)
        assert await h.store.get_binding(h.thread(thread)) is None


# -- 4. aside and mute -------------------------------------------------------------------------


async def test_aside_prefix_keeps_a_reply_out(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    asides = [
        await relay.reply(thread, "!aside just between us"),
        await relay.reply(thread, " !ASIDE shouting"),
        await relay.reply(thread, "!aside"),
    ]
    assert await relayed_until(relay, thread, "for the agent") == ["alice (via Slack): for the agent"]
    for event in asides:
        assert not await stored(relay, thread, event["ts"])
        assert relay.slack.reactions_on(CHANNEL, event["ts"]) == []
    assert reply_texts(relay, thread) == []


async def test_custom_aside_prefix(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), aside_prefix="(ooc)") as h:
        thread = await h.link("devin")
        assert "(ooc)" in h.slack.messages[-1]["text"]  # the anchor tells people the prefix
        aside = await h.reply(thread, "(OOC) lunch?")
        assert await relayed_until(h, thread, "!aside is just text now") == [
            "U0ALICE (via Slack): !aside is just text now"
        ]
        assert not await stored(h, thread, aside["ts"])


async def test_mute_and_unmute(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    await mention(relay, "mute", thread_ts=thread)
    assert any("paused" in t for t in reply_texts(relay, thread))
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None
    assert binding.muted

    muted = await relay.reply(thread, "while muted")
    await mention(relay, "status", thread_ts=thread)
    status = ephemeral_texts(relay, ALICE)
    assert len(status) == 1
    assert "paused" in status[0]

    await mention(relay, "unmute", thread_ts=thread)
    assert any("resumed" in t for t in reply_texts(relay, thread))
    assert await relayed_until(relay, thread, "after unmute") == ["alice (via Slack): after unmute"]
    assert not await stored(relay, thread, muted["ts"])
    await mention(relay, "status", thread_ts=thread)
    assert "Relaying is on" in ephemeral_texts(relay, ALICE)[-1]


# -- 5. odd input ------------------------------------------------------------------------------


def slack_file(n: int, name: str) -> dict[str, Any]:
    return {
        "id": f"F0FILE{n}",
        "name": name,
        "title": name,
        "mimetype": "text/plain",
        "permalink": f"https://fake.slack.test/files/{ALICE}/F0FILE{n}/{name}",
    }


async def test_files_without_text_send_names_and_permalinks(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("agen")
    files = [slack_file(1, "trace.log"), slack_file(2, "screenshot.png")]
    event = await relay.reply(thread, "", subtype="file_share", files=files)
    await eventually(lambda: relay.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
    (sent,) = relay.providers["agen"].messages()
    assert sent.startswith("alice (via Slack): ")
    for f in files:
        assert f["name"] in sent
        assert f["permalink"] in sent
    with_text = await relay.reply(thread, "see attached", subtype="file_share", files=files[:1])
    await eventually(lambda: relay.slack.reactions_on(CHANNEL, with_text["ts"]) == ["white_check_mark"])
    last = relay.providers["agen"].messages()[-1]
    assert last.startswith("alice (via Slack): see attached")
    assert files[0]["permalink"] in last


@pytest.mark.parametrize("provider", ["feather", "agen", "devin"])
async def test_empty_message_is_never_sent(tmp_path: Path, provider: str) -> None:
    async with running(tmp_path, providers=(provider,)) as h:
        thread = await h.link(provider)
        event = await h.reply(thread, "")
        await eventually(lambda: len(reply_texts(h, thread)) == 1)
        assert h.slack.reactions_on(CHANNEL, event["ts"]) == ["x"]
        (told,) = reply_texts(h, thread)
        assert "not sent" in told
        assert f"<@{ALICE}>" in told
        assert "file" not in told.lower()  # there were no files: do not talk about them
        assert h.providers[provider].requests == []
        row = await h.store.get_message(h.thread(thread), event["ts"])
        assert row is not None
        assert row.outcome == "refused"


async def test_too_long_message_is_refused_whole(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), max_message_chars=200) as h:
        thread = await h.link("devin")
        long = await h.reply(thread, "word " * 100)
        await eventually(lambda: len(reply_texts(h, thread)) == 1)
        assert h.slack.reactions_on(CHANNEL, long["ts"]) == ["x"]
        (told,) = reply_texts(h, thread)
        assert "200" in told
        assert "Nothing was sent" in told
        assert h.providers["devin"].requests == []
        short = "x" * 100  # fits with the author prefix
        assert await relayed_until(h, thread, short) == [f"U0ALICE (via Slack): {short}"]


async def test_special_text_survives_conversion(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    rtl = "مرحبا بالعالم \u200fשלום עולם"  # noqa: RUF001 - Hebrew letters, on purpose
    zero_width = "zero\u200bwidth\u200djoiner"
    slack_text = (
        "<!channel> <!here> <!subteam^S1|@oncall> please look\n"
        "```if a &lt; b &amp;&amp; c &gt; d:\n    print('<@nobody>')```\n"
        f":tada: 🎉 {rtl} {zero_width}"
    )
    expected = (
        "@channel @here @oncall please look\n"
        "```if a < b && c > d:\n    print('<@nobody>')```\n"
        f":tada: 🎉 {rtl} {zero_width}"
    )
    assert await relayed_until(relay, thread, slack_text) == [f"alice (via Slack): {expected}"]


# -- 6. hostile command input ------------------------------------------------------------------

HOSTILE_SLASH = [
    ("   link    devin   ", "Which Devin session?"),
    ('"link" "devin" "../../x"', "not a Devin session id"),
    ("link devin ../../x", "not a Devin session id"),
    ("link agen a/b?c#d", "not an Agen session id"),
    ("link agen %2e%2e", "not an Agen session id"),
    ("link agen ..", "not an Agen session id"),
    ("link feather ../../x", "not a Feather session id"),
    ("link ../../x", "does not look like a session id"),
    ("link “devin” ‘devin-../x’", "not a Devin session id"),  # noqa: RUF001 - phone quotes
    ("link devin " + "a" * 5000, "too long"),
    ("link agen " + "a" * 300, "too long"),
    ("link feather " + "1" * 300, "too long"),
    ("link gitlab abc", "Unknown provider `gitlab`. Enabled providers: Devin, Feather, Agen."),
    ("link https://evil.example/sessions/abc", "not a session page"),
    ("link https://app.devin.ai/sessions/../../x", "not a session page"),
    ("link <https://app.devin.ai/sessions/abc%2F..|session>", "not a Devin session id"),
    ("link http://", "not a session page"),
    ("link https://[::1", "not a session page"),
    ("link feather https://app.devin.ai/sessions/abc", "not a Feather one"),
    ("link devin devin-abc extra", "Too many arguments"),
    ("frobnicate ../../x", "Unknown command `frobnicate`"),
    ("unlink now please", "takes no arguments"),
    ("status", "works inside a linked thread"),
]


async def test_hostile_slash_commands_get_a_specific_answer(tmp_path: Path) -> None:
    with captured_logs() as log:
        async with running(tmp_path) as h:
            for text, expected in HOSTILE_SLASH:
                answer = await slash(h, text)
                assert expected in answer, (text, answer)
                assert len(answer) < 1000  # echoed input is cut short
            assert h.slack.messages == []
            assert await h.store.list_bindings(TEAM, CHANNEL) == []
            for fake in h.providers.values():
                assert fake.requests == []
    records = log_records(log)
    assert any(r.get("logger", "").startswith("slack_sdk") for r in records)  # the capture works
    assert "Traceback" not in log.getvalue()
    assert [r for r in records if r.get("level") in ("error", "critical")] == []


HOSTILE_MENTIONS = [
    ("link devin ../../x", "not a Devin session id"),
    ("link   agen   a/b?c#d", "not an Agen session id"),
    ("link agen %2E%2E", "not an Agen session id"),
    ("link nope abc", "Enabled providers: Devin, Feather, Agen."),
    ("link", "Tell me which session"),
    ("link devin " + "9" * 500, "too long"),
    ("link https://app.devin.ai/sessions/x/../../y", "not a session page"),
]


async def test_hostile_mention_commands_get_a_specific_answer(tmp_path: Path) -> None:
    with captured_logs() as log:
        async with running(tmp_path) as h:
            bound = await h.link("devin")
            unbound = new_ts()
            for thread in (bound, unbound):
                for text, expected in HOSTILE_MENTIONS:
                    before = len(ephemeral_texts(h, BOB))
                    await mention(h, text, thread_ts=thread, user=BOB)
                    answers = ephemeral_texts(h, BOB)
                    assert len(answers) == before + 1, text
                    assert expected in answers[-1], (text, answers[-1])
            assert await h.store.get_binding(h.thread(unbound)) is None
            binding = await h.store.get_binding(h.thread(bound))
            assert binding is not None
            assert binding.session_id == DEVIN_SESSION
            assert len(await h.store.list_bindings(TEAM, CHANNEL)) == 1
            assert reply_texts(h, bound) == []
            assert reply_texts(h, unbound) == []
            for fake in h.providers.values():
                assert fake.requests == []
    assert "Traceback" not in log.getvalue()
    assert [r for r in log_records(log) if r.get("level") in ("error", "critical")] == []


async def test_tolerated_noise_around_a_valid_link(relay: Harness) -> None:
    """Quotes, extra spaces and Slack's link wrapping around a good id still link the clean id."""
    await relay.sender.command(f'  link   "feather"   “{FEATHER_SESSION.upper()}”  ')
    await relay.slack.wait_for(lambda: len(relay.slack.messages) == 1)
    thread = str(relay.slack.messages[0]["ts"])
    await relay.wait_bound(thread)
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None
    assert (binding.provider, binding.session_id) == ("feather", FEATHER_SESSION)


# A hostile session id -> the one path segment it must travel as, written out here (not computed
# with the client's own encoder) so that a wrong encoding fails.
HOSTILE_IDS: dict[str, str] = {
    "../../x": "..%2F..%2Fx",
    "a/b?c#d": "a%2Fb%3Fc%23d",
    "%2e%2e": "%252e%252e",
    "%2E%2E/%2e%2e/admin": "%252E%252E%2F%252e%252e%2Fadmin",
    "..": "%2E%2E",
    ".": "%2E",
    "//evil.example/x": "%2F%2Fevil.example%2Fx",
    "http://evil.example:8080/steal": "http%3A%2F%2Fevil.example%3A8080%2Fsteal",
    "@evil.example": "%40evil.example",
    "?x=1": "%3Fx%3D1",
    "#frag": "%23frag",
    "\\..\\x": "%5C..%5Cx",
    "a b\r\nHost: evil.example": "a%20b%0D%0AHost%3A%20evil.example",
    "\u202e..": "%E2%80%AE..",
    "x" * 3000: "x" * 3000,
}

PROVIDER_PATHS: dict[str, tuple[type[Provider], str]] = {
    "devin": (DevinProvider, "/v1/sessions/{}/message"),
    "feather": (FeatherProvider, "/v1/ask-feather/sessions/{}/messages"),
    "agen": (AgenProvider, "/api/v1/sessions/{}/messages"),
}


@pytest.mark.parametrize("provider", list(PROVIDER_PATHS))
async def test_crafted_session_id_cannot_change_request_path_or_host(provider: str) -> None:
    cls, template = PROVIDER_PATHS[provider]
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500)

    client = cls(
        api_key=SecretStr(KEYS[provider]),
        base_url="https://api.provider.test/base/",
        transport=httpx.MockTransport(answer),
    )
    try:
        for session_id, expected_segment in HOSTILE_IDS.items():
            await client.send_message(session_id, "hi", client_id="c1")
            url = seen[-1].url
            assert (url.scheme, url.host, url.port) == ("https", "api.provider.test", None), session_id
            assert url.query == b""
            assert url.fragment == ""
            raw_path = url.raw_path.decode("ascii")
            prefix, suffix = ("/base" + template).split("{}")
            assert raw_path.startswith(prefix), raw_path
            assert raw_path.endswith(suffix), raw_path
            segment = raw_path[len(prefix) : len(raw_path) - len(suffix)]
            assert "/" not in segment
            assert "?" not in segment
            assert "#" not in segment
            assert segment not in (".", "..")
            assert unquote(segment) == session_id
            assert segment == expected_segment
    finally:
        await client.aclose()
    assert len(seen) == len(HOSTILE_IDS)


async def test_crafted_session_id_arrives_as_one_segment_at_a_real_server() -> None:
    """Against the fake Agen server (aiohttp): no normalisation turns the id into another path.

    (Ids with CR/LF are left to the test above: the fake's catch-all route does not match them.)
    """
    ids = [s for s in HOSTILE_IDS if "\n" not in s]
    async with FakeProvider("agen", KEYS["agen"]) as fake:
        client = AgenProvider(api_key=SecretStr(KEYS["agen"]), base_url=fake.url)
        try:
            for session_id in ids:
                await client.send_message(session_id, "hi", client_id="c1")
        finally:
            await client.aclose()
        assert [r.session_id for r in fake.requests] == ids
        assert all(r.authorized for r in fake.requests)
        assert [r.raw_path for r in fake.requests] == [
            f"/api/v1/sessions/{HOSTILE_IDS[s]}/messages" for s in ids
        ]
        fake.assert_no_violations()


# -- 7. secrets --------------------------------------------------------------------------------


def _db_contents(tmp_path: Path) -> tuple[bytes, list[str]]:
    raw = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("relay.db*")))
    rows: list[str] = []
    with sqlite3.connect(tmp_path / "relay.db") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            rows.extend(repr(row) for row in db.execute(f'select * from "{table}"'))
    db.close()
    return raw, rows


async def test_no_secret_reaches_logs_slack_or_the_store(tmp_path: Path) -> None:
    wrong_feather_key = "TESTwrongfeatherkey-fedcba9876543210"
    secrets = [*KEYS.values(), wrong_feather_key, BOT_TOKEN, SIGNING_SECRET]
    with captured_logs(secrets) as log:
        async with running(tmp_path, feather_api_key=wrong_feather_key) as h:
            assert set(h.settings.secrets()) == {
                KEYS["devin"],
                KEYS["agen"],
                wrong_feather_key,
                BOT_TOKEN,
                SIGNING_SECRET,
            }
            h.slack.add_user(ALICE, "alice")
            devin, agen = h.providers["devin"], h.providers["agen"]
            devin.script(Answer.delivered(), Answer.not_running("Session is suspended"), Answer.status(503))
            agen.script(Answer.rejected())
            d = await h.link("devin")
            f = await h.link("feather")
            a = await h.link("agen")
            delivered = await h.reply(d, "deliver this")
            await eventually(lambda: h.slack.reactions_on(CHANNEL, delivered["ts"]) == ["white_check_mark"])
            suspended = await h.reply(d, "are you there?")
            await eventually(lambda: "double_vertical_bar" in h.slack.reactions_on(CHANNEL, suspended["ts"]))
            retried = await h.reply(d, "after a 503")
            unauthorized = await h.reply(f, "wrong key")
            rejected = await h.reply(a, "rejected")
            await eventually(lambda: h.slack.reactions_on(CHANNEL, retried["ts"]) == ["white_check_mark"])
            await eventually(lambda: h.slack.reactions_on(CHANNEL, unauthorized["ts"]) == ["x"])
            await eventually(lambda: len(reply_texts(h, a)) == 1)
            assert h.slack.reactions_on(CHANNEL, rejected["ts"]) == ["x"]
            await mention(h, "status", thread_ts=f)
            await mention(h, "mute", thread_ts=a)
            await mention(h, "unmute", thread_ts=a)
            await mention(h, "link devin ../../x", thread_ts=d)
            await slash(h, "list")
            await slash(h, "help")
            await slash(h, "link gitlab x")
            await mention(h, "unlink", thread_ts=a)
            # A badly signed request is refused (and logged as such).
            body = h.sender.event_body(message_event("forged", thread_ts=d))
            forged = await h.sender.post_raw(body, {"content-type": "application/json"})
            assert forged.status_code == 401
            h.slack.fail_next("chat.postMessage", status=200, retry_after=None, error="not_in_channel")
            refused = await slash(h, f"link devin {DEVIN_SESSION}")  # Slack refuses the anchor
            assert "/invite" in refused
            slack_record = json.dumps(
                {
                    "calls": [(c.method, c.args) for c in h.slack.calls],
                    "messages": h.slack.messages,
                    "ephemeral": h.slack.ephemeral_messages,
                    "responses": h.slack.responses,
                    "reactions": {f"{k[0]}:{k[1]}": v for k, v in h.slack.reactions.items()},
                },
                ensure_ascii=False,
                default=str,
            )
            provider_bodies = json.dumps(
                [(r.raw_path, r.json) for fake in h.providers.values() for r in fake.requests],
                ensure_ascii=False,
            )
            assert len(h.slack.calls) > 20
            assert len(h.providers["devin"].requests) >= 4
    raw_db, rows = _db_contents(tmp_path)
    text = log.getvalue()
    records = log_records(log)
    # The capture is live: our events, slack_sdk's request logging and httpx's requests are in it.
    events = {r.get("event") for r in records}
    assert {"thread_linked", "message_finished"} <= events
    assert any(
        r.get("logger", "").startswith("slack_sdk") and "chat.postMessage" in r["event"] for r in records
    )
    assert any(r.get("logger") == "httpx" and "/v1/sessions/" in r["event"] for r in records)
    assert len(rows) > 10
    for secret in secrets:
        assert secret not in text, "secret in the log"
        assert secret not in slack_record, "secret sent to Slack"
        assert secret not in provider_bodies, "secret in a provider request body"
        assert secret.encode() not in raw_db, "secret in the database file"
        assert not [row for row in rows if secret in row], "secret in a database row"


async def test_a_provider_echoing_its_key_does_not_leak_it(tmp_path: Path) -> None:
    """Provider words are shown word for word, except the API key if a provider repeats it."""
    async with running(tmp_path, providers=("devin", "agen")) as h:
        h.providers["agen"].script(
            Answer.rejected(
                [{"loc": ["header", "x-api-key"], "msg": f"bad key {KEYS['agen']}", "type": "value_error"}]
            )
        )
        h.providers["devin"].script(Answer.not_running(f"Key {KEYS['devin']} is suspended"))
        agen_thread = await h.link("agen")
        devin_thread = await h.link("devin")
        agen_msg = await h.reply(agen_thread, "one")
        devin_msg = await h.reply(devin_thread, "two")
        await eventually(lambda: len(reply_texts(h, agen_thread)) == len(reply_texts(h, devin_thread)) == 1)
        (agen_told,) = reply_texts(h, agen_thread)
        (devin_told,) = reply_texts(h, devin_thread)
        assert "bad key [redacted]" in agen_told
        assert "header.x-api-key" in agen_told
        assert "Key [redacted] is suspended" in devin_told
        for thread, event in ((agen_thread, agen_msg), (devin_thread, devin_msg)):
            row = await h.store.get_message(h.thread(thread), event["ts"])
            assert row is not None
            assert row.detail is not None
            assert "[redacted]" in row.detail
            assert not any(key in row.detail for key in KEYS.values())


# -- 8. HTTP request signatures ----------------------------------------------------------------


async def test_unsigned_wrongly_signed_and_stale_requests_are_refused(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",)) as h:
        h.slack.add_user(ALICE, "alice")
        thread = await h.link("devin")  # the forged reply goes where a real one would be relayed
        sender = h.sender
        command = (
            "token=legacy&team_id=T0TEAM&channel_id=C0CHANNEL&user_id=U0ALICE&command=%2Fagent"
            f"&text=link+devin+{DEVIN_SESSION}&response_url={quote(h.slack.response_url('forged'), safe='')}"
        )
        forged = message_event("forged", thread_ts=thread)
        event = sender.event_body(forged)
        form, js = "application/x-www-form-urlencoded", "application/json"
        stale = int(time.time()) - 6 * 60
        attempts = {
            "missing": ({"content-type": form}, {"content-type": js}),
            "wrong": (
                {**sender._headers(command, form), "x-slack-signature": "v0=" + "0" * 64},
                {**sender._headers(event, js), "x-slack-signature": "v0=" + "0" * 64},
            ),
            "other secret": (
                _signed_with("not-the-secret", command, form),
                _signed_with("not-the-secret", event, js),
            ),
            "stale": (
                sender._headers(command, form, timestamp=stale),
                sender._headers(event, js, timestamp=stale),
            ),
        }
        calls_before = len(h.slack.calls)
        bindings_before = await h.store.list_bindings(TEAM, CHANNEL)
        assert len(bindings_before) == 1
        for name, (command_headers, event_headers) in attempts.items():
            for body, headers in ((command, command_headers), (event, event_headers)):
                response = await sender.post_raw(body, headers)
                assert response.status_code == 401, (name, response.status_code, response.text)
        assert h.slack.calls[calls_before:] == []
        assert h.slack.responses == []
        assert len(h.slack.messages) == 1  # the anchor of the real link only
        assert await h.store.list_bindings(TEAM, CHANNEL) == bindings_before
        assert sum((await h.store.count_messages()).values()) == 0
        assert h.providers["devin"].requests == []
        # The same requests correctly signed and fresh are taken: the refusals above were the signature.
        response = await sender.post_raw(event, sender._headers(event, js))
        assert response.status_code == 200
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, forged["ts"]) == ["white_check_mark"])
        assert h.providers["devin"].messages() == ["alice (via Slack): forged"]
        response = await sender.post_raw(command, sender._headers(command, form))
        assert response.status_code == 200
        await h.slack.wait_for(lambda: len(h.slack.messages) == 2)
        await h.wait_bound(str(h.slack.messages[1]["ts"]))


def _signed_with(secret: str, body: str, content_type: str) -> dict[str, str]:
    ts = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {"content-type": content_type, "x-slack-request-timestamp": ts, "x-slack-signature": signature}
