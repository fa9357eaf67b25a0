"""``/agent``: acknowledged at once, answered by a lazy listener (ephemeral, via ``response_url``)."""

from __future__ import annotations

from typing import Any

import structlog
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond

from bot.deps import Deps
from bot.render.control import UNEXPECTED_ERROR
from bot.usecases import Invocation

log = structlog.get_logger(__name__)

COMMAND = "/agent"


async def acknowledge(ack: AsyncAck) -> None:
    await ack()


async def run_command(
    command: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext, deps: Deps
) -> None:
    installation = deps.identity.installation.filled_from(
        context.team_id, context.enterprise_id, context.is_enterprise_install
    )
    payload_team = str(command.get("team_id") or "") or None
    who = Invocation(
        team=installation.key_team or payload_team or "",
        channel=str(command.get("channel_id") or ""),
        user=str(command.get("user_id") or ""),
        installation=installation,
    )
    try:
        reply = await deps.control.slash(who, str(command.get("text") or ""), payload_team=payload_team)
    except Exception:
        # Bolt runs this after the acknowledgement and keeps a lazy listener's errors to itself: the
        # global error handler never sees them, so the person who asked is answered here.
        log.exception("listener_failed", team=who.team, channel=who.channel, event_type=COMMAND)
        await respond(text=UNEXPECTED_ERROR, response_type="ephemeral", replace_original=False)
        return
    if reply is not None:
        await respond(
            text=reply.text,
            response_type="in_channel" if reply.public else "ephemeral",
            replace_original=False,
        )


def register(app: AsyncApp) -> None:
    app.command(COMMAND)(ack=acknowledge, lazy=[run_command])
