"""``/agent``: acknowledged at once, answered by a lazy listener (ephemeral, via ``response_url``)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.deps import Deps
from bot.usecases import Invocation

COMMAND = "/agent"


async def acknowledge(ack: AsyncAck) -> None:
    await ack()


async def run_command(command: dict[str, Any], respond: AsyncRespond, deps: Deps) -> None:
    who = Invocation(
        team=str(command.get("team_id") or ""),
        channel=str(command.get("channel_id") or ""),
        user=str(command.get("user_id") or ""),
    )
    reply = await deps.control.slash(who, str(command.get("text") or ""))
    if reply is not None:
        await respond(
            text=reply.text,
            response_type="in_channel" if reply.public else "ephemeral",
            replace_original=False,
        )


def register(app: AsyncApp) -> None:
    app.command(COMMAND)(ack=acknowledge, lazy=[run_command])
