"""The embedded SQLite backend of :class:`storage.base.Store`, on one aiosqlite connection.

The connection runs in autocommit mode, so every write is committed before its method returns
(with WAL and ``synchronous=NORMAL`` a commit survives the process being killed; only a power
loss can take back the last commits). Operations of several statements run in an explicit
``BEGIN IMMEDIATE`` transaction. One :class:`asyncio.Lock` serialises all operations, so that
statements of concurrent callers never interleave inside one another's transaction.

Several processes may share one file (on one machine, on a local file system): every claim and
every fenced change is one ``BEGIN IMMEDIATE`` transaction, which SQLite runs one at a time across
processes, and leases keep a claimed row from being claimed again while its owner is alive. The
database clock is the host clock (:func:`time.time`), the same for every process on the machine
that holds the file; a file shared over a network file system is not supported. Wake-up callbacks
run in the process that made the change, right after its commit; other processes find the work by
polling.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from storage._common import WakeListeners, binding_of, encode_payload, feedback_of, message_of
from storage.base import (
    WAKE_FEEDBACK,
    WAKE_MESSAGES,
    Binding,
    Claim,
    FeedbackItem,
    FeedbackState,
    MessageState,
    NewFeedback,
    NewMessage,
    OutboxMessage,
    Purged,
    Store,
    StoreError,
    ThreadKey,
    WakeCallback,
    order_key,
)
from storage.migrations import apply_migrations, current_version, load_migrations

MEMORY = ":memory:"

Params = Iterable[Any] | Mapping[str, Any]

# Queries are composed of these constants only; every value is a bound parameter.
_SELECT_BINDING = (
    "SELECT team, channel, thread_ts, provider, session_id, linked_by, linked_at, muted, anchor_ts"
    " FROM bindings"
)
_SELECT_MESSAGE = (
    "SELECT id, team, channel, thread_ts, ts, revision, order_ts, user, text, files, provider,"
    " session_id, state, attempts, outcome, detail, received_at, updated_at FROM messages"
)
_BY_THREAD = " WHERE team = ? AND channel = ? AND thread_ts = ?"
_BY_ID = " WHERE id = ?"
_OPEN_STATES = (MessageState.PENDING.value, MessageState.SENDING.value)


_SENDING = MessageState.SENDING.value
_PENDING = MessageState.PENDING.value

# The thread's candidate: its first pending row by (order_key, id) when nothing of the thread is in
# flight, or its sending row once the lease has expired (NULL: left by the unleased relay).
_CLAIM_MESSAGES = """
UPDATE messages SET state = 'sending', lease_owner = :owner, lease_expires = :expires,
    attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, :now), updated_at = :now
WHERE id IN (
    SELECT id FROM (
        SELECT m.id, m.due_at FROM messages m
        WHERE m.state = 'pending' AND m.due_at <= :now
          AND NOT EXISTS (
              SELECT 1 FROM messages s
              WHERE s.team = m.team AND s.channel = m.channel AND s.thread_ts = m.thread_ts
                AND s.state = 'sending')
          AND NOT EXISTS (
              SELECT 1 FROM messages p
              WHERE p.team = m.team AND p.channel = m.channel AND p.thread_ts = m.thread_ts
                AND p.state = 'pending' AND (p.order_key, p.id) < (m.order_key, m.id))
        UNION ALL
        SELECT id, due_at FROM messages
        WHERE state = 'sending' AND (lease_expires IS NULL OR lease_expires <= :now)
    ) ORDER BY due_at, id LIMIT :limit
)
RETURNING *
"""

_STALE_SENDING = (
    "SELECT id FROM messages WHERE state = 'sending' AND (lease_expires IS NULL OR lease_expires <= :now)"
)

# Retention (see Store.purge_before). A purged row's due_at becomes 0 (a final row's due_at is never
# read again), so that each batch's range scan of messages_state_due starts past the rows already
# purged instead of reading them again.
_PURGE_MESSAGES = """
UPDATE messages SET text = '', files = '[]', due_at = 0
WHERE id IN (
    SELECT id FROM messages
    WHERE state IN ('delivered', 'failed', 'skipped') AND due_at > 0 AND due_at < :cutoff
      AND updated_at < :cutoff
    LIMIT :batch
)
"""
_PURGE_FEEDBACK = """
DELETE FROM feedback
WHERE id IN (
    SELECT id FROM feedback
    WHERE state IN ('done', 'failed') AND due_at > 0 AND due_at < :cutoff AND updated_at < :cutoff
      AND dedupe_key IS NULL
    LIMIT :batch
)
"""
_BLANK_FEEDBACK = """
UPDATE feedback SET payload = '{}', due_at = 0
WHERE id IN (
    SELECT id FROM feedback
    WHERE state IN ('done', 'failed') AND due_at > 0 AND due_at < :cutoff AND updated_at < :cutoff
      AND dedupe_key IS NOT NULL
    LIMIT :batch
)
"""

# Per (team, channel): its sending item once the lease has expired, else its oldest pending item.
_CLAIM_FEEDBACK = """
UPDATE feedback SET state = 'sending', lease_owner = :owner, lease_expires = :expires,
    attempts = attempts + 1, updated_at = :now
