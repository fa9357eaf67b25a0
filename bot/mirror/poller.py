"""The poller: reads bound sessions when they are due and queues what the threads should show.

What it may touch: the store (watches, leases, the feedback queue through :meth:`Store.record_poll`),
and the providers' read endpoints. It never calls Slack: every post and update goes through the
durable Slack queue (:mod:`bot.relay.feedback`).

One loop per process. Each turn it asks the store for watches that are due, and for each session
among them (several threads may be bound to one session; one read serves them all) it starts one
read task, unless that session is being read here already or its provider has
``reads_per_provider`` reads in flight. A read task takes the session's singleton lease
(``mirror:{provider}:{session}``, one reader across every replica; another replica holding it
means skip), checks the session is still due (another replica may just have read it), reads it
once, and for each thread plans what to show (:func:`bot.mirror.plan.plan`) and stores the new
watermark together with the posts in one transaction.

Pace (:class:`bot.mirror.pace.Pace`): quick while the session works or right after a relayed
message (the delivery engine calls :meth:`Poller.wake_thread`), slower while it idles, not at all
once it finished or expired. A 429 pauses that provider for its ``Retry-After``; a provider whose
reads keep failing (three in a row) is paused with a growing wait, and its due watches are moved
past the pause, so it never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from bot.mirror.pace import Pace
from bot.mirror.plan import PlanConfig, ThreadView, plan
from bot.outcomes import NotFound, RateLimited, Unauthorized, Unavailable
from bot.providers.base import Capability, ItemKind, Provider, ReadFailure, SessionSnapshot, SessionState
from bot.relay.feedback import Feedback
from bot.render import outcomes as words
from storage import Binding, MirrorMode, MirrorProgress, MirrorWatch, Store, StoreError, ThreadKey
from storage.base import FeedbackItem

log = structlog.get_logger(__name__)

PROVIDER_FAILURES_BEFORE_PAUSE = 3


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    default_mode: MirrorMode = MirrorMode.ON
    pace: Pace = field(default_factory=Pace)
    reads_per_provider: int = 4
    read_timeout: float = 20.0  # one whole read
    lease: float = 30.0  # the session's singleton lease; longer than a read
    batch: int = 500  # due watches looked at per turn
    web_messages: bool = False
    slack_status: bool = False


class Poller:
    def __init__(
        self,
        *,
        store: Store,
        providers: Mapping[str, Provider],
        feedback: Feedback,
        config: MirrorConfig,
        owner: str,
        anchor_text: Callable[[Binding], str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._providers = providers
        self._feedback = feedback
        self._config = config
        self.owner = owner
        self._anchor_text = anchor_text
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._wakeup = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reads: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}  # provider -> time.monotonic()
        self._failures: dict[str, int] = {}  # provider -> failed reads in a row
        self._closing = False
        self.reads = 0  # reads made by this process (for tests and logs)
        self._woken: dict[ThreadKey, float] = {}  # thread -> when a relayed message last woke it

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._feedback.on_posted(self._status_posted)
        self._runner = asyncio.create_task(self._run(), name="mirror:poller")

    async def stop(self, deadline: float) -> None:
        """Start no new read; give reads under way ``deadline`` seconds, then cancel them (their
        sessions are read again by whoever polls next: nothing is posted twice)."""
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        tasks = set(self._tasks.values())
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=deadline)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)

    def wake(self) -> None:
        self._wakeup.set()

    # -- what others tell it -------------------------------------------------------------------
    async def on_linked(self, binding: Binding) -> None:
        """A thread was linked: watch its session from now on (the first read shows nothing)."""
        try:
            await self._store.watch_thread(
                binding.key, binding.provider, binding.session_id, status_ts=binding.anchor_ts
            )
        except StoreError:
            log.exception(
                "mirror_watch_not_stored", channel=binding.key.channel, thread=binding.key.thread_ts
            )
            return
        self.wake()

    async def wake_thread(self, thread: ThreadKey) -> None:
        """A message was relayed to the thread's session: read it soon, at the quick pace.

        At most once per quick interval per thread: a burst of relayed messages makes one read, not
        one read (and one store write) per message.
        """
        now = time.monotonic()
        last = self._woken.get(thread)
        if last is not None and now - last < self._config.pace.interval:
            return
        if len(self._woken) >= 10_000:  # bounded
            self._woken.clear()
        self._woken[thread] = now
        try:
            await self._store.wake_watch(thread)
        except StoreError:
            log.warning("mirror_wake_failed", channel=thread.channel, thread=thread.thread_ts)
            return
        self.wake()

    async def _status_posted(self, item: FeedbackItem, ts: str) -> None:
        thread_ts = item.payload.get("thread_ts")
        if isinstance(thread_ts, str):
            await self._store.set_watch_status_ts(ThreadKey(item.team, item.channel, thread_ts), ts)
            self.wake()

    # -- the loop ------------------------------------------------------------------------------
    def mode(self, watch: MirrorWatch) -> MirrorMode:
        return watch.mode or self._config.default_mode

    async def _run(self) -> None:
        cfg = self._config
        tick = max(0.01, min(cfg.pace.interval, 1.0))
        failures = 0
        while not self._closing:
            self._wakeup.clear()
            try:
                due = await self._store.due_watches(
                    limit=cfg.batch, include_unset=cfg.default_mode is not MirrorMode.OFF
                )
                failures = 0
            except StoreError:
                failures += 1
                log.warning("mirror_due_failed", failures=failures)
                await asyncio.sleep(min(tick * failures, 10.0))
                continue
            for watch in due:
                key = (watch.provider, watch.session_id)
                if key in self._tasks or self._reads.get(watch.provider, 0) >= cfg.reads_per_provider:
                    continue
                self._reads[watch.provider] = self._reads.get(watch.provider, 0) + 1
                task = asyncio.create_task(self._read(*key), name=f"mirror:{watch.provider}")
                self._tasks[key] = task
                task.add_done_callback(functools.partial(self._read_done, key))
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wakeup.wait()

    def _read_done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        self._reads[key[0]] = max(0, self._reads.get(key[0], 1) - 1)
        if not task.cancelled() and task.exception() is not None:
            log.error("mirror_read_crashed", provider=key[0], exc_info=task.exception())
        self._wakeup.set()

    async def _read(self, provider_name: str, session_id: str) -> None:
        lease = f"mirror:{provider_name}:{session_id}"
        try:
            if not await self._store.acquire_lease(lease, self.owner, self._config.lease):
                return  # another replica reads it
        except StoreError:
            log.warning("mirror_lease_failed", provider=provider_name)
            return
        try:
            await self._poll(provider_name, session_id)
        except StoreError:
            log.warning("mirror_poll_not_stored", provider=provider_name)
        finally:
            with contextlib.suppress(StoreError):
                await asyncio.shield(self._store.release_lease(lease, self.owner))

    # -- one session ---------------------------------------------------------------------------
    async def _poll(self, provider_name: str, session_id: str) -> None:
        watches = [
            w
            for w in await self._store.session_watches(provider_name, session_id)
            if self.mode(w) is not MirrorMode.OFF
        ]
        now = await self._store.now()
        if not any(w.next_poll_at is not None and w.next_poll_at <= now for w in watches):
            return  # read meanwhile by another replica
        provider = self._providers.get(provider_name)
        if provider is None or Capability.READ_SESSION not in provider.capabilities:
            for watch in watches:  # nothing to read: stop until woken (a relink, a provider enabled)
                await self._store.record_poll(watch.thread, provider_name, session_id, _kept(watch, None))
            return
        paused = self._paused_until.get(provider_name, 0.0) - time.monotonic()
        if paused > 0:
            for watch in watches:
                progress = _kept(
                    watch, self._config.pace.jittered(paused, self._rng), failures=watch.failures
                )
                await self._store.record_poll(watch.thread, provider_name, session_id, progress)
            return
        result = await self._read_now(provider, session_id)
        for watch in watches:
            binding = await self._store.get_binding(watch.thread)
            if binding is None or (binding.provider, binding.session_id) != (provider_name, session_id):
                continue  # unlinked or linked again meanwhile
            if isinstance(result, SessionSnapshot):
                await self._show(watch, binding, provider, result)
            else:
                await self._failed(watch, result)

    async def _read_now(self, provider: Provider, session_id: str) -> SessionSnapshot | ReadFailure:
        self.reads += 1
        try:
            async with asyncio.timeout(self._config.read_timeout):
                result = await provider.read_session(session_id)
        except TimeoutError:
            result = Unavailable(reason=words.no_answer_in_time(provider.label))
        name = provider.name
        if isinstance(result, SessionSnapshot | NotFound):
            self._failures[name] = 0
            self._paused_until.pop(name, None)
        elif isinstance(result, RateLimited):
            wait = result.retry_after if result.retry_after is not None else self._config.pace.interval
            self._paused_until[name] = time.monotonic() + wait
            log.info("mirror_rate_limited", provider=name, retry_after=wait)
        else:
            count = self._failures[name] = self._failures.get(name, 0) + 1
            if count >= PROVIDER_FAILURES_BEFORE_PAUSE:
                wait = self._config.pace.after_failure(count - PROVIDER_FAILURES_BEFORE_PAUSE + 1)
                self._paused_until[name] = time.monotonic() + wait
            log.warning("mirror_read_failed", provider=name, outcome=result.kind, failures=count)
        return result

    async def _show(
        self, watch: MirrorWatch, binding: Binding, provider: Provider, snapshot: SessionSnapshot
    ) -> None:
        steerer = None
        if snapshot.state is SessionState.WAITING or any(i.kind is ItemKind.QUESTION for i in snapshot.items):
            last = await self._store.last_message(binding.key)
            steerer = last.user if last is not None and last.user else binding.linked_by
        anchor = self._anchor_text(binding) if self._anchor_text and binding.anchor_ts else None
        view = ThreadView(
            binding=binding,
            watch=watch,
            mode=self.mode(watch),
            label=provider.label,
            anchor=anchor,
            steerer=steerer,
        )
        cfg = self._config
        planned = plan(
            view,
            snapshot,
            PlanConfig(
                web_messages=cfg.web_messages,
                slack_status=cfg.slack_status and not self._feedback.native_status_refused,
            ),
        )
        wait, idle = cfg.pace.after_read(planned.state, news=planned.news, idle_polls=watch.idle_polls)
        progress = MirrorProgress(
            watermark=planned.watermark,
            state=planned.state.value,
            status_text=planned.status_text,
            last_agent_text=planned.last_agent_text,
            idle_polls=idle,
            failures=0,
            next_poll_in=None if wait is None else cfg.pace.jittered(wait, self._rng),
        )
        stored = await self._store.record_poll(
            watch.thread, watch.provider, watch.session_id, progress, feedback=planned.feedback
        )
        if stored and planned.feedback:
            log.info(
                "mirror_queued",
                provider=watch.provider,
                channel=watch.thread.channel,
                thread=watch.thread.thread_ts,
                calls=len(planned.feedback),
                state=planned.state.value,
            )

    async def _failed(self, watch: MirrorWatch, failure: ReadFailure) -> None:
        failures = watch.failures + 1
        retry_after = failure.retry_after if isinstance(failure, RateLimited) else None
        if isinstance(failure, Unauthorized | NotFound):
            wait = self._config.pace.failure_max  # will not mend soon: read rarely
        else:
            wait = self._config.pace.after_failure(failures, retry_after)
        wait = max(self._config.pace.jittered(wait, self._rng), retry_after or 0.0)
        await self._store.record_poll(
            watch.thread, watch.provider, watch.session_id, _kept(watch, wait, failures=failures)
        )


def _kept(watch: MirrorWatch, next_poll_in: float | None, *, failures: int = 0) -> MirrorProgress:
    """Progress that changes nothing but the next read time (and the failure count)."""
    return MirrorProgress(
        watermark=watch.watermark,
        state=watch.state,
        status_text=watch.status_text,
        last_agent_text=watch.last_agent_text,
        idle_polls=watch.idle_polls,
        failures=failures,
        next_poll_in=next_poll_in,
    )
