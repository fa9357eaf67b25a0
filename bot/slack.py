"""Everything agent-relay asks of the Slack Web API, behind one small gateway.

Feedback is best effort by design: a failure to post a reply or a reaction is logged and reported as
``False``/``None``, and never fails or repeats the relay itself. The underlying
``AsyncWebClient`` retries connection errors, 429 (honouring ``Retry-After``) and 5xx.
Display names, admin flags, user-group members and user-group handles are cached in memory for
``cache_ttl`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

log = structlog.get_logger(__name__)


def make_web_client(token: str, *, base_url: str | None = None) -> AsyncWebClient:
    """An ``AsyncWebClient`` that retries connection errors, 429 and 5xx."""
    kwargs: dict[str, Any] = {"token": token}
    if base_url:
        kwargs["base_url"] = base_url if base_url.endswith("/") else base_url + "/"
    client = AsyncWebClient(**kwargs)
    client.retry_handlers = [
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
        AsyncRateLimitErrorRetryHandler(max_retry_count=3),
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


class SlackGateway:
    def __init__(self, client: AsyncWebClient, *, cache_ttl: float = 3600.0) -> None:
        self.client = client
        self._ttl = cache_ttl
        self._users: dict[str, tuple[float, SlackUser]] = {}
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._group_handles: tuple[float, dict[str, str]] | None = None  # (expiry, id -> handle)

    async def _api(
        self,
        method: str,
        *,
        json: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        expected: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Call ``method``; return ``(data, None)`` or ``(None, Slack's error code)``. Never raises.

        Errors in ``expected`` (``already_reacted``...) are answers, not failures: they are not logged.
        """
        try:
            response = await self.client.api_call(method, json=json, data=data)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "unknown_error")
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = type(exc).__name__
        else:
            return (response.data if isinstance(response.data, dict) else {}), None
        if error not in expected:
            log.warning("slack_call_failed", method=method, error=error)
        return None, error

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
            "text": text,
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
        args: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if thread_ts:
            args["thread_ts"] = thread_ts
        data, _ = await self._api("chat.postEphemeral", json=args)
        return data is not None

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
        if cached and cached[0] > time.monotonic():
            return cached[1]
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
        user = SlackUser(
            id=user_id,
            display_name=str(name),
            team_id=raw.get("team_id"),
            is_admin=bool(raw.get("is_admin") or raw.get("is_owner") or raw.get("is_primary_owner")),
            is_bot=bool(raw.get("is_bot")),
        )
        self._users[user_id] = (time.monotonic() + self._ttl, user)
        return user

    async def display_name(self, user_id: str) -> str:
        user = await self.user(user_id)
        return user.display_name if user else user_id

    async def usergroup_members(self, group_id: str) -> frozenset[str]:
        cached = self._groups.get(group_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        data, _ = await self._api("usergroups.users.list", data={"usergroup": group_id})
        members = frozenset(str(u) for u in (data or {}).get("users") or [])
        if data is not None:
            self._groups[group_id] = (time.monotonic() + self._ttl, members)
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
