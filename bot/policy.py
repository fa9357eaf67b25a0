"""Who may do what: linking, unlinking, which channels and providers, and outsiders.

Rules come from settings (README, "Access policy"). A rule list holds tokens:

* ``everyone``: anybody in the workspace;
* ``admins``: workspace admins and owners (``users.info``);
* ``linker``: the person who linked the thread (unlink only);
* ``U…``/``W…``: a user id; ``S…``: every member of that user group (``usergroups.users.list``).

A refusal is a :class:`Decision` whose ``reason`` is a specific sentence shown to that person only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.settings import Settings
from bot.slack import SlackGateway
from storage import Binding


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOWED = Decision(True)


def _describe(rules: Sequence[str], *, subject: str) -> str:
    parts = []
    if "linker" in rules:
        parts.append("the person who linked this thread")
    if "admins" in rules:
        parts.append("a workspace admin")
    if any(r[:1] in ("U", "W", "S") for r in rules):
        parts.append("people on this workspace's allow list")
    if not parts:
        return f"nobody is allowed to {subject} here"
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    return f"only {joined} can {subject}"


class Policy:
    def __init__(self, settings: Settings, slack: SlackGateway) -> None:
        self._settings = settings
        self._slack = slack

    async def _matches(self, user: str, rules: Iterable[str], *, linker: str | None = None) -> bool:
        rules = list(rules)
        if "everyone" in rules or user in rules:
            return True
        if linker is not None and "linker" in rules and user == linker:
            return True
        if "admins" in rules:
            info = await self._slack.user(user)
            if info is not None and info.is_admin:
                return True
        for group in (r for r in rules if r.startswith("S")):
            if user in await self._slack.usergroup_members(group):
                return True
        return False

    def channel_allowed(self, channel: str) -> Decision:
        allowed = self._settings.allowed_channels
        if allowed and channel not in allowed:
            return Decision(False, "agent-relay is not enabled in this channel.")
        return ALLOWED

    def provider_allowed(self, provider: str, label: str, channel: str) -> Decision:
        channels = self._settings.provider_channels(provider)
        if channels and channel not in channels:
            return Decision(False, f"{label} sessions cannot be linked in this channel.")
        return ALLOWED

    async def may_link(self, user: str, channel: str, provider: str, label: str) -> Decision:
        for decision in (self.channel_allowed(channel), self.provider_allowed(provider, label, channel)):
            if not decision.allowed:
                return decision
        rules = self._settings.allow_link
        if await self._matches(user, rules):
            return ALLOWED
        return Decision(False, _sentence(_describe(rules, subject="link a thread to an agent session")))

    async def may_unlink(self, user: str, binding: Binding) -> Decision:
        rules = self._settings.allow_unlink
        if await self._matches(user, rules, linker=binding.linked_by):
            return ALLOWED
        return Decision(False, _sentence(_describe(rules, subject="unlink it")))

    def is_outsider(self, installing_team: str, user_team: str | None) -> bool:
        """True for a Slack Connect author from another organisation that is not allowed."""
        if not user_team or user_team == installing_team:
            return False
        return user_team not in self._settings.allowed_external_teams


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."
