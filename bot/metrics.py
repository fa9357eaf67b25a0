"""Prometheus metrics of one running agent-relay, in a registry of its own (held in ``Deps``).

Names follow Prometheus' conventions: the ``agent_relay_`` prefix, base units (seconds), ``_total``
for counters. Labels take only values from small fixed sets (provider names, outcome kinds, Slack
method names and error codes, event types, states); never a team, channel, thread, user, message or
session id.

The gauges that describe the store (outbox depth, the age of the oldest due message, the feedback
queue) are refreshed by :class:`StoreGauges` every few seconds, so a scrape never waits for the
database.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from bot.background import Background
from storage import MessageState, Store, StoreError

log = structlog.get_logger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
MAX_RETRY_LABEL = 3  # Slack retries an event at most three times


def retry_label(value: object) -> str:
    """Slack's retry number as a label: ``"0"`` (first delivery) to ``"3"``; anything odd is ``"0"``."""
    text = str(value or "0").strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        return "0"
    return str(min(int(text), MAX_RETRY_LABEL))


class Metrics:
    """Every metric agent-relay exports, registered in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- Slack events in
        self.events = Counter(
            "agent_relay_events_received_total",
            "Requests from Slack (events, commands), by event type and Slack's retry number.",
            ["type", "retry"],
            registry=r,
        )
        self.app_rate_limited = Counter(
            "agent_relay_slack_app_rate_limited_total",
            "app_rate_limited events: Slack stopped sending events to a workspace for the minute.",
            registry=r,
        )
        self.intake = Counter(
            "agent_relay_intake_decisions_total",
            "What intake did with a Slack message (queued, duplicate, not_bound, ...).",
            ["decision"],
            registry=r,
        )
        # -- delivery
        self.messages = Counter(
            "agent_relay_messages_total",
            "Messages finished by the delivery engine, by provider and final outcome.",
            ["provider", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "agent_relay_message_latency_seconds",
            "From a message's arrival to its final outcome (retries included).",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_duration = Histogram(
            "agent_relay_provider_request_duration_seconds",
            "Duration of one provider call (one attempt), whatever its answer.",
            ["provider"],
            buckets=PROVIDER_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "agent_relay_delivery_retries_total",
            "Attempts that will be tried again (rate_limited or unavailable), once per retry.",
            ["provider", "outcome"],
            registry=r,
        )
        self.takeovers = Counter(
            "agent_relay_lease_takeovers_total",
            "Messages claimed from a worker whose lease had expired (it died or stalled).",
            registry=r,
        )
        self.in_flight = Gauge(
            "agent_relay_delivery_in_flight",
            "Provider attempts under way in this process.",
            registry=r,
        )
        # -- the store, refreshed by StoreGauges
        self.outbox = Gauge(
            "agent_relay_outbox_messages",
            "Messages in the store by state (pending and sending are the outbox depth).",
            ["state"],
            registry=r,
        )
        self.oldest_due = Gauge(
            "agent_relay_outbox_oldest_due_age_seconds",
            "How long the oldest due pending message has waited to be claimed (0 when none).",
            registry=r,
        )
        self.feedback_depth = Gauge(
            "agent_relay_feedback_queue_items",
            "Slack calls (reactions, replies) queued or in flight.",
            registry=r,
        )
        self.store_refreshed = Gauge(
            "agent_relay_store_metrics_refreshed_timestamp_seconds",
            "When the store gauges were last read successfully (Unix time).",
            registry=r,
        )
        # -- Slack Web API out
        self.slack_calls = Counter(
            "agent_relay_slack_api_calls_total",
            "Slack Web API calls made through the gateway, by method (each once, retries inside).",
            ["method"],
            registry=r,
        )
        self.slack_errors = Counter(
            "agent_relay_slack_api_errors_total",
            "Slack Web API calls that failed, by method and Slack's error code.",
            ["method", "error"],
            registry=r,
        )
        # -- operations
        self.purged = Counter(
            "agent_relay_retention_purged_total",
            "Rows purged by retention: messages blanked, feedback items removed.",
            ["table"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "agent_relay_event_loop_lag_seconds",
            "How late the last heartbeat of the event loop ran.",
            registry=r,
        )
        for state in MessageState:
            self.outbox.labels(state=state.value)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    async def refresh_store(self, store: Store) -> None:
        """Read the store's gauges once. Raises :class:`StoreError`; the old values stay then."""
        counts = await store.count_messages()
        oldest = await store.oldest_due_age()
        depth = await store.feedback_depth()
        for state, count in counts.items():
            self.outbox.labels(state=state.value).set(count)
        self.oldest_due.set(oldest or 0.0)
        self.feedback_depth.set(depth)
        self.store_refreshed.set_to_current_time()


class StoreGauges(Background):
    """Refresh the store gauges every ``interval`` seconds, each read bounded by ``timeout``."""

    task_name = "metrics:store"

    def __init__(self, metrics: Metrics, store: Store, *, interval: float, timeout: float = 5.0) -> None:
        self._metrics = metrics
        self._store = store
        self._interval = interval
        self._timeout = timeout

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._metrics.refresh_store(self._store)
            except (StoreError, TimeoutError) as exc:
                if not failing:
                    log.warning("store_metrics_failed", error=str(exc) or type(exc).__name__)
                failing = True
            else:
                failing = False
            await asyncio.sleep(self._interval)
