"""The Bolt app factory: dependencies in, an ``AsyncApp`` with every listener out. Decides nothing.

Event listeners run before Slack's request is acknowledged (``process_before_response=True``): the
message listener only screens the event and writes the outbox row (milliseconds), so an event Slack
considers delivered is already durable. The slash command is acknowledged at once and answered by a
lazy listener.

A global middleware puts :class:`bot.deps.Deps` into Bolt's context, from where Bolt injects it into
every listener that takes a ``deps`` argument. One global error handler logs any exception with the
event's context and, where a person is waiting for an answer, tells them in plain words.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.response import BoltResponse

from bot.deps import Deps
from bot.render.control import UNEXPECTED_ERROR
from handlers import register_all

log = structlog.get_logger(__name__)


def _event_context(body: dict[str, Any]) -> dict[str, Any]:
    event = body.get("event") if isinstance(body.get("event"), dict) else {}
    assert isinstance(event, dict)
    return {
        "team": body.get("team_id") or event.get("team"),
        "channel": event.get("channel") or body.get("channel_id"),
        "ts": event.get("ts"),
        "thread": event.get("thread_ts"),
        "event_type": event.get("type") or body.get("command") or body.get("type"),
        "event_id": body.get("event_id"),
    }


def create_app(deps: Deps) -> AsyncApp:
    settings = deps.settings
    app = AsyncApp(
        client=deps.slack.client,
        signing_secret=settings.slack_signing_secret.get_secret_value()
        if settings.slack_signing_secret
        else "",
        process_before_response=True,
        ignoring_self_events_enabled=True,
        url_verification_enabled=True,
    )

    async def inject_deps(context: AsyncBoltContext, next: Callable[[], Awaitable[None]]) -> None:
        context["deps"] = deps
        await next()

    async def on_error(error: Exception, body: dict[str, Any]) -> BoltResponse | None:
        where = _event_context(body)
        log.error("listener_failed", exc_info=error, **where)
        event = body.get("event") if isinstance(body.get("event"), dict) else None
        if (
            event is not None
            and event.get("type") == "app_mention"
            and event.get("user")
            and where["channel"]
        ):
            # Someone asked the bot something: tell them, only them. Slack retries the event.
            thread = event.get("thread_ts")
            await deps.slack.post_ephemeral(
                str(where["channel"]), str(event["user"]), UNEXPECTED_ERROR, thread_ts=thread
            )
        elif body.get("command") and body.get("response_url"):
            await deps.slack.respond(str(body["response_url"]), UNEXPECTED_ERROR)
        return None

    app.use(inject_deps)
    app.error(on_error)
    register_all(app)
    return app
