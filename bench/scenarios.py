"""What one run of one target does, and what it measures.

* :func:`threads_run`: a fresh target; link N threads; a *paced* phase (a fixed rate, e.g. 100 events
  a second: latency, acknowledgement time, CPU per message at that load); a *burst* phase (every
  thread sends its share as fast as the target takes them: relays a second); peak RSS; start-up time.
* :func:`backlog_run`: the provider answers 503 while thousands of messages queue over many threads
  (RSS while they wait, what the waiting costs), then comes back (drain rate, nothing lost or reordered).
* :func:`limits_run`: a burst with Slack's rate limits enforced by the fake Slack, or not.

Every phase counts what the provider received (:mod:`bench.tally`) and the CPU time of the target,
the two fakes and the load generator (:mod:`bench.procstat`), so a fake that became the bottleneck
shows. Each wait is bounded: by a deadline, and by a stall limit (nothing new reached the provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import procstat
from bench.common import TsPlan, percentile
from bench.load import EventSender, Operation, Sent, burst, ceiling_operation, paced, per_thread, round_robin
from bench.tally import Tally, count
from bench.targets import Fakes, Target, target_env

POLL = 0.05


class RunFailed(Exception):
    """A run could not be completed (e.g. threads were never linked); the message says why."""


@dataclass(frozen=True)
class Options:
    order_window: float = 0.25
    concurrency: int = 32
    rate: float = 100.0
    rate_seconds: float = 5.0
    messages: int = 1000
    provider_latency_ms: float = 0.0
    slack_limits: bool = False
    database_url: str | None = None  # None: a fresh SQLite file per run
    settle: float = 0.5  # seconds to wait for late duplicates once everything arrived
    stall: float = 15.0  # give up when nothing new reached the provider for this long
    phase_timeout: float = 300.0
    backlog_max_wait: float = 1.0
    backlog_hold: float = 5.0
    backlog_intake_timeout: float = 300.0
    backlog_timeout: float = 900.0
    limits_timeout: float = 300.0


@dataclass
class Context:
    http: aiohttp.ClientSession
    fakes: Fakes
    workdir: Path
    options: Options


@dataclass
class RunSetup:
    tag: str
    channel: str
    plan: TsPlan
    op: Operation
    sender: EventSender | None


def _ms(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in qs:
        value = percentile(list(values), q)
        out[f"p{q:g}"] = None if value is None else value * 1000.0
    out["max"] = max(values) * 1000.0 if values else None
    return out


class CpuMeter:
    """CPU seconds of the target, each fake and the load generator between :meth:`start` and :meth:`stop`."""

    def __init__(self, ctx: Context, target: Target) -> None:
        own = os.getpid()
        self._groups: dict[str, Callable[[], list[int]]] = {"target": target.pids, "loadgen": lambda: [own]}
        for name, pid in ctx.fakes.pids().items():
            self._groups[name] = functools.partial(list, [pid])
        self._before: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    def _now(self) -> dict[str, float]:
        return {name: procstat.sample(pids()).cpu for name, pids in self._groups.items()}

    def start(self) -> None:
        self._before = self._now()
        self._t0 = time.monotonic()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._t0
        after = self._now()
        self.seconds = {name: after[name] - self._before[name] for name in after}

    def per_message_ms(self, messages: int) -> dict[str, float | None]:
        return {k: (v * 1000.0 / messages if messages else None) for k, v in self.seconds.items()}

    def utilisation(self) -> dict[str, float | None]:
        """Share of one core over the phase (1.0 = one core busy all along)."""
        return {k: (v / self.wall if self.wall > 0 else None) for k, v in self.seconds.items()}


async def wait_delivered(ctx: Context, target_distinct: int, *, timeout: float) -> bool:  # noqa: ASYNC109
    """Until the provider has ``target_distinct`` distinct deliveries; False on stall or timeout."""
    deadline = time.monotonic() + timeout
    last_requests, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        counts = await ctx.fakes.provider_count()
        if counts["distinct"] >= target_distinct:
            return True
        if counts["requests"] != last_requests:
            last_requests, last_change = counts["requests"], time.monotonic()
        elif time.monotonic() - last_change > ctx.options.stall:
            return False
        await asyncio.sleep(POLL)
    return False


async def measure(
    ctx: Context,
    target: Target,
    send: Callable[[], Awaitable[dict[tuple[int, int], Sent]]],
    expected: Mapping[int, Sequence[int]],
    *,
    timeout: float,  # noqa: ASYNC109
    window: float,
) -> dict[str, Any]:
    """Run one phase: send, wait until everything expected arrived (or stall), count, and measure."""
    before = await ctx.fakes.provider_count()
    meter = CpuMeter(ctx, target)
    meter.start()
    started = time.monotonic()
    sent = await send()
    sending = time.monotonic() - started
    complete = await wait_delivered(
        ctx, before["distinct"] + sum(len(s) for s in expected.values()), timeout=timeout
    )
    meter.stop()
    await asyncio.sleep(ctx.options.settle)
    tally = count(await ctx.fakes.provider_records(before["requests"]), expected, sent)
    return phase_summary(tally, meter, sending=sending, complete=complete, window=window)


def phase_summary(
    tally: Tally,
    meter: CpuMeter,
    *,
    sending: float,
    complete: bool,
    window: float,
    since: float | None = None,
) -> dict[str, Any]:
    latencies = [max(0.0, v - window) for v in tally.latencies]
    return {
        "tally": tally.summary(),
        "clean": tally.clean and complete,
        "complete": complete,
        "problems": tally.problems() if complete else f"incomplete ({tally.problems()})",
        "rate": tally.rate(since),
        "intake_rate": (len(tally.acks) / sending) if sending > 0 else None,
        "latency_ms": _ms(latencies),
        "latencies_ms": [round(v * 1000.0, 3) for v in latencies],
        "ack_ms": _ms(tally.acks),
        "cpu_ms_per_msg": meter.per_message_ms(tally.delivered),
        "cpu_util": meter.utilisation(),
        "wall_s": meter.wall,
        "window_s": window,
    }


# -- set-up -------------------------------------------------------------------------------------


async def _start(ctx: Context, target: Target, rundir: Path, settings: dict[str, str]) -> None:
    rundir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local directory, instantly
    database_url = ctx.options.database_url or f"sqlite:///{rundir / 'bench.db'}"
    env = target_env(target.kind, ctx.fakes, database_url, settings)
    await target.start(env, rundir, ctx.http)


def _setup(ctx: Context, target: Target) -> RunSetup:
    tag = secrets.token_hex(3)
    channel = f"C{tag.upper()}"
    plan = TsPlan(1_700_000_000 + secrets.randbelow(50_000_000))
    if target.kind == "ceiling":
        op = ceiling_operation(
            ctx.http,
            provider_url=ctx.fakes.provider.url,
            slack_api_url=ctx.fakes.slack_api_url,
            channel=channel,
            plan=plan,
            run_tag=tag,
        )
        return RunSetup(tag, channel, plan, op, None)
    sender = EventSender(ctx.http, target.url, channel, plan)
    return RunSetup(tag, channel, plan, sender.operation(), sender)


async def link(ctx: Context, setup: RunSetup, threads: int) -> float:
    """Link ``threads`` threads with ``@bot link devin <session>``; return the seconds it took."""
    sender = setup.sender
    if sender is None:
        return 0.0
    since, _ = await ctx.fakes.slack_posted(0)
    started = time.monotonic()

    async def mention(thread: int, _seq: int) -> int:
        return await sender.post(sender.link_mention(thread, setup.tag))

    deadline = started + 60.0 + threads * 0.1
    await burst(
        mention, {t: [0] for t in range(threads)}, concurrency=ctx.options.concurrency, deadline=deadline
    )
    wanted = {setup.plan.parent(t) for t in range(threads)}
    linked: set[str] = set()
    while time.monotonic() < deadline:
        since, posted = await ctx.fakes.slack_posted(since)
        linked.update(str(p[1]) for p in posted if p[0] == setup.channel and "linked this thread" in p[2])
        if wanted <= linked:
            return time.monotonic() - started
        await asyncio.sleep(POLL)
    raise RunFailed(f"only {len(wanted & linked)} of {threads} threads were linked")


def _grouped(schedule: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for thread, seq in schedule:
        grouped.setdefault(thread, []).append(seq)
    return grouped


class RssWatch:
    """Samples VmRSS of the target every ``every`` seconds in the background; keeps the maximum."""

    def __init__(self, target: Target, every: float = 0.25) -> None:
        self.target = target
        self.every = every
        self.max_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.max_kib = max(self.max_kib, procstat.sample(self.target.pids()).rss_kib)
            await asyncio.sleep(self.every)

    def __enter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


# -- runs ---------------------------------------------------------------------------------------


def _window(target: Target, options: Options) -> float:
    return options.order_window if target.kind == "bot" else 0.0


def _bot_settings(options: Options, **extra: str) -> dict[str, str]:
    return {"RELAY_ORDER_WINDOW": f"{options.order_window:g}", "SHUTDOWN_DEADLINE": "2", **extra}


async def _prepare(ctx: Context, *, limits: bool) -> None:
    await ctx.fakes.reset()
    await ctx.fakes.provider_mode(status=200, latency_ms=ctx.options.provider_latency_ms)
    await ctx.fakes.slack_limits(limits)


async def threads_run(ctx: Context, target: Target, threads: int, rep: int) -> dict[str, Any]:
    options = ctx.options
    await _prepare(ctx, limits=False)
    rundir = ctx.workdir / f"{target.label}-t{threads}-r{rep}"
    await _start(ctx, target, rundir, _bot_settings(options))
    result: dict[str, Any] = {"target": target.label, "kind": target.kind, "threads": threads, "rep": rep}
    try:
        setup = _setup(ctx, target)
        result["ready_s"] = target.ready_seconds
        result["link_s"] = await link(ctx, setup, threads)  # set-up: never throttled
        await ctx.fakes.slack_limits(options.slack_limits)
        seqs = dict.fromkeys(range(threads), 1)
        window = _window(target, options)
        if options.rate_seconds > 0:
            schedule = round_robin(threads, max(1, round(options.rate * options.rate_seconds)), seqs)
            deadline = time.monotonic() + options.rate_seconds * 3 + 30

            async def send_paced() -> dict[tuple[int, int], Sent]:
                return await paced(setup.op, schedule, rate=options.rate, deadline=deadline)

            result["paced"] = await measure(
                ctx, target, send_paced, _grouped(schedule), timeout=options.phase_timeout, window=window
            )
        plan = per_thread(threads, max(1, round(options.messages / threads)), seqs)
        deadline = time.monotonic() + options.phase_timeout

        async def send_burst() -> dict[tuple[int, int], Sent]:
            return await burst(setup.op, plan, concurrency=options.concurrency, deadline=deadline)

        result["burst"] = await measure(
            ctx, target, send_burst, plan, timeout=options.phase_timeout, window=window
        )
        if target.process is not None:
            result["rss_peak_kib"] = procstat.sample(target.pids()).hwm_kib
    finally:
        result["exit_code"] = await target.stop()
    return result


async def backlog_run(ctx: Context, target: Target, threads: int, messages: int, rep: int) -> dict[str, Any]:
    """Queue ``messages`` over ``threads`` while the provider answers 503, then let it recover."""
    options = ctx.options
    await _prepare(ctx, limits=False)
    rundir = ctx.workdir / f"{target.label}-backlog-r{rep}"
    settings = _bot_settings(
        options, RELAY_RETRY_BUDGET="3600", RELAY_RETRY_MAX_WAIT=f"{options.backlog_max_wait:g}"
    )
    await _start(ctx, target, rundir, settings)
    result: dict[str, Any] = {"target": target.label, "threads": threads, "messages": messages, "rep": rep}
    try:
        setup = _setup(ctx, target)
        result["ready_s"] = target.ready_seconds
        result["link_s"] = await link(ctx, setup, threads)
        await ctx.fakes.provider_mode(status=503)
        before = await ctx.fakes.provider_count()
        plan = per_thread(threads, max(1, messages // threads), dict.fromkeys(range(threads), 1))
        expected = sum(len(s) for s in plan.values())
        with RssWatch(target) as rss:
            intake = CpuMeter(ctx, target)
            intake.start()
            sent = await burst(
                setup.op,
                plan,
                concurrency=options.concurrency,
                deadline=time.monotonic() + options.phase_timeout,
            )
            intake.stop()
            acks = [s.ack for s in sent.values() if s.status == 200]
            result["intake"] = {
                "acknowledged": len(acks),
                "unsent": expected - len(sent),
                "seconds": intake.wall,
                "rate": len(acks) / intake.wall if intake.wall > 0 else None,
                "ack_ms": _ms(acks),
                "cpu_ms_per_msg": intake.per_message_ms(len(acks)),
            }
            hold = CpuMeter(ctx, target)
            attempts_before = (await ctx.fakes.provider_count())["requests"]
            hold.start()
            await asyncio.sleep(options.backlog_hold)
            hold.stop()
            attempts = (await ctx.fakes.provider_count())["requests"] - attempts_before
            result["waiting"] = {
                "seconds": hold.wall,
                "rss_kib": procstat.sample(target.pids()).rss_kib,
                "rss_max_kib": rss.max_kib,
                "cpu_util": hold.utilisation(),
                "provider_attempts_per_s": attempts / hold.wall if hold.wall > 0 else None,
            }
            await ctx.fakes.provider_mode(status=200)
            recovered = time.monotonic()
            drain = CpuMeter(ctx, target)
            drain.start()
            complete = await wait_delivered(
                ctx, before["distinct"] + expected, timeout=options.backlog_timeout
            )
            drain.stop()
            result["rss_max_kib"] = rss.max_kib
        await asyncio.sleep(options.settle)
        tally = count(await ctx.fakes.provider_records(before["requests"]), plan, sent)
        result["drain"] = phase_summary(
            tally, drain, sending=intake.wall, complete=complete, window=options.order_window, since=recovered
        )
        result["drain"]["latencies_ms"] = []  # queue times of a backlog say nothing about latency
        result["drain"]["seconds"] = (tally.last_received or recovered) - recovered
        if target.process is not None:
            result["rss_peak_kib"] = procstat.sample(target.pids()).hwm_kib
    finally:
        result["exit_code"] = await target.stop()
    return result


async def limits_run(
    ctx: Context, target: Target, threads: int, messages: int, rep: int, *, limited: bool
) -> dict[str, Any]:
    """A burst over ``threads`` threads with Slack's rate limits enforced (``limited``) or not."""
    options = ctx.options
    await _prepare(ctx, limits=False)
    rundir = ctx.workdir / f"{target.label}-limits-{'on' if limited else 'off'}-r{rep}"
    await _start(ctx, target, rundir, _bot_settings(options))
    result: dict[str, Any] = {
        "target": target.label,
        "threads": threads,
        "messages": messages,
        "limited": limited,
        "rep": rep,
    }
    try:
        setup = _setup(ctx, target)
        await link(ctx, setup, threads)  # linking is set-up: never throttled
        await ctx.fakes.reset()
        await ctx.fakes.slack_limits(limited)
        plan = per_thread(threads, max(1, round(messages / threads)), dict.fromkeys(range(threads), 1))
        deadline = time.monotonic() + options.limits_timeout

        async def send_burst() -> dict[tuple[int, int], Sent]:
            return await burst(setup.op, plan, concurrency=options.concurrency, deadline=deadline)

        result["burst"] = await measure(
            ctx, target, send_burst, plan, timeout=options.limits_timeout, window=_window(target, options)
        )
        result["burst"]["latencies_ms"] = []
        result["slack"] = await ctx.fakes.slack_stats()
    finally:
        with contextlib.suppress(aiohttp.ClientError):
            await ctx.fakes.slack_limits(False)
        result["exit_code"] = await target.stop()
    return result
