"""Every ``message`` event (all subtypes, so that Slack never retries one for want of a listener)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from bot.deps import Deps
from bot.events import message_from_event


async def on_message(event: dict[str, Any], context: AsyncBoltContext, deps: Deps) -> None:
    installation = deps.identity.installation.filled_from(
        context.team_id, context.enterprise_id, context.is_enterprise_install
    )
    message = message_from_event(event, installation)
    if message is None:
        return
    if message.subtype == "message_changed":
        await deps.intake.on_edit(message)
    elif message.subtype == "message_deleted":
        await deps.intake.on_delete(message)
    else:
        await deps.intake.on_message(message)


def register(app: AsyncApp) -> None:
    app.event("message")(on_message)
