"""Messages people write every day reach the agent as a reader sees them (issue 10).

Each payload is a fixture in ``tests/fixtures/events/`` written from Slack's documented shapes (the
whole ``event_callback`` body: ``authorizations``, Enterprise Grid and Slack Connect fields, blocks,
shared-message attachments), sent signed to the running bot. The tests assert on the exact text the
fake provider received and on what the fake Slack was asked to post.

"Not relayed" is shown against a later message that is relayed in the same thread: a thread's
messages are sent in order, so anything wrongly queued would reach the provider first.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

from bot.render.control import NOT_LINKED, OUTSIDER_COMMAND, OUTSIDER_NOTICE, UNEXPECTED_ERROR
from storage import ThreadKey
from tests.fakes import eventually
from tests.harness import (
    ALICE,
    BOB,
    CHANNEL,
    DEVIN_SESSION,
    TEAM,
    Harness,
    new_ts,
    running,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
GRID = "E0ORG"
SISTER = "T0SISTER"  # another workspace of the installing Enterprise Grid organisation
SAM = "W0SAM"  # a member of the organisation whose home is the sister workspace
PAT = "U0PAT"  # Slack Connect: a person from another organisation
PARTNER = "T0PARTNER"
CAROL = "U0CAROL"
LINK_ANSWER = ":link: <@U0ALICE> linked this thread"


def fixture(name: str, **values: str) -> dict[str, Any]:
    """The fixture ``name`` with its ``{{placeholders}}`` filled (``ts`` and ``event_id`` fresh)."""
    values = {"ts": new_ts(), "event_id": f"Ev{uuid.uuid4().hex[:12].upper()}", **values}
    filled = _fill(json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8")), values)
    assert isinstance(filled, dict)
    return filled


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, filled in values.items():
            value = value.replace("{{" + key + "}}", filled)
        assert "{{" not in value, f"a placeholder was left unfilled: {value!r}"
        return value
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    return value


def reply(text: str, thread: str) -> dict[str, Any]:
    return fixture("thread_reply", text=text, thread_ts=thread)


async def delivered(h: Harness, body: dict[str, Any], provider: str = "devin") -> list[str]:
    """Send ``body``; once its message has its ✅, everything ``provider`` received, in order."""
    await h.sender.envelope(body)
    ts = body["event"]["ts"]
    await eventually(lambda: h.slack.reactions_on(CHANNEL, ts) == ["white_check_mark"])
    return h.providers[provider].messages()


async def relayed(h: Harness, name: str, **values: str) -> str:
    """Link a thread, send fixture ``name`` in it, return the one text the provider received."""
    thread = await h.link("devin")
    texts = await delivered(h, fixture(name, thread_ts=thread, **values))
    assert len(texts) == 1, texts
    return texts[0]


def people(h: Harness) -> None:
    h.slack.add_user(ALICE, "alice")
    h.slack.add_user(BOB, "bob")
    h.slack.add_user(CAROL, "carol")
    h.slack.add_user(SAM, "sam", team_id=SISTER, enterprise_id=GRID)
    h.slack.add_user(PAT, "pat", team_id=PARTNER)


def thread_replies(h: Harness, thread: str) -> list[str]:
    return [str(m["text"]) for m in h.slack.replies_in(CHANNEL, thread)]


async def post_slash(h: Harness, fields: dict[str, str]) -> None:
    body = urllib.parse.urlencode(fields)
    response = await h.sender.post_raw(body, h.sender._headers(body, "application/x-www-form-urlencoded"))
    assert response.status_code == 200, response.text


# -- 1. Enterprise Grid and Slack Connect ------------------------------------------------------


async def test_grid_members_are_relayed_and_connect_outsiders_are_not(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), enterprise_id=GRID) as h:
        people(h)
        thread = await h.link("devin")
        await h.sender.envelope(fixture("grid_member_other_workspace", thread_ts=thread))
        await h.sender.envelope(fixture("grid_member_enterprise_user_team", thread_ts=thread))
        outsider = fixture("slack_connect_other_org", thread_ts=thread)
        await h.sender.envelope(outsider)
        texts = await delivered(h, reply("thanks both", thread))
        assert texts == [
            "sam (via Slack): I can take this one, @alice",
            "sam (via Slack): on it",
            "alice (via Slack): thanks both",
        ]
        await h.settle()
        assert thread_replies(h, thread) == [OUTSIDER_NOTICE]
        assert await h.store.get_message(h.thread(thread), outsider["event"]["ts"]) is None
        assert h.slack.reactions_on(CHANNEL, outsider["event"]["ts"]) == []


async def test_an_org_wide_install_keeps_one_key_per_thread_whoever_writes(tmp_path: Path) -> None:
    """Org-wide: no installing team id; threads are keyed by the enterprise id, so a link made from
    one workspace and replies written from another land in the same thread."""
    async with running(tmp_path, providers=("devin",), enterprise_id=GRID, org_wide=True) as h:
        people(h)
        assert h.runtime.deps is not None
        assert h.runtime.deps.identity.team_id is None
        await h.sender.command(
            f"link devin {DEVIN_SESSION}",
            user=SAM,
            team_id=SISTER,
            enterprise_id=GRID,
            is_enterprise_install="true",
        )
        await h.slack.wait_for(lambda: len(h.slack.messages) == 1)
        anchor = str(h.slack.messages[0]["ts"])
        key = ThreadKey(GRID, CHANNEL, anchor)
        deadline = time.monotonic() + 5
        while await h.store.get_binding(key) is None:
            assert time.monotonic() < deadline, "the org-wide link was never stored under the enterprise id"
            await asyncio.sleep(0.01)
        assert await h.store.get_binding(ThreadKey(SISTER, CHANNEL, anchor)) is None
        await h.sender.envelope(fixture("org_wide_install_reply", thread_ts=anchor))
        from_home = reply("and the tests are green here", anchor)
        from_home["authorizations"] = fixture("org_wide_install_reply", thread_ts=anchor)["authorizations"]
        from_home["enterprise_id"] = GRID
        texts = await delivered(h, from_home)
        assert texts == [
            "sam (via Slack): the fix is in the sister workspace's repo",
            "alice (via Slack): and the tests are green here",
        ]
        assert await h.store.get_message(key, from_home["event"]["ts"]) is not None


# -- 2. /me ------------------------------------------------------------------------------------


async def test_me_message_is_relayed(relay: Harness) -> None:
    people(relay)
    assert await relayed(relay, "me_message") == "alice (via Slack): is looking into the flaky test"


# -- 3. shared messages and blocks -------------------------------------------------------------


async def test_a_forwarded_message_arrives_after_the_writers_words_with_author_and_link(
    relay: Harness,
) -> None:
    people(relay)
    assert await relayed(relay, "shared_message_attachment") == (
        "alice (via Slack): can you look at this?\n\n"
        "Forwarded message from Bob (https://fake.slack.test/archives/C0OPS/p1700000000000100):\n"
        "> the deploy failed: run 42 (https://ci.example/run/42?step=3&try=2)\n"
        "> cc @carol"
    )


async def test_a_forwarded_message_without_a_comment_is_not_empty(relay: Harness) -> None:
    """Its ``text`` is empty: before, it was refused as "nothing to send"."""
    people(relay)
    text = await relayed(relay, "shared_message_without_comment")
    assert text == (
        "alice (via Slack): Forwarded message from Bob (https://fake.slack.test/archives/C0OPS/"
        "p1700000000000200?thread_ts=1700000000.000100&cid=C0OPS):\n"
        "> rollback done & verified"
    )


async def test_a_message_link_preview_arriving_later_is_not_an_edit(relay: Harness) -> None:
    """Slack adds the preview of a pasted message link with ``message_changed``; the writer's words
    did not change, so no correction is sent."""
    people(relay)
    thread = await relay.link("devin")
    changed = fixture("message_link_unfurl_added", thread_ts=thread, event_ts=new_ts())
    original = fixture("thread_reply", text="", thread_ts=thread)
    original["event"] = {
        **changed["event"]["previous_message"],
        "channel": CHANNEL,
        "channel_type": "channel",
    }
    assert await delivered(relay, original) == [
        "alice (via Slack): same as https://fake.slack.test/archives/C0OPS/p1700000000000100"
    ]
    await relay.sender.envelope(changed)
    assert (await delivered(relay, reply("next", thread)))[1:] == ["alice (via Slack): next"]


async def test_rich_text_blocks_are_sent_as_shown_not_their_fallback(relay: Harness) -> None:
    people(relay)
    relay.slack.add_channel("C0DEV", "dev")
    assert await relayed(relay, "rich_text_blocks_only") == (
        "alice (via Slack): *Release checklist* for #dev:\n"
        "1. bump the version\n"
        "2. ask @bob for the `CHANGELOG`\n"
        "    ◦ see the runbook (https://example.com/release?v=2&dry=1)\n"
        "```\n"
        "make release V=2 > out.log\n"
        "```\n"
        "> ship it on Friday :rocket:"
    )


async def test_section_blocks_are_sent_as_shown_not_their_fallback(relay: Harness) -> None:
    people(relay)
    relay.slack.add_usergroup("S0ONCALL", "oncall", [BOB])
    assert await relayed(relay, "section_blocks_fallback") == (
        "alice (via Slack): Incident #7: API 5xx > 2%\n"
        "Errors started after run 41 (https://ci.example/run/41). Please roll back.\n"
        "*Owner:*\n"
        "@bob\n"
        "Severity: high\n"
        "paged @oncall"
    )


# -- 4. names instead of ids -------------------------------------------------------------------


async def test_unlabelled_channels_and_groups_reach_the_agent_by_name(relay: Harness) -> None:
    people(relay)
    relay.slack.add_channel("C0DEV", "dev")
    relay.slack.add_channel("C0OPS", "ops", is_private=True)
    relay.slack.add_usergroup("S0ONCALL", "oncall", [BOB])
    relay.slack.fail_next("conversations.info", status=200, retry_after=None, error="channel_not_found")
    thread = await relay.link("devin")
    expected = "alice (via Slack): not in #C0SECRET: see #dev and #ops, then ask @oncall"
    assert await delivered(relay, fixture("unlabelled_names", thread_ts=thread)) == [expected]
    assert await delivered(relay, fixture("unlabelled_names", thread_ts=thread)) == [expected, expected]
    # One look-up per channel: names and refusals are cached.
    asked = [call.args["channel"] for call in relay.slack.calls_to("conversations.info")]
    assert asked == ["C0SECRET", "C0DEV", "C0OPS"]


async def test_links_with_spaces_dates_with_links_and_unknown_specials(relay: Harness) -> None:
    people(relay)
    assert await relayed(relay, "mrkdwn_tokens_without_blocks") == (
        "alice (via Slack): mail the team (mailto:team@example.com?subject=Hello, World), "
        "due Feb 18, 2014 (https://example.com/cal), tell @foo"
    )


# -- 5. ephemeral answers outside a thread -----------------------------------------------------


async def test_a_top_level_mention_is_answered_in_the_channel(relay: Harness) -> None:
    """Slack shows an ephemeral with ``thread_ts`` only inside an existing thread."""
    top = fixture("app_mention_top_level")
    await relay.sender.envelope(top)
    thread = new_ts()
    in_thread = fixture("app_mention_top_level")
    in_thread["event"]["thread_ts"] = thread
    await relay.sender.envelope(in_thread)
    await relay.settle()
    calls = relay.slack.calls_to("chat.postEphemeral")
    assert [(c.args["user"], c.args["text"], c.args.get("thread_ts")) for c in calls] == [
        (ALICE, NOT_LINKED, None),
        (ALICE, NOT_LINKED, thread),
    ]


async def test_the_error_answer_to_a_top_level_mention_is_in_the_channel(
    relay: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert relay.runtime.deps is not None

    async def broken(*_args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(relay.runtime.deps.control, "on_mention", broken)
    thread = new_ts()
    for body in (fixture("app_mention_top_level"), fixture("app_mention_link_in_thread", thread_ts=thread)):
        raw = json.dumps(body)
        await relay.sender.post_raw(raw, relay.sender._headers(raw, "application/json"))
    calls = relay.slack.calls_to("chat.postEphemeral")
    assert [(c.args["text"], c.args.get("thread_ts")) for c in calls] == [
        (UNEXPECTED_ERROR, None),
        (UNEXPECTED_ERROR, thread),
    ]


# -- 6. replies written right after a link mention ---------------------------------------------


async def test_replies_delivered_before_the_link_is_stored_are_relayed_once_in_order(
    relay: Harness,
) -> None:
    people(relay)
    parent = new_ts()
    relay.slack.remember(CHANNEL, {"type": "message", "user": ALICE, "text": "flaky again", "ts": parent})
    earlier = reply("written before the link: not for the agent", parent)
    mention = fixture("app_mention_link_in_thread", thread_ts=parent)
    first = reply("first instruction", parent)
    second = reply("second instruction", parent)
    late = reply("third, its event comes after the link", parent)
    twin = {**mention["event"], "type": "message", "channel_type": "channel"}  # the mention's message
    for event in (earlier["event"], twin, first["event"], second["event"], late["event"]):
        relay.slack.remember(CHANNEL, event)
    # Slack delivers the instructions before the mention is processed: nothing is bound yet.
    for body in (earlier, first, second):
        await relay.sender.envelope(body)
    assert sum((await relay.store.count_messages()).values()) == 0
    await relay.sender.envelope(mention)
    await relay.sender.event(twin)
    await relay.sender.envelope(late)
    await relay.sender.envelope(first)  # Slack delivering one again changes nothing
    after = reply("fourth, after everything", parent)
    relay.slack.remember(CHANNEL, after["event"])
    assert await delivered(relay, after) == [
        "alice (via Slack): first instruction",
        "alice (via Slack): second instruction",
        "alice (via Slack): third, its event comes after the link",
        "alice (via Slack): fourth, after everything",
    ]
    assert relay.slack.reactions_on(CHANNEL, earlier["event"]["ts"]) == []
    [read] = relay.slack.calls_to("conversations.replies")
    assert (read.args["channel"], read.args["ts"], read.args["oldest"]) == (
        CHANNEL,
        parent,
        mention["event"]["ts"],
    )
    await relay.settle()
    assert [t for t in thread_replies(relay, parent) if t.startswith(LINK_ANSWER)]


async def test_a_failed_thread_read_leaves_the_link_and_later_replies_working(relay: Harness) -> None:
    people(relay)
    parent = new_ts()
    relay.slack.fail_next("conversations.replies", status=200, retry_after=None, error="missing_scope")
    await relay.sender.envelope(fixture("app_mention_link_in_thread", thread_ts=parent))
    await relay.wait_bound(parent)
    assert await delivered(relay, reply("go", parent)) == ["alice (via Slack): go"]


# -- 7. slash commands from outsiders ----------------------------------------------------------


async def test_slash_link_by_a_connect_outsider_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), enterprise_id=GRID) as h:
        people(h)
        await post_slash(
            h, fixture("slash_command_shared_channel", user=PAT, response_url=h.slack.response_url("p"))
        )
        await h.slack.wait_for(lambda: bool(h.slack.responses_for("p")))
        [answer] = h.slack.responses_for("p")
        assert (answer["text"], answer["response_type"]) == (OUTSIDER_COMMAND, "ephemeral")
        assert h.slack.messages == []  # no anchor
        assert await h.store.list_bindings(TEAM, CHANNEL) == []
        # A member of the organisation from its sister workspace may link.
        await post_slash(
            h, fixture("slash_command_shared_channel", user=SAM, response_url=h.slack.response_url("s"))
        )
        await h.slack.wait_for(lambda: len(h.slack.messages) == 1)
        anchor = str(h.slack.messages[0]["ts"])
        await h.wait_bound(anchor)
        binding = await h.store.get_binding(h.thread(anchor))
        assert binding is not None
        assert (binding.linked_by, binding.session_id) == (SAM, DEVIN_SESSION)
        assert h.slack.responses_for("s") == []
