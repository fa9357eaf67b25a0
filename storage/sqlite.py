"""The embedded SQLite backend of :class:`storage.base.Store`, on one aiosqlite connection.

The connection runs in autocommit mode, so every write is committed before its method returns
(with WAL and ``synchronous=NORMAL`` a commit survives the process being killed; only a power
loss can take back the last commits). An operation that is one statement runs as that statement
alone: in autocommit mode it is its own transaction, and a writing statement takes the database's
write lock (waiting ``busy_timeout`` for it) before it reads anything, as ``BEGIN IMMEDIATE``
would. Only operations of several statements run in an explicit ``BEGIN IMMEDIATE`` transaction.
One :class:`asyncio.Lock` serialises all operations, so that statements of concurrent callers
never interleave inside one another's transaction.

Every statement is one round trip to aiosqlite's worker thread, so the hot path is kept short:
writes say what they changed with ``RETURNING`` or the cursor's row count (never a second
``SELECT``), feedback items are stored by one multi-row ``INSERT``, a cursor whose statement has
run is not closed separately (sqlite3 resets a statement that returns no rows as soon as it ran),
and a transaction on the hot path (an outcome and its feedback, a mirror poll and its posts) runs
as one function on the worker thread, begin to commit, in one trip (:meth:`SQLiteStore._in_one_trip`).

Claims read only the head of each thread (each channel, for feedback): the row marked ``head``,
which triggers of migration 4 move inside the statement of every change that can move it, so a
claim's cost does not grow with a thread's backlog and the marker costs no round trip.

Several processes may share one file (on one machine, on a local file system): every claim and
every fenced change is one write statement, or one ``BEGIN IMMEDIATE`` transaction when it stores
feedback too, which SQLite runs one at a time across processes, and leases keep a claimed row from
being claimed again while its owner is alive. The database clock is the host clock
(:func:`time.time`), the same for every process on the machine that holds the file; a file shared
over a network file system is not supported. Statements that claim, lease or set a due time read
it themselves, as ``relay_now()`` (registered on the connection): a time taken before the statement
could be older than a commit it waited for, making a lease shorter than asked and a claim seem to
start before the previous attempt of its thread ended. Wake-up callbacks run in the process that
made the change, right after its commit; other processes find the work by polling.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiosqlite

from storage._common import (
    WakeListeners,
    binding_of,
    encode_payload,
    feedback_of,
    message_of,
    watch_modes,
    watch_of,
)
from storage.base import (
    WAKE_FEEDBACK,
    WAKE_MESSAGES,
    Binding,
    Claim,
    FeedbackItem,
    FeedbackState,
    MessageState,
    MirrorMode,
    MirrorProgress,
    MirrorWatch,
    NewFeedback,
    NewMessage,
    OutboxMessage,
    Purged,
    Store,
    StoreError,
    ThreadKey,
    WakeCallback,
    WakeKind,
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
_PENDING = MessageState.PENDING.value

# The thread's candidate is its head (head = 1, kept by the triggers of migration 4): its sending
# row, claimable once the lease has expired (NULL: a row left sending by the unleased relay of
# schema version 1, which never had a lease), else its first pending row by (order_key, id),
# claimable once due. Each branch reads messages_heads_due in due_at order and stops after :limit
# rows, so a claim costs O(limit log n) however deep a thread's backlog is.
# The clock is read once, when the statement holds the write lock (relay_now() is called after any
# wait for it); the claim's time is the rows' updated_at. relay_claimed() notes the rows that were
# sending (taken over: Claim.taken_over) and returns the new owner.
_CLAIM_MESSAGES = """
WITH clock AS MATERIALIZED (SELECT relay_now() AS now)
UPDATE messages SET state = 'sending', lease_owner = relay_claimed(id, state, :owner),
    lease_expires = (SELECT now FROM clock) + :lease,
    attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, (SELECT now FROM clock)),
    updated_at = (SELECT now FROM clock)
