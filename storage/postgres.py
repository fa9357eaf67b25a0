"""The PostgreSQL backend of :class:`storage.base.Store`, on an asyncpg pool, for several replicas.

Chosen by ``DATABASE_URL=postgresql://user:password@host:port/database`` (or ``postgres://``);
needs the ``postgres`` extra (``pip install 'agent-relay[postgres]'``).

* **Migrations** (``storage/migrations/postgres``) run at :meth:`PostgresStore.init` under a
  session advisory lock with a fixed key, each in its own transaction, so that replicas starting
  together migrate once and a failed migration leaves the previous schema.
* **Claims** read only the head of each thread (channel), marked by ``head`` and kept by triggers
  (migration 4), select those candidates ``FOR UPDATE SKIP LOCKED`` and update them in the same
  statement: concurrent claimers skip each other's rows instead of waiting, and a row another
  transaction changed meanwhile is re-checked by PostgreSQL before it is taken. The partial unique
  indexes (one ``sending`` message per thread, one ``sending`` feedback item per channel, one head
  of each) are the last line: a claim that runs into one (a row put in flight past the heads) is
  rolled back whole and tried again, and never reaches the caller as an error.
* **Heads** move in the transaction of the change that moves them: the triggers take the thread's
  (channel's) advisory lock and read with fresh snapshots; the fenced updates and ``drop_pending``
  take that lock before their row lock, and a feedback insert takes its channels' locks in key
  order first, so that lock holders never wait for each other crosswise.
* **Fenced changes** (``complete``, ``retry_later``, ``release``, the ``feedback_*`` ends) are one
  statement each, so one implicit transaction and one round trip: the conditional update, and when
  it carries feedback a data-modifying CTE that stores the items only if the update changed the row,
  with the ``NOTIFY`` in the same statement.
* **Time** is the database clock: ``relay_now()``, ``extract(epoch from clock_timestamp())``.
* **Wake-ups**: a transaction that makes work claimable also runs ``NOTIFY agent_relay,
  'messages'|'feedback'``; a dedicated connection LISTENs and calls the wake callbacks, so one
  replica wakes when another stores work. When that connection is lost it is opened again with
  backoff (and the callbacks are called once, for whatever was missed meanwhile).
* **Errors** from asyncpg and the OS become :class:`~storage.base.StoreError`, whose message
  never contains the password of the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from storage._common import (
    WakeListeners,
    binding_of,
    encode_payload,
    feedback_of,
    message_of,
    redact_url,
    watch_modes,
    watch_of,
)
from storage.base import (
    WAKE_FEEDBACK,
    WAKE_MESSAGES,
    Binding,
    Claim,
    FeedbackItem,
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
from storage.migrations import Migration, load_migrations

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "agent_relay"
MIGRATION_LOCK_KEY = 0x61676E7472656C79  # "agntrely": one fixed advisory lock key for migrations
CLAIM_TRIES = 3  # a claim that meets a concurrent one on a one-in-flight index is tried again
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0
CHECK_TIMEOUT = 5.0

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
_CLAIM_CONFLICTS = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError)

if TYPE_CHECKING:  # asyncpg's classes are generic only in its stubs
    _Conn = asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]

_BY_THREAD = " WHERE team = $1 AND channel = $2 AND thread_ts = $3"
_SELECT_BINDING = "SELECT * FROM bindings"
_SELECT_MESSAGE = "SELECT * FROM messages"

_ENQUEUE = """
WITH clock AS MATERIALIZED (SELECT relay_now() AS now)
INSERT INTO messages (team, channel, thread_ts, ts, revision, order_ts, order_key, "user", text, files,
    provider, session_id, state, attempts, received_at, updated_at, due_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', 0, $13, clock.now, clock.now + $14
FROM clock
ON CONFLICT (team, channel, ts, revision) DO NOTHING
RETURNING *, pg_notify('agent_relay', 'messages')
"""

# The thread's candidate is its head (head, kept by the triggers of migration 4): its sending row,
# claimable once the lease has expired (NULL: a sending row that never got a lease; only the
# unleased relay left such rows, but a row without a lease must never be stuck), else its first
# pending row by (order_key, id), claimable once due. Both read messages_heads_due in due_at order
# and stop after $2 rows (rows another claimer has locked are skipped, not counted), so a claim
# costs O(limit log n) however deep a thread's backlog is. A claim moves no head: the pending head
# it takes stays the head as a sending row.
_CLAIM_MESSAGES = """
WITH clock AS MATERIALIZED (SELECT relay_now() AS now),
heads AS (
    SELECT m.id, m.due_at, false AS taken_over FROM messages m
    WHERE m.head AND m.state = 'pending' AND m.due_at <= (SELECT now FROM clock)
    ORDER BY m.due_at, m.id
    LIMIT $2
    FOR UPDATE OF m SKIP LOCKED
),
stale AS (
    SELECT m.id, m.due_at, true AS taken_over FROM messages m
    WHERE m.head AND m.state = 'sending'
      AND (m.lease_expires IS NULL OR m.lease_expires <= (SELECT now FROM clock))
    ORDER BY m.due_at, m.id
    LIMIT $2
    FOR UPDATE OF m SKIP LOCKED
),
picked AS (
    SELECT id, taken_over FROM (SELECT * FROM heads UNION ALL SELECT * FROM stale) AS candidates
    ORDER BY due_at, id
    LIMIT $2
)
UPDATE messages m SET state = 'sending', lease_owner = $1, lease_expires = clock.now + $3,
    attempts = m.attempts + 1, first_attempt_at = COALESCE(m.first_attempt_at, clock.now),
    updated_at = clock.now
FROM picked, clock
WHERE m.id = picked.id
RETURNING m.*, clock.now AS claimed_at, picked.taken_over
"""

# Per (team, channel) its head: its sending item once the lease has expired, else its oldest
# pending item once due.
_CLAIM_FEEDBACK = """
WITH clock AS MATERIALIZED (SELECT relay_now() AS now),
heads AS (
    SELECT f.id, f.due_at FROM feedback f
    WHERE f.head AND f.state = 'pending' AND f.due_at <= (SELECT now FROM clock)
    ORDER BY f.due_at, f.id
    LIMIT $2
    FOR UPDATE OF f SKIP LOCKED
),
stale AS (
    SELECT f.id, f.due_at FROM feedback f
    WHERE f.head AND f.state = 'sending'
      AND (f.lease_expires IS NULL OR f.lease_expires <= (SELECT now FROM clock))
    ORDER BY f.due_at, f.id
    LIMIT $2
    FOR UPDATE OF f SKIP LOCKED
),
picked AS (
    SELECT id FROM (SELECT * FROM heads UNION ALL SELECT * FROM stale) AS candidates
    ORDER BY due_at, id
    LIMIT $2
)
UPDATE feedback f SET state = 'sending', lease_owner = $1, lease_expires = clock.now + $3,
    attempts = f.attempts + 1, updated_at = clock.now
FROM picked, clock
WHERE f.id = picked.id
RETURNING f.*
"""


def _insert_feedback(first: int, when: str = "true") -> str:
    """Insert the items given as five parallel arrays, parameters ``$first`` to ``$first + 4``, in
    their order (ids are FIFO per channel), only if ``when``; ``RETURNING id`` of the new ones.

    Before the first row it takes the advisory locks of the items' channels in the order of their
    keys (the triggers that keep each channel's head take them again, item by item, in the order
    given), so two batches naming the same channels never wait for each other crosswise; and only
    after ``when`` ran (a fenced update in ``when`` takes its thread's lock first)."""
    arrays = ", ".join(f"${first + n}::text[]" for n in range(5))
    channels = f"unnest(${first}::text[], ${first + 1}::text[]) AS c (team, channel)"
    locks = (
        "(SELECT count(relay_lock_channel(d.team, d.channel)) FROM"  # noqa: S608
        f" (SELECT u.team, u.channel FROM (SELECT DISTINCT team, channel FROM {channels}) AS u"
        f" WHERE {when} ORDER BY relay_channel_key(u.team, u.channel) OFFSET 0) AS d)"
    )
    return (
        "INSERT INTO feedback (team, channel, kind, payload, dedupe_key, state, attempts, due_at,"  # noqa: S608
        " created_at, updated_at)"
        " SELECT item.team, item.channel, item.kind, item.payload, item.dedupe_key, 'pending', 0,"
        " clock.now, clock.now, clock.now"
        f" FROM unnest({arrays}) WITH ORDINALITY AS item (team, channel, kind, payload, dedupe_key, n),"
        " (SELECT relay_now() AS now) AS clock"
        f" WHERE {locks} >= 0 AND {when}"
        " ORDER BY item.n"
        " ON CONFLICT (dedupe_key) DO NOTHING"
        " RETURNING id"
    )


# enqueue_feedback: the items and, when any was new, the NOTIFY, in one statement.
_ENQUEUE_FEEDBACK = (
    f"WITH added AS ({_insert_feedback(1)})"  # noqa: S608 - constants only; values are bound parameters
    " SELECT count(*) AS added,"
    " CASE WHEN count(*) > 0 THEN pg_notify('agent_relay', 'feedback') END AS told FROM added"
)

# Retention (see Store.purge_before). A purged row's due_at becomes 0 (a final row's due_at is never
# read again), so that each batch's range scan of messages_state_due starts past the rows already
# purged instead of reading them again.
_PURGE_MESSAGES = """
UPDATE messages SET text = '', files = '[]', due_at = 0
WHERE id IN (
    SELECT id FROM messages
    WHERE state IN ('delivered', 'failed', 'skipped') AND due_at > 0 AND due_at < $1
      AND updated_at < $1
    LIMIT $2
)
"""
_PURGE_FEEDBACK = """
DELETE FROM feedback
WHERE id IN (
    SELECT id FROM feedback
    WHERE state IN ('done', 'failed') AND due_at > 0 AND due_at < $1 AND updated_at < $1
      AND dedupe_key IS NULL
    LIMIT $2
)
"""
_BLANK_FEEDBACK = """
UPDATE feedback SET payload = '{}', due_at = 0
WHERE id IN (
    SELECT id FROM feedback
    WHERE state IN ('done', 'failed') AND due_at > 0 AND due_at < $1 AND updated_at < $1
      AND dedupe_key IS NOT NULL
    LIMIT $2
)
"""

# Fenced: only the lease owner changes a sending row (RETURNING id: None when fenced off). A change
# that may move a head (all but renew) takes the thread's or channel's advisory lock before it locks
# its row, as every holder of that lock does (see migration 4); the lock function is the costliest
# condition, so it runs only for the row that matched the others.
_RENEW = (
    "UPDATE messages SET lease_expires = relay_now() + $3"
    " WHERE id = $1 AND state = 'sending' AND lease_owner = $2 RETURNING id"
)
_COMPLETE = (
    "UPDATE messages SET state = $3, outcome = $4, detail = $5, lease_expires = NULL,"
    " updated_at = relay_now()"
    " WHERE id = $1 AND state = 'sending' AND lease_owner = $2"
    " AND relay_lock_thread(team, channel, thread_ts) RETURNING id"
)
_RETRY_LATER = (
    "UPDATE messages SET state = 'pending', due_at = relay_now() + $3, outcome = $4, detail = $5,"
    " lease_owner = NULL, lease_expires = NULL, updated_at = relay_now()"
    " WHERE id = $1 AND state = 'sending' AND lease_owner = $2"
    " AND relay_lock_thread(team, channel, thread_ts) RETURNING id"
)
_RELEASE = (
    "UPDATE messages SET state = 'pending', due_at = relay_now(), lease_owner = NULL, lease_expires = NULL,"
    " attempts = GREATEST(attempts - 1, 0),"
    " first_attempt_at = CASE WHEN attempts > 1 THEN first_attempt_at END,"
    " updated_at = relay_now()"
    " WHERE id = $1 AND state = 'sending' AND lease_owner = $2"
    " AND relay_lock_thread(team, channel, thread_ts) RETURNING id"
)
_FEEDBACK_DONE = (
    "UPDATE feedback SET state = 'done', lease_expires = NULL, updated_at = relay_now()"
    " WHERE id = $1 AND state = 'sending' AND lease_owner = $2"
    " AND relay_lock_channel(team, channel) RETURNING id"
)
_FEEDBACK_RETRY = (
    "UPDATE feedback SET state = 'pending', due_at = relay_now() + $3, lease_owner = NULL,"
    " lease_expires = NULL, last_error = $4, updated_at = relay_now()"
    " WHERE id = $1 AND state = 'sending' AND lease_owner = $2"
    " AND relay_lock_channel(team, channel) RETURNING id"
)
_FEEDBACK_FAILED = (
    "UPDATE feedback SET state = 'failed', lease_expires = NULL, last_error = $3, updated_at = relay_now()"
    " WHERE id = $1 AND state = 'sending' AND lease_owner = $2"
    " AND relay_lock_channel(team, channel) RETURNING id"
)


def _notifying(update: str, wake: WakeKind) -> str:
    """A fenced ``update ... RETURNING id`` that also notifies ``wake`` when it changed the row."""
    return f"{update}, pg_notify('agent_relay', '{wake}')"


def _with_feedback(update: str, first: int, wake: WakeKind) -> str:
    """A fenced ``update ... RETURNING id`` and, only when it changed the row, the insert of the
    feedback arrays ``$first``... and the NOTIFYs, as one statement (so one implicit transaction):
    one row, ``changed`` and ``added`` counts."""
    return (
        f"WITH changed AS ({update}),"  # noqa: S608 - constants only; values are bound parameters
        f" added AS ({_insert_feedback(first, 'EXISTS (SELECT 1 FROM changed)')}),"
        " counts AS (SELECT (SELECT count(*) FROM changed) AS changed, (SELECT count(*) FROM added) AS added)"
        f" SELECT changed, added, CASE WHEN changed > 0 THEN pg_notify('agent_relay', '{wake}') END AS woke,"
        " CASE WHEN added > 0 THEN pg_notify('agent_relay', 'feedback') END AS told FROM counts"
    )


_COMPLETE_ALONE = _notifying(_COMPLETE, WAKE_MESSAGES)
_COMPLETE_TOLD = _with_feedback(_COMPLETE, 6, WAKE_MESSAGES)
_RETRY_LATER_ALONE = _notifying(_RETRY_LATER, WAKE_MESSAGES)
_RETRY_LATER_TOLD = _with_feedback(_RETRY_LATER, 6, WAKE_MESSAGES)
_RELEASE_ALONE = _notifying(_RELEASE, WAKE_MESSAGES)
_FEEDBACK_DONE_ALONE = _notifying(_FEEDBACK_DONE, WAKE_FEEDBACK)
_FEEDBACK_RETRY_ALONE = _notifying(_FEEDBACK_RETRY, WAKE_FEEDBACK)
_FEEDBACK_FAILED_ALONE = _notifying(_FEEDBACK_FAILED, WAKE_FEEDBACK)

# When the next row of a table may become claimable: a pending row falls due or a lease expires.
_NEXT_DUE = (
    "WITH clock AS MATERIALIZED (SELECT relay_now() AS now)"
    " SELECT LEAST("
    "(SELECT MIN(due_at) FROM {table} WHERE state = 'pending' AND due_at > clock.now),"
    " (SELECT MIN(lease_expires) FROM {table} WHERE state = 'sending' AND lease_expires > clock.now))"
    " - clock.now AS due_in FROM clock"
)
_NEXT_MESSAGE_DUE = _NEXT_DUE.format(table="messages")
_NEXT_FEEDBACK_DUE = _NEXT_DUE.format(table="feedback")

_SELECT_WATCH = "SELECT * FROM mirror_watch"
_DUE_WATCHES = {
    include_unset: _SELECT_WATCH
    + " WHERE next_poll_at IS NOT NULL AND next_poll_at <= relay_now() AND "
    + watch_modes(include_unset)
    + " ORDER BY next_poll_at LIMIT $1"
    for include_unset in (False, True)
}
_WATCH_THREAD = """
INSERT INTO mirror_watch (team, channel, thread_ts, provider, session_id, status_ts, next_poll_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, relay_now(), relay_now())
ON CONFLICT (team, channel, thread_ts) DO UPDATE SET provider = EXCLUDED.provider,
    session_id = EXCLUDED.session_id, watermark = NULL, state = NULL, status_ts = EXCLUDED.status_ts,
    status_text = NULL, last_agent_text = NULL, idle_polls = 0, failures = 0,
    next_poll_at = EXCLUDED.next_poll_at, updated_at = EXCLUDED.updated_at
"""
_RECORD_POLL = """
UPDATE mirror_watch SET watermark = $6, state = $7, status_text = $8, last_agent_text = $9,
    idle_polls = $10, failures = $11,
    next_poll_at = CASE WHEN $12::double precision IS NULL THEN NULL ELSE relay_now() + $12 END,
    updated_at = relay_now()
WHERE team = $1 AND channel = $2 AND thread_ts = $3 AND provider = $4 AND session_id = $5
RETURNING thread_ts
"""
# record_poll with its posts: the update and, only when it changed the row, the feedback and its
# NOTIFY, as one statement.
_RECORD_POLL_TOLD = (
    f"WITH changed AS ({_RECORD_POLL}),"  # noqa: S608 - constants only; values are bound parameters
    f" added AS ({_insert_feedback(13, 'EXISTS (SELECT 1 FROM changed)')}),"
    " counts AS (SELECT (SELECT count(*) FROM changed) AS changed, (SELECT count(*) FROM added) AS added)"
    " SELECT changed, added, CASE WHEN added > 0 THEN pg_notify('agent_relay', 'feedback') END AS told"
    " FROM counts"
)

_ACQUIRE_LEASE = """
INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, relay_now() + $3)
ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
WHERE leases.owner = EXCLUDED.owner OR leases.expires_at <= relay_now()
RETURNING owner
"""


def _thread_params(key: ThreadKey) -> tuple[str, str, str]:
    return (key.team, key.channel, key.thread_ts)


def _final(state: MessageState, method: str) -> None:
    if not state.final:
        raise ValueError(f"{method}() needs a final state, not {state.value!r}")


def _feedback_columns(items: Sequence[NewFeedback]) -> list[list[str | None]]:
    """The items as five parallel arrays, for one ``unnest`` insert."""
    return [
        [item.team for item in items],
        [item.channel for item in items],
        [item.kind for item in items],
        [encode_payload(item.payload) for item in items],
        [item.dedupe_key for item in items],
    ]


async def apply_migrations(conn: _Conn, migrations: list[Migration] | None = None) -> int:
    """Apply every migration newer than the database's version; return the resulting version.

    Holds a session advisory lock while it works, so that replicas starting together wait for each
    other and the first one migrates; each migration and its version bump is one transaction.
    """
    if migrations is None:
        migrations = load_migrations("postgres")
    latest = migrations[-1].version if migrations else 0
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
            )
            await conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING"
            )
        version = int(await conn.fetchval("SELECT version FROM schema_version WHERE id = 1"))
        if version > latest:
            raise StoreError(
                f"the database schema is at version {version}, newer than this agent-relay knows "
                f"(up to {latest}); upgrade agent-relay"
            )
        for migration in migrations:
            if migration.version <= version:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "UPDATE schema_version SET version = $1 WHERE id = 1", migration.version
                    )
            except asyncpg.PostgresError as exc:
                raise StoreError(f"migration {migration.name} failed: {exc}") from exc
            version = migration.version
        return version
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


