"""The async store interface that every backend implements.

Two kinds of rows:

* :class:`Binding`: one Slack thread, keyed by ``(team, channel, thread_ts)``, bound to one provider
  session.
* :class:`OutboxMessage`: one Slack message (or one correction of it) to relay. It is written
  *before* any provider call (the outbox), is unique on the Slack message identity
  ``(team, channel, ts, revision)``, and stays afterwards as the log of what was relayed and how it
  ended.

The interface is written for several replicas sharing one PostgreSQL store later: every state change
of a message is a single conditional update (``pending -> sending -> final``), so that a backend can
add row leases without changing callers. Timestamps are Unix seconds (float) in UTC.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class StoreError(Exception):
    """A backend could not do what was asked (bad URL, unreadable file, migration failure)."""


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
    SKIPPED = "skipped"  # dropped on purpose (binding removed before it was sent)

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


class Store(abc.ABC):
    """Async store. Backends: :mod:`storage.sqlite` (embedded default); PostgreSQL later."""

    # -- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def init(self) -> None:
        """Open the connection and apply pending schema migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

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
        """Insert a pending message. Return None when this identity is already stored."""

    @abc.abstractmethod
    async def get_message(self, thread: ThreadKey, ts: str, revision: str = "") -> OutboxMessage | None: ...

    @abc.abstractmethod
    async def replace_pending_text(self, thread: ThreadKey, ts: str, text: str, files: str) -> bool:
        """Replace the text of the original message ``ts`` if it is still ``pending``."""

    @abc.abstractmethod
    async def next_pending(self, thread: ThreadKey) -> OutboxMessage | None:
        """The thread's first message by ``order_ts`` that is pending or was left ``sending``."""

    @abc.abstractmethod
    async def mark_sending(self, message_id: int) -> OutboxMessage | None:
        """pending/sending -> sending, attempts += 1. Return the updated row, None if it is final."""

    @abc.abstractmethod
    async def mark_pending(self, message_id: int, outcome: str, detail: str | None) -> None:
        """sending -> pending after a transient failure, noting the outcome of that attempt."""

    @abc.abstractmethod
    async def finish(self, message_id: int, state: MessageState, outcome: str, detail: str | None) -> None:
        """Record the final state of a message."""

    @abc.abstractmethod
    async def threads_with_pending(self) -> list[ThreadKey]:
        """Threads that have pending or sending messages (crash recovery at start)."""

    @abc.abstractmethod
    async def last_message(self, thread: ThreadKey) -> OutboxMessage | None:
        """The thread's most recently received message, for ``status``."""

    @abc.abstractmethod
    async def count_messages(self, thread: ThreadKey | None = None) -> dict[MessageState, int]: ...

    # -- once-only markers ---------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(self, kind: str, key: str) -> bool:
        """Record ``(kind, key)``; True the first time, False ever after.

        Used to run a mention command once although Slack delivers it again, and to tell a thread
        only once that outsiders are not relayed.
        """

    @abc.abstractmethod
    async def unclaim(self, kind: str, key: str) -> None:
        """Forget ``(kind, key)`` (a command whose run failed runs again when Slack retries it)."""
