"""Delivery: a bounded pool that claims due outbox rows from the store and sends them.

See ``docs/design/delivery.md`` for the whole design. What this module may touch: outbox rows
(through claims and fenced updates), the providers, and the feedback queue (only as part of the
transaction that records an outcome). It never calls Slack and never reads Slack events.

One dispatcher task per process claims up to ``concurrency`` due rows at a time (the store hands out
at most one per thread, and none of a thread with another message in flight anywhere) and runs one
attempt task per claimed row. An attempt composes the text, calls the provider with the whole call
capped, and records the outcome: final (with the thread's feedback, atomically) or back to pending
with its next attempt time. Nothing sleeps between retries; time lives in the store.

Read-back before a re-send: an attempt that is not the message's first may follow one whose outcome
is unknown (it timed out or lost its connection after the request was written, answered 5xx, or its
process died during the call). Before sending again, when the provider's sessions can be read, the
session is read and the message looked for: by its ``client_id`` (Agen), or by the exact text this
attempt would send among the session's user messages created since the message's first attempt
(Devin, Feather; ``READ_BACK_SKEW`` seconds of clock difference allowed). Found, it is recorded
delivered without sending it again. A read that fails, or finds nothing, sends as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import assert_never

import stamina
import structlog

from bot.metrics import Metrics
from bot.outcomes import (
    Delivered,
    GaveUp,
    NotFound,
    NotRunning,
    Outcome,
    RateLimited,
    Refused,
    Rejected,
    Unauthorized,
    Unavailable,
    is_transient,
)
from bot.providers.base import AgentItem, Capability, ItemKind, Provider, SessionSnapshot
from bot.relay.compose import Composer
from bot.relay.feedback import Feedback
from bot.render import outcomes as words
from storage import MessageState, OutboxMessage, Store, StoreError
from storage.base import Claim, NewFeedback

log = structlog.get_logger(__name__)

READ_BACK_SKEW = 10.0  # seconds a provider's clock may be behind the store's, for read-back


def worker_id() -> str:
    """A name for this process's leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    concurrency: int = 32
    retry_budget: float = 300.0
    retry_wait_initial: float = 1.0
    retry_wait_max: float = 30.0
    retry_wait_jitter: float = 1.0
    order_window: float = 0.25
    max_message_chars: int = 30_000
    attempt_timeout: float = 20.0  # the whole provider call
    lease: float = 30.0
    poll_interval: float = 1.0


def plain_reason(outcome: Outcome) -> str | None:
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
    if isinstance(outcome, NotFound):
        return None
    assert_never(outcome)


def _may_have_landed(claim: Claim) -> bool:
    """Could an earlier attempt of this message have reached the provider after all?

    Not on the first attempt, and not when the last attempt was answered 429 (the provider refused
    it). Yes after a timeout, a dropped connection or a 5xx, and after a takeover (the attempt of a
    process that died or lost its lease ended nobody knows how). Read-back costs a provider read, so
    an outage of rate limits does not double the calls.
    """
    row = claim.message
    if row.attempts <= 1:
        return False
    return claim.taken_over or row.outcome != RateLimited.kind


