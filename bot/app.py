"""Assembly: settings -> dependencies -> the Bolt app. Nothing here decides anything.

Event listeners run before Slack's request is acknowledged (``process_before_response=True``): the
message listener only screens the event and writes the outbox row (milliseconds), so an event Slack
considers delivered is already durable. The slash command is acknowledged at once and answered by a
lazy listener.
"""

from __future__ import annotations

from dataclasses import dataclass

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.control import Control
from bot.policy import Policy
from bot.providers import build_providers
from bot.providers.base import Provider
from bot.relay import Relay, RelayConfig
from bot.settings import Settings
from bot.slack import SlackGateway, make_web_client
from storage import Store, open_store


@dataclass(frozen=True, slots=True)
class Deps:
    """Everything the listeners need, built once and passed in (no module-level singletons)."""

    settings: Settings
    store: Store
    providers: dict[str, Provider]
    slack: SlackGateway
    policy: Policy
    relay: Relay
    control: Control


def relay_config(settings: Settings) -> RelayConfig:
    return RelayConfig(
        concurrency=settings.relay_concurrency,
        retry_budget=settings.relay_retry_budget,
        retry_wait_initial=min(1.0, settings.relay_retry_max_wait),
        retry_wait_max=settings.relay_retry_max_wait,
        order_window=settings.relay_order_window,
        relay_edits=settings.relay_edits,
        aside_prefix=settings.aside_prefix,
        max_message_chars=settings.max_message_chars,
    )


async def build_deps(settings: Settings, *, client: AsyncWebClient | None = None) -> Deps:
    """Open the store (applying migrations) and build clients. Close with :func:`close_deps`."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
    web = client or make_web_client(token, base_url=settings.slack_api_url)
    store = open_store(settings.database_url)
    await store.init()
    providers = build_providers(settings)
    slack = SlackGateway(web)
    policy = Policy(settings, slack)
    relay = Relay(store=store, providers=providers, slack=slack, policy=policy, config=relay_config(settings))
    control = Control(
        store=store, relay=relay, slack=slack, policy=policy, aside_prefix=settings.aside_prefix
    )
    return Deps(settings, store, providers, slack, policy, relay, control)


async def close_deps(deps: Deps) -> None:
    for provider in deps.providers.values():
        await provider.aclose()
    await deps.store.close()


def create_app(deps: Deps) -> AsyncApp:
    from handlers import register_all  # noqa: PLC0415 - handlers import bot; keep the graph one-way

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
    register_all(app, deps)
    return app
