"""How outcomes show in a Slack thread: quiet on success, clear on failure.

Pure functions: an outcome in, a :class:`Feedback` (a reaction and, for anything but a delivery, a
thread reply) out. Replies speak plain words; they never carry an exception, a stack trace or a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from bot.outcomes import (
    Delivered,
    GaveUp,
    NotFound,
    NotRunning,
    Outcome,
    RateLimited,
    Refused,
    Rejected,
    Transient,
    Unauthorized,
    Unavailable,
)
from bot.render.text import escape, quote

REACTION_DELIVERED = "white_check_mark"
REACTION_PENDING = "hourglass_flowing_sand"
REACTION_NOT_RUNNING = "double_vertical_bar"
REACTION_FAILED = "x"

MAX_ERRORS_SHOWN = 10

# Reasons agent-relay itself gives (kept with the message's row and shown in the thread).
NOTHING_TO_SEND = "the message has no text, so there was nothing to send."


def provider_disabled(provider: str) -> str:
    return f"the {provider} provider is not enabled any more."


def too_long(length: int, label: str, limit: int) -> str:
    return (
        f"the message is {length:,} characters long and {label} messages are limited to {limit:,} here. "
        "Nothing was sent; split it into shorter messages."
    )


def no_answer_in_time(label: str) -> str:
    return f"{label} did not answer in time"


@dataclass(frozen=True, slots=True)
class Feedback:
    reaction: str
    reply: str | None = None  # None: the reaction says it all


def _reason(last: Transient, label: str) -> str:
    if isinstance(last, RateLimited):
        return f"{label} kept answering that it is rate limited (HTTP 429)"
    if isinstance(last, Unavailable):
        return f"{label} is unavailable: {last.reason}"
    assert_never(last)


def feedback(outcome: Outcome | GaveUp, *, label: str, session_id: str, author: str) -> Feedback:
    """What the thread shows for the final outcome of a message written by ``author`` (a user id)."""
    who = f"<@{author}>"
    if isinstance(outcome, Delivered):
        return Feedback(REACTION_DELIVERED)
    if isinstance(outcome, NotRunning):
        return Feedback(
            REACTION_NOT_RUNNING,
            f"{who} your message was not delivered: the {label} session is not running. {label} said:\n"
            f"{quote(outcome.detail)}",
        )
    if isinstance(outcome, Rejected):
        if not outcome.errors:
            return Feedback(
                REACTION_FAILED,
                f"{who} {label} rejected your message (HTTP {outcome.status}) without saying why.",
            )
        lines = [f"• `{escape(err.where)}`: {escape(err.msg)}" for err in outcome.errors[:MAX_ERRORS_SHOWN]]
        more = len(outcome.errors) - MAX_ERRORS_SHOWN
        if more > 0:
            lines.append(f"• …and {more} more")
        return Feedback(
            REACTION_FAILED,
            f"{who} {label} rejected your message (HTTP {outcome.status}):\n" + "\n".join(lines),
        )
    if isinstance(outcome, Unauthorized):
        return Feedback(
            REACTION_FAILED,
            f"{who} your message was not delivered: {label} refused the API key configured for it "
            f"(HTTP {outcome.status}). Ask whoever runs agent-relay to check the {label} API key.",
        )
    if isinstance(outcome, NotFound):
        return Feedback(
            REACTION_FAILED,
            f"{who} your message was not delivered: {label} has no session `{escape(session_id)}`. "
            "Check the session, or unlink this thread and link it again.",
        )
    if isinstance(outcome, GaveUp):
        tries = f" after {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        return Feedback(
            REACTION_FAILED,
            f"{who} your message was not delivered{tries}: {_reason(outcome.last, label)}. "
            f"Please send it again once {label} is back.",
        )
    if isinstance(outcome, RateLimited | Unavailable):
        return Feedback(REACTION_FAILED, f"{who} your message was not delivered: {_reason(outcome, label)}.")
    if isinstance(outcome, Refused):
        return Feedback(REACTION_FAILED, f"{who} your message was not sent to {label}: {outcome.reason}")
    assert_never(outcome)
