"""Feedback to Slack: what a thread is shown about its relayed messages, and one-time notices.

What it may touch: Slack (reactions and thread replies) and the store's once-only markers. A failure
to react or reply is logged and never changes or repeats the relay itself.
"""

from __future__ import annotations

import structlog

from bot.outcomes import GaveUp, Outcome
from bot.render.control import OUTSIDER_NOTICE
from bot.render.outcomes import REACTION_PENDING, feedback
from bot.slack import SlackGateway
from storage import OutboxMessage, Store, ThreadKey

log = structlog.get_logger(__name__)


class Feedback:
    def __init__(self, *, slack: SlackGateway, store: Store) -> None:
        self._slack = slack
        self._store = store

    async def outsider_notice(self, key: ThreadKey) -> None:
        """Tell a thread once that messages from outside the organisation are not relayed."""
        if await self._store.claim("outsider-notice", f"{key.team}:{key.channel}:{key.thread_ts}"):
            await self._slack.post_message(key.channel, OUTSIDER_NOTICE, thread_ts=key.thread_ts)

    async def pending(self, row: OutboxMessage) -> None:
        """The message waits for a retry: show ⏳ on it."""
        try:
            await self._slack.add_reaction(row.thread.channel, row.ts, REACTION_PENDING)
        except Exception:  # feedback must never fail the relay (nor stop this thread's worker)
            log.exception("feedback_failed", channel=row.thread.channel, ts=row.ts)

    async def finished(
        self, row: OutboxMessage, outcome: Outcome | GaveUp, *, label: str, pending_shown: bool
    ) -> None:
        """The message's final outcome: a reaction, and a reply for anything but a delivery."""
        shown = feedback(outcome, label=label, session_id=row.session_id, author=row.user)
        try:
            if pending_shown:
                await self._slack.remove_reaction(row.thread.channel, row.ts, REACTION_PENDING)
            await self._slack.add_reaction(row.thread.channel, row.ts, shown.reaction)
            if shown.reply:
                await self._slack.post_message(
                    row.thread.channel, shown.reply, thread_ts=row.thread.thread_ts
                )
        except Exception:  # feedback must never fail the relay
            log.exception("feedback_failed", channel=row.thread.channel, ts=row.ts)
