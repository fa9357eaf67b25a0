"""A lean fake Slack Web API for the benchmark, in its own process (its CPU is not the bot's).

``python -m bench.fake_slack`` listens on 127.0.0.1 (a free port, printed as ``READY <port>``) and
answers ``auth.test``, ``chat.postMessage``, ``chat.postEphemeral``, ``chat.getPermalink``,
``reactions.add``, ``reactions.remove``, ``users.info`` and ``conversations.replies`` with minimal JSON.
It counts calls per method and keeps what the bot posted (so the load generator sees link replies).

With limits on (``--slack-limits`` or ``POST /_bench/limits {"enabled": true}``) it enforces Slack's
documented limits with token buckets and answers HTTP 429 with ``Retry-After`` (whole seconds):
``reactions.add`` 50 a minute per workspace (a burst of :data:`REACTIONS_BURST`), ``chat.postMessage``
1 a second per channel (a burst of :data:`POST_BURST`).

Control (for the load generator only): ``GET /_bench/stats``, ``GET /_bench/posted?since=N``,
``POST /_bench/limits``, ``POST /_bench/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from typing import Any

from aiohttp import web

from bench.common import BOT_ID, BOT_USER, HUMAN_NAME, TEAM, serve_until_stopped

REACTIONS_PER_MINUTE = 50.0
REACTIONS_BURST = 10.0
POSTS_PER_SECOND = 1.0
POST_BURST = 3.0


class Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 when a token was taken; otherwise the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class FakeSlackState:
    def __init__(self, *, limits: bool) -> None:
        self.limits = limits
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.reactions: Counter[str] = Counter()
        self.posted: list[tuple[str, str | None, str]] = []  # channel, thread_ts, text
        self._ts = 0
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def reset(self) -> None:
        self.calls.clear()
        self.throttled.clear()
        self.reactions.clear()
        self.posted.clear()
        self._buckets.clear()

    def next_ts(self) -> str:
        self._ts += 1
        return f"1600000000.{self._ts:06d}"

    def throttle(self, method: str, args: dict[str, Any], token: str) -> float:
        if not self.limits:
            return 0.0
        if method == "reactions.add":
            key, rate, burst = (method, token), REACTIONS_PER_MINUTE / 60.0, REACTIONS_BURST
        elif method == "chat.postMessage":
            key, rate, burst = (method, str(args.get("channel"))), POSTS_PER_SECOND, POST_BURST
        else:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(rate, burst)
        return bucket.take()


async def _args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return args
    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            args.update(body)
    else:
        args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return args


def _answer(state: FakeSlackState, method: str, args: dict[str, Any]) -> dict[str, Any]:
    if method == "auth.test":
        return {
            "ok": True,
            "url": "https://bench.slack.test/",
            "team": "Bench",
            "user": "agent-relay",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }
    if method == "chat.postMessage":
        channel = str(args.get("channel") or "")
        thread_ts = args.get("thread_ts")
        ts = state.next_ts()
        state.posted.append((channel, str(thread_ts) if thread_ts else None, str(args.get("text") or "")))
        return {"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts, "text": args.get("text")}}
    if method == "chat.postEphemeral":
        return {"ok": True, "message_ts": state.next_ts()}
    if method == "chat.getPermalink":
        channel, ts = str(args.get("channel", "")), str(args.get("message_ts", ""))
        return {
            "ok": True,
            "channel": channel,
            "permalink": f"https://bench.slack.test/archives/{channel}/p{ts}",
        }
    if method in ("reactions.add", "reactions.remove"):
        if method == "reactions.add":
            state.reactions[str(args.get("name"))] += 1
        return {"ok": True}
    if method == "users.info":
        user = str(args.get("user") or "")
        profile = {"display_name": HUMAN_NAME, "real_name": HUMAN_NAME.title()}
        return {
            "ok": True,
            "user": {
                "id": user,
                "team_id": TEAM,
                "name": HUMAN_NAME,
                "real_name": HUMAN_NAME.title(),
                "is_admin": False,
                "is_owner": False,
                "is_bot": False,
                "deleted": False,
                "profile": profile,
            },
        }
    if method == "conversations.replies":
        return {"ok": True, "messages": [], "has_more": False}
    return {"ok": False, "error": "unknown_method"}


def build_app(state: FakeSlackState) -> web.Application:
    async def api(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _args(request)
        state.calls[method] += 1
        token = request.headers.get("authorization", "")[7:] or str(args.get("token") or "")
        wait = state.throttle(method, args, token)
        if wait > 0:
            state.throttled[method] += 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return web.json_response(_answer(state, method, args))

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": dict(state.calls),
                "throttled": dict(state.throttled),
                "reactions": dict(state.reactions),
                "posted": len(state.posted),
                "limits": state.limits,
            }
        )

    async def posted(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"next": len(state.posted), "posted": state.posted[since:]})

    async def limits(request: web.Request) -> web.Response:
        state.limits = bool((await request.json()).get("enabled"))
        state._buckets.clear()  # fresh buckets whenever limits are switched
        return web.json_response({"limits": state.limits})

    async def reset(_request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/api/{method}", api)
    app.router.add_get("/_bench/stats", stats)
    app.router.add_get("/_bench/posted", posted)
    app.router.add_post("/_bench/limits", limits)
    app.router.add_post("/_bench/reset", reset)
    return app


async def serve(port: int, *, limits: bool) -> None:
    await serve_until_stopped(build_app(FakeSlackState(limits=limits)), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slack-limits", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args.port, limits=args.slack_limits))


if __name__ == "__main__":
    main()


__all__ = ["Bucket", "FakeSlackState", "build_app"]
