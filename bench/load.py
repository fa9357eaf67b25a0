"""The load generator: signed Slack events (or, for the ceiling, the two calls themselves), paced.

Two ways to send:

* :func:`burst`: every thread sends its messages one after the other, threads side by side, at most
  ``concurrency`` requests in flight: as fast as the target takes them (throughput).
* :func:`paced`: a fixed rate, open loop: message *k* leaves at ``start + k / rate`` whatever happened
  to the ones before (latency at a given load). Requests that overlap may reach the target out of
  order, as Slack's do; putting them back in order is the target's job.

An *operation* sends one message and returns its HTTP status; its duration is the acknowledgement time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.signature import SignatureVerifier

from bench.common import (
    BOT_TOKEN,
    BOT_USER,
    DEVIN_KEY,
    HUMAN,
    HUMAN_NAME,
    SIGNING_SECRET,
    TEAM,
    TsPlan,
    mark,
    session_for,
)

Operation = Callable[[int, int], Awaitable[int]]  # (thread, seq) -> HTTP status (-1: no answer)
FILLER = "please run the test suite again and tell me which cases still fail"


@dataclass(slots=True)
class Sent:
    at: float  # time.monotonic() when the request left
    ack: float  # seconds until the answer (or the failure)
    status: int


class EventSender:
    """Signs and posts Slack Events API requests to one target's ``/slack/events``."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, channel: str, plan: TsPlan) -> None:
        self.http = http
        self.url = f"{base_url}/slack/events"
        self.channel = channel
        self.plan = plan
        self._verifier = SignatureVerifier(SIGNING_SECRET)
        self._ids = itertools.count(1)

    def _wrap(self, event: dict[str, Any]) -> str:
        return json.dumps(
            {
                "token": "legacy-verification-token",
                "team_id": TEAM,
                "api_app_id": "A0BENCH",
                "event": event,
                "type": "event_callback",
                "event_id": f"Ev{self.channel}{next(self._ids):08d}",
                "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
            }
        )

    async def post(self, event: dict[str, Any]) -> int:
        body = self._wrap(event)
        stamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "x-slack-request-timestamp": stamp,
            "x-slack-signature": self._verifier.generate_signature(timestamp=stamp, body=body) or "",
        }
        async with self.http.post(self.url, data=body.encode(), headers=headers) as response:
            await response.read()
            return response.status

    def message(self, thread: int, seq: int, *, in_thread: bool = True) -> dict[str, Any]:
        ts = self.plan.reply(thread, seq)
        event: dict[str, Any] = {
            "type": "message",
            "channel": self.channel,
            "user": HUMAN,
            "text": f"{mark(thread, seq)} {FILLER}",
            "ts": ts,
            "team": TEAM,
            "channel_type": "channel",
            "event_ts": ts,
        }
        if in_thread:
            event["thread_ts"] = self.plan.parent(thread)
        return event

    def link_mention(self, thread: int, run_tag: str) -> dict[str, Any]:
        """``@bot link devin <session>`` as the first reply of the thread (seq 0)."""
        ts = self.plan.reply(thread, 0)
        return {
            "type": "app_mention",
            "channel": self.channel,
            "user": HUMAN,
            "text": f"<@{BOT_USER}> link devin {session_for(run_tag, thread)}",
            "ts": ts,
            "thread_ts": self.plan.parent(thread),
            "team": TEAM,
            "event_ts": ts,
        }

    def operation(self) -> Operation:
        async def send(thread: int, seq: int) -> int:
            return await self.post(self.message(thread, seq))

        return send


def ceiling_operation(
    http: aiohttp.ClientSession,
    *,
    provider_url: str,
    slack_api_url: str,
    channel: str,
    plan: TsPlan,
    run_tag: str,
) -> Operation:
    """The bare minimum per message, with no framework: the provider POST, then ``reactions.add``."""
    provider_headers = {"authorization": f"Bearer {DEVIN_KEY}"}
    slack_headers = {"authorization": f"Bearer {BOT_TOKEN}"}

    async def send(thread: int, seq: int) -> int:
        body = {"message": f"{HUMAN_NAME} (via Slack): {mark(thread, seq)} {FILLER}"}
        url = f"{provider_url}/v1/sessions/{session_for(run_tag, thread)}/message"
        async with http.post(url, json=body, headers=provider_headers) as response:
            await response.read()
            status = response.status
        reaction = {"channel": channel, "timestamp": plan.reply(thread, seq), "name": "white_check_mark"}
        async with http.post(f"{slack_api_url}reactions.add", json=reaction, headers=slack_headers) as r:
            await r.read()
        return status

    return send


async def _timed(op: Operation, thread: int, seq: int, out: dict[tuple[int, int], Sent]) -> None:
    started = time.monotonic()
    try:
        status = await op(thread, seq)
    except (aiohttp.ClientError, OSError, TimeoutError):
        status = -1
    out[(thread, seq)] = Sent(started, time.monotonic() - started, status)


async def burst(
    op: Operation, plan: Mapping[int, Sequence[int]], *, concurrency: int, deadline: float
) -> dict[tuple[int, int], Sent]:
    """Each thread sends its sequence numbers in order; threads run side by side; ``concurrency``
    requests in flight at most. Stops (leaving the rest unsent) at ``deadline`` (monotonic)."""
    sent: dict[tuple[int, int], Sent] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one_thread(thread: int, seqs: Sequence[int]) -> None:
        for seq in seqs:
            if time.monotonic() > deadline:
                return
            async with gate:
                await _timed(op, thread, seq, sent)

    await asyncio.gather(*(one_thread(t, s) for t, s in plan.items()))
    return sent


async def paced(
    op: Operation, schedule: Sequence[tuple[int, int]], *, rate: float, deadline: float
) -> dict[tuple[int, int], Sent]:
    """Send ``schedule`` at ``rate`` a second, open loop; wait for every answer (until ``deadline``)."""
    sent: dict[tuple[int, int], Sent] = {}
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for k, (thread, seq) in enumerate(schedule):
        wait = start + k / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if time.monotonic() > deadline:
            break
        tasks.append(asyncio.create_task(_timed(op, thread, seq, sent)))
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
        for task in late:
            task.cancel()
    return sent


def round_robin(threads: int, count: int, first_seq: dict[int, int]) -> list[tuple[int, int]]:
    """``count`` messages spread over ``threads`` threads in turn; ``first_seq`` is advanced."""
    schedule = []
    for k in range(count):
        thread = k % threads
        schedule.append((thread, first_seq[thread]))
        first_seq[thread] += 1
    return schedule


def per_thread(threads: int, each: int, first_seq: dict[int, int]) -> dict[int, list[int]]:
    """``each`` messages in every thread; ``first_seq`` is advanced."""
    plan = {}
    for thread in range(threads):
        plan[thread] = list(range(first_seq[thread], first_seq[thread] + each))
        first_seq[thread] += each
    return plan
