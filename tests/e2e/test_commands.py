"""``/agent …`` in a channel and ``@agent-relay …`` in a thread, end to end (issue 3).

Slash commands are answered through their ``response_url`` (``FakeSlack.responses``, ephemeral) or,
for a link, by the anchor message the bot posts. Mention commands answer the person who asked with
an ephemeral message in the thread (``chat.postEphemeral``), and post changes everyone should know
about (linked, unlinked, paused, resumed) publicly in the thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage import Binding
from tests.fakes.providers import Answer
from tests.harness import (
    AGEN_SESSION,
    ALICE,
    BOB,
    BOT_USER,
    CHANNEL,
    DEVIN_SESSION,
    FEATHER_SESSION,
    TEAM,
    Harness,
    mention_event,
    message_event,
    new_ts,
    running,
)

CAROL = "U0CAROL"  # a workspace admin
OTHER_CHANNEL = "C0OTHER"
PERMALINK_BASE = f"https://fake.slack.test/archives/{CHANNEL}/p"


# -- helpers -----------------------------------------------------------------------------------


async def slash(h: Harness, text: str, *, user: str = ALICE) -> str:
    """Run ``/agent text``; return the text of the one ephemeral answer sent to its response_url."""
    before = len(h.slack.responses)
    await h.sender.command(text, user=user)
    await h.slack.wait_for(lambda: len(h.slack.responses) > before)
    _tag, body = h.slack.responses[before]
    assert body.get("response_type") == "ephemeral", body
    return str(body["text"])


async def human_thread(h: Harness) -> str:
    """A thread under a person's message (not an anchor): its parent ts."""
    parent = new_ts()
    await h.sender.event(message_event("can an agent look at the flaky build?", ts=parent, user=BOB))
    return parent


async def mention(h: Harness, text: str, thread: str, *, user: str = ALICE, **extra: Any) -> dict[str, Any]:
    """``@agent-relay text`` in ``thread``, delivered like Slack does (app_mention plus its message twin)."""
    ts = new_ts()
    await h.sender.event(message_event(f"<@{BOT_USER}> {text}", thread_ts=thread, ts=ts, user=user, **extra))
    event = mention_event(text, thread_ts=thread, ts=ts, user=user, **extra)
    await h.sender.event(event)
    return event


async def ephemeral_answer(h: Harness, thread: str, *, user: str = ALICE, before: int = 0) -> str:
    """The one new ephemeral answer ``user`` got in ``thread`` since there were ``before``."""
    await h.slack.wait_for(lambda: len(h.slack.ephemerals(CHANNEL, user)) > before)
    new = h.slack.ephemerals(CHANNEL, user)[before:]
    assert len(new) == 1, new
    assert new[0]["thread_ts"] == thread
    return str(new[0]["text"])


def public_replies(h: Harness, thread: str) -> list[str]:
    return [str(m["text"]) for m in h.slack.replies_in(CHANNEL, thread)]


async def bindings(h: Harness) -> list[Binding]:
    return await h.store.list_bindings(TEAM, CHANNEL)


async def relay_and_wait(h: Harness, thread: str, text: str, *, user: str = ALICE, reaction: str) -> None:
    event = await h.reply(thread, text, user=user)
    await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == [reaction])


# -- /agent link -------------------------------------------------------------------------------


async def test_slash_link_devin_posts_an_anchor_and_binds(relay: Harness) -> None:
    await relay.sender.command(f"link devin {DEVIN_SESSION}", user=ALICE)
    await relay.slack.wait_for(lambda: len(relay.slack.messages) == 1)
    anchor = relay.slack.messages[0]
    assert anchor["channel"] == CHANNEL
    assert anchor["thread_ts"] is None
    text = str(anchor["text"])
    assert f"<@{ALICE}>" in text
    assert "Devin" in text
    assert DEVIN_SESSION in text
    assert "<https://app.devin.ai/sessions/0123456789abcdef|" in text
    assert "Reply in this thread" in text
    await relay.wait_bound(anchor["ts"])
    binding = await relay.store.get_binding(relay.thread(anchor["ts"]))
    assert binding is not None
    assert (binding.provider, binding.session_id, binding.linked_by, binding.anchor_ts) == (
        "devin",
        DEVIN_SESSION,
        ALICE,
        anchor["ts"],
    )


