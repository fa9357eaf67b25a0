"""What a thread shows of its agent session: state lines, questions, notices. Pure: no I/O.

Agent messages themselves are converted by :mod:`bot.mirror.markdown`; this module writes the
sentences around them. Provider words (a title, a URL) are escaped or checked before they are shown.
"""

from __future__ import annotations

import re

from bot.providers.base import SessionState
from bot.render.text import escape

#: How agent messages are labelled: posted with the provider's name as the sender (``username``,
#: needs the ``chat:write.customize`` scope) and this icon.
AGENT_ICON = ":robot_face:"

STATES: dict[SessionState, tuple[str, str]] = {
    SessionState.WORKING: (":large_green_circle:", "working"),
    SessionState.WAITING: (":raising_hand:", "waiting for an answer"),
    SessionState.FINISHED: (":checkered_flag:", "finished"),
    SessionState.SUSPENDED: (":double_vertical_bar:", "suspended"),
    SessionState.EXPIRED: (":zzz:", "expired"),
    SessionState.UNKNOWN: (":grey_question:", "in a state I don't know"),
}
EXCERPT_CHARS = 200
TITLE_CHARS = 80
_SAFE_URL = re.compile(r"https?://[^\s<>|]+", re.IGNORECASE)
_PULL = re.compile(r"/(?:pull|pulls|merge_requests)/(\d{1,9})(?:[/?#]|$)")


def sender(label: str) -> str:
    """The name agent messages are posted under."""
    return label


def pr_link(url: str | None) -> str | None:
    """``<url|PR #12>`` for a pull request URL Slack can link, else None."""
    if not url or len(url) > 2_000 or not _SAFE_URL.fullmatch(url):
        return None
    number = _PULL.search(url)
    return f"<{url}|PR #{number.group(1)}>" if number else f"<{url}|PR>"


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def status_line(
    label: str,
    state: SessionState,
    *,
    pr_url: str | None = None,
    cost_usd: float | None = None,
    title: str | None = None,
) -> str:
    """``:large_green_circle: Devin is working · PR #12 · $0.42 so far``."""
    emoji, word = STATES[state]
    parts = [f"{emoji} {label} is {word}"]
    if title and title.strip():
        parts.append(f"“{escape(_short(title, TITLE_CHARS))}”")
    link = pr_link(pr_url)
    if link:
        parts.append(link)
    if cost_usd is not None:
        parts.append(f"${cost_usd:,.2f} so far")
    return " · ".join(parts)


def anchor_with_status(anchor: str, line: str) -> str:
    """The anchor of ``/agent link`` with the session's state under it."""
    return f"{anchor}\n{line}"


def status_message(line: str) -> str:
    """The message the bot owns in a thread linked by mention, updated in place."""
    return f"Session state: {line}"


def announcement(label: str, state: SessionState, pr_url: str | None = None) -> str:
    """Said once in the thread when the session finishes or is suspended."""
    emoji, word = STATES[state]
    link = pr_link(pr_url)
    return f"{emoji} {label} {word}" + (f" · {link}" if link else "")


def question_suffix(label: str, user: str | None) -> str:
    """Under a question from the agent: who is asked, and how to answer."""
    who = f"<@{user}> " if user else ""
    return f":raising_hand: {who}{label} is asking. Reply in this thread to answer."


def waiting_notice(label: str, user: str | None) -> str:
    """The session waits for an answer and no new message says so."""
    who = f"<@{user}> " if user else ""
    return f":raising_hand: {who}{label} is waiting for an answer. Reply in this thread to answer."


def web_message(text: str, author: str | None) -> str:
    """A message someone sent to the session from the provider's web app (``MIRROR_WEB_MESSAGES``)."""
    who = f" ({escape(_short(author, 60))})" if author and author.strip() else ""
    return f"_via the web{who}:_ {text}"


def excerpt(text: str) -> str:
    """A short, escaped, one-line excerpt of an agent message, for ``status``."""
    return escape(_short(text, EXCERPT_CHARS))


def mirror_changed(mode: str, by: str) -> str:
    if mode == "off":
        return f":no_bell: <@{by}> turned mirroring off: the agent's messages are no longer shown here."
    if mode == "final":
        return (
            f":bell: <@{by}> set mirroring to `final`: only the session's state, its questions and the "
            "agent's last message when it stops are shown here."
        )
    return f":bell: <@{by}> turned mirroring on: the agent's messages and state are shown here."


def mirror_unchanged(mode: str) -> str:
    return f"Mirroring is already `{mode}` in this thread."


def mirror_unavailable(label: str) -> str:
    return f"{label} sessions cannot be read, so nothing of the session can be shown here."
