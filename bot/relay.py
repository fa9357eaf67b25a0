"""The relay service: what to relay, in which order, with which retries, and what the thread sees.

Guarantees (see README, "Delivery"):

* **Stored before acted on.** :meth:`Relay.on_message` writes an outbox row, unique on the Slack
  message identity ``(team, channel, ts, revision)``, before any provider call. The Bolt app runs
  event listeners before it acknowledges the event (``process_before_response``), so an event Slack
  considers delivered is already durable. Slack's retries and the mention double delivery hit the
  unique key and make no second call.
* **Per-thread order.** One worker task per thread sends that thread's rows one at a time, lowest
  ``order_ts`` first. A row becomes eligible ``order_window`` seconds after it was received, so that
  events Slack delivers out of order (concurrent requests) are put back in ts order. Threads run
  concurrently; ``concurrency`` bounds the provider calls in flight, and a thread waiting for a retry
  holds no slot.
* **Retries.** Transient outcomes (429, 5xx, timeout, connection failure) are retried with capped
  exponential backoff and jitter (stamina), honouring ``Retry-After``, for at most ``retry_budget``
  seconds. Final outcomes are never retried.
* **Crash recovery.** :meth:`Relay.start` resumes every thread with pending or sending rows. A row
  left ``sending`` by a crash is sent again: only a message in flight at the crash can be duplicated,
  and Agen sees the same ``client_id`` on every attempt.
* **Feedback is separate.** The row is final before the thread is told; a failure to react or reply
  is logged and never changes or repeats the relay.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import stamina
import structlog

from bot.commands import COMMANDS
from bot.events import RELAYABLE_SUBTYPES, SlackMessage
from bot.mrkdwn import mentioned_user_ids, strip_leading_mention, to_plain
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
from bot.policy import Policy
from bot.providers.base import Provider
from bot.render import REACTION_PENDING, feedback
from bot.slack import SlackGateway
from storage import Binding, MessageState, OutboxMessage, Store, ThreadKey
from storage.base import NewMessage

log = structlog.get_logger(__name__)

CORRECTION_CONTEXT_CHARS = 80
MAX_LINK_WORDS = 3  # link <provider> <session>
WORKER_RESTART_DELAY = 5.0  # seconds before a crashed thread worker is tried again


class Decision(enum.StrEnum):
    """What :meth:`Relay.on_message` did with a message, for logs and tests."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"  # an edit replaced the text of a message not yet sent
    FROM_BOT = "from_bot"
    OTHER_SUBTYPE = "other_subtype"
    NOT_A_REPLY = "not_a_reply"
    NOT_BOUND = "not_bound"
    COMMAND = "command"  # a mention command: the mention handler runs it
    ASIDE = "aside"
    MUTED = "muted"
    OUTSIDER = "outsider"
    EDITS_OFF = "edits_off"
    UNCHANGED = "unchanged"
    NOT_RELAYED_BEFORE = "not_relayed_before"
    CLOSING = "closing"
    DROPPED = "dropped"  # deleted before it was sent


@dataclass(frozen=True, slots=True)
class RelayConfig:
    concurrency: int = 32
    retry_budget: float = 300.0
    retry_wait_initial: float = 1.0
    retry_wait_max: float = 30.0
    retry_wait_jitter: float = 1.0
    order_window: float = 0.25
    relay_edits: bool = True
    aside_prefix: str = "!aside"
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


