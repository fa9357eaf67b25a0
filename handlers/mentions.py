"""``app_mention``: a command for the bot, or (in a linked thread) a message for the agent.

The answer is queued (a store write, milliseconds), not posted, before Slack is acknowledged: a slow
Slack never delays the acknowledgement. An ephemeral answer to a mention outside a thread goes to the
channel (Slack shows an ephemeral with a ``thread_ts`` only inside an existing thread).
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from bot.deps import Deps
from bot.events import message_from_event
from bot.relay.feedback import ephemeral, post
from storage import ThreadKey


async def on_mention(event: dict[str, Any], context: AsyncBoltContext, deps: Deps) -> None:
    installation = deps.identity.installation.filled_from(
        context.team_id, context.enterprise_id, context.is_enterprise_install
    )
    message = message_from_event(event, installation)
    if message is None:
        return
    reply = await deps.control.on_mention(message)
    if reply is None or message.user is None:
        return
    where = ThreadKey(message.team, message.channel, message.thread_key_ts)
    if reply.public:
        item = post(where, reply.text, thread_ts=message.thread_key_ts)
    else:
        item = ephemeral(
            where, message.user, reply.text, thread_ts=message.thread_ts if message.is_reply else None
        )
    await deps.feedback.enqueue([item])


def register(app: AsyncApp) -> None:
    app.event("app_mention")(on_mention)
