"""Dependencies: everything the listeners need, built once at start and passed in.

Listeners receive :class:`Deps` through Bolt's context (``bot.app`` installs a global middleware that
sets ``context["deps"]``, and Bolt injects context keys by argument name), so a test can call a
listener directly with a ``Deps`` and no running app. There are no module-level singletons.

The bot's identity comes from ``auth.test`` once, at start, and is frozen: nothing patches it later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.commands import SessionRef
from bot.control import Control
from bot.events import Installation
from bot.logs import Redactor
from bot.metrics import Metrics
from bot.mirror.pace import Pace
from bot.mirror.poller import MirrorConfig, Poller
from bot.policy import Policy
from bot.providers import build_providers
from bot.providers.base import Provider
from bot.relay.catchup import CatchUp
from bot.relay.compose import Composer
from bot.relay.delivery import Delivery, DeliveryConfig, worker_id
from bot.relay.feedback import Feedback, FeedbackConfig
from bot.relay.intake import Intake
from bot.render.control import ControlText
from bot.settings import Settings
from bot.slack import SlackGateway, make_web_client, open_web_session
from bot.usecases import Invocation, UseCases
from storage import Binding, MirrorMode, Store, open_store


class StartupError(Exception):
    """A problem that stops start-up, with a one-line message for the operator."""


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is, from ``auth.test``."""

    user_id: str
    bot_id: str | None = None
    team_id: str | None = None
    enterprise_id: str | None = None
    is_enterprise_install: bool = False
    url: str | None = None  # the workspace's address, "https://example.slack.com/"

    @property
    def installation(self) -> Installation:
        return Installation(self.team_id, self.enterprise_id, self.is_enterprise_install)


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    identity: BotIdentity
    store: Store
    providers: Mapping[str, Provider]
    slack: SlackGateway
    policy: Policy
    intake: Intake
    delivery: Delivery
    feedback: Feedback
    usecases: UseCases
    control: Control
    text: ControlText
    mirror: Poller
    metrics: Metrics = field(default_factory=Metrics)  # this app's own Prometheus registry

    def __deepcopy__(self, memo: dict[int, object]) -> Deps:
        """Shared services, not values: Bolt copies the context for lazy listeners; keep ours."""
        return self


def delivery_config(settings: Settings) -> DeliveryConfig:
    return DeliveryConfig(
        concurrency=settings.relay_concurrency,
        retry_budget=settings.relay_retry_budget,
        retry_wait_initial=min(1.0, settings.relay_retry_max_wait),
        retry_wait_max=settings.relay_retry_max_wait,
        order_window=settings.relay_order_window,
        max_message_chars=settings.max_message_chars,
        attempt_timeout=settings.provider_timeout,
        lease=settings.relay_lease_seconds,
        poll_interval=settings.relay_poll_interval,
    )


def mirror_config(settings: Settings) -> MirrorConfig:
    interval = settings.mirror_poll_interval
    return MirrorConfig(
        default_mode=MirrorMode(settings.mirror_default),
        pace=Pace(
            interval=interval,
            idle_max=max(interval, settings.mirror_idle_max),
            failure_max=max(interval, 300.0),
        ),
        reads_per_provider=settings.mirror_reads_per_provider,
        read_timeout=settings.provider_timeout,
        lease=max(settings.relay_lease_seconds, settings.provider_timeout + 1.0),
        web_messages=settings.mirror_web_messages,
        slack_status=settings.mirror_slack_status,
    )


async def who_am_i(slack: SlackGateway) -> BotIdentity:
    """The bot's identity from ``auth.test``; :class:`StartupError` when Slack refuses the token."""
    try:
        auth = await slack.client.auth_test()
    except SlackApiError as exc:
        raise StartupError(f"Slack refused SLACK_BOT_TOKEN ({exc.response.get('error')})") from None
    except (SlackClientError, OSError) as exc:
        raise StartupError(f"cannot reach the Slack Web API ({type(exc).__name__})") from None
    return BotIdentity(
        user_id=str(auth.get("user_id") or ""),
        bot_id=str(auth.get("bot_id")) if auth.get("bot_id") else None,
        team_id=str(auth.get("team_id")) if auth.get("team_id") else None,
        enterprise_id=str(auth.get("enterprise_id")) if auth.get("enterprise_id") else None,
        is_enterprise_install=bool(auth.get("is_enterprise_install")),
        url=str(auth.get("url")) if auth.get("url") else None,
    )


