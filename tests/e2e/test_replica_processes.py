"""Several agent-relay processes on one PostgreSQL database: nothing lost, duplicated or reordered.

Two or three ``agent-relay run --mode http`` processes (real subprocesses, each on its own port) share
one throwaway PostgreSQL database (:mod:`tests.pg`), one fake Slack and one fake Devin on loopback.
They start at the same moment (the migrations run under an advisory lock). Leases are short
(``RELAY_LEASE_SECONDS=2``) so that a killed replica's claims are taken over quickly.

Scenarios: every event posted to two replicas at once (Slack can after a reconnect); a thread's events
spread over three replicas at random; SIGKILL of the replica holding a busy thread's claim while the
provider answers slowly (its claim must be taken over by a survivor once its lease runs out, and only
what was in flight at the kill may reach the provider twice; a message the provider had taken is
found by reading the session back and not sent again); SIGTERM of a replica under load (nothing
reaches the provider twice).

Each scenario waits until every row of the outbox is final (no replica can send anything after that),
then compares what the provider received with what was sent and prints one line of figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.e2e.test_faults import JSON, deliver_to, problems_in
from tests.e2e.test_process import EXIT_MARGIN, SHUTDOWN_DEADLINE, Bot, bot_env, bot_process
from tests.fakes.providers import Answer, FakeProvider
from tests.fakes.slack import FakeSlack
from tests.harness import ALICE, BOT_TOKEN, KEYS, SlackSender, message_event

LEASE = 2.0  # RELAY_LEASE_SECONDS
POLL = 0.2  # RELAY_POLL_INTERVAL: how often an idle replica looks for expired leases
TAKEOVER_MARGIN = 1.5  # beyond lease + poll: a claim, a provider call starting, two busy cores
FINISH_WITHIN = 30.0  # seconds for every row to become final
PER_THREAD = 10


def sent(text: str) -> str:
    """What Devin receives for ``text`` written by alice."""
    return f"alice (via Slack): {text}"


def text(session: str, i: int) -> str:
    return f"{session} m{i}"


async def until(
    predicate: Callable[[], Awaitable[bool]],
    within: float,
    message: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll an async ``predicate`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() >= deadline:
            detail = await message() if message is not None else ""
            raise AssertionError(f"still not so after {within:g}s {detail}")
        await asyncio.sleep(0.05)


# -- the database, as the test sees it ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A ``sending`` row: whose claim it is and how long its lease still runs."""

    id: int
    thread_ts: str
    text: str
    owner: str
    lease_left: float  # seconds, on the database clock, when it was read
    read_at: float  # time.monotonic() when it was read
    behind: int  # pending rows of the same thread

    @property
    def number(self) -> int:
        """Which message of its thread this is (texts end in ``m<number>``)."""
        return int(self.text.rsplit(" m", 1)[1])

    @property
    def pid(self) -> int:
        return int(self.owner.split(":")[-2])  # owners are host:pid:random

    @property
    def expires_at(self) -> float:
        """When the lease runs out, on this process's monotonic clock."""
        return self.read_at + self.lease_left