@pytest.mark.parametrize(
    ("provider", "session", "label"),
    [("feather", FEATHER_SESSION, "Feather"), ("agen", AGEN_SESSION, "Agen")],
)
async def test_slash_link_other_providers(relay: Harness, provider: str, session: str, label: str) -> None:
    thread = await relay.link(provider, session, user=BOB)
    text = str(relay.slack.messages[0]["text"])
    assert f"<@{BOB}>" in text
    assert label in text
    assert session in text
    assert "Reply in this thread" in text
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None
    assert (binding.provider, binding.session_id, binding.linked_by) == (provider, session, BOB)


@pytest.mark.parametrize(
    "url",
    ["https://app.devin.ai/sessions/abc123", "<https://app.devin.ai/sessions/abc123>"],
    ids=["plain", "slack-escaped"],
)
async def test_slash_link_devin_url_infers_devin(relay: Harness, url: str) -> None:
    await relay.sender.command(f"link {url}")
    await relay.slack.wait_for(lambda: len(relay.slack.messages) == 1)
    anchor = relay.slack.messages[0]
    assert "<https://app.devin.ai/sessions/abc123|" in str(anchor["text"])
    await relay.wait_bound(anchor["ts"])
    binding = await relay.store.get_binding(relay.thread(anchor["ts"]))
    assert binding is not None
    assert (binding.provider, binding.session_id) == ("devin", "devin-abc123")


async def test_bare_uuid_with_several_providers_asks_which(relay: Harness) -> None:
    text = await slash(relay, f"link {FEATHER_SESSION}")
    assert "Which provider" in text
    assert FEATHER_SESSION in text
    for label in ("Devin", "Feather", "Agen"):
        assert label in text
    assert relay.slack.messages == []  # no anchor
    assert await bindings(relay) == []


async def test_bare_uuid_with_only_feather_links_feather(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("feather",)) as h:
        await h.sender.command(f"link {FEATHER_SESSION.upper()}")
        await h.slack.wait_for(lambda: len(h.slack.messages) == 1)
        anchor = h.slack.messages[0]
        assert "Feather" in str(anchor["text"])
        assert FEATHER_SESSION in str(anchor["text"])
        await h.wait_bound(anchor["ts"])
        binding = await h.store.get_binding(h.thread(anchor["ts"]))
        assert binding is not None
        assert (binding.provider, binding.session_id) == ("feather", FEATHER_SESSION)


