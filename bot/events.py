"""Slack message events translated into one typed shape the core decides on.

Handlers call :func:`message_from_event`; nothing below ``bot/`` looks at raw payloads elsewhere.

What a message says is what a reader sees (:mod:`bot.blocks`): ``SlackMessage.text`` is the
writer's own words (their blocks when Slack shows blocks, else ``text``) and
``SlackMessage.forwarded`` the messages they shared, both as Slack mrkdwn; :attr:`SlackMessage.relay_text`
joins them and is what the outbox stores (names are looked up at send time, as for typed text).
Commands, asides and the "did an edit change anything" check read only the writer's own words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bot.blocks import forwarded_text, shown_text

#: A Slack message ts: seconds, a dot, microseconds ("1700000000.000100"). Anything else (a
#: 5,000-digit number, a word) is not a message identity and the event is ignored.
SLACK_TS = re.compile(r"\d{1,12}(?:\.\d{1,8})?")

#: Subtypes that carry something a person wrote and that may be relayed (``me_message``:
#: ``/me waves``, relayed with its text as written, ``waves``; the author is named anyway).
RELAYABLE_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})


@dataclass(frozen=True, slots=True)
class Installation:
    """The installation that received an event or a command: whose bot this is.

    One bot token is one installation, so the bot's own ``auth.test`` answer (:class:`bot.deps.BotIdentity`)
    says it first; what an event's ``authorizations`` (Bolt's context: ``team_id``, ``enterprise_id``,
    ``is_enterprise_install``) or a command's payload say fills in what ``auth.test`` left out.
    """

    team_id: str | None = None
    enterprise_id: str | None = None
    is_enterprise_install: bool = False

    @property
    def key_team(self) -> str:
        """The team of every thread key (and so of every stored binding and message).

        A workspace install keys by its team id, as before. An org-wide install (Enterprise Grid,
        ``is_enterprise_install``) keys by the enterprise id: its authorizations carry no team id,
        and the team an event or a slash command names is the author's workspace, which differs
        between people in a channel shared by several workspaces of the organisation, while
        channel ids are unique across the organisation. So one thread has one key, whoever writes.
        """
        if self.is_enterprise_install and self.enterprise_id:
            return self.enterprise_id
        return self.team_id or self.enterprise_id or ""

    @property
    def own_teams(self) -> frozenset[str]:
        """Ids a member of the installing organisation may carry as ``user_team``/``source_team``."""
        return frozenset(t for t in (self.team_id, self.enterprise_id) if t)

    def filled_from(
        self,
        team_id: str | None = None,
        enterprise_id: str | None = None,
        is_enterprise_install: bool | None = None,
    ) -> Installation:
        """This installation, with what it does not say taken from an event or a command."""
        return Installation(
            team_id=self.team_id or team_id or None,
            enterprise_id=self.enterprise_id or enterprise_id or None,
            is_enterprise_install=self.is_enterprise_install or bool(is_enterprise_install),
        )


#: An installation nobody described (tests building messages by hand).
NO_INSTALLATION = Installation()


@dataclass(frozen=True, slots=True)
class SlackFile:
    name: str
    permalink: str | None


@dataclass(frozen=True, slots=True)
class SlackMessage:
    team: str
    channel: str
    ts: str
    thread_ts: str | None
    user: str | None
    text: str  # the writer's own words as a reader sees them (mrkdwn): blocks or ``text``
    subtype: str | None = None
    bot_id: str | None = None
    from_bot: bool = False  # bot_id, bot_profile or subtype bot_message
    user_team: str | None = None  # user_team / source_team (Slack Connect)
    files: tuple[SlackFile, ...] = ()
    edited_ts: str | None = None  # set for an edit (message_changed)
    previous_text: str | None = None  # the writer's words before an edit
    forwarded: str = ""  # the messages shared in it (mrkdwn), see bot.blocks.forwarded_text
    installation: Installation = NO_INSTALLATION

    @property
    def relay_text(self) -> str:
        """What the agent is sent (before names are resolved): the writer's words, then what they shared."""
        return "\n\n".join(part for part in (self.text.strip("\n"), self.forwarded) if part.strip())

    @property
    def thread_key_ts(self) -> str:
        """A thread's key is always its parent ts."""
        return self.thread_ts or self.ts

    @property
    def is_reply(self) -> bool:
        return bool(self.thread_ts) and self.thread_ts != self.ts

    def files_json(self) -> str:
        return json.dumps([{"name": f.name, "permalink": f.permalink} for f in self.files])


def _files(raw: Any) -> tuple[SlackFile, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        name = item.get("title") or item.get("name") or "file"
        permalink = item.get("permalink")
        out.append(SlackFile(name=str(name), permalink=str(permalink) if permalink else None))
    return tuple(out)


def message_from_event(event: dict[str, Any], installation: Installation) -> SlackMessage | None:
    """Translate a ``message`` or ``app_mention`` event; None when it has no message identity.

    ``installation`` is who received it; its :attr:`Installation.key_team` is the message's ``team``
    (the event's own ``team`` only when the installation names none).

    For ``message_changed`` the edited message (``event["message"]``) is returned with ``edited_ts``
    and ``previous_text`` set; for ``message_deleted`` the deleted message (``previous_message``, with
    ``deleted_ts``) with subtype ``message_deleted``.
    """
    subtype = event.get("subtype")
    channel = event.get("channel")
    body = event
    edited_ts: str | None = None
    previous_text: str | None = None
    if subtype == "message_changed":
        inner = event.get("message")
        if not isinstance(inner, dict):
            return None
        body = inner
        edited = inner.get("edited")
        raw_edit = edited.get("ts") if isinstance(edited, dict) else None
        edited_ts = raw_edit if _is_ts(raw_edit) else None
        previous = event.get("previous_message")
        previous_text = (
            shown_text(str(previous.get("text") or ""), previous.get("blocks"))
            if isinstance(previous, dict)
            else None
        )
    if subtype == "message_deleted":
        previous = event.get("previous_message")
        body = previous if isinstance(previous, dict) else {}
        body = {**body, "ts": event.get("deleted_ts") or body.get("ts")}
    ts = body.get("ts")
    thread_ts = body.get("thread_ts")
    if not channel or not _is_ts(ts) or (thread_ts and not _is_ts(thread_ts)):
        return None
    team = installation.key_team or body.get("team") or event.get("team") or ""
    inner_subtype = body.get("subtype") if subtype == "message_changed" else subtype
    from_bot = bool(body.get("bot_id") or body.get("bot_profile") or inner_subtype == "bot_message")
    return SlackMessage(
        team=str(team),
        channel=str(channel),
        ts=str(ts),
        thread_ts=str(body["thread_ts"]) if body.get("thread_ts") else None,
        user=str(body["user"]) if body.get("user") else None,
        text=shown_text(str(body.get("text") or ""), body.get("blocks")),
        subtype=str(subtype) if subtype else None,
        bot_id=str(body["bot_id"]) if body.get("bot_id") else None,
        from_bot=from_bot,
        user_team=_user_team(body),
        files=_files(body.get("files")),
        edited_ts=edited_ts,
        previous_text=previous_text,
        forwarded=forwarded_text(body.get("attachments")),
        installation=installation,
    )


def _is_ts(value: object) -> bool:
    return isinstance(value, str) and SLACK_TS.fullmatch(value) is not None


def _user_team(body: dict[str, Any]) -> str | None:
    for key in ("user_team", "source_team"):
        value = body.get(key)
        if value:
            return str(value)
    profile = body.get("user_profile")
    if isinstance(profile, dict) and profile.get("team"):
        return str(profile["team"])
    return None
