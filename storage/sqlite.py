"""The embedded SQLite backend of :class:`storage.base.Store`, on one aiosqlite connection.

The connection runs in autocommit mode, so every write is committed before its method returns
(with WAL and ``synchronous=NORMAL`` a commit survives the process being killed; only a power
loss can take back the last commits). Operations of several statements run in an explicit
``BEGIN IMMEDIATE`` transaction. One :class:`asyncio.Lock` serialises all operations, so that
statements of concurrent callers never interleave inside one another's transaction.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from storage.base import Binding, MessageState, NewMessage, OutboxMessage, Store, StoreError, ThreadKey
from storage.migrations import apply_migrations, current_version

MEMORY = ":memory:"

_SLACK_TS = re.compile(r"^(?P<seconds>\d+)(?:\.(?P<fraction>\d{1,6}))?$")
_MAX_ORDER_KEY = 2**63 - 1

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


def _thread_params(key: ThreadKey) -> tuple[str, str, str]:
    return (key.team, key.channel, key.thread_ts)


def _binding(row: sqlite3.Row) -> Binding:
    return Binding(
        key=ThreadKey(str(row["team"]), str(row["channel"]), str(row["thread_ts"])),
        provider=str(row["provider"]),
        session_id=str(row["session_id"]),
        linked_by=str(row["linked_by"]),
        linked_at=float(row["linked_at"]),
        muted=bool(row["muted"]),
        anchor_ts=None if row["anchor_ts"] is None else str(row["anchor_ts"]),
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _message(row: sqlite3.Row) -> OutboxMessage:
    return OutboxMessage(
        id=int(row["id"]),
        thread=ThreadKey(str(row["team"]), str(row["channel"]), str(row["thread_ts"])),
        ts=str(row["ts"]),
        revision=str(row["revision"]),
        order_ts=str(row["order_ts"]),
        user=str(row["user"]),
        text=str(row["text"]),
        files=str(row["files"]),
        provider=str(row["provider"]),
        session_id=str(row["session_id"]),
        state=MessageState(row["state"]),
        attempts=int(row["attempts"]),
        outcome=_optional_str(row["outcome"]),
        detail=_optional_str(row["detail"]),
        received_at=float(row["received_at"]),
        updated_at=float(row["updated_at"]),
    )


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file (or ``":memory:"``)."""

    def __init__(self, path: str | Path) -> None:
        self.path: str | Path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def _is_memory(self) -> bool:
        return str(self.path) == MEMORY

    # -- lifecycle -----------------------------------------------------------------------------
    async def init(self) -> None:
        """Create the parent directory, open the connection, set pragmas and apply migrations."""
        async with self._lock:
            if self._conn is None:
                self._conn = await self._open()

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
    async def _one(conn: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> sqlite3.Row | None:
        rows = list(await conn.execute_fetchall(sql, params))
        return rows[0] if rows else None

    @staticmethod
    async def _write(conn: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> int:
        """Run one statement; return the number of rows it changed."""
        async with conn.execute(sql, params) as cursor:
            return cursor.rowcount

    # -- bindings ------------------------------------------------------------------------------
    async def get_binding(self, key: ThreadKey) -> Binding | None:
        async with self._locked() as conn:
            row = await self._one(conn, _SELECT_BINDING + _BY_THREAD, _thread_params(key))
        return None if row is None else _binding(row)

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
        return _binding(row)

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
        return None if row is None else _binding(row)

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
        return [_binding(row) for row in rows]

    # -- outbox / relay log --------------------------------------------------------------------
    async def enqueue(self, message: NewMessage) -> OutboxMessage | None:
        """Insert a pending message. Return None when this identity is already stored."""
        async with self._transaction() as conn:
            async with conn.execute(
                "INSERT INTO messages (team, channel, thread_ts, ts, revision, order_ts, order_key,"
                " user, text, files, provider, session_id, state, attempts, received_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
                " ON CONFLICT (team, channel, ts, revision) DO NOTHING",
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
                    MessageState.PENDING.value,
                    message.received_at,
                    time.time(),
                ),
            ) as cursor:
                inserted, new_id = cursor.rowcount, cursor.lastrowid
            if inserted == 0:
                return None
            row = await self._one(conn, _SELECT_MESSAGE + _BY_ID, (new_id,))
        if row is None:  # pragma: no cover - the row was just inserted
            raise StoreError(f"message {message.ts} vanished while it was written")
        return _message(row)

    async def get_message(self, thread: ThreadKey, ts: str, revision: str = "") -> OutboxMessage | None:
        async with self._locked() as conn:
            row = await self._one(
                conn,
                _SELECT_MESSAGE + _BY_THREAD + " AND ts = ? AND revision = ?",
                (*_thread_params(thread), ts, revision),
            )
        return None if row is None else _message(row)

    async def replace_pending_text(self, thread: ThreadKey, ts: str, text: str, files: str) -> bool:
        """Replace the text of the original message ``ts`` if it is still ``pending``."""
        async with self._locked() as conn:
            changed = await self._write(
                conn,
                "UPDATE messages SET text = ?, files = ?, updated_at = ?"
                " WHERE team = ? AND channel = ? AND thread_ts = ?"
                " AND ts = ? AND revision = '' AND state = ?",
                (text, files, time.time(), *_thread_params(thread), ts, MessageState.PENDING.value),
            )
        return changed > 0

    async def next_pending(self, thread: ThreadKey) -> OutboxMessage | None:
        """The thread's first message by ``order_ts`` that is pending or was left ``sending``."""
        async with self._locked() as conn:
            row = await self._one(
                conn,
                _SELECT_MESSAGE + _BY_THREAD + " AND state IN (?, ?) ORDER BY order_key, id LIMIT 1",
                (*_thread_params(thread), *_OPEN_STATES),
            )
        return None if row is None else _message(row)

    async def mark_sending(self, message_id: int) -> OutboxMessage | None:
        """pending/sending -> sending, attempts += 1. Return the updated row, None if it is final."""
        async with self._transaction() as conn:
            changed = await self._write(
                conn,
                "UPDATE messages SET state = ?, attempts = attempts + 1, updated_at = ?"
                " WHERE id = ? AND state IN (?, ?)",
                (MessageState.SENDING.value, time.time(), message_id, *_OPEN_STATES),
            )
            if changed == 0:
                return None
            row = await self._one(conn, _SELECT_MESSAGE + _BY_ID, (message_id,))
        return None if row is None else _message(row)

    async def mark_pending(self, message_id: int, outcome: str, detail: str | None) -> None:
        """sending -> pending after a transient failure, noting the outcome of that attempt."""
        async with self._locked() as conn:
            await self._write(
                conn,
                "UPDATE messages SET state = ?, outcome = ?, detail = ?, updated_at = ?"
                " WHERE id = ? AND state = ?",
                (
                    MessageState.PENDING.value,
                    outcome,
                    detail,
                    time.time(),
                    message_id,
                    MessageState.SENDING.value,
                ),
            )

    async def finish(self, message_id: int, state: MessageState, outcome: str, detail: str | None) -> None:
        """Record the final state of a message that is still pending or sending.

        A message already final keeps its first final state. Raises :class:`ValueError` when
        ``state`` is not final.
        """
        if not state.final:
            raise ValueError(f"finish() needs a final state, not {state.value!r}")
        async with self._locked() as conn:
            await self._write(
                conn,
                "UPDATE messages SET state = ?, outcome = ?, detail = ?, updated_at = ?"
                " WHERE id = ? AND state IN (?, ?)",
                (state.value, outcome, detail, time.time(), message_id, *_OPEN_STATES),
            )

    async def threads_with_pending(self) -> list[ThreadKey]:
        """Threads that have pending or sending messages, the one with the oldest such message first."""
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
        return None if row is None else _message(row)

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

    # -- once-only markers ---------------------------------------------------------------------
    async def claim(self, kind: str, key: str) -> bool:
        """Record ``(kind, key)``; True the first time, False ever after."""
        async with self._locked() as conn:
            inserted = await self._write(
                conn,
                "INSERT INTO claims (kind, key, claimed_at) VALUES (?, ?, ?)"
                " ON CONFLICT (kind, key) DO NOTHING",
                (kind, key, time.time()),
            )
        return inserted > 0

    async def unclaim(self, kind: str, key: str) -> None:
        """Forget ``(kind, key)``, so that the next :meth:`claim` of it succeeds again."""
        async with self._locked() as conn:
            await self._write(conn, "DELETE FROM claims WHERE kind = ? AND key = ?", (kind, key))
