"""Small text helpers every renderer shares: Slack escaping, quotes, dates."""

from __future__ import annotations

import time


def escape(text: str) -> str:
    """Escape ``&``, ``<``, ``>`` so that Slack shows the text as written, mentions included."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quote(text: str) -> str:
    """Slack block quote of provider text, escaped so that it shows word for word."""
    escaped = escape(text)
    return "\n".join(f">{line}" for line in escaped.splitlines() or [""])


def slack_date(ts: float) -> str:
    """A date Slack shows in each reader's own time zone."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return f"<!date^{int(ts)}^{{date_short_pretty}} at {{time}}|{fallback}>"
