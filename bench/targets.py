"""Starting and stopping what the benchmark drives: the fakes, agent-relay, the naive relay, the ceiling.

Every process gets a clean environment: nothing of the caller's agent-relay settings leaks in (no
stray ``SLACK_APP_TOKEN`` switching the bot to Socket Mode), and it runs in a temporary directory, so
no ``.env`` file of a checkout is read. A target is *ready* when a signed Slack event (a channel
message, which every target ignores) is answered 200: the same test for every target and version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from bench import procstat
from bench.common import BOT_TOKEN, DEVIN_KEY, LOOPBACK, SIGNING_SECRET, TsPlan, free_port, read_ready
from bench.load import EventSender

ROOT = Path(__file__).resolve().parents[1]
Kind = Literal["bot", "naive", "ceiling"]
# Settings agent-relay (any version) or Bolt might read: never inherited from the caller.
_SETTING = re.compile(
    r"^(SLACK_|DEVIN_|FEATHER_|AGEN_|RELAY_|ALLOW|DATABASE_URL$|PORT$|LOG_|PROVIDER_|MAX_MESSAGE|SHUTDOWN_)",
    re.IGNORECASE,
)
READY_WITHIN = 30.0
STOP_WITHIN = 15.0


class TargetUnavailable(Exception):
    """The target refused to start (e.g. a DATABASE_URL it does not support); the reason is its own."""


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SETTING.match(k) and k not in ("PYTHONPATH",)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _terminate(process: asyncio.subprocess.Process, within: float = STOP_WITHIN) -> int | None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return process.returncode


@dataclass
class FakeProcess:
    """One of the lean fakes, in its own process; ``url`` once started."""

    module: str
    args: list[str]
    process: asyncio.subprocess.Process | None = None
    url: str = ""

    async def start(self) -> None:
        env = clean_env()
        env["PYTHONPATH"] = str(ROOT)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.args,
            env=env,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # a crash of a fake shows on the benchmark's stderr
        )
        assert self.process.stdout is not None
        port = await read_ready(self.process.stdout, within=READY_WITHIN)
        self.url = f"http://{LOOPBACK}:{port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def stop(self) -> None:
        if self.process is not None:
            await _terminate(self.process, within=5.0)


@dataclass
class Fakes:
    """The fake Slack and the fake provider, and their control endpoints."""

    http: aiohttp.ClientSession
    slack: FakeProcess
    provider: FakeProcess

    @classmethod
    async def start(
        cls, http: aiohttp.ClientSession, *, provider_latency_ms: float, slack_limits: bool
    ) -> Fakes:
        slack = FakeProcess("bench.fake_slack", ["--slack-limits"] if slack_limits else [])
        provider = FakeProcess("bench.fake_provider", ["--latency-ms", str(provider_latency_ms)])
        fakes = cls(http, slack, provider)
        try:
            await asyncio.gather(slack.start(), provider.start())
        except BaseException:
            await fakes.stop()
            raise
        return fakes

    async def stop(self) -> None:
        await asyncio.gather(self.slack.stop(), self.provider.stop())

    @property
    def slack_api_url(self) -> str:
        return f"{self.slack.url}/api/"

    async def _get(self, url: str) -> Any:
        async with self.http.get(url) as response:
            response.raise_for_status()
            return await response.json()

    async def _post(self, url: str, body: dict[str, Any]) -> Any:
        async with self.http.post(url, json=body) as response:
            response.raise_for_status()
            return await response.json()

    async def provider_count(self) -> dict[str, int]:
        counts: dict[str, int] = await self._get(f"{self.provider.url}/_bench/count")
        return counts

    async def provider_records(self, since: int) -> list[list[Any]]:
        body = await self._get(f"{self.provider.url}/_bench/records?since={since}")
        rows: list[list[Any]] = body["records"]
        return rows

    async def provider_mode(self, *, status: int | None = None, latency_ms: float | None = None) -> None:
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status
        if latency_ms is not None:
            body["latency_ms"] = latency_ms
        await self._post(f"{self.provider.url}/_bench/mode", body)

    async def slack_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._get(f"{self.slack.url}/_bench/stats")
        return stats

    async def slack_posted(self, since: int) -> tuple[int, list[list[Any]]]:
        body = await self._get(f"{self.slack.url}/_bench/posted?since={since}")
        return int(body["next"]), list(body["posted"])

    async def slack_limits(self, enabled: bool) -> None:
        await self._post(f"{self.slack.url}/_bench/limits", {"enabled": enabled})

    async def reset(self) -> None:
        await asyncio.gather(
            self._post(f"{self.slack.url}/_bench/reset", {}),
            self._post(f"{self.provider.url}/_bench/reset", {}),
        )

    def pids(self) -> dict[str, int]:
        return {"fake_slack": self.slack.pid, "fake_provider": self.provider.pid}


@dataclass
class Target:
    """Something the load is aimed at. ``command`` is None for the ceiling (the load generator itself
    makes the calls)."""

    label: str
    kind: Kind
    command: list[str] | None = None
    process: asyncio.subprocess.Process | None = None
    url: str = ""
    log: Path | None = None
    ready_seconds: float | None = None
    _pids: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        if self.process is None:
            return [os.getpid()]
        if not self._pids or any(not Path(f"/proc/{p}").exists() for p in self._pids):
            self._pids = procstat.tree(self.process.pid)
        return self._pids

    async def start(self, env: dict[str, str], workdir: Path, http: aiohttp.ClientSession) -> None:
        """Start the process and wait until it acknowledges a signed event."""
        if self.command is None:
            self.ready_seconds = None
            return
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.log = workdir / f"{self.label}.log"
        extra = ["run", "--mode", "http", "--host", LOOPBACK, "--port", str(port)]
        if self.kind == "naive":
            extra = ["--port", str(port), "--host", LOOPBACK]
        started = time.monotonic()
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                *extra,
                env=env,
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self._pids = []
        probe = EventSender(http, self.url, "C0PROBE", TsPlan(1_500_000_000))
        deadline = started + READY_WITHIN
        while True:
            if self.process.returncode is not None:
                raise TargetUnavailable(
                    f"{self.label} exited with {self.process.returncode} before it was ready: "
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError):
                if await probe.post(probe.message(0, 1, in_thread=False)) == 200:
                    self.ready_seconds = time.monotonic() - started
                    return
            if time.monotonic() > deadline:
                await self.stop()
                raise TargetUnavailable(
                    f"{self.label} was not ready within {READY_WITHIN:g}s: {self.log_tail()}"
                )
            await asyncio.sleep(0.01)

    def log_tail(self, chars: int = 1500) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:].strip()

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        code = await _terminate(self.process)
        self.process = None
        return code


def target_env(kind: Kind, fakes: Fakes, database_url: str, settings: dict[str, str]) -> dict[str, str]:
    env = clean_env()
    env.update(
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": fakes.slack_api_url,
            "DEVIN_API_KEY": DEVIN_KEY,
            "DEVIN_API_URL": fakes.provider.url,
        }
    )
    if kind == "bot":
        env.update({"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", **settings})
    else:
        env["PYTHONPATH"] = str(ROOT)
    return env
