"""The HTTP front door: Slack's request signature checked on the raw bytes before anything parses them.

An unsigned, wrongly signed or stale request gets 401; a signed request whose body is not UTF-8, not
JSON where JSON is due, or nested absurdly deep gets 400. None of these is logged as an error or
reaches Bolt, so garbage costs a few microseconds and never a traceback. While the store is lost
(``not_ready`` says why), events get 503 so that Slack delivers them again later instead of them
being acknowledged into a database nobody reads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

log = structlog.get_logger(__name__)

MAX_CLOCK_SKEW = 300  # seconds; Slack's own rule for replayed requests
MAX_NESTING = 64  # Slack payloads nest a handful of levels; blocks a few more

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _too_deep(value: object, depth: int = 0) -> bool:
    if depth > MAX_NESTING:
        return True
    if isinstance(value, dict):
        return any(_too_deep(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_too_deep(v, depth + 1) for v in value)
    return False


def bad_body(raw: bytes, content_type: str) -> str | None:
    """Why a signed body cannot be a Slack request, or None when it may be one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    if content_type.startswith("application/json"):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return "body is not JSON"
        if not isinstance(parsed, dict):
            return "body is not a JSON object"
        if _too_deep(parsed):
            return "body is nested too deep"
    return None


def slack_guard(signing_secret: str, *, path: str, not_ready: Callable[[], str | None]) -> Middleware:
    key = signing_secret.encode()

    def signed(raw: bytes, stamp: str, signature: str) -> bool:
        """Slack's v0 signature, computed over the raw bytes (whatever they are)."""
        digest = hmac.new(key, b"v0:" + stamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
        return hmac.compare_digest(f"v0={digest}", signature)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != path:
            return await handler(request)
        why = not_ready()
        if why is not None:
            return web.json_response({"ok": False, "error": "not_ready"}, status=503)
        stamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            return web.Response(status=401, text="invalid request timestamp")
        if abs(time.time() - int(stamp)) > MAX_CLOCK_SKEW:
            return web.Response(status=401, text="stale request")
        raw = await request.read()
        if not signed(raw, stamp, signature):
            return web.Response(status=401, text="invalid signature")
        problem = bad_body(raw, request.headers.get("Content-Type", ""))
        if problem is not None:
            log.info("slack_request_refused", reason=problem)
            return web.Response(status=400, text=problem)
        return await handler(request)

    return guard
