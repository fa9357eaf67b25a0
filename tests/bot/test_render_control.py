"""What people read in answer to a command (:mod:`bot.render.control`), for results a running bot
produces rarely or, today, not at all: store failures, Slack refusing an anchor for another reason,
a message still waiting, a channel with more threads than a listing shows.

The end-to-end command tests (``tests/e2e/test_commands.py``) cover the common answers through Slack;
these call the renderer with the use cases' typed results, so every result type has its sentence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bot.commands import SessionRef
from bot.providers import DevinProvider, FeatherProvider
from bot.providers.base import Provider
from bot.render.control import NOT_LINKED, NOT_STORED, ControlText, Reply
from bot.usecases import (
    AnchorNotPosted,
    Linked,
    ListEntry,
    Listing,
    MuteChanged,
    NotLinked,
    NotStored,
    StatusReport,
    Unlinked,
)
from storage import Binding, MessageState, OutboxMessage, ThreadKey

ALICE = "U0ALICE"
BOB = "U0BOB"
KEY = ThreadKey("T0TEAM", "C0CHANNEL", "1800000000.000100")
LINKED_AT = 1_800_000_000.0


@pytest.fixture
async def providers() -> AsyncIterator[dict[str, Provider]]:
    """Devin and Feather enabled (Agen is not), as the bot builds them; no request is ever made."""
    enabled: dict[str, Provider] = {
        "devin": DevinProvider(
            api_key=SecretStr("unit-test-devin-key"),
            base_url="http://127.0.0.1:9",
            web_url="https://app.devin.ai",
        ),
        "feather": FeatherProvider(api_key=SecretStr("unit-test-feather-key"), base_url="http://127.0.0.1:9"),
    }
    yield enabled
    for provider in enabled.values():
        await provider.aclose()


@pytest.fixture
def text(providers: dict[str, Provider]) -> ControlText:
    return ControlText(providers, aside_prefix="!")


def binding(provider: str = "devin", session: str = "devin-abc123", **extra: object) -> Binding:
    values: dict[str, object] = {
        "key": KEY,
        "provider": provider,
        "session_id": session,
        "linked_by": ALICE,
        "linked_at": LINKED_AT,
    }
    values.update(extra)
    return Binding(**values)  # type: ignore[arg-type]


def last_message(
    state: MessageState, outcome: str | None, detail: str | None, *, attempts: int = 1
) -> OutboxMessage:
    return OutboxMessage(
        id=7,
        thread=KEY,
        ts="1800000000.000200",
        revision="",
        order_ts="1800000000.000200",
        user=BOB,
        text="please rerun",
        files="[]",
        provider="devin",
        session_id="devin-abc123",
        state=state,
        attempts=attempts,
        outcome=outcome,
        detail=detail,
        received_at=LINKED_AT + 60,
        updated_at=LINKED_AT + 61,
    )


# -- link --------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found"])
def test_an_anchor_slack_will_not_post_here_says_how_to_invite_the_bot(text: ControlText, error: str) -> None:
    reply = text.link(AnchorNotPosted(error), user=ALICE)
    assert reply == Reply(
        "I can't post in this channel. Invite me with `/invite @agent-relay` and try again."
    )


@pytest.mark.parametrize("error", ["is_archived", "msg_too_long", "restricted_action"])
def test_an_anchor_refused_for_another_reason_names_slacks_error(text: ControlText, error: str) -> None:
    reply = text.link(AnchorNotPosted(error), user=ALICE)
    assert reply is not None
    assert not reply.public
    assert reply.text == f"Slack refused the anchor message ({error}); nothing was linked. Try again."
    assert "/invite" not in reply.text


def test_a_link_the_store_did_not_take_says_nothing_was_changed(text: ControlText) -> None:
    reply = text.link(NotStored(), user=ALICE)
    assert reply == Reply(NOT_STORED)
    assert "nothing was changed" in NOT_STORED


def test_a_slash_link_is_announced_by_its_anchor_alone(text: ControlText) -> None:
    """The anchor already says who linked what: no second message."""
    assert text.link(Linked(binding(anchor_ts=KEY.thread_ts)), user=ALICE) is None


def test_a_mention_link_is_announced_in_the_thread(text: ControlText) -> None:
    reply = text.link(Linked(binding()), user=ALICE)
    assert reply is not None
    assert reply.public
    assert reply.text.startswith(f":link: <@{ALICE}> linked this thread to Devin session ")
    assert "<https://app.devin.ai/sessions/abc123|`devin-abc123`>" in reply.text
    assert "start one with `!` to keep it out" in reply.text


def test_the_anchor_names_the_session_and_the_aside_prefix(text: ControlText) -> None:
    anchor = text.anchor(ALICE, SessionRef("feather", "123e4567-e89b-12d3-a456-426614174000"))
    # Feather has no session pages: the id is shown without a link.
    assert (
        f"<@{ALICE}> linked this thread to Feather session `123e4567-e89b-12d3-a456-426614174000`." in anchor
    )
    assert "Start a reply with `!` to keep it out." in anchor


# -- unlink, mute ------------------------------------------------------------------------------


def test_unlink_and_mute_the_store_did_not_take_say_nothing_was_changed(text: ControlText) -> None:
    assert text.unlink(NotStored()) == Reply(NOT_STORED)
    assert text.mute(NotStored()) == Reply(NOT_STORED)


def test_unlink_and_mute_in_an_unlinked_thread_say_how_to_link(text: ControlText) -> None:
    assert text.unlink(NotLinked()) == Reply(NOT_LINKED)
    assert text.mute(NotLinked()) == Reply(NOT_LINKED)
    assert "`@agent-relay link …`" in NOT_LINKED


def test_unlink_and_mute_changes_are_told_to_the_thread(text: ControlText) -> None:
    unlinked = text.unlink(Unlinked(binding(), by=BOB))
    assert unlinked.public
    assert unlinked.text.startswith(f":broken_chain: <@{BOB}> unlinked this thread from Devin session")
    muted, unmuted = text.mute(MuteChanged(True, by=BOB)), text.mute(MuteChanged(False, by=BOB))
    assert (muted.public, unmuted.public) == (True, True)
    assert f"<@{BOB}> paused relaying" in muted.text
    assert "`unmute`" in muted.text
    assert unmuted.text == f":arrow_forward: <@{BOB}> resumed relaying to the agent."


# -- status ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [MessageState.PENDING, MessageState.SENDING])
def test_status_of_a_message_waiting_for_a_retry_says_so_and_why(
    text: ControlText, state: MessageState
) -> None:
    last = last_message(state, "unavailable", "Devin answered HTTP 503", attempts=2)
    reply = text.status(StatusReport(binding(), last))
    assert not reply.public
    assert reply.text.splitlines()[-1] == (
        f"Last message: from <@{BOB}> on <!date^{int(LINKED_AT + 60)}^{{date_short_pretty}} at {{time}}"
        "|2027-01-15 08:01 UTC>: waiting to be sent (Devin answered HTTP 503)."
    )


def test_status_of_a_message_not_tried_yet_says_it_is_waiting(text: ControlText) -> None:
    reply = text.status(StatusReport(binding(), last_message(MessageState.PENDING, None, None, attempts=0)))
    assert reply.text.endswith(": waiting to be sent.")


def test_status_of_a_failed_message_shows_the_providers_words_escaped(text: ControlText) -> None:
    last = last_message(MessageState.FAILED, "not_running", "Session <b> is suspended & asleep")
    reply = text.status(StatusReport(binding(), last))
    assert reply.text.endswith(": not running (Session &lt;b&gt; is suspended &amp; asleep).")


def test_status_of_a_delivered_message_keeps_the_providers_id_to_itself(text: ControlText) -> None:
    last = last_message(MessageState.DELIVERED, "delivered", "evt_0123456789")
    reply = text.status(StatusReport(binding(), last))
    assert reply.text.endswith(": delivered.")
    assert "evt_0123456789" not in reply.text


def test_status_of_a_muted_thread_whose_provider_is_no_longer_enabled(text: ControlText) -> None:
    """Agen is not enabled here: the thread still shows what it is linked to, by the provider's name."""
    reply = text.status(StatusReport(binding("agen", "sess_01HZX", muted=True), None))
    lines = reply.text.splitlines()
    assert lines[0] == "This thread is linked to agen session `sess_01HZX`."
    assert lines[1].startswith(f"Linked by <@{ALICE}> on <!date^{int(LINKED_AT)}^")
    assert lines[2] == "Relaying is paused (`unmute` to resume)."
    assert lines[3] == "No message has been relayed yet."


