"""Every ``message`` event (all subtypes, so that Slack never retries one for want of a listener)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.events import message_from_event

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp, AsyncBoltContext

    from bot.app import Deps


def register(app: AsyncApp, deps: Deps) -> None:
    async def on_message(event: dict[str, Any], context: AsyncBoltContext) -> None:
        message = message_from_event(event, context.team_id)
        if message is None:
            return
        deps.relay.bot_user_id = deps.relay.bot_user_id or context.bot_user_id
        if message.subtype == "message_changed":
            await deps.relay.on_edit(message)
        elif message.subtype == "message_deleted":
            await deps.relay.on_delete(message)
        else:
            await deps.relay.on_message(message)

    app.event("message")(on_message)
