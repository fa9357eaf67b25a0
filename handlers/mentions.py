"""``app_mention``: a command for the bot, or (in a linked thread) a message for the agent."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from bot.deps import Deps
from bot.events import message_from_event


async def on_mention(event: dict[str, Any], context: AsyncBoltContext, deps: Deps) -> None:
    message = message_from_event(event, context.team_id)
    if message is None:
        return
    reply = await deps.control.on_mention(message)
    if reply is None or message.user is None:
        return
    if reply.public:
        await deps.slack.post_message(message.channel, reply.text, thread_ts=message.thread_key_ts)
    else:
        await deps.slack.post_ephemeral(
            message.channel, message.user, reply.text, thread_ts=message.thread_key_ts
        )


def register(app: AsyncApp) -> None:
    app.event("app_mention")(on_mention)
