"""Everything agent-relay asks of the Slack Web API, behind one small gateway.

Feedback is best effort by design: a failure to post a reply or a reaction is logged and reported as
``False``/``None``, and never fails or repeats the relay itself. The underlying
``AsyncWebClient`` retries connection errors, 429 (honouring ``Retry-After``) and 5xx.
Display names, admin flags, user-group members, user-group handles and channel names are cached in
memory for ``cache_ttl`` seconds (each cache bounded).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.logs import Redactor
from bot.metrics import Metrics

log = structlog.get_logger(__name__)

#: Slack truncates message text beyond 40,000 characters; stay well inside it.
MAX_TEXT = 39_000
MAX_CACHED = 10_000  # people, groups, channels kept in each cache
MAX_REPLY_PAGES = 5  # conversations.replies pages read after a link in an existing thread


def retry_after_seconds(headers: dict[str, Any] | None) -> float | None:
    """Seconds from a ``Retry-After`` header, fractions included (``0.5``); None if absent or bad."""
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) and value else value
            try:
                return max(0.0, float(str(raw).strip()))
            except ValueError:
                return None
    return None


class RateLimitRetry(AsyncRateLimitErrorRetryHandler):
    """Retry a 429 after its ``Retry-After`` (fractions allowed), only when the wait is short.

    A longer wait is left to the caller: the feedback queue stores the next attempt time instead of
    holding a task asleep.
    """

    def __init__(self, *, max_retry_count: int = 2, max_wait: float = 2.0) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        wait = retry_after_seconds(response.headers)
        return wait is None or wait <= self.max_wait

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wait = retry_after_seconds(response.headers if response is not None else None)
        state.next_attempt_requested = True
        await asyncio.sleep(1.0 if wait is None else wait)
        state.increment_current_attempt()


WEB_TIMEOUT = 30.0  # seconds a Web API call may take (slack_sdk's default)


def fit_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` within Slack's limit; when cut, the end says how much was left out."""
    if len(text) <= limit:
        return text
    note = f"\n… (shortened: {len(text) - limit:,} more characters not shown)"
    return text[: limit - len(note)] + note


def open_web_session(timeout: float = WEB_TIMEOUT) -> aiohttp.ClientSession:
    """One aiohttp session for every Web API call (call inside the running loop; close it at exit).

    Without one, ``AsyncWebClient`` opens a new session, and a new TCP and TLS connection, for each
    call; the benchmark found that a tenth of the bot's CPU per relayed message.
    """
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))


def make_web_client(
    token: str, *, base_url: str | None = None, session: aiohttp.ClientSession | None = None
) -> AsyncWebClient:
    """An ``AsyncWebClient`` that retries connection errors, 429 and 5xx (through ``session``, if given).

    Give Bolt's ``AsyncApp`` a client without a session: Bolt deep-copies its per-request client
    (which shares the app client's session) for every lazy listener, and a session cannot be copied.
    """
    kwargs: dict[str, Any] = {"token": token, "timeout": int(WEB_TIMEOUT), "session": session}
    if base_url:
        kwargs["base_url"] = base_url if base_url.endswith("/") else base_url + "/"
    client = AsyncWebClient(**kwargs)
    client.retry_handlers = [
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
        RateLimitRetry(max_retry_count=2),
        AsyncServerErrorRetryHandler(max_retry_count=2),
    ]
    return client


@dataclass(frozen=True, slots=True)
class SlackUser:
    id: str
    display_name: str
    team_id: str | None
    is_admin: bool
    is_bot: bool
    enterprise_id: str | None = None  # Enterprise Grid: the organisation (``enterprise_user``)


@dataclass(frozen=True, slots=True)
class SlackResult:
    """The answer to one Web API call. ``transient``: worth trying again later (429, 5xx, network)."""

    data: dict[str, Any] | None
    error: str | None = None
    transient: bool = False
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.data is not None


V = TypeVar("V")