@dataclass
class Db:
    conn: asyncpg.Connection

    async def bound(self, thread_ts: str) -> bool:
        found = await self.conn.fetchval("SELECT count(*) FROM bindings WHERE thread_ts = $1", thread_ts)
        return bool(found == 1)

    async def states(self) -> dict[str, int]:
        rows = await self.conn.fetch("SELECT state, count(*) AS n FROM messages GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}

    async def all_final(self, count: int) -> bool:
        return await self.states() == {"delivered": count}

    async def claimed(self) -> list[Claimed]:
        started = time.monotonic()
        rows = await self.conn.fetch(
            "SELECT s.id, s.thread_ts, s.text, s.lease_owner, s.lease_expires - relay_now() AS lease_left,"
            " (SELECT count(*) FROM messages p WHERE p.thread_ts = s.thread_ts AND p.state = 'pending')"
            " AS behind FROM messages s WHERE s.state = 'sending' ORDER BY s.id"
        )
        read_at = (started + time.monotonic()) / 2
        return [
            Claimed(
                int(r["id"]),
                str(r["thread_ts"]),
                str(r["text"]),
                str(r["lease_owner"]),
                float(r["lease_left"]),
                read_at,
                int(r["behind"]),
            )
            for r in rows
        ]


def holder_of_most(bots: Sequence[Bot], candidates: Sequence[Claimed], claims: Sequence[Claimed]) -> Bot:
    """Of the replicas holding one of ``candidates``, the one holding the most ``claims``."""
    holders = {r.pid for r in candidates}
    pid = max(holders, key=lambda p: sum(r.pid == p for r in claims))
    return next(bot for bot in bots if bot.process.pid == pid)


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[Db]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        yield Db(conn)
    finally:
        await conn.close()


# -- the replicas -----------------------------------------------------------------------------


@dataclass
class Cluster:
    slack: FakeSlack
    devin: FakeProvider
    db: Db
    bots: list[Bot]
    client: httpx.AsyncClient
    senders: list[SlackSender] = field(default_factory=list)

    def logs(self, bots: Sequence[Bot] | None = None) -> list[str]:
        return [bot.log.read_text(errors="replace") for bot in (self.bots if bots is None else bots)]

    def dump_logs(self, tail: int = 4000) -> str:
        logs = zip(self.bots, self.logs(), strict=True)
        return "\n".join(f"--- {bot.log.name}\n{log[-tail:]}" for bot, log in logs)

    async def link(self, sender: SlackSender, session: str) -> str:
        """``/agent link devin <session>`` to one replica; the anchor ts once the binding is stored."""
        before = len(self.slack.messages)
        await sender.command(f"link devin {session}")
        await self.slack.wait_for(lambda: len(self.slack.messages) > before)
        thread = str(self.slack.messages[before]["ts"])
        await until(lambda: self.db.bound(thread), 5.0)
        return thread

    async def finished(self, count: int) -> None:
        async def where() -> str:
            return f"rows {await self.db.states()}\n{self.dump_logs()}"

        await until(lambda: self.db.all_final(count), FINISH_WITHIN, where)


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, pg_url: str, replicas: int, answer: Answer, **extra: str
) -> AsyncIterator[Cluster]:
    """``replicas`` agent-relay processes started at once on one empty database."""
    async with (
        FakeSlack(bot_token=BOT_TOKEN) as slack,
        FakeProvider("devin", KEYS["devin"]) as devin,
        database(pg_url) as db,
        httpx.AsyncClient(timeout=10) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        slack.add_user(ALICE, "alice")
        devin.set_default(answer)
        env = bot_env(
            slack,
            devin,
            tmp_path / "unused.db",  # replaced: DATABASE_URL below
            DATABASE_URL=pg_url,
            RELAY_LEASE_SECONDS=str(LEASE),
            RELAY_POLL_INTERVAL=str(POLL),
            RELAY_ORDER_WINDOW="0.05",
            **extra,
        )
        started = await asyncio.gather(
            *(stack.enter_async_context(bot_process(env, tmp_path, f"replica{i}")) for i in range(replicas)),
            return_exceptions=True,
        )
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            raise failed[0]
        bots = [b for b in started if isinstance(b, Bot)]
        c = Cluster(slack, devin, db, bots, client)
        c.senders = [SlackSender(url=bot.url, client=client, slack=slack) for bot in bots]
        yield c
    devin.assert_no_violations()


async def post_with_failover(
    senders: Sequence[SlackSender], event: dict[str, Any], rng: random.Random
) -> None:
    """Post one event the way Slack does to a pool of replicas: to one of them at random, and when
    that one does not acknowledge it (stopped, connection refused), again to another, marked as a
    retry, with the same event_id."""
    body = senders[0].event_body(event)
    for attempt, sender in enumerate(rng.sample(list(senders), len(senders))):
        headers = sender._headers(body, JSON)
        if attempt:
            headers |= {"x-slack-retry-num": str(attempt), "x-slack-retry-reason": "http_error"}
        with contextlib.suppress(httpx.TransportError):
            if (await sender.post_raw(body, headers)).status_code == 200:
                return
    raise AssertionError(f"no replica acknowledged {event['text']!r}")


# -- what the provider received ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    sent: int
    delivered: int  # distinct messages the provider answered as delivered
    duplicated: int  # requests beyond the first of a message
    reordered: int  # steps back in a thread's stream of requests (a late copy counts too)
    lost: int  # messages never answered as delivered
    copies: dict[str, int]  # how often each duplicated message was received
    closest: float  # smallest gap between two requests of one thread (seconds)

    def line(self, scenario: str, more: str = "") -> str:
        return (
            f"{scenario}: sent {self.sent}, delivered {self.delivered}, duplicated {self.duplicated}, "
            f"reordered {self.reordered}, lost {self.lost}{more}"
        )


def figures(devin: FakeProvider, threads: dict[str, str]) -> Figures:
    sent_count = delivered = duplicated = reordered = lost = 0
    copies: dict[str, int] = {}
    closest = float("inf")
    for session in threads:
        expected = [sent(text(session, i)) for i in range(PER_THREAD)]
        requests = [r for r in devin.requests if r.authorized and r.session_id == session]
        got = [r.text or "" for r in requests]
        foreign = [t for t in got if t not in expected]
        assert not foreign, f"{session}: the provider received messages never sent: {foreign}"
        answered = set(devin.delivered_messages(session))
        sent_count += len(expected)
        delivered += len(answered & set(expected))
        lost += len(set(expected) - answered)
        duplicated += len(got) - len(set(got))
        copies |= {t: got.count(t) for t in set(got) if got.count(t) > 1}
        ranks = [expected.index(t) for t in got]
        reordered += sum(1 for a, b in itertools.pairwise(ranks) if b < a)
        closest = min([closest, *(b.received_at - a.received_at for a, b in itertools.pairwise(requests))])
    return Figures(sent_count, delivered, duplicated, reordered, lost, copies, closest)


def finished_by(logs: Sequence[str]) -> list[int]:
    return [log.count('"event": "message_finished"') for log in logs]


def no_trouble(logs: Sequence[str]) -> list[str]:
    """Errors, tracebacks, and leases lost (a replica that finds its claim taken over while it was
    alive: a lease not honoured)."""
    found = [p for log in logs for p in problems_in(log)]
    for log in logs:
        for line in log.splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == "relay_lease_lost":
                    found.append(line[:200])
    return found


def assert_one_at_a_time(result: Figures, answer_seconds: float) -> None:
    """The provider holds every request ``answer_seconds``: two requests of one thread closer than that
    were in flight together."""
    assert result.closest >= answer_seconds * 0.9, f"two requests of a thread {result.closest:.3f}s apart"


# -- 1. every event to two replicas at once ---------------------------------------------------


async def test_every_event_posted_to_two_replicas_at_once(tmp_path: Path, pg_url: str) -> None:
    answer_seconds = 0.05
    async with cluster(tmp_path, pg_url, 2, Answer.slow(answer_seconds)) as c:
        sessions = [f"devin-both{t}" for t in range(3)]
        threads = {s: await c.link(c.senders[n % 2], s) for n, s in enumerate(sessions)}

        async def one_thread(session: str) -> None:
            for i in range(PER_THREAD):
                await deliver_to(c.senders, message_event(text(session, i), thread_ts=threads[session]))

        await asyncio.gather(*(one_thread(s) for s in sessions))
        await c.finished(len(sessions) * PER_THREAD)
        result = figures(c.devin, threads)
        logs = c.logs()
        print(
            f"\n{result.line('1. every event to 2 replicas at once')}; finished by each {finished_by(logs)}"
        )
        assert (result.sent, result.delivered, result.duplicated, result.reordered, result.lost) == (
            30,
            30,
            0,
            0,
            0,
        )
        assert_one_at_a_time(result, answer_seconds)
        assert sum(finished_by(logs)) == 30
        assert no_trouble(logs) == []


# -- 2. a thread's events spread over three replicas -------------------------------------------


async def test_a_threads_events_spread_over_three_replicas_at_random(tmp_path: Path, pg_url: str) -> None:
    answer_seconds = 0.05
    rng = random.Random(9_2026)
    async with cluster(tmp_path, pg_url, 3, Answer.slow(answer_seconds)) as c:
        sessions = [f"devin-spread{t}" for t in range(5)]
        threads = {s: await c.link(rng.choice(c.senders), s) for s in sessions}
        plan = {s: [rng.choice(c.senders) for _ in range(PER_THREAD)] for s in sessions}

        async def one_thread(session: str) -> None:
            for i, sender in enumerate(plan[session]):
                await sender.event(message_event(text(session, i), thread_ts=threads[session]))

        await asyncio.gather(*(one_thread(s) for s in sessions))
        await c.finished(len(sessions) * PER_THREAD)
        result = figures(c.devin, threads)
        logs = c.logs()
        received_by = [sum(sender is s for p in plan.values() for sender in p) for s in c.senders]
        print(
            f"\n{result.line('2. spread over 3 replicas')}; events to each {received_by}, "
            f"finished by each {finished_by(logs)}"
        )
        assert all(received_by)  # the spread did reach every replica
        assert (result.sent, result.delivered, result.duplicated, result.reordered, result.lost) == (
            50,
            50,
            0,
            0,
            0,
        )
        assert_one_at_a_time(result, answer_seconds)
        assert no_trouble(logs) == []


# -- 3. SIGKILL of the replica holding a busy thread -------------------------------------------


async def test_sigkill_of_the_replica_holding_a_busy_thread_is_taken_over(
    tmp_path: Path, pg_url: str
) -> None:
    answer_seconds = 0.3
    rng = random.Random(3_2026)
    async with cluster(tmp_path, pg_url, 3, Answer.slow(answer_seconds)) as c:
        sessions = [f"devin-kill{t}" for t in range(3)]
        threads = {s: await c.link(rng.choice(c.senders), s) for s in sessions}
        count = len(sessions) * PER_THREAD

        async def one_thread(session: str) -> None:
            for i in range(PER_THREAD):
                sender = rng.choice(c.senders)
                await sender.event(message_event(text(session, i), thread_ts=threads[session]))

        await asyncio.gather(*(one_thread(s) for s in sessions))  # all stored before the kill

        # Mid-stream: a claim on a thread's fourth message or later, 3 or more waiting behind it.
        busy: list[Claimed] = []

        async def a_busy_thread() -> bool:
            busy[:] = [r for r in await c.db.claimed() if r.number >= 3 and r.behind >= 3]
            return bool(busy)

        await until(a_busy_thread, 10.0)
        victim = holder_of_most(c.bots, busy, await c.db.claimed())
        survivors = [bot for bot in c.bots if bot is not victim]
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        assert await victim.process.wait() == -signal.SIGKILL
        dead_at = time.monotonic()
        # What the dead replica held: nobody can change these rows before their leases run out.
        in_flight = [r for r in await c.db.claimed() if r.pid == victim.process.pid]
        assert in_flight, "the kill left no claim behind"
        assert all(r.lease_left > 0 for r in in_flight), in_flight
        requests_at_kill = len(c.devin.requests)
        left_at_kill = await c.db.states()

        await c.finished(count)
        result = figures(c.devin, threads)
        # When each claim of the dead replica was sent again (or for the first time) by a survivor.
        # A claim whose request had reached Devin is found by reading the session back (Devin has
        # the message: the fake takes a message when the request arrives) and is not sent again.
        takeovers = []
        read_back = 0
        for row in in_flight:
            again = [
                r.received_at
                for r in c.devin.requests
                if r.text == sent(row.text) and r.received_at > dead_at
            ]
            if not again and sent(row.text) in c.devin.messages():
                read_back += 1
                continue
            assert again, f"{row.text!r} was never sent after the kill"
            assert again[0] >= row.expires_at - 0.1, (
                f"{row.text!r} was sent again {row.expires_at - again[0]:.2f}s before its lease ran out"
            )
            takeovers.append(again[0] - killed_at)
        takeover = max(takeovers, default=0.0)
        logs = c.logs(survivors)
        assert read_back <= sum(log.count('"event": "relay_found_delivered"') for log in logs)
        print(
            f"\n{result.line('3. SIGKILL of a busy replica of 3')}; in flight at the kill {len(in_flight)} "
            f"{[r.text for r in in_flight]} ({read_back} found on read-back, not sent again), "
            f"taken over {takeover:.2f}s after the kill (lease left "
            f"{max(r.lease_left for r in in_flight):.2f}s; lease {LEASE:g}s); provider requests before "
            f"the kill {requests_at_kill}, rows then {left_at_kill}; finished by each "
            f"{finished_by(c.logs())} (replica{c.bots.index(victim)} killed)"
        )
        assert left_at_kill.get("pending", 0) > 0, left_at_kill  # the kill did come mid-stream
        assert takeover <= LEASE + POLL + TAKEOVER_MARGIN, c.dump_logs()
        assert (result.sent, result.delivered, result.reordered, result.lost) == (count, count, 0, 0)
        in_flight_texts = {sent(r.text) for r in in_flight}
        assert set(result.copies) <= in_flight_texts, (result.copies, in_flight_texts)
        assert all(n <= 2 for n in result.copies.values()), result.copies
        assert result.duplicated <= len(in_flight)
        assert_one_at_a_time(result, answer_seconds)
        assert no_trouble(logs) == []


# -- 4. SIGTERM of one replica under load ------------------------------------------------------


async def test_sigterm_of_one_replica_under_load_duplicates_nothing(tmp_path: Path, pg_url: str) -> None:
    answer_seconds = 0.3
    rng = random.Random(4_2026)
    async with cluster(tmp_path, pg_url, 2, Answer.slow(answer_seconds)) as c:
        sessions = [f"devin-term{t}" for t in range(3)]
        threads = {s: await c.link(rng.choice(c.senders), s) for s in sessions}
        count = len(sessions) * PER_THREAD
        first_half = PER_THREAD // 2

        async def one_thread(session: str, numbers: range) -> None:
            for i in numbers:
                event = message_event(text(session, i), thread_ts=threads[session])
                await post_with_failover(c.senders, event, rng)

        await asyncio.gather(*(one_thread(s, range(first_half)) for s in sessions))

        claimed: list[Claimed] = []

        async def claims_held() -> bool:
            claimed[:] = [r for r in await c.db.claimed() if r.number >= 2]
            return bool(claimed)

        await until(claims_held, 10.0)
        victim = holder_of_most(c.bots, claimed, await c.db.claimed())
        survivor = next(bot for bot in c.bots if bot is not victim)
        stopped_at = time.monotonic()
        victim.process.send_signal(signal.SIGTERM)
        # Slack goes on sending while the replica stops: what it does not acknowledge goes elsewhere.
        more = asyncio.gather(*(one_thread(s, range(first_half, PER_THREAD)) for s in sessions))
        code = await asyncio.wait_for(victim.process.wait(), SHUTDOWN_DEADLINE + EXIT_MARGIN)
        took = time.monotonic() - stopped_at
        await more
        victim_pid = victim.process.pid
        assert code == 0, victim.log.read_text()[-4000:]
        # It finished or handed back everything it held.
        assert [r for r in await c.db.claimed() if r.pid == victim_pid] == []

        await c.finished(count)
        result = figures(c.devin, threads)
        logs = c.logs()
        print(
            f"\n{result.line('4. SIGTERM of one replica of 2 under load')}; it exited {code} after "
            f"{took:.2f}s; finished by each {finished_by(logs)} (replica{c.bots.index(victim)} stopped)"
        )
        assert "agent_relay_stopped" in logs[c.bots.index(victim)]
        assert finished_by([logs[c.bots.index(survivor)]])[0] > 0
        assert (result.sent, result.delivered, result.duplicated, result.reordered, result.lost) == (
            count,
            count,
            0,
            0,
            0,
        )
        assert_one_at_a_time(result, answer_seconds)
        assert no_trouble(logs) == []
