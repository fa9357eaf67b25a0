"""The Bolt app factory: dependencies in, an ``AsyncApp`` with every listener out. Decides nothing.

Event listeners run before Slack's request is acknowledged (``process_before_response=True``): the
message listener only screens the event and writes the outbox row (milliseconds), so an event Slack
considers delivered is already durable. The slash command is acknowledged at once and answered by a
lazy listener.

A global middleware puts :class:`bot.deps.Deps` into Bolt's context, from where Bolt injects it into
every listener that takes a ``deps`` argument. Another binds the event's context (team, channel,
thread, ts, event type and id, Slack's retry number) to every log line written while it is handled
(``structlog.contextvars``; each request is its own asyncio task), counts the request, and answers
``app_rate_limited`` itself: Slack sends that one to every app whose workspace passed 30,000 events
in an hour, whatever it subscribed to, and it carries no ``event`` for a listener to match. One
global error handler logs any exception with the event's context and, where a person is waiting for
an answer, tells them in plain words.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.deps import Deps
from bot.metrics import retry_label
from bot.render.control import UNEXPECTED_ERROR
from bot.slack import make_web_client
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


MAX_TYPE_LABEL = 64


def event_type(body: dict[str, Any]) -> str:
    """What kind of request ``body`` is, as a metric label: the event's type (``message``,
    ``app_mention``), ``slash_command``, or the payload's own type (``app_rate_limited``...)."""
    event = body.get("event")
    if isinstance(event, dict) and isinstance(event.get("type"), str) and event["type"]:
        kind: str = event["type"]
    elif body.get("command"):
        kind = "slash_command"
    elif isinstance(body.get("type"), str) and body["type"]:
        kind = body["type"]
    else:
        kind = "unknown"
    return kind[:MAX_TYPE_LABEL]


def _header(request: AsyncBoltRequest, name: str) -> str | None:
    values = request.headers.get(name)
    return str(values[0]) if values else None


def create_app(deps: Deps) -> AsyncApp:
    settings = deps.settings
    app = AsyncApp(
        # Bolt's own client (its authorization check, say/respond) has no shared session: Bolt
        # deep-copies it for the lazy listener. The bot's own calls go through deps.slack.
        client=make_web_client(deps.slack.client.token or "", base_url=deps.slack.client.base_url),
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

    async def observe(
        body: dict[str, Any], request: AsyncBoltRequest, next: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        retry = retry_label(_header(request, "x-slack-retry-num"))
        kind = event_type(body)
        deps.metrics.events.labels(type=kind, retry=retry).inc()
        structlog.contextvars.clear_contextvars()
        where = {k: v for k, v in _event_context(body).items() if v is not None}
        structlog.contextvars.bind_contextvars(**where, slack_retry=int(retry))
        if kind == "app_rate_limited":
            deps.metrics.app_rate_limited.inc()
            log.warning(
                "slack_app_rate_limited",
                minute_rate_limited=body.get("minute_rate_limited"),
                action="Slack sends this workspace no events until the minute is over",
            )
            return BoltResponse(status=200, body="")
        await next()
        return None

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

    app.use(observe)
    app.use(inject_deps)
    app.error(on_error)
    register_all(app)
    return app