async def test_unknown_provider_lists_the_enabled_ones(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin", "agen")) as h:
        text = await slash(h, "link gitlab abc123")
        assert "Unknown provider" in text
        assert "gitlab" in text
        assert "Devin" in text
        assert "Agen" in text
        assert "Feather" not in text
        assert h.slack.messages == []
        assert await bindings(h) == []


async def test_provider_not_enabled_says_so(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",)) as h:
        text = await slash(h, f"link feather {FEATHER_SESSION}")
        assert "Feather is not enabled" in text
        assert "Devin" in text
        assert h.slack.messages == []
        assert await bindings(h) == []


async def test_invalid_feather_id_is_refused_without_calling_anyone(relay: Harness) -> None:
    text = await slash(relay, "link feather not-a-uuid")
    assert "`not-a-uuid` is not a Feather session id" in text
    assert "UUID" in text
    assert relay.slack.messages == []
    assert await bindings(relay) == []
    assert all(fake.requests == [] for fake in relay.providers.values())


async def test_anchor_refused_by_slack_binds_nothing(relay: Harness) -> None:
    relay.slack.fail_next("chat.postMessage", status=200, retry_after=None, error="not_in_channel")
    text = await slash(relay, f"link devin {DEVIN_SESSION}")
    assert "/invite @agent-relay" in text
    assert await bindings(relay) == []


async def test_anchor_refused_for_another_reason_names_slacks_error(relay: Harness) -> None:
    relay.slack.fail_next("chat.postMessage", status=200, retry_after=None, error="is_archived")
    text = await slash(relay, f"link devin {DEVIN_SESSION}")
    assert text == "Slack refused the anchor message (is_archived); nothing was linked. Try again."
    assert await bindings(relay) == []
    assert relay.slack.messages == []
    # Slack said no for good: the bot did not try the anchor again on its own.
    assert len(relay.slack.calls_to("chat.postMessage")) == 1


# -- /agent help, list, and thread-only commands -----------------------------------------------


@pytest.mark.parametrize("command", ["help", "", "HELP"])
async def test_slash_help_and_empty_show_usage(relay: Harness, command: str) -> None:
    text = await slash(relay, command)
    assert "/agent link <provider> <session>" in text
    assert "/agent list" in text
    assert "Enabled providers: Devin, Feather, Agen." in text
    assert relay.slack.messages == []


async def test_slash_list_when_nothing_is_bound(relay: Harness) -> None:
    text = await slash(relay, "list")
    assert "No threads in this channel are linked" in text


async def test_slash_list_of_more_than_fifty_threads_shows_fifty_and_counts_the_rest(relay: Harness) -> None:
    threads = [f"1800000000.{n:06d}" for n in range(1, 56)]
    for n, ts in enumerate(threads):
        await relay.store.bind(
            Binding(
                relay.thread(ts), "devin", f"devin-{n:04d}", linked_by=ALICE, linked_at=1_800_000_000.0 + n
            )
        )
    text = await slash(relay, "list")
    lines = text.splitlines()
    assert lines[0] == "Threads in this channel linked to an agent session (55):"
    listed = lines[1:-1]
    assert len(listed) == 50
    assert lines[-1] == "…and 5 more."
    # The oldest links are listed, each with its thread's permalink.
    for line, ts in zip(listed, threads[:50], strict=True):
        assert line.startswith(f"• <{PERMALINK_BASE}{ts.replace('.', '')}|thread>: Devin session ")
    assert "devin-0049" in text
    assert "devin-0050" not in text


async def test_slash_list_shows_every_bound_thread_with_a_permalink(relay: Harness) -> None:
    devin_thread = await relay.link("devin")
    agen_thread = await relay.link("agen", user=BOB)
    await relay.link("feather", channel=OTHER_CHANNEL)  # another channel: not listed here
    await mention(relay, "mute", agen_thread, user=BOB)
    text = await slash(relay, "list")
    assert "(2)" in text
    assert FEATHER_SESSION not in text
    lines = text.splitlines()
    devin_line = next(line for line in lines if DEVIN_SESSION in line)
    agen_line = next(line for line in lines if AGEN_SESSION in line)
    assert f"<{PERMALINK_BASE}{devin_thread.replace('.', '')}|" in devin_line
    assert f"<@{ALICE}>" in devin_line
    assert "(muted)" not in devin_line
    assert f"<{PERMALINK_BASE}{agen_thread.replace('.', '')}|" in agen_line
    assert f"<@{BOB}>" in agen_line
    assert "(muted)" in agen_line
    # Built from auth.test's workspace address: no Slack call per thread.
    assert relay.slack.calls_to("chat.getPermalink") == []


@pytest.mark.parametrize("command", ["unlink", "status", "mute", "unmute"])
async def test_thread_commands_from_the_channel_explain_mentions(relay: Harness, command: str) -> None:
    await relay.link("devin")
    text = await slash(relay, command)
    assert f"`{command}` works inside a linked thread" in text
    assert f"@agent-relay {command}" in text
    assert len(await bindings(relay)) == 1  # nothing changed
    assert len(relay.slack.messages) == 1  # only the anchor


# -- mention commands in an existing thread ----------------------------------------------------


async def test_mention_link_binds_an_existing_thread_publicly(relay: Harness) -> None:
    thread = await human_thread(relay)
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    await relay.slack.wait_for(lambda: len(public_replies(relay, thread)) == 1)
    (text,) = public_replies(relay, thread)
    assert f"<@{ALICE}> linked this thread to Agen session" in text
    assert AGEN_SESSION in text
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None
    assert (binding.provider, binding.session_id, binding.linked_by, binding.anchor_ts) == (
        "agen",
        AGEN_SESSION,
        ALICE,
        None,
    )
    # the thread now relays, and the link command itself was not relayed
    await relay_and_wait(relay, thread, "hello agent", reaction="white_check_mark")
    assert relay.providers["agen"].messages() == [f"{ALICE} (via Slack): hello agent"]


async def test_mention_that_is_not_a_command_is_relayed_once(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    relay.slack.add_user(BOT_USER, "agent-relay", is_bot=True)
    thread = await relay.link("devin")
    event = await mention(relay, "please rerun the flaky test", thread)
    await relay.slack.wait_for(lambda: relay.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
    # The leading mention only addresses the message; the agent gets what follows it.
    assert relay.providers["devin"].messages() == ["alice (via Slack): please rerun the flaky test"]
    # The bot reacts before it replies, and handles a thread's messages in order: once a later
    # message has its reaction, any reply or answer about the mention has been posted.
    await relay_and_wait(relay, thread, "barrier", reaction="white_check_mark")
    assert relay.slack.ephemerals() == []
    assert public_replies(relay, thread) == []


@pytest.mark.parametrize("text", ["status of the build?", "help me fix the tests", "link the PR to issue 12"])
async def test_a_command_word_followed_by_prose_is_a_message_for_the_agent(relay: Harness, text: str) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    event = await mention(relay, text, thread)
    await relay.slack.wait_for(lambda: relay.slack.reactions_on(CHANNEL, event["ts"]) == ["white_check_mark"])
    assert relay.providers["devin"].messages() == [f"alice (via Slack): {text}"]
    assert relay.slack.ephemerals() == []


async def test_mention_status_shows_binding_and_last_outcome(relay: Harness) -> None:
    relay.slack.add_user(BOB, "bob")
    thread = await human_thread(relay)
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    await relay.wait_bound(thread)
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None

    await mention(relay, "status", thread)
    text = await ephemeral_answer(relay, thread)
    assert "linked to Agen session" in text
    assert AGEN_SESSION in text
    # when it was linked, as a Slack date each reader sees in their own time zone
    assert f"Linked by <@{ALICE}> on <!date^{int(binding.linked_at)}^" in text
    assert "Relaying is on" in text
    assert "No message has been relayed yet" in text

    await relay_and_wait(relay, thread, "first", user=BOB, reaction="white_check_mark")
    await mention(relay, "status", thread)
    text = await ephemeral_answer(relay, thread, before=1)
    assert f"Last message: from <@{BOB}>" in text
    assert ": delivered." in text

    relay.providers["agen"].script(Answer.rejected())
    await relay_and_wait(relay, thread, "second", user=BOB, reaction="x")
    await mention(relay, "status", thread)
    text = await ephemeral_answer(relay, thread, before=2)
    assert ": rejected (body.message: Field required)." in text

    assert len(public_replies(relay, thread)) == 2  # the link, the rejection; statuses are private


async def test_unlink_by_the_linker_stops_relaying(relay: Harness) -> None:
    thread = await human_thread(relay)
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    await relay.wait_bound(thread)
    await relay_and_wait(relay, thread, "before", reaction="white_check_mark")

    await mention(relay, "unlink", thread)
    await relay.slack.wait_for(lambda: len(public_replies(relay, thread)) == 2)
    assert f"<@{ALICE}> unlinked this thread from Agen session" in public_replies(relay, thread)[1]
    assert await relay.store.get_binding(relay.thread(thread)) is None

    after = await relay.reply(thread, "after the unlink")
    # Link again to prove, by the thread's order, that the reply in between was never queued.
    await mention(relay, f"link devin {DEVIN_SESSION}", thread)
    await relay.wait_bound(thread)
    await relay_and_wait(relay, thread, "relinked", reaction="white_check_mark")
    assert relay.providers["agen"].messages() == [f"{ALICE} (via Slack): before"]
    assert relay.providers["devin"].messages() == [f"{ALICE} (via Slack): relinked"]
    assert await relay.store.get_message(relay.thread(thread), after["ts"]) is None
    assert relay.slack.reactions_on(CHANNEL, after["ts"]) == []


async def test_unlink_by_someone_else_is_refused(relay: Harness) -> None:
    relay.slack.add_user(BOB, "bob")  # not an admin
    thread = await human_thread(relay)
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    await relay.wait_bound(thread)

    await mention(relay, "unlink", thread, user=BOB)
    text = await ephemeral_answer(relay, thread, user=BOB)
    assert "only the person who linked this thread or a workspace admin can unlink it" in text.lower()
    assert await relay.store.get_binding(relay.thread(thread)) is not None
    assert len(public_replies(relay, thread)) == 1  # only the link
    await relay_and_wait(relay, thread, "still relayed", user=BOB, reaction="white_check_mark")


async def test_unlink_by_a_workspace_admin_works(relay: Harness) -> None:
    relay.slack.add_user(CAROL, "carol", is_admin=True)
    thread = await human_thread(relay)
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    await relay.wait_bound(thread)
    await mention(relay, "unlink", thread, user=CAROL)
    await relay.slack.wait_for(lambda: len(public_replies(relay, thread)) == 2)
    assert f"<@{CAROL}> unlinked this thread" in public_replies(relay, thread)[1]
    assert await relay.store.get_binding(relay.thread(thread)) is None


@pytest.mark.parametrize(
    ("again", "expected"),
    [
        (f"link agen {AGEN_SESSION}", "This thread is already linked to Agen session"),
        (f"link devin {DEVIN_SESSION}", "Unlink it first"),
    ],
    ids=["same-session", "other-session"],
)
async def test_link_in_a_linked_thread_says_so(relay: Harness, again: str, expected: str) -> None:
    thread = await human_thread(relay)
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    await relay.wait_bound(thread)
    await mention(relay, again, thread, user=BOB)
    text = await ephemeral_answer(relay, thread, user=BOB)
    assert expected in text
    assert AGEN_SESSION in text
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None
    assert (binding.provider, binding.linked_by) == ("agen", ALICE)
    assert len(public_replies(relay, thread)) == 1


async def test_link_in_an_anchor_thread_says_so(relay: Harness) -> None:
    thread = await relay.link("devin")
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    text = await ephemeral_answer(relay, thread)
    assert "already linked to Devin session" in text
    assert "Unlink it first" in text


async def test_mention_help(relay: Harness) -> None:
    thread = await human_thread(relay)
    await mention(relay, "help", thread)
    text = await ephemeral_answer(relay, thread)
    assert "/agent link <provider> <session>" in text
    assert "`unlink`" in text
    assert "`mute`" in text
    assert public_replies(relay, thread) == []


async def test_thread_command_in_an_unlinked_thread_says_how_to_link(relay: Harness) -> None:
    thread = await human_thread(relay)
    await mention(relay, "status", thread)
    text = await ephemeral_answer(relay, thread)
    assert "not linked" in text
    assert "link" in text


@pytest.mark.parametrize("command", ["unlink", "mute", "unmute"])
async def test_unlink_and_mute_in_an_unlinked_thread_say_how_to_link(relay: Harness, command: str) -> None:
    thread = await human_thread(relay)
    await mention(relay, command, thread)
    text = await ephemeral_answer(relay, thread)
    assert text == "This thread is not linked to an agent session. Link it with `@agent-relay link …`."
    assert await bindings(relay) == []
    assert public_replies(relay, thread) == []


async def test_status_of_a_message_waiting_for_a_retry_says_why(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",), relay_retry_budget=300.0) as h:
        h.providers["devin"].script(Answer.status(429, headers={"Retry-After": "120"}))
        thread = await h.link("devin")
        waiting = await h.reply(thread, "deploy when green", user=BOB)
        await h.slack.wait_for(
            lambda: h.slack.reactions_on(CHANNEL, waiting["ts"]) == ["hourglass_flowing_sand"]
        )
        await mention(h, "status", thread)
        text = await ephemeral_answer(h, thread)
        (last,) = [line for line in text.splitlines() if line.startswith("Last message:")]
        assert last.startswith(f"Last message: from <@{BOB}> on <!date^")
        assert last.endswith(": waiting to be sent (retry after 120s).")
        assert h.providers["devin"].messages() == [f"{BOB} (via Slack): deploy when green"]  # once so far


async def test_mute_and_unmute(relay: Harness) -> None:
    thread = await human_thread(relay)
    await mention(relay, f"link agen {AGEN_SESSION}", thread)
    await relay.wait_bound(thread)

    await mention(relay, "mute", thread)
    await relay.slack.wait_for(lambda: len(public_replies(relay, thread)) == 2)
    assert f"<@{ALICE}> paused relaying" in public_replies(relay, thread)[1]
    binding = await relay.store.get_binding(relay.thread(thread))
    assert binding is not None
    assert binding.muted

    muted = await relay.reply(thread, "while muted")
    await mention(relay, "status", thread)
    assert "Relaying is paused" in await ephemeral_answer(relay, thread)
    await mention(relay, "mute", thread)
    assert "already paused" in await ephemeral_answer(relay, thread, before=1)

    await mention(relay, "unmute", thread)
    await relay.slack.wait_for(lambda: len(public_replies(relay, thread)) == 3)
    assert f"<@{ALICE}> resumed relaying" in public_replies(relay, thread)[2]
    await relay_and_wait(relay, thread, "after unmute", reaction="white_check_mark")
    assert relay.providers["agen"].messages() == [f"{ALICE} (via Slack): after unmute"]
    assert await relay.store.get_message(relay.thread(thread), muted["ts"]) is None


async def test_mention_commands_from_outsiders_are_refused(relay: Harness) -> None:
    """A Slack Connect member of another organisation cannot link, mute, unlink or read the status."""
    outsider, their_team = "U0OUTSIDER", "T0OTHER"
    unlinked = await human_thread(relay)
    linked = await relay.link("devin")
    commands = [
        (unlinked, f"link agen {AGEN_SESSION}"),
        (linked, "mute"),
        (linked, "unlink"),
        (linked, "status"),
    ]
    for count, (thread, command) in enumerate(commands):
        await mention(relay, command, thread, user=outsider, user_team=their_team)
        text = await ephemeral_answer(relay, thread, user=outsider, before=count)
        assert "outside this organisation" in text
        assert DEVIN_SESSION not in text
    assert await relay.store.get_binding(relay.thread(unlinked)) is None
    binding = await relay.store.get_binding(relay.thread(linked))
    assert binding is not None
    assert not binding.muted
    assert public_replies(relay, linked) == []


# -- Slack retries ------------------------------------------------------------------------------


async def test_retried_mention_command_runs_once(relay: Harness) -> None:
    thread = await human_thread(relay)
    ts = new_ts()
    event = mention_event(f"link agen {AGEN_SESSION}", thread_ts=thread, ts=ts)
    await relay.sender.event(event, event_id="EvLINK0001")
    await relay.sender.event(event, event_id="EvLINK0001", retry_num=1)
    await relay.sender.event(
        message_event(f"<@{BOT_USER}> link agen {AGEN_SESSION}", thread_ts=thread, ts=ts)
    )
    await relay.wait_bound(thread)
    status = mention_event("status", thread_ts=thread)
    await relay.sender.event(status, event_id="EvSTATUS01")
    await relay.sender.event(status, event_id="EvSTATUS01", retry_num=1)
    await relay.sender.event(status, event_id="EvSTATUS01", retry_num=2)
    await ephemeral_answer(relay, thread)  # exactly one status answer
    assert len(public_replies(relay, thread)) == 1  # exactly one "linked" reply
    await relay_and_wait(relay, thread, "only this", reaction="white_check_mark")
    assert relay.providers["agen"].messages() == [f"{ALICE} (via Slack): only this"]
