"""Feedback to Slack: a durable queue of Slack calls, and the sender that drains it.

What it may touch: the store's feedback queue and Slack (reactions, thread replies, ephemeral
answers, message updates). It never calls a provider and never changes an outbox row.

Why a queue: a provider call must never wait for Slack, and Slack limits posting to about one
message per second per channel (``reactions.add`` is Tier 3). The delivery engine writes the calls a
final outcome causes in the same transaction as the outcome, so the thread is told exactly when the
outcome is recorded. The sender (one per process, any replica) claims the oldest call of each channel
(one in flight per channel across all replicas, so a channel's calls keep their order: ⏳ goes before
✅) and retries 429 (honouring ``Retry-After``, fractions included) and 5xx with stored next-attempt
times. Posts are not paced ahead of time: Slack allows bursts past one message a second per channel
and says when to slow down (429 with ``Retry-After``); the channel's queue then waits that long,
in order, while deliveries to agents go on. An answer Slack gives for good (``channel_not_found``)
is final and logged; ``already_reacted`` and ``no_reaction`` count as done.

Two kinds serve the mirror of the agent's side (:mod:`bot.mirror`): ``status_post`` is a
``chat.postMessage`` whose ts is handed to the callbacks given to :meth:`Feedback.on_posted` (the
state message of a thread linked by mention, updated in place later), and ``agent_status`` is
Slack's native agent-session status, which Slack may refuse: any answer but a transient one is done,
quietly, and after a refusal :attr:`Feedback.native_status_refused` is True.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bot.outcomes import GaveUp, Outcome
from bot.render.control import OUTSIDER_NOTICE
from bot.render.outcomes import REACTION_PENDING, feedback
from bot.slack import SlackGateway, fit_text
from storage import OutboxMessage, Store, StoreError, ThreadKey
from storage.base import FeedbackItem, NewFeedback

log = structlog.get_logger(__name__)

METHODS = {
    "reaction_add": "reactions.add",
    "reaction_remove": "reactions.remove",
    "post": "chat.postMessage",
    "ephemeral": "chat.postEphemeral",
    "update": "chat.update",
    "status_post": "chat.postMessage",
    "agent_status": "agents.sessions.setStatus",
}
DONE_ERRORS = frozenset({"already_reacted", "no_reaction"})
#: Kinds whose refusal by Slack is an answer, not a failure (the feature may be off or unknown).
QUIET = frozenset({"agent_status"})
#: How Slack says no to a method it does not offer this app (not logged as failures).
REFUSALS = frozenset(
    {
        "unknown_method",
        "method_deprecated",
        "missing_scope",
        "not_allowed_token_type",
        "not_allowed",
        "feature_not_enabled",
        "invalid_arguments",
        "channel_not_found",
        "thread_not_found",
    }
)

#: Told the ts of a ``status_post`` Slack accepted: ``(item, ts)``.
PostedCallback = Callable[[FeedbackItem, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    concurrency: int = 8  # Slack calls in flight from this process
    lease: float = 30.0
    poll_interval: float = 1.0
    max_attempts: int = 10


def reaction(kind: str, thread: ThreadKey, ts: str, name: str) -> NewFeedback:
    return NewFeedback(
        channel=thread.channel,
        team=thread.team,
        kind=kind,
        payload={"channel": thread.channel, "timestamp": ts, "name": name},
    )


def post(
    thread: ThreadKey, text: str, *, thread_ts: str | None = None, dedupe_key: str | None = None
) -> NewFeedback:
    payload: dict[str, object] = {
        "channel": thread.channel,
        "text": fit_text(text),
        "unfurl_links": False,
        "unfurl_media": False,
    }
    if thread_ts:
        payload["thread_ts"] = thread_ts
    return NewFeedback(
        channel=thread.channel, team=thread.team, kind="post", payload=payload, dedupe_key=dedupe_key
    )


def ephemeral(
    thread: ThreadKey, user: str, text: str, *, thread_ts: str | None = None, dedupe_key: str | None = None
) -> NewFeedback:
    payload: dict[str, object] = {"channel": thread.channel, "user": user, "text": fit_text(text)}
    if thread_ts:
        payload["thread_ts"] = thread_ts
    return NewFeedback(
        channel=thread.channel, team=thread.team, kind="ephemeral", payload=payload, dedupe_key=dedupe_key
    )


class Feedback:
    def __init__(
        self, *, slack: SlackGateway, store: Store, owner: str, config: FeedbackConfig | None = None
    ) -> None:
        self._slack = slack
        self._store = store
        self._owner = owner
        self._config = config or FeedbackConfig()
        self._wakeup = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._posted: list[PostedCallback] = []
        self.native_status_refused = False

    def on_posted(self, callback: PostedCallback) -> None:
        """Call ``callback(item, ts)`` after Slack accepted a ``status_post`` item."""
        self._posted.append(callback)

    # -- what gets queued ----------------------------------------------------------------------
    @staticmethod
    def for_retry(row: OutboxMessage) -> tuple[NewFeedback, ...]:
        """The message waits for a retry: ⏳ on it."""
        return (reaction("reaction_add", row.thread, row.ts, REACTION_PENDING),)

    @staticmethod
    def for_skipped(row: OutboxMessage) -> tuple[NewFeedback, ...]:
        """Not sent on purpose (the thread was unlinked while it waited): take ⏳ off, say nothing."""
        if row.attempts > 1:
            return (reaction("reaction_remove", row.thread, row.ts, REACTION_PENDING),)
        return ()

    @staticmethod
    def for_outcome(row: OutboxMessage, outcome: Outcome | GaveUp, *, label: str) -> tuple[NewFeedback, ...]:
        """The final outcome: ⏳ off (when it was shown), a reaction, and a reply for anything but a
        delivery."""
        shown = feedback(outcome, label=label, session_id=row.session_id, author=row.user)
        items = []
        if row.attempts > 1:
            items.append(reaction("reaction_remove", row.thread, row.ts, REACTION_PENDING))
        items.append(reaction("reaction_add", row.thread, row.ts, shown.reaction))
        if shown.reply:
            items.append(post(row.thread, shown.reply, thread_ts=row.thread.thread_ts))
        return tuple(items)

    async def enqueue(self, items: Sequence[NewFeedback]) -> None:
        await self._store.enqueue_feedback(items)

    async def outsider_notice(self, key: ThreadKey) -> None:
        """Tell a thread once that messages from outside the organisation are not relayed."""
        dedupe = f"outsider-notice:{key.team}:{key.channel}:{key.thread_ts}"
        await self.enqueue([post(key, OUTSIDER_NOTICE, thread_ts=key.thread_ts, dedupe_key=dedupe)])

    # -- the sender ----------------------------------------------------------------------------
    def start(self) -> None:
        self._store.add_wake_listener(self._on_store_wake)
        self._runner = asyncio.create_task(self._run(), name="feedback:sender")

    def _on_store_wake(self, what: str) -> None:
        if what == "feedback":
            self._wakeup.set()

    async def stop(self, deadline: float) -> None:
        """Send what is under way for up to ``deadline`` seconds; the rest stays queued."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)  # it stops at its next turn
            self._runner = None
        if self._inflight:
            _, still = await asyncio.wait(set(self._inflight), timeout=deadline)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)

    async def drain(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a deadline for tests and shutdown
        """Wait until the queue is empty (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and await self._store.feedback_depth() > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        cfg = self._config
        while not self._closing:
            self._wakeup.clear()
            free = cfg.concurrency - len(self._inflight)
            items: list[FeedbackItem] = []
            if free > 0:
                try:
                    items = await self._store.claim_feedback(self._owner, limit=free, lease=cfg.lease)
                except StoreError:
                    log.exception("feedback_claim_failed")
                    await asyncio.sleep(cfg.poll_interval)
                    continue
            if self._closing:
                for item in items:  # hand them back for the next start or another replica
                    with contextlib.suppress(StoreError):
                        await self._store.feedback_retry(item.id, self._owner, 0.0, "shutdown")
                return
            for item in items:
                task = asyncio.create_task(self._send(item), name=f"feedback:{item.id}")
                self._inflight.add(task)
                task.add_done_callback(self._sent)
            if items and len(items) == free:
                continue
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.poll_interval):
                    await self._wakeup.wait()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("feedback_send_crashed", exc_info=task.exception())
        self._wakeup.set()

    async def _send(self, item: FeedbackItem) -> None:
        method = METHODS.get(item.kind)
        if method is None:
            await self._store.feedback_failed(item.id, self._owner, f"unknown kind {item.kind}")
            return
        args: dict[str, Any] = dict(item.payload)
        quiet = item.kind in QUIET
        result = await self._slack.call(method, json=args, expected=REFUSALS if quiet else DONE_ERRORS)
        if result.ok and item.kind == "status_post" and result.data and result.data.get("ts"):
            for callback in self._posted:
                try:
                    await callback(item, str(result.data["ts"]))
                except StoreError:
                    log.warning("feedback_posted_callback_failed", kind=item.kind)
        if quiet and not result.ok and not result.transient:
            if not self.native_status_refused:
                log.info("slack_native_status_refused", error=result.error)
            self.native_status_refused = True
            await self._store.feedback_done(item.id, self._owner)
        elif result.ok or result.error in DONE_ERRORS:
            await self._store.feedback_done(item.id, self._owner)
        elif result.transient and item.attempts < self._config.max_attempts:
            delay = result.retry_after
            if delay is None:
                delay = min(30.0, 0.5 * 2.0 ** (item.attempts - 1)) + random.uniform(0, 0.5)  # noqa: S311
            await self._store.feedback_retry(item.id, self._owner, delay, result.error or "transient")
            asyncio.get_running_loop().call_later(delay, self._wakeup.set)  # not a whole poll later
        else:
            log.warning("feedback_gave_up", method=method, error=result.error, attempts=item.attempts)
            await self._store.feedback_failed(item.id, self._owner, result.error or "failed")
