"""The async store interface that every backend implements.

Rows:

* :class:`Binding`: one Slack thread, keyed by ``(team, channel, thread_ts)``, bound to one provider
  session.
* :class:`OutboxMessage`: one Slack message (or one correction of it) to relay. It is written
  *before* any provider call (the outbox), is unique on the Slack message identity
  ``(team, channel, ts, revision)``, and stays afterwards as the log of what was relayed and how it
  ended.
* Feedback items (:class:`NewFeedback`, :class:`FeedbackItem`): the durable queue of Slack calls
  that tell a thread what happened (reactions, replies, notices).
* Named singleton leases, and once-only markers (:meth:`Store.claim`).
* :class:`MirrorWatch`: one bound thread whose agent session is read and shown in the thread
  (its watermark, last state, next poll time, mirror mode, status message).

The lease model
---------------
Several replicas (or several processes on one SQLite file) share one store. Work is handed out by
**claims**: :meth:`Store.claim_due` turns due ``pending`` messages into ``sending`` ones owned by
the caller (``lease_owner``) until ``lease_expires``, counting the attempt and remembering the time
of the first attempt ever (``first_attempt_at``, the start of the retry budget). A worker keeps its
lease alive with :meth:`Store.renew` and ends it with :meth:`Store.complete` (final),
:meth:`Store.retry_later` (pending again, due later) or :meth:`Store.release` (pending again, the
attempt not counted).

**Fencing.** Every change after a claim names the owner and is a conditional update on
``state = 'sending' AND lease_owner = owner``: once another worker took the row over (its lease had
expired), the first worker's ``complete``/``retry_later``/``release``/``renew`` return False and
change nothing. A lease that expired but that nobody took over is still the owner's: finishing late
is allowed, because nobody else can have sent the message meanwhile. An owner string must therefore
name one lease holder (a process, or a worker in it) and never be reused by another.

**One in flight.** At most one message per thread is ``sending`` and at most one feedback item per
channel is ``sending``; both are enforced by partial unique indexes, not only by the claim queries.
Within a thread a message is claimed only when it is the first open one by ``(order_key, id)``, so
a thread's messages are attempted strictly in order; a ``sending`` row whose lease expired is taken
over (attempts + 1) before anything behind it. :attr:`NewMessage.delay` is the order window: a
message is not due before it, so that Slack events delivered out of order are sorted first.

**Time.** Every time the store compares (``due_at``, lease expiry) comes from the database clock
(:meth:`Store.now`): PostgreSQL's ``clock_timestamp()``, or for SQLite the host clock of the one
machine that holds the file (claims, leases and due times read it inside their statement, after
any wait for the write lock). Replicas' own clocks are never compared with each other. Times are
Unix seconds (float) in UTC; ``received_at`` and ``linked_at`` are what the caller gave.

**Wake-ups.** A change that makes work claimable (an enqueue, a message or feedback item finished,
retried or released) calls the callbacks given to :meth:`Store.add_wake_listener` with
``"messages"`` or ``"feedback"``; PostgreSQL also tells other replicas (``NOTIFY``). A wake-up is a
hint that may repeat or, rarely, be lost: the engine still polls on an interval, and
:meth:`Store.next_due_in` / :meth:`Store.next_feedback_due_in` say when the next row becomes due or
the next lease expires, so that a poller can sleep exactly that long.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class StoreError(Exception):
    """A backend could not do what was asked (bad URL, unreadable file, migration failure, lost
    database)."""


WakeKind = str  # "messages" or "feedback"
WAKE_MESSAGES: WakeKind = "messages"
WAKE_FEEDBACK: WakeKind = "feedback"
WakeCallback = Callable[[WakeKind], None]

_SLACK_TS = re.compile(r"^(?P<seconds>\d{1,13})(?:\.(?P<fraction>\d{1,6}))?$")  # bounded: no huge int()
_MAX_ORDER_KEY = 2**63 - 1


def order_key(ts: str) -> int:
    """A Slack ts (``"1700000000.000100"``) as integer microseconds, exact where a float is not.

    Strings that are not ``digits[.up to 6 digits]``, or too large for a 64-bit integer, give 0.
    """
    match = _SLACK_TS.match(ts)
    if match is None:
        return 0
    micros = int((match["fraction"] or "").ljust(6, "0"))
    key = int(match["seconds"]) * 1_000_000 + micros
    return key if key <= _MAX_ORDER_KEY else 0


@dataclass(frozen=True, slots=True, order=True)
class ThreadKey:
    """A Slack thread: its team, channel and parent message ts."""

    team: str
    channel: str
    thread_ts: str


@dataclass(frozen=True, slots=True)
class Binding:
    key: ThreadKey
    provider: str
    session_id: str
    linked_by: str  # Slack user id
    linked_at: float
    muted: bool = False
    anchor_ts: str | None = None  # ts of the bot's anchor message, when the slash command made one


class MessageState(enum.StrEnum):
    PENDING = "pending"  # stored, not yet sent (or waiting for a retry)
    SENDING = "sending"  # an attempt is under way; after a crash this may have reached the provider
    DELIVERED = "delivered"
    FAILED = "failed"  # a final answer other than delivered, or the retry budget ran out
    SKIPPED = "skipped"  # dropped on purpose (binding removed, or deleted in Slack, before it was sent)

    @property
    def final(self) -> bool:
        return self in (MessageState.DELIVERED, MessageState.FAILED, MessageState.SKIPPED)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message to relay, as stored.

    ``revision`` is ``""`` for the message as first written and the ``edited.ts`` of an edit for a
    correction of an already relayed message. ``order_ts`` decides the order within a thread: the
    message ts for originals, the edit ts for corrections.
    ``text`` is the raw Slack mrkdwn; conversion to plain text happens at send time.
    ``files`` is a JSON list of ``{"name", "permalink"}`` objects.
    """

    id: int
    thread: ThreadKey
    ts: str
    revision: str
    order_ts: str
    user: str
    text: str
    files: str
    provider: str
    session_id: str
    state: MessageState
    attempts: int
    outcome: str | None  # Outcome.kind of the last attempt
    detail: str | None  # provider detail or plain-words reason of the last attempt
    received_at: float
    updated_at: float

    @property
    def client_id(self) -> str:
        """A stable id of this Slack message (Agen ``client_id``): the same on every attempt."""
        base = f"slack:{self.thread.team}:{self.thread.channel}:{self.ts}"
        return f"{base}:edit:{self.revision}" if self.revision else base


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What the relay service hands to :meth:`Store.enqueue`."""

    thread: ThreadKey
    ts: str
    revision: str
    order_ts: str
    user: str
    text: str
    files: str
    provider: str
    session_id: str
    received_at: float
    delay: float = 0.0  # the order window: the row is due this many seconds after it is stored


@dataclass(frozen=True, slots=True)
class Claim:
    """A message claimed by :meth:`Store.claim_due`: ours until ``lease_expires`` unless renewed."""

    message: OutboxMessage  # as stored after the claim: state SENDING, attempts already + 1
    owner: str
    lease_expires: float  # database clock
    first_attempt_at: float  # database clock; set at the first claim ever, then kept
    now: float  # database clock at the claim
    #: The row was ``sending`` under an expired lease (its worker died or lost it): this claim took
    #: it over. Its previous attempt may have reached the provider.
    taken_over: bool = False


@dataclass(frozen=True, slots=True)
class NewFeedback:
    """A Slack call to make for a thread, handed to :meth:`Store.enqueue_feedback`."""

    channel: str
    kind: str  # free text for the store: "reaction_add", "reaction_remove", "post", "update", ...
    payload: Mapping[str, object]  # stored as JSON
    team: str = ""
    dedupe_key: str | None = None  # a second enqueue with the same key is ignored


class FeedbackState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """A feedback item claimed by :meth:`Store.claim_feedback`."""

    id: int
    team: str
    channel: str
    kind: str
    payload: dict[str, Any]
    attempts: int  # attempts after this claim
    created_at: float
    owner: str


@dataclass(frozen=True, slots=True)
class Purged:
    """What one :meth:`Store.purge_before` call changed."""

    messages: int = 0  # final messages whose text and files were blanked
    feedback: int = 0  # finished feedback items deleted (or, with a dedupe key, blanked)

    @property
    def total(self) -> int:
        return self.messages + self.feedback


class MirrorMode(enum.StrEnum):
    """What a thread shows of its agent session (``@agent-relay mirror on|off|final``)."""

    ON = "on"  # every agent message, questions, state changes
    OFF = "off"  # nothing; the session is not read
    FINAL = "final"  # state changes, and the agent's last message when the session stops or asks


@dataclass(frozen=True, slots=True)
class MirrorWatch:
    """One bound thread whose agent session is mirrored into it (table ``mirror_watch``).

    ``mode`` None means the configured default. ``watermark`` is the poller's own encoding of how
    far the session was read (None: never read; the first read sets it and shows nothing).
    ``state`` is the last normalised state seen. ``status_ts`` is the message updated in place
    with the state (the anchor of ``/agent link``, or a status message the bot posted), and
    ``status_text`` what it was last set to. ``next_poll_at`` (database clock) is when the session
    is due to be read again; None: not until something wakes it (the session stopped).
    """

    thread: ThreadKey
    provider: str
    session_id: str
    mode: MirrorMode | None
    watermark: str | None
    state: str | None
    status_ts: str | None
    status_text: str | None
    last_agent_text: str | None
    idle_polls: int
    failures: int
    next_poll_at: float | None


@dataclass(frozen=True, slots=True)
class MirrorProgress:
    """What one read of the session changes in a :class:`MirrorWatch` (:meth:`Store.record_poll`)."""

    watermark: str | None
    state: str | None
    status_text: str | None
    last_agent_text: str | None
    idle_polls: int = 0
    failures: int = 0
    next_poll_in: float | None = None  # seconds from now (database clock); None: until woken


class Store(abc.ABC):
    """Async store. Backends: :mod:`storage.sqlite` (embedded default), :mod:`storage.postgres`."""

    # -- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def init(self) -> None:
        """Open the connection and apply pending schema migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def now(self) -> float:
        """The database clock, Unix seconds: the time every lease and due time is compared with."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise :class:`StoreError` when the store is not usable now. Cheap: call it every few
        seconds. A backend that finds its database gone for good also sets :attr:`lost`."""

    @property
    @abc.abstractmethod
    def lost(self) -> bool:
        """True once :meth:`check` found the database gone for good (deleted or replaced)."""

    @abc.abstractmethod
    def add_wake_listener(self, callback: WakeCallback) -> None:
        """Call ``callback("messages")`` or ``callback("feedback")`` after a change that made work
        claimable. Callbacks run on the event loop, must not block and may be called more than once
        for one change; an exception in one is logged and ignored."""

    # -- bindings ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_binding(self, key: ThreadKey) -> Binding | None: ...

    @abc.abstractmethod
    async def bind(self, binding: Binding) -> Binding:
        """Store ``binding`` unless the thread is already bound; return the binding now in force."""

    @abc.abstractmethod
    async def unbind(self, key: ThreadKey) -> Binding | None:
        """Remove and return the binding, or None when the thread was not bound."""

    @abc.abstractmethod
    async def set_muted(self, key: ThreadKey, muted: bool) -> bool:
        """Return False when the thread is not bound."""

    @abc.abstractmethod
    async def list_bindings(self, team: str, channel: str) -> list[Binding]:
        """Bindings of one channel, oldest first."""

    # -- outbox / relay log --------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, message: NewMessage) -> OutboxMessage | None:
        """Insert a pending message, due ``message.delay`` seconds from now (database clock).
        Return None when this identity is already stored."""

    @abc.abstractmethod
    async def get_message(self, thread: ThreadKey, ts: str, revision: str = "") -> OutboxMessage | None: ...

    @abc.abstractmethod
    async def replace_pending_text(self, thread: ThreadKey, ts: str, text: str, files: str) -> bool:
        """Replace the text of the original message ``ts`` if it is still ``pending``."""

    @abc.abstractmethod
    async def drop_pending(self, thread: ThreadKey, ts: str) -> OutboxMessage | None:
        """The original (revision ``""``) message ``ts`` was deleted in Slack: ``pending ->
        skipped`` with outcome ``"deleted"``. Return the row as now stored, or None when it was not
        pending (unknown, in flight or final)."""

    @abc.abstractmethod
    async def claim_due(self, owner: str, *, limit: int, lease: float) -> list[Claim]:
        """Claim up to ``limit`` messages, at most one per thread, oldest ``due_at`` first.

        A thread's candidate is its ``sending`` row when it has one (claimable once its lease has
        expired: taken over, attempts + 1), else its first ``pending`` row by ``(order_key, id)``
        (claimable once due). A pending row behind an earlier pending row is never claimed. Claimed
        rows are ``sending``, owned by ``owner`` until ``now + lease``. Safe under concurrent
        claimers in any number of processes.
        """

    @abc.abstractmethod
    async def renew(self, message_id: int, owner: str, lease: float) -> bool:
        """Extend our lease to ``now + lease``. False when the row is no longer ours and sending."""

    @abc.abstractmethod
    async def complete(
        self,
        message_id: int,
        owner: str,
        state: MessageState,
        outcome: str,
        detail: str | None,
        *,
        feedback: Sequence[NewFeedback] = (),
    ) -> bool:
        """Fenced ``sending -> state`` (a final state), enqueueing ``feedback`` in the same
        transaction: the thread is told if and only if the outcome is recorded. False, and nothing
        changed, when the row is no longer ours and sending. Raises :class:`ValueError` for a state
        that is not final."""

    @abc.abstractmethod
    async def retry_later(
        self,
        message_id: int,
        owner: str,
        delay: float,
        outcome: str,
        detail: str | None,
        *,
        feedback: Sequence[NewFeedback] = (),
    ) -> bool:
        """Fenced ``sending -> pending``, due ``now + delay``, lease cleared, the attempt's outcome
        noted and ``feedback`` enqueued in the same transaction. False when not ours."""

    @abc.abstractmethod
    async def release(self, message_id: int, owner: str) -> bool:
        """Fenced ``sending -> pending``, due now, lease cleared, the attempt not counted
        (attempts - 1; ``first_attempt_at`` forgotten when no attempt is left). False when not
        ours."""

    @abc.abstractmethod
    async def next_due_in(self) -> float | None:
        """Seconds until the next message may become claimable: the earliest future ``due_at`` of a
        ``pending`` message or ``lease_expires`` of a ``sending`` one (a lease that will expire,
        whoever holds it: its row is then taken over). None when neither lies in the future."""

    @abc.abstractmethod
    async def oldest_due_age(self) -> float | None:
        """Seconds the oldest due ``pending`` message has been due; None when none is due."""

    @abc.abstractmethod
    async def last_message(self, thread: ThreadKey) -> OutboxMessage | None:
        """The thread's most recently received message, for ``status``."""

    @abc.abstractmethod
    async def count_messages(self, thread: ThreadKey | None = None) -> dict[MessageState, int]: ...

    # -- feedback queue ------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue_feedback(self, items: Sequence[NewFeedback]) -> int:
        """Store the items as pending, due now, in one transaction; return how many were new (an
        item whose ``dedupe_key`` is already stored is ignored)."""

    @abc.abstractmethod
    async def claim_feedback(self, owner: str, *, limit: int, lease: float) -> list[FeedbackItem]:
        """Claim up to ``limit`` items, first in, first out per ``(team, channel)``: a channel's
        candidate is its ``sending`` item once that item's lease has expired (taken over), else its
        oldest pending item by id once due. A channel's later items wait for its earlier ones."""

    @abc.abstractmethod
    async def feedback_done(self, item_id: int, owner: str) -> bool:
        """Fenced ``sending -> done``. False when the item is no longer ours and sending."""

    @abc.abstractmethod
    async def feedback_retry(self, item_id: int, owner: str, delay: float, error: str) -> bool:
        """Fenced ``sending -> pending``, due ``now + delay``, ``error`` noted."""

    @abc.abstractmethod
    async def feedback_failed(self, item_id: int, owner: str, error: str) -> bool:
        """Fenced ``sending -> failed`` (final: never tried again), ``error`` noted."""

    @abc.abstractmethod
    async def next_feedback_due_in(self) -> float | None:
        """Like :meth:`next_due_in` for the feedback queue: seconds until the earliest future
        ``due_at`` of a ``pending`` item or ``lease_expires`` of a ``sending`` one; None when
        neither lies in the future."""

    @abc.abstractmethod
    async def feedback_depth(self) -> int:
        """Number of feedback items not yet done or failed (pending + sending)."""

    # -- singleton leases ----------------------------------------------------------------------
    @abc.abstractmethod
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Hold the lease ``name`` until ``now + ttl``: taken when free, expired or already ours
        (then renewed). False when another owner holds it."""

    @abc.abstractmethod
    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it; harmless otherwise."""

    # -- once-only markers ---------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(self, kind: str, key: str) -> bool:
        """Record ``(kind, key)``; True the first time, False ever after (until :meth:`unclaim`).

        Used to run a mention command once although Slack delivers it again, and to tell a thread
        only once that outsiders are not relayed.
        """

    @abc.abstractmethod
    async def unclaim(self, kind: str, key: str) -> None:
        """Forget ``(kind, key)``, so that the next :meth:`claim` of it wins again (a command whose
        run failed runs again when Slack retries it)."""

    # -- operations (health checks, retention) ---------------------------------------------------
    @abc.abstractmethod
    async def open_existing(self) -> None:
        """Open the database like :meth:`init` but apply no migration and create nothing (a SQLite
        file that does not exist is an error): for checks that must not change the database
        (``agent-relay doctor``). Close with :meth:`close`."""

    @abc.abstractmethod
    async def latest_schema_version(self) -> int:
        """The newest migration this code knows for the backend (what :meth:`init` migrates to)."""

    async def migrations_missing(self) -> int:
        """How many known migrations the database lacks (0: current; negative: the database is
        newer than this code)."""
        return await self.latest_schema_version() - await self.schema_version()

    @abc.abstractmethod
    async def purge_before(self, cutoff: float, *, batch: int) -> Purged:
        """Retention, one batch: blank the text and files (``""``, ``"[]"``) of up to ``batch`` final
        messages whose last attempt was due before ``cutoff`` (database clock, Unix seconds), and
        remove up to ``batch`` done or failed feedback items last changed before ``cutoff`` (an item
        with a ``dedupe_key`` keeps its row, so that it is still never enqueued twice, with its
        payload blanked to ``{}``). Rows stay, with their states and outcomes, so counts do not
        change; bindings are untouched. A purged message is not counted again: call until the
        result's :attr:`Purged.total` is 0."""

    # -- mirror watches ----------------------------------------------------------------------
    # A watch belongs to its binding: removing the binding removes the watch.
    @abc.abstractmethod
    async def watch_thread(
        self, thread: ThreadKey, provider: str, session_id: str, *, status_ts: str | None = None
    ) -> None:
        """Start watching a bound thread's session, due now, never read yet. A watch the thread
        already has is started again from scratch (new session, watermark forgotten); only its
        mode is kept. The thread must be bound."""

    @abc.abstractmethod
    async def get_watch(self, thread: ThreadKey) -> MirrorWatch | None: ...

    @abc.abstractmethod
    async def due_watches(self, *, limit: int, include_unset: bool) -> list[MirrorWatch]:
        """Up to ``limit`` watches due now (``next_poll_at <= now``), the longest due first, whose
        mode is ``on`` or ``final``, or unset when ``include_unset`` (the default mode is not off)."""

    @abc.abstractmethod
    async def session_watches(self, provider: str, session_id: str) -> list[MirrorWatch]:
        """Every watch of one session (several threads may be bound to it), oldest thread first."""

    @abc.abstractmethod
    async def record_poll(
        self,
        thread: ThreadKey,
        provider: str,
        session_id: str,
        progress: MirrorProgress,
        *,
        feedback: Sequence[NewFeedback] = (),
    ) -> bool:
        """Store the result of one read and enqueue ``feedback`` (the posts it causes) in the same
        transaction. False, and nothing changed, when the thread no longer watches that session."""

    @abc.abstractmethod
    async def set_watch_mode(self, thread: ThreadKey, mode: MirrorMode | None, *, reset: bool) -> bool:
        """Set the thread's mode and make it due now; ``reset`` forgets the watermark (the next
        read shows nothing older). False when the thread has no watch."""

    @abc.abstractmethod
    async def set_watch_status_ts(self, thread: ThreadKey, ts: str) -> bool:
        """Remember the ts of the status message the bot posted for the thread."""

    @abc.abstractmethod
    async def wake_watch(self, thread: ThreadKey) -> bool:
        """Make the thread's watch due now, at the quick pace (a message was relayed)."""
