"""The text a provider receives for one stored message, composed at send time.

Composed when each attempt starts (not when the message arrived), so an edit made while the message
waited is what gets sent. Slack mrkdwn becomes plain text, mentions become display names, user
groups their handles, unlabelled channel references (``<#C123>``) their names (``conversations.info``),
files are listed by name and permalink, and the author is named: anyone in the channel can steer a
session. The stored text already holds what the writer shared (:mod:`bot.blocks`), so a forwarded
message arrives as the writer's words, then ``Forwarded message from Bob (link):`` and the quote.
"""

from __future__ import annotations

import json

from bot.mrkdwn import (
    mentioned_user_ids,
    mentioned_usergroup_ids,
    strip_leading_mention,
    to_plain,
    unnamed_channel_ids,
)
from bot.slack import SlackGateway
from storage import OutboxMessage, Store

CORRECTION_CONTEXT_CHARS = 80
#: After the author's name in every relayed text: how the mirror knows our own messages again.
VIA_SLACK = "(via Slack)"


class Composer:
    def __init__(self, *, slack: SlackGateway, store: Store, bot_user_id: str) -> None:
        self._slack = slack
        self._store = store
        self._bot_user_id = bot_user_id

    async def compose(self, row: OutboxMessage) -> str | None:
        """The plain text sent to the provider: author, text, files. None when there is nothing to send."""
        raw = strip_leading_mention(row.text, self._bot_user_id)
        raw = row.text if raw is None else raw  # "@agent-relay please ..." is addressed to the agent
        names = {uid: await self._slack.display_name(uid) for uid in mentioned_user_ids(raw)}
        groups = {
            gid: handle
            for gid in mentioned_usergroup_ids(raw)
            if (handle := await self._slack.usergroup_handle(gid))
        }
        channels = {
            cid: name for cid in unnamed_channel_ids(raw) if (name := await self._slack.channel_name(cid))
        }
        body = to_plain(raw, users=names, usergroups=groups, channels=channels).strip()
        files = [f for f in json.loads(row.files or "[]") if isinstance(f, dict)]
        if files:
            listed = "\n".join(
                f"- {f.get('name') or 'file'}" + (f": {f['permalink']}" if f.get("permalink") else "")
                for f in files
            )
            body = f"{body}\n\nAttached in Slack:\n{listed}".strip()
        if not body:
            return None
        author = await self._slack.display_name(row.user)
        if row.revision:
            original = await self._store.get_message(row.thread, row.ts)
            earlier = to_plain(original.text).strip() if original else ""
            if len(earlier) > CORRECTION_CONTEXT_CHARS:
                earlier = earlier[: CORRECTION_CONTEXT_CHARS - 1] + "…"
            return f'{author} {VIA_SLACK} edited their earlier message "{earlier}". Corrected text:\n{body}'
        return f"{author} {VIA_SLACK}: {body}"
