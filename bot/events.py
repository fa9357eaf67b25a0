"""Slack message events translated into one typed shape the core decides on.

Handlers call :func:`message_from_event`; nothing below ``bot/`` looks at raw payloads elsewhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

#: A Slack message ts: seconds, a dot, microseconds ("1700000000.000100"). Anything else (a
#: 5,000-digit number, a word) is not a message identity and the event is ignored.
SLACK_TS = re.compile(r"\d{1,12}(?:\.\d{1,8})?")

#: Subtypes that carry something a person wrote and that may be relayed.
RELAYABLE_SUBTYPES = frozenset({None, "thread_broadcast", "file_share"})


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
    text: str
    subtype: str | None = None
    bot_id: str | None = None
    from_bot: bool = False  # bot_id, bot_profile or subtype bot_message
    user_team: str | None = None  # user_team / source_team (Slack Connect)
    files: tuple[SlackFile, ...] = ()
    edited_ts: str | None = None  # set for an edit (message_changed)
    previous_text: str | None = None  # the text before an edit

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


def message_from_event(event: dict[str, Any], team_id: str | None) -> SlackMessage | None:
    """Translate a ``message`` or ``app_mention`` event; None when it has no message identity.

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
        previous_text = str(previous.get("text") or "") if isinstance(previous, dict) else None
    if subtype == "message_deleted":
        previous = event.get("previous_message")
        body = previous if isinstance(previous, dict) else {}
        body = {**body, "ts": event.get("deleted_ts") or body.get("ts")}
    ts = body.get("ts")
    thread_ts = body.get("thread_ts")
    if not channel or not _is_ts(ts) or (thread_ts and not _is_ts(thread_ts)):
        return None
    team = body.get("team") or event.get("team") or team_id or ""
    inner_subtype = body.get("subtype") if subtype == "message_changed" else subtype
    from_bot = bool(body.get("bot_id") or body.get("bot_profile") or inner_subtype == "bot_message")
    return SlackMessage(
        team=str(team_id or team),
        channel=str(channel),
        ts=str(ts),
        thread_ts=str(body["thread_ts"]) if body.get("thread_ts") else None,
        user=str(body["user"]) if body.get("user") else None,
        text=str(body.get("text") or ""),
        subtype=str(subtype) if subtype else None,
        bot_id=str(body["bot_id"]) if body.get("bot_id") else None,
        from_bot=from_bot,
        user_team=_user_team(body),
        files=_files(body.get("files")),
        edited_ts=edited_ts,
        previous_text=previous_text,
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
