"""What every part of the benchmark agrees on: identities, secrets of the fakes, message texts, ts values.

Times exchanged between processes are ``time.monotonic()`` values: on Linux that clock
(``CLOCK_MONOTONIC``) is one system-wide clock, so a time taken in the load generator and one taken in
the fake provider can be subtracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sys
import time
from typing import Final

from aiohttp import web

TEAM: Final = "T0BENCH"
BOT_USER: Final = "U0BENCHBOT"
BOT_ID: Final = "B0BENCHBOT"
HUMAN: Final = "U0HUMAN"
HUMAN_NAME: Final = "alice"
BOT_TOKEN: Final = "xoxb-bench_fake_bot_token"  # noqa: S105 - a fake's
SIGNING_SECRET: Final = "bench-signing-secret-0a1b2c3d4e5f"  # noqa: S105 - a fake's
DEVIN_KEY: Final = "apk_user_bench_fake_devin_key"
LOOPBACK: Final = "127.0.0.1"
READY_PREFIX: Final = "READY "  # what a fake prints on stdout once it listens: "READY <port>"

# "t<thread>-m<seq>" somewhere in the text the provider receives: who sent what, in which order.
_MARK = re.compile(r"\bt(\d+)-m(\d+)\b")


def mark(thread: int, seq: int) -> str:
    return f"t{thread}-m{seq}"


def parse_mark(text: str) -> tuple[int, int] | None:
    found = _MARK.search(text)
    return (int(found[1]), int(found[2])) if found else None


def session_for(run_tag: str, thread: int) -> str:
    """The Devin session id bound to one thread (valid for the bot's parser: ``devin-[A-Za-z0-9_-]+``)."""
    return f"devin-{run_tag}-{thread}"


def thread_of_session(session: str) -> int | None:
    tail = session.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


class TsPlan:
    """Slack ts values: a thread's parent ts and its replies' ts, increasing within a thread, unique
    across threads of a channel (``<seconds>.<thread, 6 digits>``; seconds grow with the reply number)."""

    def __init__(self, base_seconds: int) -> None:
        self.base = base_seconds

    def parent(self, thread: int) -> str:
        return f"{self.base}.{thread:06d}"

    def reply(self, thread: int, seq: int) -> str:
        return f"{self.base + 1 + seq}.{thread:06d}"


def free_port() -> int:
    """A port free right now on loopback (for a server that takes ``--port`` and cannot report one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


def announce_ready(port: int) -> None:
    sys.stdout.write(f"{READY_PREFIX}{port}\n")
    sys.stdout.flush()


async def serve_until_stopped(app: web.Application, port: int) -> None:
    """Serve ``app`` on loopback, announce the port on stdout, and run until the process is ended."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, port)
    await site.start()
    announce_ready(int(runner.addresses[0][1]))
    try:
        await asyncio.Event().wait()  # until the benchmark terminates this process
    finally:
        await runner.cleanup()


async def read_ready(stream: asyncio.StreamReader, within: float) -> int:
    """The port a fake announced on its stdout, waiting at most ``within`` seconds."""
    deadline = time.monotonic() + within
    for _ in range(100):  # a few lines of noise at most before the announcement
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with contextlib.suppress(TimeoutError):
            line = (await asyncio.wait_for(stream.readline(), left)).decode(errors="replace")
            if not line:
                break
            if line.startswith(READY_PREFIX):
                return int(line[len(READY_PREFIX) :].strip())
    raise RuntimeError("the process did not announce its port")


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