class PostgresStore(Store):
    """A :class:`Store` in one PostgreSQL database, shared by any number of replicas."""

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float = 30.0
    ) -> None:
        self.url = url
        password = urlsplit(url).password or ""
        self._secrets = sorted({password, unquote(password)} - {""}, key=len, reverse=True)
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = WakeListeners()

    # -- errors ----------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        text = text.replace(self.url, redact_url(self.url))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _errors(self, doing: str = "PostgreSQL error") -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except _ERRORS as exc:
            raise StoreError(self._scrub(f"{doing} on {redact_url(self.url)}: {exc}")) from None

    def _open_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open: call init() first")
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[asyncpg.Record]]:
        pool = self._open_pool()
        with self._errors():
            async with pool.acquire() as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[asyncpg.Record]]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return await conn.fetch(sql, *args)

    # -- lifecycle -----------------------------------------------------------------------------
    async def init(self) -> None:
        """Open the pool, apply pending migrations and start listening for other replicas' work."""
        if self._pool is not None:
            return
        self._closing = False
        with self._errors("cannot open the PostgreSQL database"):
            try:
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    command_timeout=self._command_timeout,
                )
            except ValueError as exc:  # a malformed URL: asyncpg's message may quote it
                raise StoreError(
                    self._scrub(f"invalid PostgreSQL URL {redact_url(self.url)}: {exc}")
                ) from None
        try:
            with self._errors("cannot open the PostgreSQL database"):
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
                await self._listen()
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=self._command_timeout)
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload in (WAKE_MESSAGES, WAKE_FEEDBACK):
            self._wake.fire(str(payload))

    def _on_listener_lost(self, _conn: object) -> None:
        self._listener = None
        if not self._closing:
            log.warning("store.listener_lost", url=redact_url(self.url))
            self._start_reconnect()

    def _start_reconnect(self) -> None:
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_listener())

    async def _reconnect_listener(self) -> None:
        delay = RECONNECT_INITIAL
        while not self._closing:
            try:
                await self._listen()
            except _ERRORS as exc:
                log.warning("store.listener_reconnect_failed", error=self._scrub(str(exc)), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            if self._closing:  # closed while connecting
                await self._close_listener()
                return
            log.info("store.listener_reconnected")
            self._wake.fire(WAKE_MESSAGES, WAKE_FEEDBACK)  # whatever was stored meanwhile
            return

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            conn.remove_termination_listener(self._on_listener_lost)
            try:
                await asyncio.wait_for(conn.close(), CHECK_TIMEOUT)
            except _ERRORS:
                conn.terminate()

    async def close(self) -> None:
        """Stop listening and close the pool; harmless when already closed."""
        self._closing = True
        task, self._reconnect = self._reconnect, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
        await self._close_listener()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._command_timeout)
            except _ERRORS:
                pool.terminate()

    async def schema_version(self) -> int:
        row = await self._fetchrow("SELECT version FROM schema_version WHERE id = 1")
        return 0 if row is None else int(row["version"])

    async def now(self) -> float:
        row = await self._fetchrow("SELECT relay_now() AS now")
        assert row is not None
        return float(row["now"])

    @property
    def lost(self) -> bool:
        """Always False: a server that does not answer may answer again (see :meth:`check`)."""
        return False

    async def check(self) -> None:
        """``SELECT 1`` within a few seconds, or :class:`StoreError`. Also reopens the LISTEN
        connection if it was lost and is not being reopened already."""
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT)
        listener = self._listener
        if not self._closing and (listener is None or listener.is_closed()):
            self._listener = None
            self._start_reconnect()

    def add_wake_listener(self, callback: WakeCallback) -> None:
        """Callbacks run after this store's own changes and on every ``NOTIFY agent_relay`` of any
        replica's (so usually twice for this store's own changes)."""
        self._wake.add(callback)

    # -- bindings ------------------------------------------------------------------------------
    async def get_binding(self, key: ThreadKey) -> Binding | None:
        row = await self._fetchrow(_SELECT_BINDING + _BY_THREAD, *_thread_params(key))
        return None if row is None else binding_of(row)

    async def bind(self, binding: Binding) -> Binding:
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO bindings (team, channel, thread_ts, provider, session_id, linked_by, linked_at,"
                " muted, anchor_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (team, channel, thread_ts) DO NOTHING",
                *_thread_params(binding.key),
                binding.provider,
                binding.session_id,
                binding.linked_by,
                binding.linked_at,
                binding.muted,
                binding.anchor_ts,
            )
            row = await conn.fetchrow(_SELECT_BINDING + _BY_THREAD, *_thread_params(binding.key))
        if row is None:  # pragma: no cover - the row was just inserted or already there
            raise StoreError(f"binding of {binding.key} vanished while it was written")
        return binding_of(row)

    async def unbind(self, key: ThreadKey) -> Binding | None:
        row = await self._fetchrow(
            "DELETE FROM bindings WHERE team = $1 AND channel = $2 AND thread_ts = $3 RETURNING *",
            *_thread_params(key),
        )
        return None if row is None else binding_of(row)

    async def set_muted(self, key: ThreadKey, muted: bool) -> bool:
        row = await self._fetchrow(
            "UPDATE bindings SET muted = $4"
            " WHERE team = $1 AND channel = $2 AND thread_ts = $3 RETURNING team",
            *_thread_params(key),
            muted,
        )
        return row is not None

    async def list_bindings(self, team: str, channel: str) -> list[Binding]:
        rows = await self._fetch(
            _SELECT_BINDING + " WHERE team = $1 AND channel = $2 ORDER BY linked_at, thread_ts", team, channel
        )
        return [binding_of(row) for row in rows]

    # -- outbox / relay log --------------------------------------------------------------------
    async def enqueue(self, message: NewMessage) -> OutboxMessage | None:
        row = await self._fetchrow(
            _ENQUEUE,
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
        )
        if row is None:
            return None
        self._wake.fire(WAKE_MESSAGES)
        return message_of(row)

    async def get_message(self, thread: ThreadKey, ts: str, revision: str = "") -> OutboxMessage | None:
        row = await self._fetchrow(
            _SELECT_MESSAGE + _BY_THREAD + " AND ts = $4 AND revision = $5",
            *_thread_params(thread),
            ts,
            revision,
        )
        return None if row is None else message_of(row)

    async def replace_pending_text(self, thread: ThreadKey, ts: str, text: str, files: str) -> bool:
        row = await self._fetchrow(
            "UPDATE messages SET text = $6, files = $7, updated_at = relay_now()"
            " WHERE team = $1 AND channel = $2 AND thread_ts = $3"
            " AND ts = $4 AND revision = '' AND state = $5 RETURNING id",
            *_thread_params(thread),
            ts,
            MessageState.PENDING.value,
            text,
            files,
        )
        return row is not None

    async def drop_pending(self, thread: ThreadKey, ts: str) -> OutboxMessage | None:
        row = await self._fetchrow(
            "UPDATE messages SET state = 'skipped', outcome = 'deleted',"
            " detail = 'deleted in Slack before it was sent', updated_at = relay_now()"
            " WHERE team = $1 AND channel = $2 AND thread_ts = $3"
            " AND ts = $4 AND revision = '' AND state = 'pending'"
            " AND relay_lock_thread(team, channel, thread_ts)"
            " RETURNING *, pg_notify('agent_relay', 'messages')",
            *_thread_params(thread),
            ts,
        )
        if row is None:
            return None
        self._wake.fire(WAKE_MESSAGES)
        return message_of(row)

    async def _claim(self, sql: str, owner: str, limit: int, lease: float) -> list[asyncpg.Record]:
        """Run a claim statement; one that ran into a concurrent claim on a one-in-flight index (or,
        rarely, a deadlock between two such claims) was rolled back whole and is tried again."""
        async with self._connection() as conn:
            for _ in range(CLAIM_TRIES - 1):
                try:
                    return await conn.fetch(sql, owner, limit, lease)
                except _CLAIM_CONFLICTS as exc:
                    log.debug("store.claim_conflict", error=type(exc).__name__)
            try:
                return await conn.fetch(sql, owner, limit, lease)
            except _CLAIM_CONFLICTS:
                return []  # not claimed this time: the rows stay for the next claim

    async def claim_due(self, owner: str, *, limit: int, lease: float) -> list[Claim]:
        if limit <= 0:
            return []
        rows = await self._claim(_CLAIM_MESSAGES, owner, limit, lease)
        rows.sort(key=lambda row: (float(row["due_at"]), int(row["id"])))
        return [
            Claim(
                message=message_of(row),
                owner=owner,
                lease_expires=float(row["lease_expires"]),
                first_attempt_at=float(row["first_attempt_at"]),
                now=float(row["claimed_at"]),
                taken_over=bool(row["taken_over"]),
            )
            for row in rows
        ]

    async def _fenced(self, sql: str, *args: Any, wake: WakeKind) -> bool:
        """Run one fenced update that notifies ``wake`` when it changed the row (one statement)."""
        if await self._fetchrow(sql, *args) is None:
            return False
        self._wake.fire(wake)
        return True

    async def _fenced_told(
        self, alone: str, told: str, *args: Any, feedback: Sequence[NewFeedback], wake: WakeKind
    ) -> bool:
        """Run a fenced update: ``alone`` without feedback, else ``told``, which also stores the
        feedback and notifies, only when the update changed the row (one statement either way)."""
        if not feedback:
            return await self._fenced(alone, *args, wake=wake)
        row = await self._fetchrow(told, *args, *_feedback_columns(feedback))
        if row is None or int(row["changed"]) == 0:
            return False
        self._wake.fire(wake, *([WAKE_FEEDBACK] if int(row["added"]) else []))
        return True

    async def renew(self, message_id: int, owner: str, lease: float) -> bool:
        row = await self._fetchrow(_RENEW, message_id, owner, lease)
        return row is not None

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
        _final(state, "complete")
        return await self._fenced_told(
            _COMPLETE_ALONE,
            _COMPLETE_TOLD,
            message_id,
            owner,
            state.value,
            outcome,
            detail,
            feedback=feedback,
            wake=WAKE_MESSAGES,
        )

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
        return await self._fenced_told(
            _RETRY_LATER_ALONE,
            _RETRY_LATER_TOLD,
            message_id,
            owner,
            delay,
            outcome,
            detail,
            feedback=feedback,
            wake=WAKE_MESSAGES,
        )

    async def release(self, message_id: int, owner: str) -> bool:
        return await self._fenced(_RELEASE_ALONE, message_id, owner, wake=WAKE_MESSAGES)

    async def next_due_in(self) -> float | None:
        return await self._next_due(_NEXT_MESSAGE_DUE)

    async def _next_due(self, sql: str) -> float | None:
        row = await self._fetchrow(sql)
        return None if row is None or row["due_in"] is None else max(float(row["due_in"]), 0.0)

    async def oldest_due_age(self) -> float | None:
        row = await self._fetchrow(
            "WITH clock AS MATERIALIZED (SELECT relay_now() AS now)"
            " SELECT clock.now - (SELECT MIN(due_at) FROM messages WHERE state = 'pending'"
            " AND due_at <= clock.now) AS age FROM clock"
        )
        return None if row is None or row["age"] is None else max(float(row["age"]), 0.0)

    async def last_message(self, thread: ThreadKey) -> OutboxMessage | None:
        row = await self._fetchrow(
            _SELECT_MESSAGE + _BY_THREAD + " ORDER BY received_at DESC, id DESC LIMIT 1",
            *_thread_params(thread),
        )
        return None if row is None else message_of(row)

    async def count_messages(self, thread: ThreadKey | None = None) -> dict[MessageState, int]:
        if thread is None:
            rows = await self._fetch("SELECT state, COUNT(*) AS n FROM messages GROUP BY state")
        else:
            rows = await self._fetch(
                "SELECT state, COUNT(*) AS n FROM messages"
                " WHERE team = $1 AND channel = $2 AND thread_ts = $3 GROUP BY state",
                *_thread_params(thread),
            )
        counts = dict.fromkeys(MessageState, 0)
        for row in rows:
            counts[MessageState(row["state"])] = int(row["n"])
        return counts

    # -- feedback queue ------------------------------------------------------------------------
    async def enqueue_feedback(self, items: Sequence[NewFeedback]) -> int:
        if not items:
            return 0
        row = await self._fetchrow(_ENQUEUE_FEEDBACK, *_feedback_columns(items))
        added = 0 if row is None else int(row["added"])
        if added:
            self._wake.fire(WAKE_FEEDBACK)
        return added

    async def claim_feedback(self, owner: str, *, limit: int, lease: float) -> list[FeedbackItem]:
        if limit <= 0:
            return []
        rows = await self._claim(_CLAIM_FEEDBACK, owner, limit, lease)
        rows.sort(key=lambda row: (float(row["due_at"]), int(row["id"])))
        return [feedback_of(row, owner) for row in rows]

    async def feedback_done(self, item_id: int, owner: str) -> bool:
        return await self._fenced(_FEEDBACK_DONE_ALONE, item_id, owner, wake=WAKE_FEEDBACK)

    async def feedback_retry(self, item_id: int, owner: str, delay: float, error: str) -> bool:
        return await self._fenced(_FEEDBACK_RETRY_ALONE, item_id, owner, delay, error, wake=WAKE_FEEDBACK)

    async def feedback_failed(self, item_id: int, owner: str, error: str) -> bool:
        return await self._fenced(_FEEDBACK_FAILED_ALONE, item_id, owner, error, wake=WAKE_FEEDBACK)

    async def next_feedback_due_in(self) -> float | None:
        return await self._next_due(_NEXT_FEEDBACK_DUE)

    async def feedback_depth(self) -> int:
        row = await self._fetchrow("SELECT COUNT(*) AS n FROM feedback WHERE state IN ('pending', 'sending')")
        return 0 if row is None else int(row["n"])

    # -- singleton leases ----------------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._fetchrow(_ACQUIRE_LEASE, name, owner, ttl) is not None

    async def release_lease(self, name: str, owner: str) -> None:
        await self._fetchrow("DELETE FROM leases WHERE name = $1 AND owner = $2", name, owner)

    # -- once-only markers ---------------------------------------------------------------------
    async def claim(self, kind: str, key: str) -> bool:
        row = await self._fetchrow(
            "INSERT INTO claims (kind, key, claimed_at) VALUES ($1, $2, relay_now())"
            " ON CONFLICT (kind, key) DO NOTHING RETURNING kind",
            kind,
            key,
        )
        return row is not None

    async def unclaim(self, kind: str, key: str) -> None:
        await self._fetchrow("DELETE FROM claims WHERE kind = $1 AND key = $2", kind, key)

    # -- operations (health checks, retention) ---------------------------------------------------
    async def open_existing(self) -> None:
        """Open a small pool and apply no migration (nor LISTEN: nothing here waits for work)."""
        if self._pool is not None:
            return
        self._closing = False
        with self._errors("cannot open the PostgreSQL database"):
            try:
                self._pool = await asyncpg.create_pool(
                    self.url, min_size=1, max_size=2, command_timeout=self._command_timeout
                )
            except ValueError as exc:  # a malformed URL: asyncpg's message may quote it
                raise StoreError(
                    self._scrub(f"invalid PostgreSQL URL {redact_url(self.url)}: {exc}")
                ) from None

    async def latest_schema_version(self) -> int:
        migrations = load_migrations("postgres")
        return migrations[-1].version if migrations else 0

    async def purge_before(self, cutoff: float, *, batch: int) -> Purged:
        if batch <= 0:
            return Purged()
        async with self._transaction() as conn:
            messages = _changed(await conn.execute(_PURGE_MESSAGES, cutoff, batch))
            deleted = _changed(await conn.execute(_PURGE_FEEDBACK, cutoff, batch))
            blanked = _changed(await conn.execute(_BLANK_FEEDBACK, cutoff, batch))
        return Purged(messages=messages, feedback=deleted + blanked)

    # -- mirror watches ----------------------------------------------------------------------
    async def watch_thread(
        self, thread: ThreadKey, provider: str, session_id: str, *, status_ts: str | None = None
    ) -> None:
        async with self._connection() as conn:
            await conn.execute(_WATCH_THREAD, *_thread_params(thread), provider, session_id, status_ts)

    async def get_watch(self, thread: ThreadKey) -> MirrorWatch | None:
        row = await self._fetchrow(_SELECT_WATCH + _BY_THREAD, *_thread_params(thread))
        return None if row is None else watch_of(row)

    async def due_watches(self, *, limit: int, include_unset: bool) -> list[MirrorWatch]:
        rows = await self._fetch(_DUE_WATCHES[include_unset], limit)
        return [watch_of(row) for row in rows]

    async def session_watches(self, provider: str, session_id: str) -> list[MirrorWatch]:
        rows = await self._fetch(
            "SELECT w.* FROM mirror_watch w JOIN bindings b USING (team, channel, thread_ts)"
            " WHERE w.provider = $1 AND w.session_id = $2 ORDER BY b.linked_at, w.thread_ts",
            provider,
            session_id,
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
        args = (
            *_thread_params(thread),
            provider,
            session_id,
            progress.watermark,
            progress.state,
            progress.status_text,
            progress.last_agent_text,
            progress.idle_polls,
            progress.failures,
            progress.next_poll_in,
        )
        if not feedback:
            return await self._fetchrow(_RECORD_POLL, *args) is not None
        row = await self._fetchrow(_RECORD_POLL_TOLD, *args, *_feedback_columns(feedback))
        if row is None or int(row["changed"]) == 0:
            return False
        if int(row["added"]):
            self._wake.fire(WAKE_FEEDBACK)
        return True

    async def set_watch_mode(self, thread: ThreadKey, mode: MirrorMode | None, *, reset: bool) -> bool:
        row = await self._fetchrow(
            "UPDATE mirror_watch SET mode = $4, watermark = CASE WHEN $5 THEN NULL ELSE watermark END,"
            " idle_polls = 0, next_poll_at = relay_now(), updated_at = relay_now()"
            " WHERE team = $1 AND channel = $2 AND thread_ts = $3 RETURNING thread_ts",
            *_thread_params(thread),
            None if mode is None else mode.value,
            reset,
        )
        return row is not None

    async def set_watch_status_ts(self, thread: ThreadKey, ts: str) -> bool:
        row = await self._fetchrow(
            "UPDATE mirror_watch SET status_ts = $4, updated_at = relay_now()"
            " WHERE team = $1 AND channel = $2 AND thread_ts = $3 RETURNING thread_ts",
            *_thread_params(thread),
            ts,
        )
        return row is not None

    async def wake_watch(self, thread: ThreadKey) -> bool:
        row = await self._fetchrow(
            "UPDATE mirror_watch SET idle_polls = 0, next_poll_at = relay_now(), updated_at = relay_now()"
            " WHERE team = $1 AND channel = $2 AND thread_ts = $3 RETURNING thread_ts",
            *_thread_params(thread),
        )
        return row is not None


def _changed(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 3`` or ``DELETE 0``."""
    return int(status.rsplit(" ", 1)[-1])
