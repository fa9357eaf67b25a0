"""Delivery: sending stored messages to the provider, in order, with retries.

What it may touch: the outbox rows (claim, attempt, finish), the providers, and :mod:`bot.relay.feedback`
for what the thread is shown. It never reads Slack events.

Guarantees (see README, "Delivery"):

* **Per-thread order.** One worker task per thread sends that thread's rows one at a time, lowest
  ``order_ts`` first. A row becomes eligible ``order_window`` seconds after it was received, so that
  events Slack delivers out of order are put back in ts order. ``concurrency`` bounds the provider
  calls in flight, and a thread waiting for a retry holds no slot.
* **Retries.** Transient outcomes (429, 5xx, timeout, connection failure) are retried with capped
  exponential backoff and jitter (stamina), honouring ``Retry-After``, for at most ``retry_budget``
  seconds. Final outcomes are never retried.
* **Crash recovery.** :meth:`Delivery.start` resumes every thread with pending or sending rows.
* **Feedback is separate.** The row is final before the thread is told.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import stamina
import structlog

from bot.outcomes import (
    Delivered,
    GaveUp,
    NotRunning,
    Outcome,
    RateLimited,
    Refused,
    Rejected,
    Transient,
    Unauthorized,
    Unavailable,
    is_transient,
)
from bot.providers.base import Provider
from bot.relay.compose import Composer
from bot.relay.feedback import Feedback
from storage import MessageState, OutboxMessage, Store, ThreadKey

log = structlog.get_logger(__name__)

WORKER_RESTART_DELAY = 5.0  # seconds before a crashed thread worker is tried again


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    concurrency: int = 32
    retry_budget: float = 300.0
    retry_wait_initial: float = 1.0
    retry_wait_max: float = 30.0
    retry_wait_jitter: float = 1.0
    order_window: float = 0.25
    max_message_chars: int = 30_000


class _TransientFailure(Exception):
    def __init__(self, outcome: Transient) -> None:
        super().__init__(outcome.kind)
        self.outcome = outcome


class _Parked(Exception):
    """Shutting down: the message stays pending and is retried at the next start."""


def _plain_reason(outcome: Outcome) -> str | None:
    """What the log row keeps of an outcome: the provider's words or plain ones, never secrets."""
    if isinstance(outcome, NotRunning):
        return outcome.detail
    if isinstance(outcome, Unavailable):
        return outcome.reason
    if isinstance(outcome, RateLimited):
        return f"retry after {outcome.retry_after:g}s" if outcome.retry_after is not None else None
    if isinstance(outcome, Rejected):
        return "; ".join(f"{e.where}: {e.msg}" for e in outcome.errors) or f"HTTP {outcome.status}"
    if isinstance(outcome, Unauthorized):
        return f"HTTP {outcome.status}"
    if isinstance(outcome, Refused):
        return outcome.reason
    if isinstance(outcome, Delivered):
        return outcome.provider_message_id
    return None