async def build_deps(settings: Settings, *, client: AsyncWebClient | None = None) -> Deps:
    """Ask Slack who the bot is, open the store (applying migrations), build everything.

    Close with :func:`close_deps`.
    """
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
    metrics = Metrics()
    if client is None:
        client = make_web_client(token, base_url=settings.slack_api_url, session=open_web_session())
    slack = SlackGateway(
        client,
        redactor=Redactor(settings.secrets()),
        metrics=metrics,
    )
    providers: Mapping[str, Provider] = {}
    store: Store | None = None
    try:
        identity = await who_am_i(slack)
        store = open_store(settings.database_url)
        await store.init()
        providers = build_providers(settings)
        return assemble(settings, identity, store, providers, slack, metrics=metrics)
    except BaseException:
        for provider in providers.values():
            await provider.aclose()
        if store is not None:
            await store.close()
        await slack.aclose()
        raise


def assemble(
    settings: Settings,
    identity: BotIdentity,
    store: Store,
    providers: Mapping[str, Provider],
    slack: SlackGateway,
    *,
    metrics: Metrics | None = None,
) -> Deps:
    """Wire the parts together (no I/O)."""
    metrics = metrics or Metrics()
    owner = worker_id()
    policy = Policy(settings, slack)
    feedback = Feedback(
        slack=slack,
        store=store,
        owner=owner,
        config=FeedbackConfig(lease=settings.relay_lease_seconds, poll_interval=settings.relay_poll_interval),
    )
    text = ControlText(providers, aside_prefix=settings.aside_prefix)

    def anchor_text(binding: Binding) -> str:
        return text.anchor(binding.linked_by, SessionRef(binding.provider, binding.session_id))

    mirror = Poller(
        store=store,
        providers=providers,
        feedback=feedback,
        config=mirror_config(settings),
        owner=owner,
        anchor_text=anchor_text,
    )
    composer = Composer(slack=slack, store=store, bot_user_id=identity.user_id)
    delivery = Delivery(
        store=store,
        providers=providers,
        composer=composer,
        feedback=feedback,
        config=delivery_config(settings),
        owner=owner,
        on_delivered=lambda row: mirror.wake_thread(row.thread),
        metrics=metrics,
    )
    intake = Intake(
        store=store,
        policy=policy,
        feedback=feedback,
        bot_user_id=identity.user_id,
        aside_prefix=settings.aside_prefix,
        order_window=settings.relay_order_window,
        relay_edits=settings.relay_edits,
        redactor=Redactor(settings.secrets()),
        metrics=metrics,
    )
    catch_up = CatchUp(slack=slack, intake=intake)

    async def on_linked(binding: Binding, who: Invocation) -> None:
        await mirror.on_linked(binding)  # first: the session's newest message at link time
        await catch_up(binding, who)

    usecases = UseCases(
        store=store,
        slack=slack,
        policy=policy,
        providers=providers,
        anchor_text=text.anchor,
        on_linked=on_linked,
        workspace_url=identity.url,
        mirror_default=MirrorMode(settings.mirror_default),
    )
    control = Control(
        usecases=usecases,
        text=text,
        intake=intake,
        policy=policy,
        store=store,
        bot_user_id=identity.user_id,
    )
    return Deps(
        settings=settings,
        identity=identity,
        store=store,
        providers=providers,
        slack=slack,
        policy=policy,
        intake=intake,
        delivery=delivery,
        feedback=feedback,
        usecases=usecases,
        control=control,
        text=text,
        mirror=mirror,
        metrics=metrics,
    )


async def close_deps(deps: Deps) -> None:
    for provider in deps.providers.values():
        await provider.aclose()
    await deps.store.close()
    await deps.slack.aclose()
