"""Crash recovery and graceful shutdown of the real process (issue 4).

agent-relay runs as a subprocess (``python -m bot.cli run --mode http``) against the loopback fakes,
on a SQLite file that outlives it. Tests kill it (SIGKILL) or stop it (SIGTERM, SIGINT) while
messages are in flight, start it again on the same file, and check what the provider received: every
message, per thread in Slack ts order, and a second copy only of a message that was in flight at the
crash (for Agen, with the same ``client_id`` as the first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.settings import Settings
from tests.fakes import eventually
from tests.fakes.providers import Answer, FakeProvider
from tests.fakes.slack import TEAM, FakeSlack
from tests.fakes.specs import ProviderName
from tests.harness import ALICE, BOT_TOKEN, KEYS, SIGNING_SECRET, SlackSender, message_event

ROOT = Path(__file__).resolve().parents[2]
SHUTDOWN_DEADLINE = 1.5
EXIT_MARGIN = 4.0  # interpreter start-up aside, what the process may take beyond SHUTDOWN_DEADLINE


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def bot_env(slack: FakeSlack, provider: FakeProvider, db: Path, **extra: str) -> dict[str, str]:
    """The environment minus anything agent-relay would read (no stray SLACK_APP_TOKEN), plus ours:
    ``provider`` is the one provider enabled."""
    ours = {name.lower() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.lower() not in ours}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.api_url,
            f"{provider.name.upper()}_API_KEY": KEYS[provider.name],
            f"{provider.name.upper()}_API_URL": provider.url,
            "DATABASE_URL": f"sqlite:///{db}",
            "RELAY_ORDER_WINDOW": "0.05",
            "RELAY_RETRY_MAX_WAIT": "0.2",
            "RELAY_RETRY_BUDGET": "5",
            "PROVIDER_TIMEOUT": "30",
            "RELAY_LEASE_SECONDS": "2",  # a killed process's claims are taken over after this
            "SHUTDOWN_DEADLINE": str(SHUTDOWN_DEADLINE),
            "LOG_FORMAT": "json",
            **extra,
        }
    )
    return env


@dataclass
class Bot:
    process: asyncio.subprocess.Process
    url: str
    log: Path


@contextlib.asynccontextmanager
async def bot_process(env: dict[str, str], workdir: Path, name: str) -> AsyncIterator[Bot]:
    """Start the bot, wait for /readyz, yield; always kill it at the end if it still runs."""
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "run",
            "--mode",
            "http",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            env=env,
            cwd=workdir,  # no .env file of the checkout is read
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    bot = Bot(process, f"http://127.0.0.1:{port}", log)
    try:
        await wait_healthy(bot)
        yield bot
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def wait_healthy(bot: Bot, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            assert bot.process.returncode is None, f"the bot exited: {bot.log.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{bot.url}/readyz")).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"no /readyz: {bot.log.read_text()[-2000:]}"
            await asyncio.sleep(0.05)


def db_rows(db: Path, sql: str, *params: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute(sql, params).fetchall())


async def link(sender: SlackSender, slack: FakeSlack, db: Path, session: str, provider: str = "devin") -> str:
    """``/agent link <provider> <session>``; return the anchor ts once the binding is stored."""
    before = len(slack.messages)
    await sender.command(f"link {provider} {session}")
    await slack.wait_for(lambda: len(slack.messages) > before)
    thread = str(slack.messages[before]["ts"])
    await eventually(
        lambda: bool(db_rows(db, "SELECT 1 FROM bindings WHERE team = ? AND thread_ts = ?", TEAM, thread))
    )
    return thread


def text(session: str, i: int) -> str:
    return f"{session} m{i}"


def sent(message: str) -> str:
    return f"alice (via Slack): {message}"


async def send_all(sender: SlackSender, threads: dict[str, str], per_thread: int) -> int:
    """Reply ``per_thread`` times in every thread (threads side by side, each in ts order). Every
    message is acknowledged, so it is stored."""

    async def one_thread(session: str, thread: str) -> None:
        for i in range(per_thread):
            await sender.event(message_event(text(session, i), thread_ts=thread))

    await asyncio.gather(*(one_thread(s, t) for s, t in threads.items()))
    return len(threads) * per_thread


@dataclass
class Tally:
    sent: int
    received: int
    duplicated: int
    out_of_order: int
    duplicates: list[str]


def tally(provider: FakeProvider, threads: dict[str, str], per_thread: int, label: str) -> Tally:
    """Compare what the provider received with what was sent; print the numbers."""
    received = 0
    duplicates: list[str] = []
    out_of_order = 0
    for session in threads:
        got = provider.messages(session)
        received += len(got)
        first_seen: list[str] = []
        for message in got:
            if message in first_seen:
                duplicates.append(message)
            else:
                first_seen.append(message)
        expected = [sent(text(session, i)) for i in range(per_thread)]
        # Messages out of place in the de-duplicated sequence (0 when it is in ts order).
        out_of_order += sum(1 for a, b in zip(first_seen, expected, strict=False) if a != b)
        missing = set(expected) - set(first_seen)
        assert not missing, f"{label}: never received {sorted(missing)}"
        assert first_seen == expected, f"{label}: {session} out of order: {first_seen}"
    result = Tally(len(threads) * per_thread, received, len(duplicates), out_of_order, duplicates)
    print(
        f"\n{label}: sent {result.sent}, received by the provider {result.received}, "
        f"duplicated {result.duplicated}, out of order {result.out_of_order}"
    )
    return result


def states(db: Path) -> dict[str, int]:
    return {
        str(s): int(str(n)) for s, n in db_rows(db, "SELECT state, COUNT(*) FROM messages GROUP BY state")
    }


@contextlib.asynccontextmanager
async def fakes(name: ProviderName = "devin") -> AsyncIterator[tuple[FakeSlack, FakeProvider]]:
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider(name, KEYS[name]) as provider:
        slack.add_user(ALICE, "alice")
        try:
            yield slack, provider
        finally:
            provider.assert_no_violations()


@contextlib.asynccontextmanager
async def sender_for(bot: Bot, slack: FakeSlack) -> AsyncIterator[SlackSender]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield SlackSender(url=bot.url, client=client, slack=slack)


async def test_sigkill_with_sends_in_flight_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    per_thread = 5
    async with fakes() as (slack, devin):
        devin.set_default(Answer.hang())
        env = bot_env(slack, devin, db)
        async with bot_process(env, tmp_path, "first") as bot, sender_for(bot, slack) as sender:
            threads = {
                s: await link(sender, slack, db, s) for s in ("devin-kill0", "devin-kill1", "devin-kill2")
            }
            count = await send_all(sender, threads, per_thread)
            # One send per thread is in flight, none answered.
            await devin.wait_for(lambda: len(devin.requests) == len(threads))
            bot.process.send_signal(signal.SIGKILL)
            assert await bot.process.wait() == -signal.SIGKILL
        in_flight = [r.text for r in devin.requests if r.status is None]
        assert len(in_flight) == len(threads)
        assert states(db).get("sending") == len(threads)  # what the crash left behind

        devin.set_default(Answer.delivered())
        async with bot_process(env, tmp_path, "second"):
            await devin.wait_for(lambda: len(devin.delivered_messages()) >= count, timeout=10)
            await eventually(lambda: states(db) == {"delivered": count})
        result = tally(devin, threads, per_thread, "SIGKILL with sends in flight")
        assert set(result.duplicates) <= set(in_flight)
        assert result.duplicated <= len(in_flight)
        assert len(devin.delivered_messages()) == count  # answered as delivered exactly once each


async def test_sigkill_agen_resend_carries_the_same_client_id(tmp_path: Path) -> None:
    # Agen de-duplicates on client_id: the copy sent again after a crash must carry the id of the
    # first attempt, or Agen would take it as a new message.
    db = tmp_path / "relay.db"
    per_thread = 3
    async with fakes("agen") as (slack, agen):
        agen.set_default(Answer.hang())
        env = bot_env(slack, agen, db)
        async with bot_process(env, tmp_path, "first") as bot, sender_for(bot, slack) as sender:
            threads = {
                s: await link(sender, slack, db, s, "agen") for s in ("sess_01HZXKILL0", "sess_01HZXKILL1")
            }
            count = await send_all(sender, threads, per_thread)
            await agen.wait_for(lambda: len(agen.requests) == len(threads))
            bot.process.send_signal(signal.SIGKILL)
            assert await bot.process.wait() == -signal.SIGKILL
        in_flight = [r.text or "" for r in agen.requests if r.status is None]
        assert len(in_flight) == len(threads)

        agen.set_default(Answer.delivered())
        async with bot_process(env, tmp_path, "second"):
            await agen.wait_for(lambda: len(agen.delivered_messages()) >= count, timeout=10)
            await eventually(lambda: states(db) == {"delivered": count}, timeout=10)
        result = tally(agen, threads, per_thread, "Agen SIGKILL with sends in flight")
        # Every send in flight at the crash was sent again (so the check below has something to check).
        assert sorted(result.duplicates) == sorted(in_flight)
        for message in result.duplicates:
            ids = {r.client_id for r in agen.requests if r.text == message}
            assert len(ids) == 1, f"{message!r} was sent with client_ids {ids}"
            assert None not in ids
        # Distinct messages, distinct ids.
        assert len({r.client_id for r in agen.requests}) == count


async def test_sigkill_mid_stream_duplicates_at_most_the_send_in_flight(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    per_thread = 6
    async with fakes() as (slack, devin):
        devin.set_default(Answer.slow(0.2))
        env = bot_env(slack, devin, db)
        async with bot_process(env, tmp_path, "first") as bot, sender_for(bot, slack) as sender:
            threads = {
                s: await link(sender, slack, db, s) for s in ("devin-mid0", "devin-mid1", "devin-mid2")
            }
            count = await send_all(sender, threads, per_thread)
            await devin.wait_for(lambda: len(devin.requests) >= 7)
            bot.process.send_signal(signal.SIGKILL)
            assert await bot.process.wait() == -signal.SIGKILL
            before_kill = list(devin.requests)
        # The kill did come mid-stream: the dead process left messages unsent.
        left = states(db)
        print(f"\nSIGKILL mid-stream: rows left by the kill {left}")
        assert left.get("pending", 0) + left.get("sending", 0) > 0, left
        # The last request of each thread before the kill may have been in flight (answered or not,
        # the dead process never recorded it); every earlier one had been recorded.
        last_per_thread = {r.session_id: r.text for r in before_kill}
        devin.set_default(Answer.delivered())
        async with bot_process(env, tmp_path, "second"):
            await eventually(lambda: states(db) == {"delivered": count}, timeout=10)
        result = tally(devin, threads, per_thread, "SIGKILL mid-stream")
        assert set(result.duplicates) <= set(last_per_thread.values())
        assert result.duplicated <= len(threads)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_under_load_exits_cleanly_and_loses_nothing(
    tmp_path: Path, sig: signal.Signals
) -> None:
    db = tmp_path / "relay.db"
    per_thread = 4
    async with fakes() as (slack, devin):
        devin.set_default(Answer.slow(0.5))
        env = bot_env(slack, devin, db)
        async with bot_process(env, tmp_path, "first") as bot, sender_for(bot, slack) as sender:
            threads = {
                s: await link(sender, slack, db, s) for s in ("devin-term0", "devin-term1", "devin-term2")
            }
            count = await send_all(sender, threads, per_thread)
            await devin.wait_for(lambda: len(devin.requests) >= len(threads))
            started = time.monotonic()
            bot.process.send_signal(sig)
            code = await asyncio.wait_for(bot.process.wait(), SHUTDOWN_DEADLINE + EXIT_MARGIN)
            took = time.monotonic() - started
            print(f"\n{sig.name}: exited {code} after {took:.2f}s (deadline {SHUTDOWN_DEADLINE}s)")
            assert code == 0, bot.log.read_text()[-2000:]
        assert "agent_relay_stopped" in bot.log.read_text()
        # The sends in flight were allowed to finish: nothing is left `sending`.
        assert "sending" not in states(db)
        before_restart = len(devin.requests)

        devin.set_default(Answer.delivered())
        async with bot_process(env, tmp_path, "second"):
            await eventually(lambda: states(db) == {"delivered": count}, timeout=10)
        result = tally(devin, threads, per_thread, f"{sig.name} under load")
        assert result.received == count  # exactly once each
        assert before_restart < count  # the shutdown did leave work for the restart


async def test_sigterm_parks_sends_that_outlive_the_deadline(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    per_thread = 3
    async with fakes() as (slack, devin):
        devin.set_default(Answer.hang())
        env = bot_env(slack, devin, db, SHUTDOWN_DEADLINE="0.5")
        async with bot_process(env, tmp_path, "first") as bot, sender_for(bot, slack) as sender:
            threads = {s: await link(sender, slack, db, s) for s in ("devin-park0", "devin-park1")}
            count = await send_all(sender, threads, per_thread)
            await devin.wait_for(lambda: len(devin.requests) == len(threads))
            bot.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(bot.process.wait(), 0.5 + EXIT_MARGIN)
            assert code == 0, bot.log.read_text()[-2000:]
        assert '"relay_parked"' in bot.log.read_text()
        in_flight = [r.text for r in devin.requests if r.status is None]
        assert len(in_flight) == len(threads)

        devin.set_default(Answer.delivered())
        async with bot_process(env, tmp_path, "second"):
            await eventually(lambda: states(db) == {"delivered": count}, timeout=10)
        result = tally(devin, threads, per_thread, "SIGTERM past the deadline")
        assert set(result.duplicates) <= set(in_flight)
        assert len(devin.delivered_messages()) == count
