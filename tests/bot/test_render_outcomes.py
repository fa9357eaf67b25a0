"""What a thread shows for each final outcome of a relayed message (:func:`bot.render.outcomes.feedback`):
the reaction, and the reply the author reads, word for word.

The end-to-end outcome tests (``tests/e2e/test_outcomes.py``) check the common answers through a
running bot; here every outcome type has its exact sentence, including those a running bot reaches
only through rare paths (a provider rejecting without saying why, more errors than are shown, a
provider that is not enabled any more).
"""

from __future__ import annotations

import pytest

from bot.outcomes import (
    Delivered,
    GaveUp,
    NotFound,
    NotRunning,
    Outcome,
    RateLimited,
    Refused,
    Rejected,
    Unauthorized,
    Unavailable,
    ValidationIssue,
)
from bot.render import outcomes as words
from bot.render.outcomes import (
    MAX_ERRORS_SHOWN,
    REACTION_DELIVERED,
    REACTION_FAILED,
    REACTION_NOT_RUNNING,
    Feedback,
    feedback,
)

AUTHOR = "U0ALICE"
SESSION = "devin-abc123"


def shown(outcome: Outcome | GaveUp, label: str = "Devin", session_id: str = SESSION) -> Feedback:
    return feedback(outcome, label=label, session_id=session_id, author=AUTHOR)


def test_a_delivery_is_a_check_mark_and_no_words() -> None:
    assert shown(Delivered(provider_message_id="evt_1")) == Feedback(REACTION_DELIVERED, None)


def test_a_session_not_running_quotes_the_provider_line_by_line() -> None:
    result = shown(NotRunning(detail="Session is suspended.\nWake it <here> & retry"))
    assert result == Feedback(
        REACTION_NOT_RUNNING,
        f"<@{AUTHOR}> your message was not delivered: the Devin session is not running. Devin said:\n"
        ">Session is suspended.\n>Wake it &lt;here&gt; &amp; retry",
    )


def test_a_rejection_without_errors_says_the_provider_gave_no_reason() -> None:
    result = shown(Rejected(errors=(), status=400), label="Feather")
    assert result == Feedback(
        REACTION_FAILED, f"<@{AUTHOR}> Feather rejected your message (HTTP 400) without saying why."
    )


def test_a_rejection_lists_its_errors_escaped() -> None:
    issue = ValidationIssue(loc=("body", "message"), msg="must not contain <script> & co")
    result = shown(Rejected(errors=(issue,)))
    assert result == Feedback(
        REACTION_FAILED,
        f"<@{AUTHOR}> Devin rejected your message (HTTP 422):\n"
        "• `body.message`: must not contain &lt;script&gt; &amp; co",
    )


def test_a_rejection_with_many_errors_shows_ten_and_counts_the_rest() -> None:
    errors = tuple(ValidationIssue(loc=("body", "field", n), msg=f"problem {n}") for n in range(12))
    reply = shown(Rejected(errors=errors)).reply
    assert reply is not None
    lines = reply.splitlines()
    assert lines[0] == f"<@{AUTHOR}> Devin rejected your message (HTTP 422):"
    assert lines[1 : 1 + MAX_ERRORS_SHOWN] == [f"• `body.field.{n}`: problem {n}" for n in range(10)]
    assert lines[-1] == "• …and 2 more"
    assert len(lines) == 1 + MAX_ERRORS_SHOWN + 1


def test_exactly_ten_errors_are_all_shown_with_no_remainder_line() -> None:
    errors = tuple(ValidationIssue(loc=("body", n), msg="bad") for n in range(MAX_ERRORS_SHOWN))
    reply = shown(Rejected(errors=errors)).reply
    assert reply is not None
    assert "more" not in reply
    assert len(reply.splitlines()) == 1 + MAX_ERRORS_SHOWN


def test_a_refused_key_names_the_provider_and_the_status() -> None:
    assert shown(Unauthorized(status=403), label="Agen") == Feedback(
        REACTION_FAILED,
        f"<@{AUTHOR}> your message was not delivered: Agen refused the API key configured for it "
        "(HTTP 403). Ask whoever runs agent-relay to check the Agen API key.",
    )


def test_an_unknown_session_names_it_escaped() -> None:
    assert shown(NotFound(), session_id="devin-<x>") == Feedback(
        REACTION_FAILED,
        f"<@{AUTHOR}> your message was not delivered: Devin has no session `devin-&lt;x&gt;`. "
        "Check the session, or unlink this thread and link it again.",
    )


@pytest.mark.parametrize(
    ("last", "reason"),
    [
        (RateLimited(retry_after=5.0), "Devin kept answering that it is rate limited (HTTP 429)"),
        (Unavailable(reason="Devin answered HTTP 503"), "Devin is unavailable: Devin answered HTTP 503"),
    ],
    ids=["rate-limited", "unavailable"],
)
def test_giving_up_counts_the_attempts_and_asks_to_send_again(
    last: RateLimited | Unavailable, reason: str
) -> None:
    assert shown(GaveUp(last=last, attempts=4)) == Feedback(
        REACTION_FAILED,
        f"<@{AUTHOR}> your message was not delivered after 4 attempts: {reason}. "
        "Please send it again once Devin is back.",
    )
    # One attempt (a Retry-After past the budget): no count.
    once = shown(GaveUp(last=last, attempts=1)).reply
    assert (
        once
        == f"<@{AUTHOR}> your message was not delivered: {reason}. Please send it again once Devin is back."
    )


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (RateLimited(), "Devin kept answering that it is rate limited (HTTP 429)"),
        (
            Unavailable(reason="could not connect to Devin"),
            "Devin is unavailable: could not connect to Devin",
        ),
    ],
    ids=["rate-limited", "unavailable"],
)
def test_a_transient_outcome_shown_as_final_says_why_without_a_count(outcome: Outcome, reason: str) -> None:
    assert shown(outcome) == Feedback(
        REACTION_FAILED, f"<@{AUTHOR}> your message was not delivered: {reason}."
    )


@pytest.mark.parametrize(
    ("reason", "tail"),
    [
        (words.provider_disabled("feather"), "the feather provider is not enabled any more."),
        (words.NOTHING_TO_SEND, "the message has no text, so there was nothing to send."),
        (
            words.too_long(31_234, "Devin", 30_000),
            "the message is 31,234 characters long and Devin messages are limited to 30,000 here. "
            "Nothing was sent; split it into shorter messages.",
        ),
    ],
    ids=["provider-disabled", "nothing-to-send", "too-long"],
)
def test_a_message_agent_relay_refused_to_send_says_why(reason: str, tail: str) -> None:
    assert shown(Refused(reason=reason)) == Feedback(
        REACTION_FAILED, f"<@{AUTHOR}> your message was not sent to Devin: {tail}"
    )


def test_the_timeout_reason_names_the_provider() -> None:
    assert words.no_answer_in_time("Agen") == "Agen did not answer in time"
