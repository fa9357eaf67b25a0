"""The bot running for real in HTTP mode on loopback, against a fake Slack and fake providers.

``Harness`` starts a :class:`tests.fakes.slack.FakeSlack`, one :class:`tests.fakes.providers.FakeProvider`
per provider, and agent-relay's own :class:`bot.runtime.Runtime` on a real SQLite file; ``SlackSender``
signs and posts events and slash commands to it exactly as Slack does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from slack_sdk.signature import SignatureVerifier

from bot.runtime import Runtime
from bot.settings import Settings
from storage import Store, ThreadKey
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import BOT_ID, BOT_USER, TEAM, FakeSlack
from tests.logcapture import captured_logs

SIGNING_SECRET = "test-signing-secret-9f8e7d6c5b4a"
BOT_TOKEN = "xoxb-000000000000-000000000000-TESTbottoken0123456789"
KEYS = {
    "devin": "apk_user_TESTdevinkey0123456789abcdef",
    "feather": "TESTfeatherkey-0123456789abcdef",
    "agen": "TESTagenkey-0123456789abcdef",
}
CHANNEL = "C0CHANNEL"
ALICE = "U0ALICE"
BOB = "U0BOB"
DEVIN_SESSION = "devin-0123456789abcdef"
FEATHER_SESSION = "123e4567-e89b-12d3-a456-426614174000"
AGEN_SESSION = "sess_01HZXAGEN"
SESSIONS = {"devin": DEVIN_SESSION, "feather": FEATHER_SESSION, "agen": AGEN_SESSION}

_ts_counter = itertools.count(1)


def new_ts() -> str:
    """A fresh Slack message ts, increasing within the test run."""
    n = next(_ts_counter)
    return f"{1800000000 + n // 1_000_000}.{n % 1_000_000:06d}"


def make_settings(
    tmp_path: Path, slack: FakeSlack, providers: dict[str, FakeProvider], **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": BOT_TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.api_url,
        "database_url": f"sqlite:///{tmp_path / 'relay.db'}",
        "relay_order_window": 0.05,
        "relay_retry_budget": 3.0,
        "relay_retry_max_wait": 0.3,
        "provider_timeout": 2.0,
        "shutdown_deadline": 3.0,
        "log_format": "console",
        "mirror_default": "off",  # tests of the agent's side turn it on (tests/e2e/test_mirror.py)
        "mirror_poll_interval": 0.1,
        "mirror_idle_max": 0.4,
    }
    for name, fake in providers.items():
        values[f"{name}_api_key"] = KEYS[name]
        values[f"{name}_api_url"] = fake.url
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class SlackSender:
    """Posts signed requests to the app the way Slack does."""

    url: str
    client: httpx.AsyncClient
    slack: FakeSlack
    secret: str = SIGNING_SECRET
    sent: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _headers(self, body: str, content_type: str, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = SignatureVerifier(self.secret).generate_signature(timestamp=ts, body=body)
        return {
            "content-type": content_type,
            "x-slack-request-timestamp": ts,
            "x-slack-signature": signature or "",
        }

    async def envelope(self, body: dict[str, Any]) -> httpx.Response:
        """Post a whole ``event_callback`` body (a fixture), signed, as Slack does."""
        raw = json.dumps(body)
        if isinstance(body.get("event"), dict):
            self.sent.append(body["event"])
        response = await self.post_raw(raw, self._headers(raw, "application/json"))
        assert response.status_code == 200, response.text
        return response

    async def post_raw(self, body: str, headers: dict[str, str]) -> httpx.Response:
        return await self.client.post(f"{self.url}/slack/events", content=body.encode(), headers=headers)

    def event_body(self, event: dict[str, Any], *, event_id: str | None = None) -> str:
        return json.dumps(
            {
                "token": "legacy-verification-token",
                "team_id": TEAM,
                "api_app_id": "A0APP",
                "event": event,
                "type": "event_callback",
                "event_id": event_id or f"Ev{next(self._ids):08d}",
                "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
            }
        )

    async def event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry_num: int | None = None
    ) -> httpx.Response:
        body = self.event_body(event, event_id=event_id)
        headers = self._headers(body, "application/json")
        if retry_num:
            headers["x-slack-retry-num"] = str(retry_num)
            headers["x-slack-retry-reason"] = "http_timeout"
        self.sent.append(event)
        response = await self.post_raw(body, headers)
        assert response.status_code == 200, response.text
        return response

    async def command(
        self, text: str, *, user: str = ALICE, channel: str = CHANNEL, **extra: str
    ) -> httpx.Response:
        """``/agent text``; ``extra`` adds or replaces payload fields (``team_id``, ``enterprise_id``...)."""
        tag = f"cmd{next(self._ids)}"
        form = {
            "token": "legacy-verification-token",
            "team_id": TEAM,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/agent",
            "text": text,
            "api_app_id": "A0APP",
            "response_url": self.slack.response_url(tag),
            "trigger_id": f"trigger.{tag}",
            **extra,
        }
        body = urllib.parse.urlencode(form)
        response = await self.post_raw(body, self._headers(body, "application/x-www-form-urlencoded"))
        assert response.status_code == 200, response.text
        return response


def message_event(
    text: str,
    *,
    user: str = ALICE,
    thread_ts: str | None = None,
    ts: str | None = None,
    channel: str = CHANNEL,
    **extra: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts or new_ts(),
        "team": TEAM,
        "channel_type": "channel",
        "event_ts": ts or new_ts(),
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    event.update(extra)
    return event


def mention_event(text: str, **kwargs: Any) -> dict[str, Any]:
    event = message_event(f"<@{BOT_USER}> {text}", **kwargs)
    event["type"] = "app_mention"
    del event["channel_type"]
    return event


@dataclass
class Harness:
    slack: FakeSlack
    providers: dict[str, FakeProvider]
    runtime: Runtime
    sender: SlackSender
    settings: Settings

    @property
    def store(self) -> Store:
        assert self.runtime.deps is not None
        return self.runtime.deps.store

    def thread(self, thread_ts: str, channel: str = CHANNEL) -> ThreadKey:
        return ThreadKey(TEAM, channel, thread_ts)

    async def link(
        self,
        provider: str = "devin",
        session: str | None = None,
        *,
        channel: str = CHANNEL,
        user: str = ALICE,
    ) -> str:
        """Link a new thread with ``/agent link``; return the anchor ts (the thread key)."""
        before = len(self.slack.messages)
        await self.sender.command(
            f"link {provider} {session or SESSIONS[provider]}", channel=channel, user=user
        )
        await self.slack.wait_for(lambda: len(self.slack.messages) > before)
        ts = str(self.slack.messages[before]["ts"])
        await self.wait_bound(ts, channel=channel)
        return ts

    async def wait_bound(self, thread_ts: str, *, channel: str = CHANNEL, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while await self.store.get_binding(self.thread(thread_ts, channel)) is None:
            assert time.monotonic() < deadline, f"thread {thread_ts} was never bound"
            await asyncio.sleep(0.01)

    async def settle(self, within: float = 5.0) -> None:
        """Wait until every queued Slack call (reactions, replies, answers) has been made."""
        assert self.runtime.deps is not None
        await self.runtime.deps.feedback.drain(within)

    async def reply(self, thread_ts: str, text: str, **kwargs: Any) -> dict[str, Any]:
        event = message_event(text, thread_ts=thread_ts, **kwargs)
        await self.sender.event(event)
        return event


def find_secrets(settings: Settings, places: dict[str, str]) -> list[str]:
    """Which configured secret shows up where (secrets shown masked), for a readable failure."""
    found = []
    for secret in [*settings.secrets(), *KEYS.values()]:
        for where, text in places.items():
            if secret in text:
                found.append(f"{secret[:6]}… in {where}")
    return found


def _leak_places(slack: FakeSlack, fakes: dict[str, FakeProvider], log: str, db: Path) -> dict[str, str]:
    """Everything a secret must never reach: logs, what the bot sent to Slack (not the auth header that
    carries the token to Slack), message bodies sent to providers, and the store on disk."""
    places = {
        "logs": log,
        "slack calls": json.dumps([(c.method, c.args) for c in slack.calls], default=str),
        "slack messages": json.dumps(
            [slack.messages, slack.ephemeral_messages, slack.responses], default=str
        ),
        "provider bodies": json.dumps(
            [r.json for fake in fakes.values() for r in fake.requests], default=str
        ),
    }
    for path in sorted(db.parent.glob(db.name + "*")):
        places[f"store file {path.name}"] = path.read_bytes().decode("latin-1")
    return places


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    providers: tuple[str, ...] = ("devin", "feather", "agen"),
    enterprise_id: str | None = None,
    org_wide: bool = False,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """Run agent-relay against fakes. On the way out, every log line (DEBUG, libraries included), every
    Slack call, every provider body and the store file are searched for the configured secrets.

    ``enterprise_id`` / ``org_wide``: the installation is in that Enterprise Grid organisation /
    installed on the whole organisation (what the fake's ``auth.test`` says)."""
    async with FakeSlack(bot_token=BOT_TOKEN, enterprise_id=enterprise_id, org_wide=org_wide) as slack:
        fakes = {name: FakeProvider(name, KEYS[name]) for name in providers}
        for fake in fakes.values():
            await fake.start()
        settings = make_settings(tmp_path, slack, fakes, **overrides)
        with captured_logs(settings.secrets(), replace=False) as log:
            try:
                runtime = Runtime(settings, mode="http", host="127.0.0.1", port=0)
                await runtime.start()
                try:
                    async with httpx.AsyncClient(timeout=10) as client:
                        url = f"http://127.0.0.1:{runtime.port}"
                        sender = SlackSender(url=url, client=client, slack=slack)
                        yield Harness(slack, fakes, runtime, sender, settings)
                finally:
                    await runtime.stop()
            finally:
                for fake in fakes.values():
                    await fake.stop()
                for fake in fakes.values():
                    fake.assert_no_violations()
        db = tmp_path / "relay.db"
        leaks = find_secrets(settings, _leak_places(slack, fakes, log.getvalue(), db))
        assert not leaks, f"secrets leaked: {leaks}"
        assert '"event": "agent_relay_started"' in log.getvalue(), "the log capture saw nothing"


__all__ = ["BOT_ID", "BOT_USER", "TEAM"]