class Relay:
    def __init__(
        self,
        *,
        store: Store,
        providers: Mapping[str, Provider],
        slack: SlackGateway,
        policy: Policy,
        config: RelayConfig,
        bot_user_id: str | None = None,
    ) -> None:
        self._store = store
        self._providers = providers
        self._slack = slack
        self._policy = policy
        self._config = config
        self.bot_user_id = bot_user_id
        self._sem = asyncio.Semaphore(config.concurrency)
        self._workers: dict[ThreadKey, asyncio.Task[None]] = {}
        self._dirty: set[ThreadKey] = set()
        self._busy: set[ThreadKey] = set()  # threads with an attempt under way (call or finish)
        self._closing = False

    # -- intake --------------------------------------------------------------------------------
    def _screen(self, message: SlackMessage) -> Decision | None:
        """The checks that need no I/O. None: go on."""
        if self._closing:
            return Decision.CLOSING
        if message.from_bot or (self.bot_user_id and message.user == self.bot_user_id) or not message.user:
            return Decision.FROM_BOT
        if message.subtype not in RELAYABLE_SUBTYPES and message.subtype != "message_changed":
            return Decision.OTHER_SUBTYPE
        if not message.is_reply:
            return Decision.NOT_A_REPLY
        if self.command_text(message.text) is not None:
            return Decision.COMMAND
        if message.text.lstrip().lower().startswith(self._config.aside_prefix.lower()):
            return Decision.ASIDE
        return None

    def command_text(self, text: str) -> str | None:
        """The command after a leading bot mention (run by the mention handler), else None.

        ``@agent-relay status`` is a command; ``@agent-relay status of the build?`` or
        ``@agent-relay please rerun the tests`` in a linked thread is a message for the agent and is
        relayed like any other. A command word counts only when followed by what that command takes:
        nothing, or (``link``) at most two arguments.
        """
        rest = strip_leading_mention(text, self.bot_user_id or "")
        if rest is None:
            return None
        words = rest.split()
        if not words:
            return rest
        first = words[0].lower()
        if first == "link":
            return rest if len(words) <= MAX_LINK_WORDS else None
        return rest if first in COMMANDS and len(words) == 1 else None

    async def _bound(self, message: SlackMessage) -> tuple[Binding | None, Decision | None]:
        key = ThreadKey(message.team, message.channel, message.thread_key_ts)
        binding = await self._store.get_binding(key)
        if binding is None:
            return None, Decision.NOT_BOUND
        if binding.muted:
            return binding, Decision.MUTED
        if self._policy.is_outsider(message.team, message.user_team):
            await self._tell_outsider_once(binding)
            return binding, Decision.OUTSIDER
        return binding, None

    async def on_message(self, message: SlackMessage) -> Decision:
        """Store a message for relaying if it should be relayed. Fast: no provider call here."""
        decision = self._screen(message)
        if decision is not None:
            return decision
        binding, decision = await self._bound(message)
        if decision is not None or binding is None:
            return decision or Decision.NOT_BOUND
        row = await self._enqueue(binding, message, revision="", order_ts=message.ts)
        if row is None:
            return Decision.DUPLICATE
        log.info("message_queued", thread=binding.key.thread_ts, channel=binding.key.channel, ts=message.ts)
        self.wake(binding.key)
        return Decision.QUEUED

    async def on_edit(self, message: SlackMessage) -> Decision:
        """An edit: replace the text of a message not yet sent, or send a correction of a sent one."""
        if not self._config.relay_edits:
            return Decision.EDITS_OFF
        decision = self._screen(message)
        if decision is not None:
            return decision
        if message.previous_text is not None and message.previous_text == message.text:
            return Decision.UNCHANGED  # an unfurl or a reaction count, not a change of text
        binding, decision = await self._bound(message)
        if decision is not None or binding is None:
            return decision or Decision.NOT_BOUND
        original = await self._store.get_message(binding.key, message.ts)
        if original is None or original.state in (MessageState.FAILED, MessageState.SKIPPED):
            return Decision.NOT_RELAYED_BEFORE
        if original.state is MessageState.PENDING and await self._store.replace_pending_text(
            binding.key, message.ts, message.text, message.files_json()
        ):
            return Decision.REPLACED
        revision = message.edited_ts or f"{time.time():.6f}"
        row = await self._enqueue(binding, message, revision=revision, order_ts=revision)
        if row is None:
            return Decision.DUPLICATE
        self.wake(binding.key)
        return Decision.QUEUED

    async def _enqueue(
        self, binding: Binding, message: SlackMessage, *, revision: str, order_ts: str
    ) -> OutboxMessage | None:
        return await self._store.enqueue(
            NewMessage(
                thread=binding.key,
                ts=message.ts,
                revision=revision,
                order_ts=order_ts,
                user=message.user or "",
                text=message.text,
                files=message.files_json(),
                provider=binding.provider,
                session_id=binding.session_id,
                received_at=time.time(),
            )
        )

    async def on_delete(self, message: SlackMessage) -> Decision:
        """A deletion: never relayed; a deleted message that has not been sent yet is dropped."""
        if not message.is_reply:
            return Decision.NOT_A_REPLY
        key = ThreadKey(message.team, message.channel, message.thread_key_ts)
        original = await self._store.get_message(key, message.ts)
        if original is None or original.state is not MessageState.PENDING:
            return Decision.OTHER_SUBTYPE
        await self._store.finish(
            original.id, MessageState.SKIPPED, "deleted", "deleted in Slack before it was sent"
        )
        log.info("message_dropped", channel=message.channel, thread=key.thread_ts, ts=message.ts)
        return Decision.DROPPED

    async def _tell_outsider_once(self, binding: Binding) -> None:
        key = binding.key
        if await self._store.claim("outsider-notice", f"{key.team}:{key.channel}:{key.thread_ts}"):
            await self._slack.post_message(
                key.channel,
                "Messages from people outside this organisation are not relayed to the agent "
                "in this thread (Slack Connect). Ask whoever runs agent-relay to allow your team.",
                thread_ts=key.thread_ts,
            )

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
            text = await self.compose(row)
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

    async def compose(self, row: OutboxMessage) -> str | None:
        """The plain text sent to the provider: author, text, files. None when there is nothing to send."""
        raw = strip_leading_mention(row.text, self.bot_user_id or "")
        raw = row.text if raw is None else raw  # "@agent-relay please ..." is addressed to the agent
        names = {uid: await self._slack.display_name(uid) for uid in mentioned_user_ids(raw)}
        body = to_plain(raw, users=names).strip()
        files = [f for f in json.loads(row.files or "[]") if isinstance(f, dict)]
        if files:
            listed = "\n".join(
                f"- {f.get('name') or 'file'}" + (f": {f['permalink']}" if f.get("permalink") else "")
                for f in files
            )
            body = f"{body}\n\nAttached in Slack:\n{listed}".strip()
        if not body:
            return None
        author = await self._slack.display_name(row.user)
        if row.revision:
            original = await self._store.get_message(row.thread, row.ts)
            earlier = to_plain(original.text).strip() if original else ""
            if len(earlier) > CORRECTION_CONTEXT_CHARS:
                earlier = earlier[: CORRECTION_CONTEXT_CHARS - 1] + "…"
            return f'{author} (via Slack) edited their earlier message "{earlier}". Corrected text:\n{body}'
        return f"{author} (via Slack): {body}"

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
                        new_text = await self.compose(current)
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
        try:
            await self._slack.add_reaction(row.thread.channel, row.ts, REACTION_PENDING)
        except Exception:  # feedback must never fail the relay (nor stop this thread's worker)
            log.exception("feedback_failed", channel=row.thread.channel, ts=row.ts)

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
        shown = feedback(outcome, label=label, session_id=row.session_id, author=row.user)
        try:
            if pending_shown:
                await self._slack.remove_reaction(row.thread.channel, row.ts, REACTION_PENDING)
            await self._slack.add_reaction(row.thread.channel, row.ts, shown.reaction)
            if shown.reply:
                await self._slack.post_message(
                    row.thread.channel, shown.reply, thread_ts=row.thread.thread_ts
                )
        except Exception:  # feedback must never fail the relay
            log.exception("feedback_failed", channel=row.thread.channel, ts=row.ts)

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

    def label(self, provider: str) -> str:
        p = self._providers.get(provider)
        return p.label if p else provider

    @property
    def providers(self) -> Mapping[str, Provider]:
        return self._providers


__all__ = ["Decision", "Relay", "RelayConfig"]