class _Cache(Generic[V]):
    """A bounded cache with a time to live: the oldest entries go first when it is full."""

    def __init__(self, ttl: float, size: int = MAX_CACHED) -> None:
        self._ttl = ttl
        self._size = size
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] <= time.monotonic():
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, value: V) -> None:
        self._items[key] = (time.monotonic() + self._ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class SlackGateway:
    def __init__(
        self,
        client: AsyncWebClient,
        *,
        cache_ttl: float = 3600.0,
        redactor: Redactor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self._redactor = redactor or Redactor(())
        self._metrics = metrics or Metrics()
        self._users: _Cache[SlackUser] = _Cache(cache_ttl)
        self._groups: _Cache[frozenset[str]] = _Cache(cache_ttl)
        self._channels: _Cache[str] = _Cache(cache_ttl)  # "" for a channel Slack will not name
        self._ttl = cache_ttl
        self._group_handles: tuple[float, dict[str, str]] | None = None  # (expiry, id -> handle)

    async def aclose(self) -> None:
        """Close the client's Web API session, if it has one (:func:`open_web_session`)."""
        session = self.client.session
        if session is not None and not session.closed:
            await session.close()

    async def call(
        self,
        method: str,
        *,
        json: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        expected: frozenset[str] = frozenset(),
    ) -> SlackResult:
        """Call ``method``. Never raises.

        Errors in ``expected`` (``already_reacted``...) are answers, not failures: they are not logged.
        """
        if json is not None and isinstance(json.get("text"), str):  # the last line of defence
            json = {**json, "text": self._redactor.scrub(json["text"])}
        self._metrics.slack_calls.labels(method=method).inc()
        try:
            response = await self.client.api_call(method, json=json, data=data)
        except SlackApiError as exc:
            status = int(getattr(exc.response, "status_code", 200) or 200)
            error = str(exc.response.get("error") or f"http_{status}")
            result = SlackResult(
                None,
                error,
                transient=status == 429 or status >= 500 or error in ("ratelimited", "internal_error"),
                retry_after=retry_after_seconds(dict(exc.response.headers or {})),
            )
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            result = SlackResult(None, type(exc).__name__, transient=True)
        else:
            return SlackResult(response.data if isinstance(response.data, dict) else {})
        if result.error not in expected:
            self._metrics.slack_errors.labels(method=method, error=result.error or "unknown").inc()
            log.warning("slack_call_failed", method=method, error=result.error)
        return result

    async def _api(
        self,
        method: str,
        *,
        json: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        expected: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, Any] | None, str | None]:
        """:meth:`call`, as ``(data, None)`` or ``(None, Slack's error code)``."""
        result = await self.call(method, json=json, data=data, expected=expected)
        return result.data, result.error

    # -- posting -------------------------------------------------------------------------------
    async def post_message(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
    ) -> tuple[str | None, str | None]:
        """Post a message; return ``(ts, None)`` or ``(None, Slack's error code)``."""
        args: dict[str, Any] = {
            "channel": channel,
            "text": fit_text(text),
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if thread_ts:
            args["thread_ts"] = thread_ts
        if blocks:
            args["blocks"] = blocks
        data, error = await self._api("chat.postMessage", json=args)
        if data is None:
            return None, error
        return (str(data["ts"]) if data.get("ts") else None), None

    async def post_ephemeral(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> bool:
        args: dict[str, Any] = {"channel": channel, "user": user, "text": fit_text(text)}
        if thread_ts:
            args["thread_ts"] = thread_ts
        data, _ = await self._api("chat.postEphemeral", json=args)
        return data is not None

    async def delete_message(self, channel: str, ts: str) -> bool:
        data, _ = await self._api("chat.delete", json={"channel": channel, "ts": ts})
        return data is not None

    async def respond(self, response_url: str, text: str) -> bool:
        """Answer a slash command privately through its ``response_url``. Never raises."""
        try:
            response = await AsyncWebhookClient(response_url).send(
                text=text, response_type="ephemeral", replace_original=False
            )
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("slack_respond_failed", error=type(exc).__name__)
            return False
        return response.status_code == 200

    async def add_reaction(self, channel: str, ts: str, name: str) -> bool:
        data, error = await self._api(
            "reactions.add",
            json={"channel": channel, "timestamp": ts, "name": name},
            expected=frozenset({"already_reacted"}),
        )
        return data is not None or error == "already_reacted"

    async def remove_reaction(self, channel: str, ts: str, name: str) -> bool:
        data, error = await self._api(
            "reactions.remove",
            json={"channel": channel, "timestamp": ts, "name": name},
            expected=frozenset({"no_reaction"}),
        )
        return data is not None or error == "no_reaction"

    async def permalink(self, channel: str, ts: str) -> str | None:
        data, _ = await self._api("chat.getPermalink", data={"channel": channel, "message_ts": ts})
        return str(data["permalink"]) if data and data.get("permalink") else None

    # -- people --------------------------------------------------------------------------------
    async def user(self, user_id: str) -> SlackUser | None:
        cached = self._users.get(user_id)
        if cached is not None:
            return cached
        data, _ = await self._api("users.info", data={"user": user_id})
        if not data or not isinstance(data.get("user"), dict):
            return None
        raw: dict[str, Any] = data["user"]
        profile: dict[str, Any] = raw.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or raw.get("real_name")
            or raw.get("name")
            or user_id
        )
        grid = raw.get("enterprise_user")
        enterprise = grid.get("enterprise_id") if isinstance(grid, dict) else None
        enterprise = enterprise or raw.get("enterprise_id")
        user = SlackUser(
            id=user_id,
            display_name=str(name),
            team_id=str(raw["team_id"]) if raw.get("team_id") else None,
            is_admin=bool(raw.get("is_admin") or raw.get("is_owner") or raw.get("is_primary_owner")),
            is_bot=bool(raw.get("is_bot")),
            enterprise_id=str(enterprise) if enterprise else None,
        )
        self._users.put(user_id, user)
        return user

    async def display_name(self, user_id: str) -> str:
        user = await self.user(user_id)
        return user.display_name if user else user_id

    async def usergroup_members(self, group_id: str) -> frozenset[str]:
        cached = self._groups.get(group_id)
        if cached is not None:
            return cached
        data, _ = await self._api("usergroups.users.list", data={"usergroup": group_id})
        members = frozenset(str(u) for u in (data or {}).get("users") or [])
        if data is not None:
            self._groups.put(group_id, members)
        return members

    async def usergroup_handle(self, group_id: str) -> str | None:
        """The handle of a user group (``oncall``, without ``@``), or None when Slack does not say.

        One ``usergroups.list`` call (disabled groups included: older messages mention them too)
        caches the handles of the whole workspace, refreshed after ``cache_ttl`` seconds. When a
        refresh fails the previous handles are used, and the next call asks again.
        """
        cached = self._group_handles
        if cached is None or cached[0] <= time.monotonic():
            data, _ = await self._api("usergroups.list", data={"include_disabled": "true"})
            if data is None:
                return cached[1].get(group_id) if cached else None
            handles = {
                str(group["id"]): str(group["handle"])
                for group in data.get("usergroups") or []
                if isinstance(group, dict) and group.get("id") and group.get("handle")
            }
            cached = self._group_handles = (time.monotonic() + self._ttl, handles)
        return cached[1].get(group_id)

    # -- conversations -------------------------------------------------------------------------
    async def channel_name(self, channel_id: str) -> str | None:
        """A channel's name (``general``, without ``#``) from ``conversations.info``, or None.

        Cached, answers and refusals alike (``channel_not_found`` for a private channel the bot is
        not in stays unnamed until the entry expires); a transient failure is not cached.
        """
        cached = self._channels.get(channel_id)
        if cached is not None:
            return cached or None
        result = await self.call("conversations.info", data={"channel": channel_id})
        if result.data is None:
            if not result.transient:
                self._channels.put(channel_id, "")
            return None
        channel = result.data.get("channel")
        name = str(channel.get("name") or "") if isinstance(channel, dict) else ""
        self._channels.put(channel_id, name)
        return name or None

    async def thread_replies(self, channel: str, thread_ts: str, *, after: str) -> list[dict[str, Any]]:
        """The replies in a thread newer than ``after`` (a ts), oldest first, from ``conversations.replies``.

        At most ``MAX_REPLY_PAGES`` pages of 200; what Slack cannot give now is left out (logged).
        """
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_REPLY_PAGES):
            args: dict[str, Any] = {"channel": channel, "ts": thread_ts, "oldest": after, "limit": 200}
            if cursor:
                args["cursor"] = cursor
            data, _ = await self._api("conversations.replies", data=args)
            if data is None:
                break
            found.extend(
                m
                for m in data.get("messages") or []
                if isinstance(m, dict) and _later(m.get("ts"), after) and m.get("ts") != thread_ts
            )
            meta = data.get("response_metadata")
            cursor = str(meta.get("next_cursor") or "") if isinstance(meta, dict) else ""
            if not data.get("has_more") or not cursor:
                break
        else:
            log.warning("thread_replies_truncated", channel=channel, thread=thread_ts)
        found.sort(key=lambda m: _ts_key(m.get("ts")))
        return found


def _ts_key(ts: object) -> tuple[int, int]:
    seconds, _, micros = str(ts).partition(".")
    try:
        return int(seconds), int(micros.ljust(6, "0")[:6] or 0)
    except ValueError:
        return (0, 0)


def _later(ts: object, than: str) -> bool:
    return isinstance(ts, str) and _ts_key(ts) > _ts_key(than)
