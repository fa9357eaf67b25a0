"""What a person is told when the access policy says no (``bot.policy`` decides; this says it)."""

from __future__ import annotations

from collections.abc import Sequence

CHANNEL_NOT_ENABLED = "agent-relay is not enabled in this channel."


def provider_not_here(label: str) -> str:
    return f"{label} sessions cannot be linked in this channel."


def only_who(rules: Sequence[str], *, subject: str) -> str:
    """``Only the person who linked this thread or a workspace admin can unlink it.``"""
    parts = []
    if "linker" in rules:
        parts.append("the person who linked this thread")
    if "admins" in rules:
        parts.append("a workspace admin")
    if any(r[:1] in ("U", "W", "S") for r in rules):
        parts.append("people on this workspace's allow list")
    if not parts:
        return _sentence(f"nobody is allowed to {subject} here")
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    return _sentence(f"only {joined} can {subject}")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."