WHERE id IN (
    SELECT id FROM (
        SELECT * FROM (
            SELECT id, due_at FROM messages
            WHERE head = 1 AND state = 'pending' AND due_at <= (SELECT now FROM clock)
            ORDER BY due_at, id LIMIT :limit)
        UNION ALL
        SELECT * FROM (
            SELECT id, due_at FROM messages
            WHERE head = 1 AND state = 'sending'
              AND (lease_expires IS NULL OR lease_expires <= (SELECT now FROM clock))
            ORDER BY due_at, id LIMIT :limit)
    ) ORDER BY due_at, id LIMIT :limit
)
RETURNING *
"""

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

# Per (team, channel) its head: its sending item once the lease has expired, else its oldest
# pending item once due.
_CLAIM_FEEDBACK = """
WITH clock AS MATERIALIZED (SELECT relay_now() AS now)
UPDATE feedback SET state = 'sending', lease_owner = :owner, lease_expires = (SELECT now FROM clock) + :lease,
    attempts = attempts + 1, updated_at = (SELECT now FROM clock)
WHERE id IN (
    SELECT id FROM (
        SELECT * FROM (
            SELECT id, due_at FROM feedback
            WHERE head = 1 AND state = 'pending' AND due_at <= (SELECT now FROM clock)
            ORDER BY due_at, id LIMIT :limit)
        UNION ALL
        SELECT * FROM (
            SELECT id, due_at FROM feedback
            WHERE head = 1 AND state = 'sending'
              AND (lease_expires IS NULL OR lease_expires <= (SELECT now FROM clock))
            ORDER BY due_at, id LIMIT :limit)
    ) ORDER BY due_at, id LIMIT :limit
)
RETURNING *
"""

_SELECT_WATCH = "SELECT * FROM mirror_watch"
#: Due watches, by whether an unset mode (the default) is polled.
_DUE_WATCHES = {
    include_unset: _SELECT_WATCH
    + " WHERE next_poll_at IS NOT NULL AND next_poll_at <= ? AND "
    + watch_modes(include_unset)
    + " ORDER BY next_poll_at LIMIT ?"
    for include_unset in (False, True)
}

# One multi-row insert per chunk of items: rows get their ids in the order given (FIFO per channel).
_INSERT_FEEDBACK = (
    "INSERT INTO feedback (team, channel, kind, payload, dedupe_key, state, attempts, due_at,"
    " created_at, updated_at) VALUES "
)
_FEEDBACK_ROW = "(?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
_FEEDBACK_ON_CONFLICT = " ON CONFLICT (dedupe_key) DO NOTHING"
_FEEDBACK_CHUNK = 100  # rows per insert: 800 parameters, under any SQLite build's limit

# Fenced: only the lease owner changes a sending row.
_RENEW = (
    "UPDATE messages SET lease_expires = relay_now() + :lease"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_COMPLETE = (
    "UPDATE messages SET state = :state, outcome = :outcome, detail = :detail,"
    " lease_expires = NULL, updated_at = relay_now()"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_RETRY_LATER = (
    "UPDATE messages SET state = 'pending', due_at = relay_now() + :delay, outcome = :outcome,"
    " detail = :detail, lease_owner = NULL, lease_expires = NULL, updated_at = relay_now()"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_RELEASE = (
    "UPDATE messages SET state = 'pending', due_at = relay_now(), lease_owner = NULL,"
    " lease_expires = NULL, attempts = MAX(attempts - 1, 0),"
    " first_attempt_at = CASE WHEN attempts > 1 THEN first_attempt_at END,"
    " updated_at = relay_now()"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_FEEDBACK_DONE = (
    "UPDATE feedback SET state = 'done', lease_expires = NULL, updated_at = relay_now()"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_FEEDBACK_RETRY = (
    "UPDATE feedback SET state = 'pending', due_at = relay_now() + :delay, lease_owner = NULL,"
    " lease_expires = NULL, last_error = :error, updated_at = relay_now()"
    " WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)
_FEEDBACK_FAILED = (
    "UPDATE feedback SET state = 'failed', lease_expires = NULL, last_error = :error,"
    " updated_at = relay_now() WHERE id = :id AND state = 'sending' AND lease_owner = :owner"
)

# When the next row may become claimable: a pending row falls due or a lease expires.
_NEXT_MESSAGE_DUE = (
    "SELECT MIN(at) FROM ("
    " SELECT MIN(due_at) AS at FROM messages WHERE state = 'pending' AND due_at > :now"
    " UNION ALL"
    " SELECT MIN(lease_expires) FROM messages WHERE state = 'sending' AND lease_expires > :now)"
)
_NEXT_FEEDBACK_DUE = (
    "SELECT MIN(at) FROM ("
    " SELECT MIN(due_at) AS at FROM feedback WHERE state = 'pending' AND due_at > :now"
    " UNION ALL"
    " SELECT MIN(lease_expires) FROM feedback WHERE state = 'sending' AND lease_expires > :now)"
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
        self._taken_over: set[int] = set()  # noted by relay_claimed() during one claim statement

    def _claimed(self, message_id: int, state: str, owner: str) -> str:
        """``relay_claimed(id, state, owner)``, the new owner in a claim's SET clause. SET sees the
        row as it was (RETURNING only as it is now): a row that was ``sending`` is taken over."""
        if state == MessageState.SENDING.value:
            self._taken_over.add(int(message_id))
        return owner

    async def _register_functions(self, conn: aiosqlite.Connection) -> None:
        await conn.create_function("relay_now", 0, time.time)
        await conn.create_function("relay_claimed", 3, self._claimed)

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
            # The database clock in SQL: called by a statement when it runs, so after any wait for
            # the write lock (a time taken before the statement could be older than the last commit).
            await self._register_functions(conn)
            for pragma in (
                "PRAGMA busy_timeout=5000",  # first: switching to WAL may have to wait for a lock
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys=ON",
            ):
                await _busy_retry(conn, pragma)
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
        async with self._locked() as conn:  # one write statement: it needs the write lock
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
        """Run one statement that returns no rows; return the number of rows it changed.

        One round trip: the cursor is not closed, because sqlite3 resets a statement that returns
        no rows as soon as it has run (closing it would be a second trip to the worker thread)."""
        cursor = await conn.execute(sql, params)
        return cursor.rowcount

    @staticmethod
    def _feedback_inserts(items: Sequence[NewFeedback], now: float) -> list[tuple[str, list[Any]]]:
        """The statements that store ``items``: one per 100 of them."""
        statements: list[tuple[str, list[Any]]] = []
        for start in range(0, len(items), _FEEDBACK_CHUNK):
            chunk = items[start : start + _FEEDBACK_CHUNK]
            params = [
                value
                for item in chunk
                for value in (
                    item.team,
                    item.channel,
                    item.kind,
                    encode_payload(item.payload),
                    item.dedupe_key,
                    now,
                    now,
                    now,
                )
            ]
            sql = _INSERT_FEEDBACK + ", ".join([_FEEDBACK_ROW] * len(chunk)) + _FEEDBACK_ON_CONFLICT
            statements.append((sql, params))
        return statements

    @staticmethod
    async def _in_one_trip(
        conn: aiosqlite.Connection, statements: Sequence[tuple[str, Params]], *, fenced: bool = False
    ) -> list[int] | None:
        """``BEGIN IMMEDIATE``, each of ``statements``, ``COMMIT``: one transaction in one round trip
        to aiosqlite's worker thread (as awaited statements it would be one trip each, plus two).
        Returns the number of rows each statement changed. ``fenced``: when the first statement
        changes nothing, roll back at once and return None.

        aiosqlite has no public call for "run this function on the connection's thread", so this
        uses the one its own methods use (``Connection._execute``, with the ``sqlite3`` connection
        it wraps). The version is pinned below the next minor release in ``pyproject.toml``, and
        the store's contract suite runs every path through here.
        """

        def run(raw: sqlite3.Connection) -> list[int] | None:
            raw.execute("BEGIN IMMEDIATE")
            changed: list[int] = []
            try:
                for sql, params in statements:
                    changed.append(raw.execute(sql, cast(Any, params)).rowcount)
                    if fenced and changed == [0]:
                        raw.execute("ROLLBACK")
                        return None
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
            return changed

        raw: sqlite3.Connection = conn._conn
        result: list[int] | None = await cast(Any, conn)._execute(run, raw)
        return result

    async def _fenced(
        self, sql: str, params: dict[str, Any], feedback: Sequence[NewFeedback], wake: WakeKind
    ) -> bool:
        """Run one fenced update and store ``feedback`` when it changed the row: a single statement
        when there is no feedback, else one transaction (one round trip either way)."""
        if not feedback:
            async with self._locked() as conn:
                changed = await self._write(conn, sql, params)
            if changed == 0:
                return False
            self._wake.fire(wake)
            return True
        statements = [(sql, params), *self._feedback_inserts(feedback, time.time())]
        async with self._locked() as conn:
            counts = await self._in_one_trip(conn, statements, fenced=True)
        if counts is None:
            return False
        self._wake.fire(wake, *([WAKE_FEEDBACK] if sum(counts[1:]) else []))
        return True

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
        async with self._locked() as conn:
            row = await self._one(
                conn,
                "DELETE FROM bindings WHERE team = ? AND channel = ? AND thread_ts = ? RETURNING *",
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
        async with self._locked() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "WITH clock AS MATERIALIZED (SELECT relay_now() AS now)"
                    " INSERT INTO messages (team, channel, thread_ts, ts, revision, order_ts, order_key,"
                    " user, text, files, provider, session_id, state, attempts, received_at, updated_at,"
                    " due_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, clock.now,"
                    " clock.now + ? FROM clock WHERE true"  # WHERE: an upsert after a SELECT needs one
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
                        message.delay,
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
        async with self._locked() as conn:
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
        """Claim up to ``limit`` due messages, one per thread, in one statement (it holds the write
        lock from its start: one claimer at a time across processes on the file)."""
        if limit <= 0:
            return []
        async with self._locked() as conn:
            self._taken_over.clear()
            rows = list(
                await conn.execute_fetchall(_CLAIM_MESSAGES, {"owner": owner, "lease": lease, "limit": limit})
            )
            taken_over, self._taken_over = self._taken_over, set()
        rows.sort(key=lambda row: (float(row["due_at"]), int(row["id"])))
        return [
            Claim(
                message=message_of(row),
                owner=owner,
                lease_expires=float(row["lease_expires"]),
                first_attempt_at=float(row["first_attempt_at"]),
                now=float(row["updated_at"]),  # the statement's clock
                taken_over=int(row["id"]) in taken_over,
            )
            for row in rows
        ]

    async def renew(self, message_id: int, owner: str, lease: float) -> bool:
        """Extend our lease on a sending row to ``now + lease``."""
        async with self._locked() as conn:
            changed = await self._write(conn, _RENEW, {"lease": lease, "id": message_id, "owner": owner})
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
        params = {
            "state": state.value,
            "outcome": outcome,
            "detail": detail,
            "id": message_id,
            "owner": owner,
        }
        return await self._fenced(_COMPLETE, params, feedback, WAKE_MESSAGES)

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
        params = {"delay": delay, "outcome": outcome, "detail": detail, "id": message_id, "owner": owner}
        return await self._fenced(_RETRY_LATER, params, feedback, WAKE_MESSAGES)

    async def release(self, message_id: int, owner: str) -> bool:
        """Fenced ``sending -> pending``, due now, the attempt not counted."""
        return await self._fenced(_RELEASE, {"id": message_id, "owner": owner}, (), WAKE_MESSAGES)

    async def next_due_in(self) -> float | None:
        return await self._next_due(_NEXT_MESSAGE_DUE)

    async def _next_due(self, sql: str) -> float | None:
        async with self._locked() as conn:
            now = time.time()
            row = await self._one(conn, sql, {"now": now})
        return None if row is None or row[0] is None else max(float(row[0]) - now, 0.0)

    async def oldest_due_age(self) -> float | None:
        async with self._locked() as conn:
            now = time.time()
            row = await self._one(
                conn, "SELECT MIN(due_at) FROM messages WHERE state = 'pending' AND due_at <= ?", (now,)
            )
        return None if row is None or row[0] is None else max(now - float(row[0]), 0.0)

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
        # Up to 100 items are one statement (its own transaction); more need an explicit one.
        statements = self._feedback_inserts(items, time.time())
        async with self._locked() as conn:
            if len(statements) > 1:
                added = sum(await self._in_one_trip(conn, statements) or ())
            else:
                added = await self._write(conn, *statements[0])
        if added:
            self._wake.fire(WAKE_FEEDBACK)
        return added

    async def claim_feedback(self, owner: str, *, limit: int, lease: float) -> list[FeedbackItem]:
        if limit <= 0:
            return []
        async with self._locked() as conn:  # one statement, holding the write lock from its start
            rows = list(
                await conn.execute_fetchall(_CLAIM_FEEDBACK, {"owner": owner, "lease": lease, "limit": limit})
            )
        rows.sort(key=lambda row: (float(row["due_at"]), int(row["id"])))
        return [feedback_of(row, owner) for row in rows]

    async def feedback_done(self, item_id: int, owner: str) -> bool:
        # The channel's next item may be claimable now: every end of an item wakes the senders.
        return await self._fenced(_FEEDBACK_DONE, {"id": item_id, "owner": owner}, (), WAKE_FEEDBACK)

    async def feedback_retry(self, item_id: int, owner: str, delay: float, error: str) -> bool:
        params = {"delay": delay, "error": error, "id": item_id, "owner": owner}
        return await self._fenced(_FEEDBACK_RETRY, params, (), WAKE_FEEDBACK)

    async def feedback_failed(self, item_id: int, owner: str, error: str) -> bool:
        params = {"error": error, "id": item_id, "owner": owner}
        return await self._fenced(_FEEDBACK_FAILED, params, (), WAKE_FEEDBACK)

    async def next_feedback_due_in(self) -> float | None:
        return await self._next_due(_NEXT_FEEDBACK_DUE)

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
        async with self._locked() as conn:
            row = await self._one(
                conn,
                "WITH clock AS MATERIALIZED (SELECT relay_now() AS now)"
                " INSERT INTO leases (name, owner, expires_at) SELECT :name, :owner, clock.now + :ttl"
                " FROM clock WHERE true"  # WHERE: an upsert after a SELECT needs one
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE leases.owner = excluded.owner OR leases.expires_at <= (SELECT now FROM clock)"
                " RETURNING owner",
                {"name": name, "owner": owner, "ttl": ttl},
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
                await self._register_functions(conn)
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

    # -- mirror watches ----------------------------------------------------------------------
    async def watch_thread(
        self, thread: ThreadKey, provider: str, session_id: str, *, status_ts: str | None = None
    ) -> None:
        async with self._locked() as conn:
            now = time.time()
            await self._write(
                conn,
                "INSERT INTO mirror_watch (team, channel, thread_ts, provider, session_id, status_ts,"
                " next_poll_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (team, channel, thread_ts) DO UPDATE SET provider = excluded.provider,"
                " session_id = excluded.session_id, watermark = NULL, state = NULL,"
                " status_ts = excluded.status_ts, status_text = NULL, last_agent_text = NULL,"
                " idle_polls = 0, failures = 0, next_poll_at = excluded.next_poll_at,"
                " updated_at = excluded.updated_at",
                (*_thread_params(thread), provider, session_id, status_ts, now, now),
            )

    async def get_watch(self, thread: ThreadKey) -> MirrorWatch | None:
        async with self._locked() as conn:
            row = await self._one(conn, _SELECT_WATCH + _BY_THREAD, _thread_params(thread))
        return None if row is None else watch_of(row)

    async def due_watches(self, *, limit: int, include_unset: bool) -> list[MirrorWatch]:
        async with self._locked() as conn:
            rows = await conn.execute_fetchall(
                _DUE_WATCHES[include_unset],
                (time.time(), limit),
            )
        return [watch_of(row) for row in rows]

    async def session_watches(self, provider: str, session_id: str) -> list[MirrorWatch]:
        async with self._locked() as conn:
            rows = await conn.execute_fetchall(
                "SELECT w.* FROM mirror_watch w JOIN bindings b USING (team, channel, thread_ts)"
                " WHERE w.provider = ? AND w.session_id = ? ORDER BY b.linked_at, w.thread_ts",
                (provider, session_id),
            )
        return [watch_of(row) for row in rows]

    async def record_poll(
        self,
        thread: ThreadKey,
        provider: str,
        session_id: str,
        progress: MirrorProgress,
        *,
        feedback: Sequence[NewFeedback] = (),
    ) -> bool:
        now = time.time()
        update = (
            "UPDATE mirror_watch SET watermark = :watermark, state = :state,"
            " status_text = :status_text, last_agent_text = :last_agent_text,"
            " idle_polls = :idle_polls, failures = :failures, next_poll_at = :next_poll_at,"
            " updated_at = :now"
            " WHERE team = :team AND channel = :channel AND thread_ts = :thread_ts"
            " AND provider = :provider AND session_id = :session_id",
            {
                "watermark": progress.watermark,
                "state": progress.state,
                "status_text": progress.status_text,
                "last_agent_text": progress.last_agent_text,
                "idle_polls": progress.idle_polls,
                "failures": progress.failures,
                "next_poll_at": None if progress.next_poll_in is None else now + progress.next_poll_in,
                "now": now,
                "team": thread.team,
                "channel": thread.channel,
                "thread_ts": thread.thread_ts,
                "provider": provider,
                "session_id": session_id,
            },
        )
        async with self._locked() as conn:
            changed = await self._in_one_trip(
                conn, [update, *self._feedback_inserts(feedback, now)], fenced=True
            )
        if changed is None:
            return False
        if sum(changed[1:]):
            self._wake.fire(WAKE_FEEDBACK)
        return True

    async def set_watch_mode(self, thread: ThreadKey, mode: MirrorMode | None, *, reset: bool) -> bool:
        async with self._locked() as conn:
            now = time.time()
            changed = await self._write(
                conn,
                "UPDATE mirror_watch SET mode = ?, watermark = CASE WHEN ? THEN NULL ELSE watermark END,"
                " idle_polls = 0, next_poll_at = ?, updated_at = ?"
                " WHERE team = ? AND channel = ? AND thread_ts = ?",
                (None if mode is None else mode.value, int(reset), now, now, *_thread_params(thread)),
            )
        return changed > 0

    async def set_watch_status_ts(self, thread: ThreadKey, ts: str) -> bool:
        async with self._locked() as conn:
            changed = await self._write(
                conn,
                "UPDATE mirror_watch SET status_ts = ?, updated_at = ?"
                " WHERE team = ? AND channel = ? AND thread_ts = ?",
                (ts, time.time(), *_thread_params(thread)),
            )
        return changed > 0

    async def wake_watch(self, thread: ThreadKey) -> bool:
        async with self._locked() as conn:
            now = time.time()
            changed = await self._write(
                conn,
                "UPDATE mirror_watch SET idle_polls = 0, next_poll_at = ?, updated_at = ?"
                " WHERE team = ? AND channel = ? AND thread_ts = ?",
                (now, now, *_thread_params(thread)),
            )
        return changed > 0


async def _busy_retry(conn: aiosqlite.Connection, pragma: str, *, within: float = 5.0) -> None:
    """Run ``pragma``, waiting while another connection holds the write lock.

    Switching a new file to WAL answers "database is locked" at once, without the busy timeout, while
    another process is creating the schema (replicas starting together on one new file): try again
    for up to ``within`` seconds, as the busy timeout does for every other statement.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            await conn.execute_fetchall(pragma)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)
