"""Who may do what: linking, unlinking, which channels and providers, and outsiders.

Rules come from settings (README, "Access policy"). A rule list holds tokens:

* ``everyone``: anybody in the workspace;
* ``admins``: workspace admins and owners (``users.info``);
* ``linker``: the person who linked the thread (unlink only);
* ``U…``/``W…``: a user id; ``S…``: every member of that user group (``usergroups.users.list``).

A refusal is a :class:`Decision` whose ``reason`` is a specific sentence shown to that person only.

Outsiders (Slack Connect) are decided against the installing identity (:class:`bot.events.Installation`:
team id and enterprise id). A member of the installing organisation is never an outsider: their
``user_team`` is the installing team, the organisation's enterprise id (``E…``), or another workspace
of the same Enterprise Grid organisation, which ``users.info`` tells apart (``enterprise_user.enterprise_id``;
cached by the gateway). Anyone else is an outsider unless their team (or organisation) is in
``ALLOWED_EXTERNAL_TEAMS``. When Slack cannot say who the author of a message from another team
is, they stay an outsider; for a slash command (no ``user_team``), the team its signed payload names
decides then.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.events import Installation
from bot.render import policy as text
from bot.settings import Settings
from bot.slack import SlackGateway, SlackUser
from storage import Binding


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOWED = Decision(True)


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
            return Decision(False, text.CHANNEL_NOT_ENABLED)
        return ALLOWED

    def provider_allowed(self, provider: str, label: str, channel: str) -> Decision:
        channels = self._settings.provider_channels(provider)
        if channels and channel not in channels:
            return Decision(False, text.provider_not_here(label))
        return ALLOWED

    async def may_link(self, user: str, channel: str, provider: str, label: str) -> Decision:
        for decision in (self.channel_allowed(channel), self.provider_allowed(provider, label, channel)):
            if not decision.allowed:
                return decision
        rules = self._settings.allow_link
        if await self._matches(user, rules):
            return ALLOWED
        return Decision(False, text.only_who(rules, subject="link a thread to an agent session"))

    async def may_unlink(self, user: str, binding: Binding) -> Decision:
        rules = self._settings.allow_unlink
        if await self._matches(user, rules, linker=binding.linked_by):
            return ALLOWED
        return Decision(False, text.only_who(rules, subject="unlink it"))

    def _external_allowed(self, *teams: str | None) -> bool:
        allowed = self._settings.allowed_external_teams
        return any(team and team in allowed for team in teams)

    def _let_in(self, installation: Installation, user: SlackUser) -> bool:
        """A member of the installing organisation, or of a team (or organisation) allowed in."""
        if user.team_id and user.team_id in installation.own_teams:
            return True
        if installation.enterprise_id and user.enterprise_id == installation.enterprise_id:
            return True
        return self._external_allowed(user.team_id, user.enterprise_id)

    async def is_outsider(self, installation: Installation, user: str | None, user_team: str | None) -> bool:
        """True for the author of a message (or mention) from outside the installing organisation
        who is not allowed in.

        ``user_team`` is the event's ``user_team``/``source_team``; Slack sets it in shared channels,
        so a message without one is from a member. Another workspace id is looked up (``users.info``).
        """
        if not user_team or user_team in installation.own_teams or self._external_allowed(user_team):
            return False
        info = await self._slack.user(user) if user else None
        return info is None or not self._let_in(installation, info)

    async def is_outsider_user(
        self, installation: Installation, user: str, *, payload_team: str | None = None
    ) -> bool:
        """True for a person from outside the installing organisation who is not allowed in, when
        all we have is who they are (a slash command carries no ``user_team``).

        ``users.info`` says which team (and organisation) the person belongs to. When Slack cannot
        answer, the team the command's signed payload names decides (``payload_team``).
        """
        info = await self._slack.user(user)
        if info is not None:
            return not self._let_in(installation, info)
        if payload_team and payload_team in installation.own_teams:
            return False
        return not self._external_allowed(payload_team)