WHERE id IN (
    SELECT id FROM (
        SELECT f.id, f.due_at FROM feedback f
        WHERE f.state = 'pending' AND f.due_at <= :now
          AND NOT EXISTS (
              SELECT 1 FROM feedback s
              WHERE s.team = f.team AND s.channel = f.channel AND s.state = 'sending')
          AND NOT EXISTS (
              SELECT 1 FROM feedback p
              WHERE p.team = f.team AND p.channel = f.channel AND p.state = 'pending' AND p.id < f.id)
        UNION ALL
        SELECT id, due_at FROM feedback
        WHERE state = 'sending' AND (lease_expires IS NULL OR lease_expires <= :now)
    ) ORDER BY due_at, id LIMIT :limit
)
RETURNING *
"""

_INSERT_FEEDBACK = (
    "INSERT INTO feedback (team, channel, kind, payload, dedupe_key, state, attempts, due_at,"
    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
    " ON CONFLICT (dedupe_key) DO NOTHING"
)


_FEEDBACK_DONE = (
    "UPDATE feedback SET state = 'done', lease_expires = NULL, updated_at = :now"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_FEEDBACK_RETRY = (
    "UPDATE feedback SET state = 'pending', due_at = :now + :delay, lease_owner = NULL,"
    " lease_expires = NULL, last_error = :error, updated_at = :now"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_FEEDBACK_FAILED = (
    "UPDATE feedback SET state = 'failed', lease_expires = NULL, last_error = :error, updated_at = :now"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)


def _file_identity(path: str | Path) -> tuple[str, int, int]:
    """The absolute path of the open database file and its (st_dev, st_ino)."""
    absolute = os.path.abspath(path)
    stat = os.stat(absolute)
    return (absolute, stat.st_dev, stat.st_ino)


def _thread_params(key: ThreadKey) -> tuple[str, str, str]:
    return (key.team, key.channel, key.thread_ts)


def _final(state: MessageState, method: str) -> None:
    if not state.final:
        raise ValueError(f"{method}() needs a final state, not {state.value!r}")


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file (or ``":memory:"``)."""

    def __init__(self, path: str | Path) -> None:
        self.path: str | Path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._wake = WakeListeners()
        self._identity: tuple[str, int, int] | None = None  # (absolute path, st_dev, st_ino)
        self._lost = False

    @property
    def _is_memory(self) -> bool:
        return str(self.path) == MEMORY

    # -- lifecycle -----------------------------------------------------------------------------
    async def init(self) -> None:
        """Create the parent directory, open the connection, set pragmas and apply migrations."""
        async with self._lock:
            if self._conn is None:
                self._conn = await self._open()
                self._lost = False
                if not self._is_memory:
                    self._identity = await asyncio.to_thread(_file_identity, self.path)

    async def _open(self) -> aiosqlite.Connection:
        try:
            if not self._is_memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
        try:
            conn.row_factory = aiosqlite.Row
            for pragma in (
                "PRAGMA busy_timeout=5000",  # first: switching to WAL may have to wait for a lock
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys=ON",
            ):
                await conn.execute_fetchall(pragma)
            await apply_migrations(conn)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
            raise
        return conn

    async def close(self) -> None:
        """Close the connection; harmless when it is already closed."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    async def schema_version(self) -> int:
        async with self._locked() as conn:
            return await current_version(conn)

    async def now(self) -> float:
        """The host clock: every process on the file's machine reads the same one."""
        return time.time()

    @property
    def lost(self) -> bool:
        return self._lost

    async def check(self) -> None:
        """Raise :class:`StoreError` when the file was deleted or replaced under the running process
        (:attr:`lost` is then True for good) or a write to it fails."""
        identity = self._identity
        if identity is not None:
            path, dev, ino = identity
            try:
                stat = await asyncio.to_thread(os.stat, path)
            except FileNotFoundError:
                self._lost = True
            except OSError as exc:
                raise StoreError(f"cannot stat the SQLite database {path}: {exc}") from exc
            else:
                self._lost = self._lost or (stat.st_dev, stat.st_ino) != (dev, ino)
            if self._lost:
                raise StoreError(f"the SQLite database {path} was deleted or replaced while open")
        async with self._transaction() as conn:
            await self._write(conn, "UPDATE schema_version SET version = version WHERE id = 1", ())

    def add_wake_listener(self, callback: WakeCallback) -> None:
        """Callbacks run in this process right after a commit that made work claimable."""
        self._wake.add(callback)

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            if self._conn is None:
                raise StoreError("the SQLite store is not open: call init() first")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error on {self.path}: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._locked() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                await conn.rollback()
                raise

    @staticmethod
    async def _one(conn: aiosqlite.Connection, sql: str, params: Params) -> sqlite3.Row | None:
        rows = list(await conn.execute_fetchall(sql, params))
        return rows[0] if rows else None

    @staticmethod
    async def _write(conn: aiosqlite.Connection, sql: str, params: Params) -> int:
        """Run one statement; return the number of rows it changed."""
        async with conn.execute(sql, params) as cursor:
            return cursor.rowcount

    @staticmethod
    async def _insert_feedback(conn: aiosqlite.Connection, items: Sequence[NewFeedback], now: float) -> int:
        rows = [
            (item.team, item.channel, item.kind, encode_payload(item.payload), item.dedupe_key, now, now, now)
            for item in items
        ]
        inserted = 0
        for row in rows:
            async with conn.execute(_INSERT_FEEDBACK, row) as cursor:
                inserted += cursor.rowcount
        return inserted

    # -- bindings ------------------------------------------------------------------------------
    async def get_binding(self, key: ThreadKey) -> Binding | None:
        async with self._locked() as conn:
            row = await self._one(conn, _SELECT_BINDING + _BY_THREAD, _thread_params(key))
        return None if row is None else binding_of(row)

    async def bind(self, binding: Binding) -> Binding:
        """Store ``binding`` unless the thread is already bound; return the binding now in force."""
        async with self._transaction() as conn:
            await self._write(
                conn,
                "INSERT INTO bindings (team, channel, thread_ts, provider, session_id, linked_by, linked_at,"
                " muted, anchor_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (team, channel, thread_ts) DO NOTHING",
                (
                    *_thread_params(binding.key),
                    binding.provider,
                    binding.session_id,
                    binding.linked_by,
                    binding.linked_at,
                    int(binding.muted),
                    binding.anchor_ts,
                ),
            )
            row = await self._one(
                conn,
                _SELECT_BINDING + _BY_THREAD,
                _thread_params(binding.key),
            )
        if row is None:  # pragma: no cover - the row was just inserted or already there
            raise StoreError(f"binding of {binding.key} vanished while it was written")
        return binding_of(row)

    async def unbind(self, key: ThreadKey) -> Binding | None:
        """Remove and return the binding, or None when the thread was not bound."""
        async with self._transaction() as conn:
            row = await self._one(conn, _SELECT_BINDING + _BY_THREAD, _thread_params(key))
            if row is not None:
                await self._write(
                    conn,
                    "DELETE FROM bindings WHERE team = ? AND channel = ? AND thread_ts = ?",
                    _thread_params(key),
                )
        return None if row is None else binding_of(row)

    async def set_muted(self, key: ThreadKey, muted: bool) -> bool:
        """Return False when the thread is not bound."""
        async with self._locked() as conn:
            changed = await self._write(
                conn,
                "UPDATE bindings SET muted = ? WHERE team = ? AND channel = ? AND thread_ts = ?",
                (int(muted), *_thread_params(key)),
            )
        return changed > 0

    async def list_bindings(self, team: str, channel: str) -> list[Binding]:
        """Bindings of one channel, oldest first."""
        async with self._locked() as conn:
            rows = await conn.execute_fetchall(
                _SELECT_BINDING + " WHERE team = ? AND channel = ? ORDER BY linked_at, rowid",
                (team, channel),
            )
        return [binding_of(row) for row in rows]

    # -- outbox / relay log --------------------------------------------------------------------
    async def enqueue(self, message: NewMessage) -> OutboxMessage | None:
        """Insert a pending message due ``message.delay`` seconds from now. Return None when this
        identity is already stored."""
        async with self._transaction() as conn:
            now = time.time()
            rows = list(
                await conn.execute_fetchall(
                    "INSERT INTO messages (team, channel, thread_ts, ts, revision, order_ts, order_key,"
                    " user, text, files, provider, session_id, state, attempts, received_at, updated_at,"
                    " due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
                    " ON CONFLICT (team, channel, ts, revision) DO NOTHING RETURNING *",
                    (
                        *_thread_params(message.thread),
                        message.ts,
                        message.revision,
                        message.order_ts,
                        order_key(message.order_ts),
                        message.user,
                        message.text,
                        message.files,
                        message.provider,
                        message.session_id,
                        message.received_at,
                        now,
                        now + message.delay,
                    ),
                )
            )
        if not rows:
            return None
        self._wake.fire(WAKE_MESSAGES)
        return message_of(rows[0])

    async def get_message(self, thread: ThreadKey, ts: str, revision: str = "") -> OutboxMessage | None:
        async with self._locked() as conn:
            row = await self._one(
                conn,
                _SELECT_MESSAGE + _BY_THREAD + " AND ts = ? AND revision = ?",
                (*_thread_params(thread), ts, revision),
            )
        return None if row is None else message_of(row)

    async def replace_pending_text(self, thread: ThreadKey, ts: str, text: str, files: str) -> bool:
        """Replace the text of the original message ``ts`` if it is still ``pending``."""
        async with self._locked() as conn:
            changed = await self._write(
                conn,
                "UPDATE messages SET text = ?, files = ?, updated_at = ?"
                " WHERE team = ? AND channel = ? AND thread_ts = ?"
                " AND ts = ? AND revision = '' AND state = ?",
                (text, files, time.time(), *_thread_params(thread), ts, _PENDING),
            )
        return changed > 0

    async def drop_pending(self, thread: ThreadKey, ts: str) -> OutboxMessage | None:
        """``pending -> skipped`` (outcome ``"deleted"``) for an original deleted in Slack."""
        async with self._transaction() as conn:
            row = await self._one(
                conn,
                "UPDATE messages SET state = 'skipped', outcome = 'deleted',"
                " detail = 'deleted in Slack before it was sent', updated_at = ?"
                " WHERE team = ? AND channel = ? AND thread_ts = ? AND ts = ? AND revision = ''"
                " AND state = 'pending' RETURNING *",
                (time.time(), *_thread_params(thread), ts),
            )
        if row is None:
            return None
        self._wake.fire(WAKE_MESSAGES)  # the next message of the thread may be claimable now
        return message_of(row)

    async def claim_due(self, owner: str, *, limit: int, lease: float) -> list[Claim]:
        """Claim up to ``limit`` due messages, one per thread, in one ``BEGIN IMMEDIATE``
        transaction (one claimer at a time across processes on the file)."""
        if limit <= 0:
            return []
        async with self._transaction() as conn:
            now = time.time()
            # Rows left sending under an expired lease (few: at most one per thread), before the
            # claim overwrites their owner: those the claim picks are taken over.
            stale = {int(row[0]) for row in await conn.execute_fetchall(_STALE_SENDING, {"now": now})}
            rows = list(
                await conn.execute_fetchall(
                    _CLAIM_MESSAGES,
                    {"owner": owner, "expires": now + lease, "now": now, "limit": limit},
                )
            )
        rows.sort(key=lambda row: (float(row["due_at"]), int(row["id"])))
        return [
            Claim(
                message=message_of(row),
                owner=owner,
                lease_expires=float(row["lease_expires"]),
                first_attempt_at=float(row["first_attempt_at"]),
                now=now,
                taken_over=int(row["id"]) in stale,
            )
            for row in rows
        ]

    async def renew(self, message_id: int, owner: str, lease: float) -> bool:
        """Extend our lease on a sending row to ``now + lease``."""
        async with self._transaction() as conn:
            now = time.time()
            changed = await self._write(
                conn,
                "UPDATE messages SET lease_expires = :expires"
                " WHERE id = :id AND state = 'sending' AND lease_owner = :owner",
                {"expires": now + lease, "id": message_id, "owner": owner},
            )
        return changed > 0

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
        """Fenced ``sending -> state`` (final) plus ``feedback``, in one transaction."""
        _final(state, "complete")
        async with self._transaction() as conn:
            now = time.time()
            changed = await self._write(
                conn,
                "UPDATE messages SET state = :state, outcome = :outcome, detail = :detail,"
                " lease_expires = NULL, updated_at = :now"
                " WHERE id = :id AND state = 'sending' AND lease_owner = :owner",
                {
                    "state": state.value,
                    "outcome": outcome,
                    "detail": detail,
                    "now": now,
                    "id": message_id,
                    "owner": owner,
                },
            )
            if changed == 0:
                return False
            added = await self._insert_feedback(conn, feedback, now)
        self._wake.fire(WAKE_MESSAGES, *([WAKE_FEEDBACK] if added else []))
        return True

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
        """Fenced ``sending -> pending`` due ``now + delay``, plus ``feedback``, in one transaction."""
        async with self._transaction() as conn:
            now = time.time()
            changed = await self._write(
                conn,
                "UPDATE messages SET state = 'pending', due_at = :due, outcome = :outcome,"
                " detail = :detail, lease_owner = NULL, lease_expires = NULL, updated_at = :now"
                " WHERE id = :id AND state = 'sending' AND lease_owner = :owner",
                {
                    "due": now + delay,
                    "outcome": outcome,
                    "detail": detail,
                    "now": now,
                    "id": message_id,
                    "owner": owner,
                },
            )
            if changed == 0:
                return False
            added = await self._insert_feedback(conn, feedback, now)
        self._wake.fire(WAKE_MESSAGES, *([WAKE_FEEDBACK] if added else []))
        return True

    async def release(self, message_id: int, owner: str) -> bool:
        """Fenced ``sending -> pending``, due now, the attempt not counted."""
        async with self._transaction() as conn:
            now = time.time()
            changed = await self._write(
                conn,
                "UPDATE messages SET state = 'pending', due_at = :now, lease_owner = NULL,"
                " lease_expires = NULL, attempts = MAX(attempts - 1, 0),"
                " first_attempt_at = CASE WHEN attempts > 1 THEN first_attempt_at END,"
                " updated_at = :now"
                " WHERE id = :id AND state = 'sending' AND lease_owner = :owner",
                {"now": now, "id": message_id, "owner": owner},
            )
        if changed == 0:
            return False
        self._wake.fire(WAKE_MESSAGES)
        return True

    async def next_due_in(self) -> float | None:
        async with self._locked() as conn:
            now = time.time()
            row = await self._one(
                conn, "SELECT MIN(due_at) FROM messages WHERE state = 'pending' AND due_at > ?", (now,)
            )
        return None if row is None or row[0] is None else max(float(row[0]) - now, 0.0)

    async def oldest_due_age(self) -> float | None:
        async with self._locked() as conn:
            now = time.time()
            row = await self._one(
                conn, "SELECT MIN(due_at) FROM messages WHERE state = 'pending' AND due_at <= ?", (now,)
            )
        return None if row is None or row[0] is None else max(now - float(row[0]), 0.0)

    async def next_pending(self, thread: ThreadKey) -> OutboxMessage | None:
        """The thread's first message by ``order_ts`` that is pending or was left ``sending``.

        Deprecated: removed when the leased engine lands."""
        async with self._locked() as conn:
            row = await self._one(
                conn,
                _SELECT_MESSAGE + _BY_THREAD + " AND state IN (?, ?) ORDER BY order_key, id LIMIT 1",
                (*_thread_params(thread), *_OPEN_STATES),
            )
        return None if row is None else message_of(row)

    async def mark_sending(self, message_id: int) -> OutboxMessage | None:
        """pending/sending -> sending, attempts += 1. Return the updated row, None if it is final.

        Deprecated: removed when the leased engine lands."""
        async with self._transaction() as conn:
            changed = await self._write(
                conn,
                "UPDATE messages SET state = ?, attempts = attempts + 1, updated_at = ?"
                " WHERE id = ? AND state IN (?, ?)",
                (_SENDING, time.time(), message_id, *_OPEN_STATES),
            )
            if changed == 0:
                return None
            row = await self._one(conn, _SELECT_MESSAGE + _BY_ID, (message_id,))
        return None if row is None else message_of(row)

    async def mark_pending(self, message_id: int, outcome: str, detail: str | None) -> None:
        """sending -> pending after a transient failure, noting the outcome of that attempt.

        Deprecated: removed when the leased engine lands."""
        async with self._locked() as conn:
            await self._write(
                conn,
                "UPDATE messages SET state = ?, outcome = ?, detail = ?, updated_at = ?"
                " WHERE id = ? AND state = ?",
                (_PENDING, outcome, detail, time.time(), message_id, _SENDING),
            )

    async def finish(self, message_id: int, state: MessageState, outcome: str, detail: str | None) -> None:
        """Record the final state of a message that is still pending or sending.

        A message already final keeps its first final state. Raises :class:`ValueError` when
        ``state`` is not final. Deprecated: removed when the leased engine lands.
        """
        _final(state, "finish")
        async with self._locked() as conn:
            await self._write(
                conn,
                "UPDATE messages SET state = ?, outcome = ?, detail = ?, updated_at = ?"
                " WHERE id = ? AND state IN (?, ?)",
                (state.value, outcome, detail, time.time(), message_id, *_OPEN_STATES),
            )

    async def threads_with_pending(self) -> list[ThreadKey]:
        """Threads that have pending or sending messages, the one with the oldest such message first.

        Deprecated: removed when the leased engine lands."""
        async with self._locked() as conn:
            rows = await conn.execute_fetchall(
                "SELECT team, channel, thread_ts FROM messages WHERE state IN (?, ?)"
                " GROUP BY team, channel, thread_ts ORDER BY MIN(received_at), MIN(id)",
                _OPEN_STATES,
            )
        return [ThreadKey(str(row[0]), str(row[1]), str(row[2])) for row in rows]

    async def last_message(self, thread: ThreadKey) -> OutboxMessage | None:
        """The thread's most recently received message, for ``status``."""
        async with self._locked() as conn:
            row = await self._one(
                conn,
                _SELECT_MESSAGE + _BY_THREAD + " ORDER BY received_at DESC, id DESC LIMIT 1",
                _thread_params(thread),
            )
        return None if row is None else message_of(row)

    async def count_messages(self, thread: ThreadKey | None = None) -> dict[MessageState, int]:
        """Number of messages in each state (every state present, zero included)."""
        sql = "SELECT state, COUNT(*) FROM messages"
        params: tuple[str, ...] = ()
        if thread is not None:
            sql, params = sql + _BY_THREAD, _thread_params(thread)
        async with self._locked() as conn:
            rows = await conn.execute_fetchall(sql + " GROUP BY state", params)
        counts = dict.fromkeys(MessageState, 0)
        for row in rows:
            counts[MessageState(row[0])] = int(row[1])
        return counts

    # -- feedback queue ------------------------------------------------------------------------
    async def enqueue_feedback(self, items: Sequence[NewFeedback]) -> int:
        if not items:
            return 0
        async with self._transaction() as conn:
            added = await self._insert_feedback(conn, items, time.time())
        if added:
            self._wake.fire(WAKE_FEEDBACK)
        return added

    async def claim_feedback(self, owner: str, *, limit: int, lease: float) -> list[FeedbackItem]:
        if limit <= 0:
            return []
        async with self._transaction() as conn:
            now = time.time()
            rows = list(
                await conn.execute_fetchall(
                    _CLAIM_FEEDBACK, {"owner": owner, "expires": now + lease, "now": now, "limit": limit}
                )
            )
        rows.sort(key=lambda row: (float(row["due_at"]), int(row["id"])))
        return [feedback_of(row, owner) for row in rows]

    async def _end_feedback(self, sql: str, item_id: int, owner: str, **params: Any) -> bool:
        async with self._transaction() as conn:
            changed = await self._write(
                conn, sql, {**params, "now": time.time(), "id": item_id, "owner": owner}
            )
        if changed == 0:
            return False
        self._wake.fire(WAKE_FEEDBACK)  # the channel's next item may be claimable now
        return True

    async def feedback_done(self, item_id: int, owner: str) -> bool:
        return await self._end_feedback(_FEEDBACK_DONE, item_id, owner)

    async def feedback_retry(self, item_id: int, owner: str, delay: float, error: str) -> bool:
        return await self._end_feedback(_FEEDBACK_RETRY, item_id, owner, delay=delay, error=error)

    async def feedback_failed(self, item_id: int, owner: str, error: str) -> bool:
        return await self._end_feedback(_FEEDBACK_FAILED, item_id, owner, error=error)

    async def feedback_depth(self) -> int:
        async with self._locked() as conn:
            row = await self._one(
                conn,
                "SELECT COUNT(*) FROM feedback WHERE state IN (?, ?)",
                (FeedbackState.PENDING.value, FeedbackState.SENDING.value),
            )
        return 0 if row is None else int(row[0])

    # -- singleton leases ----------------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        async with self._transaction() as conn:
            now = time.time()
            row = await self._one(
                conn,
                "INSERT INTO leases (name, owner, expires_at) VALUES (:name, :owner, :expires)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE leases.owner = excluded.owner OR leases.expires_at <= :now"
                " RETURNING owner",
                {"name": name, "owner": owner, "expires": now + ttl, "now": now},
            )
        return row is not None

    async def release_lease(self, name: str, owner: str) -> None:
        async with self._locked() as conn:
            await self._write(conn, "DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    # -- once-only markers ---------------------------------------------------------------------
    async def claim(self, kind: str, key: str) -> bool:
        """Record ``(kind, key)``; True the first time, False ever after (until :meth:`unclaim`)."""
        async with self._locked() as conn:
            inserted = await self._write(
                conn,
                "INSERT INTO claims (kind, key, claimed_at) VALUES (?, ?, ?)"
                " ON CONFLICT (kind, key) DO NOTHING",
                (kind, key, time.time()),
            )
        return inserted > 0

    async def unclaim(self, kind: str, key: str) -> None:
        async with self._locked() as conn:
            await self._write(conn, "DELETE FROM claims WHERE kind = ? AND key = ?", (kind, key))

    # -- operations (health checks, retention) ---------------------------------------------------
    async def open_existing(self) -> None:
        """Open the file read-write without creating it, and apply no migration."""
        async with self._lock:
            if self._conn is not None:
                return
            try:
                if self._is_memory:
                    conn = await aiosqlite.connect(MEMORY, isolation_level=None)
                else:
                    path = await asyncio.to_thread(Path(self.path).absolute)
                    if not await asyncio.to_thread(path.is_file):
                        raise StoreError(f"the SQLite database {self.path} does not exist")
                    uri = f"{path.as_uri()}?mode=rw"
                    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
            conn.row_factory = aiosqlite.Row
            try:
                await conn.execute_fetchall("PRAGMA busy_timeout=5000")
            except sqlite3.Error as exc:
                await conn.close()
                raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
            self._conn = conn
            self._lost = False
            if not self._is_memory:
                self._identity = await asyncio.to_thread(_file_identity, self.path)

    async def latest_schema_version(self) -> int:
        migrations = load_migrations("sqlite")
        return migrations[-1].version if migrations else 0

    async def purge_before(self, cutoff: float, *, batch: int) -> Purged:
        """One retention batch, in one ``BEGIN IMMEDIATE`` transaction."""
        if batch <= 0:
            return Purged()
        params = {"cutoff": cutoff, "batch": batch}
        async with self._transaction() as conn:
            messages = await self._write(conn, _PURGE_MESSAGES, params)
            deleted = await self._write(conn, _PURGE_FEEDBACK, params)
            blanked = await self._write(conn, _BLANK_FEEDBACK, params)
        return Purged(messages=messages, feedback=deleted + blanked)