class Delivery:
    def __init__(
        self,
        *,
        store: Store,
        providers: Mapping[str, Provider],
        composer: Composer,
        feedback: Feedback,
        config: DeliveryConfig,
        owner: str | None = None,
        on_delivered: Callable[[OutboxMessage], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._on_delivered = on_delivered
        self._metrics = metrics or Metrics()
        self._providers = providers
        self._composer = composer
        self._feedback = feedback
        self._config = config
        self.owner = owner or worker_id()
        self._wakeup = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._inflight_ids: set[int] = set()  # messages with an attempt under way in this process
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._holding = 0  # attempts that cannot record their outcome: claim nothing new meanwhile
        self._metrics.in_flight.set_function(lambda: len(self._inflight))

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> int:
        """Start the dispatcher; return how many messages were waiting in the store."""
        self._store.add_wake_listener(self._on_store_wake)
        counts = await self._store.count_messages()
        waiting = counts[MessageState.PENDING] + counts[MessageState.SENDING]
        self._dispatcher = asyncio.create_task(self._dispatch(), name="relay:dispatcher")
        if waiting:
            log.info("relay_resumed", messages=waiting)
        return waiting

    def _on_store_wake(self, what: str) -> None:
        if what == "messages":
            self.wake()

    def wake(self, *_: object) -> None:
        self._wakeup.set()

    @property
    def busy(self) -> int:
        """Attempts under way in this process."""
        return len(self._inflight)

    async def shutdown(self, deadline: float) -> int:
        """Claim nothing new, give attempts under way ``deadline`` seconds, then release the rest
        (they stay in the store and any replica, or the next start, sends them). Return how many
        attempts were released."""
        self._closing = True
        self.wake()
        if self._dispatcher is not None:
            # Not cancelled: a claim cancelled half-way would leave rows leased to nobody alive.
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None
        if not self._inflight:
            return 0
        _, still = await asyncio.wait(set(self._inflight), timeout=deadline)
        for task in still:
            task.cancel()
        if still:
            await asyncio.gather(*still, return_exceptions=True)
            log.warning("relay_parked", messages=len(still))
        return len(still)

    # -- dispatcher ----------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        cfg = self._config
        failures = 0
        while not self._closing:
            self._wakeup.clear()
            free = cfg.concurrency - len(self._inflight)
            claims: list[Claim] = []
            if free > 0 and not self._holding:
                try:
                    claims = await self._store.claim_due(self.owner, limit=free, lease=cfg.lease)
                    failures = 0
                except StoreError:
                    failures += 1
                    log.exception("relay_claim_failed", failures=failures)
                    await asyncio.sleep(min(cfg.poll_interval * failures, 10.0))
                    continue
            if self._closing:
                for claim in claims:
                    with contextlib.suppress(StoreError):
                        await self._store.release(claim.message.id, self.owner)
                return
            for claim in claims:
                if claim.message.id in self._inflight_ids:
                    # Our own lease ran out while the attempt was still under way (a stalled loop or
                    # a store that did not take the renewal) and we claimed it again: the attempt
                    # under way carries on under the renewed lease; never start a second one.
                    log.warning("relay_reclaimed_own_attempt", message=claim.message.id)
                    continue
                if claim.taken_over:
                    self._metrics.takeovers.inc()
                    log.warning(
                        "relay_lease_taken_over",
                        message=claim.message.id,
                        attempt=claim.message.attempts,
                        provider=claim.message.provider,
                    )
                self._inflight_ids.add(claim.message.id)
                task = asyncio.create_task(self._attempt(claim), name=f"relay:{claim.message.id}")
                self._inflight.add(task)
                task.add_done_callback(self._attempt_done)
            if claims and len(claims) == free:
                continue  # there may be more due work: claim again as soon as a slot frees
            timeout = cfg.poll_interval
            with contextlib.suppress(StoreError):
                due_in = await self._store.next_due_in()
                if due_in is not None:
                    timeout = min(timeout, max(due_in, 0.001))
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay_attempt_crashed", exc_info=task.exception())
        self.wake()

    # -- one attempt ---------------------------------------------------------------------------
    async def _attempt(self, claim: Claim) -> None:
        try:
            await self._attempt_once(claim)
        finally:
            self._inflight_ids.discard(claim.message.id)

    async def _attempt_once(self, claim: Claim) -> None:
        row = claim.message
        with structlog.contextvars.bound_contextvars(
            team=row.thread.team,
            channel=row.thread.channel,
            thread=row.thread.thread_ts,
            ts=row.ts,
            provider=row.provider,
            session=row.session_id,
            message=row.id,
            attempt=row.attempts,
        ):
            await self._attempt_in_context(claim)

    async def _attempt_in_context(self, claim: Claim) -> None:
        row = claim.message
        started = time.monotonic()
        # Most attempts end long before a third of the lease: a timer, not a task, until one does not.
        renewer: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            self._config.lease / 3,
            lambda: renewer.append(asyncio.create_task(self._renew(row.id), name=f"relay:renew:{row.id}")),
        )

        def stop_renewing() -> None:
            timer.cancel()
            for task in renewer:
                task.cancel()

        try:
            outcome = await self._outcome(claim)
        except asyncio.CancelledError:
            stop_renewing()
            # Shutting down mid-call: hand the row back at once (it may have reached the provider).
            with contextlib.suppress(StoreError):
                await asyncio.shield(self._store.release(row.id, self.owner))
            raise
        finally:
            stop_renewing()
        if outcome is None:
            return
        if is_transient(outcome):
            delay = self._backoff(outcome, row.attempts)
            spent = (claim.now - claim.first_attempt_at) + (time.monotonic() - started)
            if spent + delay <= self._config.retry_budget:
                await self._record_retry(claim, outcome, delay)
            else:  # the next attempt would start after the budget: give up now, tell the thread
                await self._record_final(claim, GaveUp(last=outcome, attempts=row.attempts))
            return
        await self._record_final(claim, outcome)

    async def _outcome(self, claim: Claim) -> Outcome | None:
        """Send once. None: the row needs no outcome from us (its binding is gone: skipped)."""
        row = claim.message
        binding = await self._store.get_binding(row.thread)
        if binding is None or (binding.provider, binding.session_id) != (row.provider, row.session_id):
            if await self._record(
                claim,
                MessageState.SKIPPED,
                "unlinked",
                "the thread was unlinked",
                feedback=self._feedback.for_skipped(row),
            ):
                self._finished(row, "unlinked")
            return None
        provider = self._providers.get(row.provider)
        if provider is None:
            return Refused(reason=words.provider_disabled(row.provider))
        text = await self._composer.compose(row)
        if text is None:
            return Refused(reason=words.NOTHING_TO_SEND)
        limit = self._config.max_message_chars
        if len(text) > limit:
            return Refused(reason=words.too_long(len(text), provider.label, limit))
        if _may_have_landed(claim) and Capability.READ_SESSION in provider.capabilities:
            found = await self._read_back(provider, claim, text)
            if found is not None:
                log.info("relay_found_delivered", provider=row.provider, ts=row.ts, attempt=row.attempts)
                return Delivered(provider_message_id=found.key, status="found on read-back")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.attempt_timeout):
                return await provider.send_message(row.session_id, text, client_id=row.client_id)
        except TimeoutError:
            return Unavailable(reason=words.no_answer_in_time(provider.label))
        finally:
            self._metrics.provider_duration.labels(provider=row.provider).observe(time.monotonic() - started)

    async def _read_back(self, provider: Provider, claim: Claim, text: str) -> AgentItem | None:
        """The session's copy of this message, if an earlier attempt delivered it after all."""
        row = claim.message
        try:
            async with asyncio.timeout(self._config.attempt_timeout):
                snapshot = await provider.read_session(row.session_id)
        except TimeoutError:
            return None
        if not isinstance(snapshot, SessionSnapshot):
            log.info("relay_read_back_failed", provider=row.provider, ts=row.ts, outcome=snapshot.kind)
            return None
        since = claim.first_attempt_at - READ_BACK_SKEW
        wanted = text.strip()
        for item in snapshot.items:
            if item.kind is not ItemKind.USER:
                continue
            if item.client_id is not None:
                if item.client_id == row.client_id:
                    return item
            elif item.created is not None and item.created >= since and item.text.strip() == wanted:
                return item
        return None

    def _backoff(self, outcome: RateLimited | Unavailable, attempts: int) -> float:
        if isinstance(outcome, RateLimited) and outcome.retry_after is not None:
            return max(outcome.retry_after, 0.0)
        cfg = self._config
        wait = min(cfg.retry_wait_max, cfg.retry_wait_initial * 2.0 ** max(attempts - 1, 0))
        jitter = random.uniform(0, min(cfg.retry_wait_jitter, wait))  # noqa: S311 - jitter, not a secret
        return min(cfg.retry_wait_max, wait + jitter)

    async def _renew(self, message_id: int) -> None:
        """Keep the lease of a long attempt alive (started a third of the lease into the attempt):
        renew now and every third of the lease; stop when it was lost."""
        every = self._config.lease / 3
        while True:
            try:
                if not await self._store.renew(message_id, self.owner, self._config.lease):
                    log.warning("relay_lease_lost", message=message_id)
                    return
            except StoreError:
                log.warning("relay_lease_renew_failed", message=message_id)
            await asyncio.sleep(every)

    # -- recording -----------------------------------------------------------------------------
    async def _record_retry(self, claim: Claim, outcome: RateLimited | Unavailable, delay: float) -> None:
        row = claim.message
        items = self._feedback.for_retry(row) if row.attempts == 1 else ()
        log.info(
            "relay_retry",
            provider=row.provider,
            ts=row.ts,
            outcome=outcome.kind,
            attempt=row.attempts,
            retry_in=round(delay, 3),
        )
        if await self._durably(
            lambda: self._store.retry_later(
                row.id, self.owner, delay, outcome.kind, plain_reason(outcome), feedback=items
            ),
            row.id,
        ):
            self._metrics.retries.labels(provider=row.provider, outcome=outcome.kind).inc()

    async def _record_final(self, claim: Claim, outcome: Outcome | GaveUp) -> None:
        row = claim.message
        if isinstance(outcome, Delivered):
            state, detail = MessageState.DELIVERED, plain_reason(outcome)
        elif isinstance(outcome, GaveUp):
            state, detail = MessageState.FAILED, plain_reason(outcome.last)
        else:
            state, detail = MessageState.FAILED, plain_reason(outcome)
        provider = self._providers.get(row.provider)
        label = provider.label if provider else row.provider
        items = self._feedback.for_outcome(row, outcome, label=label)
        if await self._record(claim, state, outcome.kind, detail, feedback=items):
            self._finished(row, outcome.kind)
            if state is MessageState.DELIVERED and self._on_delivered is not None:
                await self._on_delivered(row)

    def _finished(self, row: OutboxMessage, outcome: str) -> None:
        """The one info line of a finished message, and its metrics."""
        latency = max(time.time() - row.received_at, 0.0)
        self._metrics.messages.labels(provider=row.provider, outcome=outcome).inc()
        self._metrics.latency.labels(provider=row.provider).observe(latency)
        log.info(
            "message_finished",
            provider=row.provider,
            channel=row.thread.channel,
            thread=row.thread.thread_ts,
            ts=row.ts,
            outcome=outcome,
            attempts=row.attempts,
            latency=round(latency, 3),
        )

    async def _record(
        self,
        claim: Claim,
        state: MessageState,
        outcome: str,
        detail: str | None,
        *,
        feedback: Sequence[NewFeedback],
    ) -> bool:
        row = claim.message
        return await self._durably(
            lambda: self._store.complete(row.id, self.owner, state, outcome, detail, feedback=feedback),
            row.id,
        )

    async def _durably(self, write: Callable[[], Awaitable[bool]], message_id: int) -> bool:
        """Run a fenced write until the store takes it. While it cannot, this process claims nothing
        new (a delivered message must never be sent again because its outcome was lost). False: the
        lease was lost meanwhile (another worker owns the row now)."""
        self._holding += 1
        try:
            try:  # the common case, without building a retry loop for it
                done = await write()
            except StoreError:
                log.warning("relay_store_write_failed", message=message_id, retrying=True)
                async for attempt in stamina.retry_context(
                    on=StoreError, attempts=None, timeout=None, wait_initial=0.05, wait_max=2.0
                ):
                    with attempt:
                        done = await write()
            if not done:
                log.warning("relay_lease_lost", message=message_id)
            return done
        finally:
            self._holding -= 1