# -- list --------------------------------------------------------------------------------------


def test_a_listing_cut_at_fifty_says_how_many_more_there_are(text: ControlText) -> None:
    entries = tuple(
        ListEntry(
            binding(key=ThreadKey("T0TEAM", "C0CHANNEL", f"1800000000.{n:06d}"), session=f"devin-{n:04d}"),
            permalink=f"https://fake.slack.test/archives/C0CHANNEL/p1800000000{n:06d}",
        )
        for n in range(50)
    )
    reply = text.listing(Listing(entries, total=53))
    lines = reply.text.splitlines()
    assert lines[0] == "Threads in this channel linked to an agent session (53):"
    assert len(lines) == 1 + 50 + 1
    assert lines[1].startswith("• <https://fake.slack.test/archives/C0CHANNEL/p1800000000000000|thread>: ")
    assert lines[-1] == "…and 3 more."


def test_a_listed_thread_without_a_permalink_shows_its_ts(text: ControlText) -> None:
    entry = ListEntry(binding(muted=True), permalink=None)
    reply = text.listing(Listing((entry,), total=1))
    assert reply.text.splitlines()[1] == (
        f"• thread {KEY.thread_ts}: Devin session <https://app.devin.ai/sessions/abc123|`devin-abc123`>, "
        f"linked by <@{ALICE}> (muted)"
    )
    assert "more." not in reply.text
