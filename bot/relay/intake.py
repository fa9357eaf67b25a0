"""Intake: which Slack messages are relayed, stored before Slack is acknowledged.

What it may touch: the store (read bindings, write outbox rows) and the feedback queue (the one-time
outsider notice). It never calls a provider and never waits for Slack, so the event listener that
calls it answers Slack within milliseconds.

Guarantees:

* **Stored before acknowledged.** :meth:`Intake.on_message` writes an outbox row, unique on the
  Slack message identity ``(team, channel, ts, revision)``. The Bolt app runs event listeners before
  it acknowledges the event (``process_before_response``), so an event Slack considers delivered is
  already durable; Slack's retries and the mention double delivery hit the unique key.
* **Edits and deletions** change a message still waiting (pending, including between retries) in
  place, so the next attempt sends the new text or nothing; an edit of a message already sent
  becomes a correction, ordered by the edit's ts. An edit is a change when the writer's own words
  changed: a shared message's preview arriving later (an unfurl) is not one.
* **What is stored** is :attr:`bot.events.SlackMessage.relay_text`: the writer's words as a reader
  sees them (their blocks, or ``text``), then the messages they shared, as Slack mrkdwn; names are
  resolved when it is sent (:mod:`bot.relay.compose`). A message with neither words nor files is
  stored too and answered at send time ("nothing to send").
* A stored row is due ``order_window`` seconds later (on the store's clock), so that events Slack
  delivers out of order are put back in ts order; the store wakes the delivery engine.
* Every decision is logged at debug with its reason.
"""

from __future__ import annotations

import enum
import time

import structlog

from bot.classify import command_text
from bot.events import RELAYABLE_SUBTYPES, SlackMessage
from bot.logs import Redactor
from bot.metrics import Metrics
from bot.policy import Policy
from bot.relay.feedback import Feedback, ephemeral
from bot.render.control import REDACTED_NOTICE
from storage import Binding, MessageState, OutboxMessage, Store, ThreadKey
from storage.base import NewMessage

log = structlog.get_logger(__name__)


class Decision(enum.StrEnum):
    """What intake did with a message (logged at debug; the mention handler reads two of them)."""

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


class Intake:
    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        feedback: Feedback,
        bot_user_id: str,
        aside_prefix: str,
        order_window: float,
        relay_edits: bool,
        redactor: Redactor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or Metrics()
        self._policy = policy
        self._feedback = feedback
        self._bot_user_id = bot_user_id
        self._aside = aside_prefix.lower()
        self._order_window = order_window
        self._relay_edits = relay_edits
        self._redactor = redactor or Redactor(())
        self.closing = False

    def _screen(self, message: SlackMessage) -> Decision | None:
        """The checks that need no I/O. None: go on."""
        if self.closing:
            return Decision.CLOSING
        if message.from_bot or message.user == self._bot_user_id or not message.user:
            return Decision.FROM_BOT
        if message.subtype not in RELAYABLE_SUBTYPES and message.subtype != "message_changed":
            return Decision.OTHER_SUBTYPE
        if not message.is_reply:
            return Decision.NOT_A_REPLY
        if command_text(message.text, self._bot_user_id) is not None:
            return Decision.COMMAND
        if message.text.lstrip().lower().startswith(self._aside):
            return Decision.ASIDE
        return None

    async def _bound(self, message: SlackMessage) -> tuple[Binding | None, Decision | None]:
        key = ThreadKey(message.team, message.channel, message.thread_key_ts)
        binding = await self._store.get_binding(key)
        if binding is None:
            return None, Decision.NOT_BOUND
        if binding.muted:
            return binding, Decision.MUTED
        if await self._policy.is_outsider(message.installation, message.user, message.user_team):
            await self._feedback.outsider_notice(binding.key)
            return binding, Decision.OUTSIDER
        return binding, None

    def _decided(self, message: SlackMessage, decision: Decision) -> Decision:
        self._metrics.intake.labels(decision=decision.value).inc()
        log.debug("intake_decision", decision=decision.value, channel=message.channel, ts=message.ts)
        return decision

    async def on_message(self, message: SlackMessage) -> Decision:
        """Store a message for relaying if it should be relayed. Fast: no provider call here."""
        decision = self._screen(message)
        if decision is None:
            binding, decision = await self._bound(message)
            if decision is None and binding is not None:
                row = await self._enqueue(binding, message, revision="", order_ts=message.ts)
                decision = Decision.QUEUED if row is not None else Decision.DUPLICATE
        return self._decided(message, decision or Decision.NOT_BOUND)

    async def on_edit(self, message: SlackMessage) -> Decision:
        """An edit: replace the text of a message not yet sent, or send a correction of a sent one."""
        return self._decided(message, await self._edit(message))

    async def _edit(self, message: SlackMessage) -> Decision:
        if not self._relay_edits:
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
            binding.key, message.ts, await self._clean(message, binding.key), message.files_json()
        ):
            return Decision.REPLACED
        revision = message.edited_ts or f"{time.time():.6f}"
        row = await self._enqueue(binding, message, revision=revision, order_ts=revision)
        return Decision.QUEUED if row is not None else Decision.DUPLICATE

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
                text=await self._clean(message, binding.key),
                files=message.files_json(),
                provider=binding.provider,
                session_id=binding.session_id,
                received_at=time.time(),
                delay=self._order_window,
            )
        )

    async def _clean(self, message: SlackMessage, thread: ThreadKey) -> str:
        """The text to store (:attr:`SlackMessage.relay_text`: the writer's words, then what they
        shared, as mrkdwn) with every configured secret (and anything shaped like a Slack token)
        replaced by a marker, before it is stored or relayed; the author is told, once for this message."""
        text = message.relay_text
        clean = self._redactor.scrub(text)
        if clean != text and message.user:
            once = f"secret-replaced:{thread.team}:{thread.channel}:{message.ts}"
            await self._feedback.enqueue(
                [
                    ephemeral(
                        thread, message.user, REDACTED_NOTICE, thread_ts=thread.thread_ts, dedupe_key=once
                    )
                ]
            )
            log.warning("secret_in_message_redacted", channel=message.channel, ts=message.ts)
        return clean

    async def on_delete(self, message: SlackMessage) -> Decision:
        """A deletion: never relayed; a deleted message that has not been sent yet is dropped."""
        if not message.is_reply:
            return self._decided(message, Decision.NOT_A_REPLY)
        key = ThreadKey(message.team, message.channel, message.thread_key_ts)
        if await self._store.drop_pending(key, message.ts) is None:
            return self._decided(message, Decision.OTHER_SUBTYPE)
        log.info("message_dropped", channel=message.channel, thread=key.thread_ts, ts=message.ts)
        return self._decided(message, Decision.DROPPED)