class Delivery:
    def __init__(
        self,
        *,
        store: Store,
        providers: Mapping[str, Provider],
        composer: Composer,
        feedback: Feedback,
        config: DeliveryConfig,
    ) -> None:
        self._store = store
        self._providers = providers
        self._composer = composer
        self._feedback = feedback
        self._config = config
        self._sem = asyncio.Semaphore(config.concurrency)
        self._workers: dict[ThreadKey, asyncio.Task[None]] = {}
        self._dirty: set[ThreadKey] = set()
        self._busy: set[ThreadKey] = set()  # threads with an attempt under way (call or finish)
        self._closing = False

    # -- workers -------------------------------------------------------------------------------
    async def start(self) -> int:
        """Resume every thread that has unsent messages; return how many threads."""
        threads = await self._store.threads_with_pending()
        for thread in threads:
            self.wake(thread)
        if threads:
            log.info("relay_resumed", threads=len(threads))
        return len(threads)

    def wake(self, thread: ThreadKey) -> None:
        if self._closing:
            return
        self._dirty.add(thread)
        task = self._workers.get(thread)
        if task is None or task.done():
            self._workers[thread] = asyncio.create_task(self._work(thread), name=f"relay:{thread.thread_ts}")

    async def _work(self, thread: ThreadKey) -> None:
        try:
            while not self._closing:
                self._dirty.discard(thread)
                row = await self._store.next_pending(thread)
                if row is None:
                    if thread in self._dirty:
                        continue
                    return
                wait = row.received_at + self._config.order_window - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue  # an earlier message may have arrived meanwhile
                try:
                    await self._process(row)
                finally:
                    self._busy.discard(thread)
        except asyncio.CancelledError:
            raise
        except _Parked:
            log.info("relay_thread_parked", thread=thread.thread_ts, channel=thread.channel)
        except Exception:
            # A bug or a store failure: the rows stay in the store; try this thread again later.
            log.exception("relay_worker_crashed", thread=thread.thread_ts, channel=thread.channel)
            asyncio.get_running_loop().call_later(WORKER_RESTART_DELAY, self.wake, thread)
        finally:
            if self._workers.get(thread) is asyncio.current_task():
                del self._workers[thread]

    async def _process(self, row: OutboxMessage) -> None:
        bound = await self._store.get_binding(row.thread)
        if bound is None or (bound.provider, bound.session_id) != (row.provider, row.session_id):
            await self._store.finish(row.id, MessageState.SKIPPED, "unlinked", "the thread was unlinked")
            return
        provider = self._providers.get(row.provider)
        if provider is None:
            outcome: Outcome | GaveUp = Refused(
                reason=f"the {row.provider} provider is not enabled any more."
            )
        else:
            text = await self._composer.compose(row)
            refused = self._check_text(text, provider)
            if refused is not None or text is None:
                outcome = refused or Refused()
            else:
                sent, pending_shown = await self._deliver(row, provider, text)
                if sent is not None:
                    await self._finish(row, sent, pending_shown=pending_shown or row.attempts > 0)
                return
        await self._finish(row, outcome, pending_shown=row.attempts > 0)

    def _check_text(self, text: str | None, provider: Provider) -> Refused | None:
        if text is None:
            return Refused(reason="the message has no text, so there was nothing to send.")
        limit = self._config.max_message_chars
        if len(text) > limit:
            return Refused(
                reason=f"the message is {len(text):,} characters long and {provider.label} messages are "
                f"limited to {limit:,} here. Nothing was sent; split it into shorter messages."
            )
        return None

    async def _deliver(
        self, row: OutboxMessage, provider: Provider, text: str
    ) -> tuple[Outcome | GaveUp | None, bool]:
        """Send with retries. Return the final outcome (None: the row was finished elsewhere, e.g. the
        message was deleted before it was sent) and whether the pending reaction was shown."""
        cfg = self._config
        attempts = 0
        pending_shown = False
        try:
            async for attempt in stamina.retry_context(
                on=self._backoff,
                attempts=None,
                timeout=cfg.retry_budget,
                wait_initial=cfg.retry_wait_initial,
                wait_max=cfg.retry_wait_max,
                wait_jitter=cfg.retry_wait_jitter,
            ):
                with attempt:
                    if self._closing:
                        raise _Parked
                    self._busy.add(row.thread)
                    current = await self._store.mark_sending(row.id)
                    if current is None:
                        return None, pending_shown  # finished elsewhere (deleted before it was sent)
                    attempts = current.attempts
                    if (current.text, current.files) != (row.text, row.files):
                        # Edited while it waited for this attempt (pending): send the new text.
                        row = current
                        new_text = await self._composer.compose(current)
                        refused = self._check_text(new_text, provider)
                        if refused is not None or new_text is None:
                            return refused or Refused(), pending_shown
                        text = new_text
                    async with self._sem:
                        outcome = await provider.send_message(row.session_id, text, client_id=row.client_id)
                    if is_transient(outcome):
                        await self._store.mark_pending(row.id, outcome.kind, _plain_reason(outcome))
                        log.info(
                            "relay_retry",
                            provider=row.provider,
                            ts=row.ts,
                            outcome=outcome.kind,
                            attempt=attempts,
                        )
                        if not pending_shown:
                            pending_shown = True
                            await self._show_pending(row)
                        if self._closing:
                            raise _Parked
                        self._busy.discard(row.thread)  # no slot, no call while waiting
                        raise _TransientFailure(outcome)  # noqa: TRY301 - stamina retries on it
                    return outcome, pending_shown
        except _TransientFailure as exc:
            return GaveUp(last=exc.outcome, attempts=attempts), pending_shown
        raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover

    async def _show_pending(self, row: OutboxMessage) -> None:
        await self._feedback.pending(row)

    def _backoff(self, exc: Exception) -> bool | float:
        if not isinstance(exc, _TransientFailure):
            return False
        outcome = exc.outcome
        if isinstance(outcome, RateLimited) and outcome.retry_after is not None:
            return max(outcome.retry_after, 0.0)
        return True

    async def _finish(self, row: OutboxMessage, outcome: Outcome | GaveUp, *, pending_shown: bool) -> None:
        if isinstance(outcome, Delivered):
            state = MessageState.DELIVERED
            detail = _plain_reason(outcome)
        elif isinstance(outcome, GaveUp):
            state = MessageState.FAILED
            detail = _plain_reason(outcome.last)
        else:
            state = MessageState.FAILED
            detail = _plain_reason(outcome)
        await self._store.finish(row.id, state, outcome.kind, detail)
        log.info(
            "message_finished",
            provider=row.provider,
            channel=row.thread.channel,
            thread=row.thread.thread_ts,
            ts=row.ts,
            outcome=outcome.kind,
        )
        provider = self._providers.get(row.provider)
        label = provider.label if provider else row.provider
        await self._feedback.finished(row, outcome, label=label, pending_shown=pending_shown)

    # -- shutdown ------------------------------------------------------------------------------
    async def shutdown(self, deadline: float) -> int:
        """Stop taking messages, let in-flight sends finish for up to ``deadline`` seconds, then park
        the rest (they stay in the store and resume at the next start). Threads with nothing in flight
        (waiting for the order window or a retry) are parked at once, and no new attempt starts.
        Return how many threads were parked."""
        self._closing = True
        workers = {thread: t for thread, t in self._workers.items() if not t.done()}
        if not workers:
            return 0
        # Threads waiting (order window, retry backoff) have nothing in flight: park them now.
        idle = [t for thread, t in workers.items() if thread not in self._busy]
        for task in idle:
            task.cancel()
        _, still_running = await asyncio.wait(workers.values(), timeout=deadline)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.gather(*still_running, return_exceptions=True)
        parked = len(idle) + len(still_running)
        if parked:
            log.warning("relay_parked", threads=parked)
        return parked

    @property
    def busy_threads(self) -> int:
        return sum(1 for t in self._workers.values() if not t.done())
