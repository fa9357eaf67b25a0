"""A fake Slack Web API: a real aiohttp server on loopback for slack_sdk's clients.

Point ``AsyncWebClient(token=..., base_url=fake.api_url)`` (or Bolt's ``AsyncApp(client=...)``) at it.
It serves the methods agent-relay uses, records every call, keeps message and reaction state, and can
inject HTTP faults (429 with ``Retry-After``, fractions and HTTP dates included; 5xx) to exercise
slack_sdk's retry handlers, and answer chosen methods slowly (:meth:`FakeSlack.delay`). Slash
command ``response_url`` posts land on :meth:`FakeSlack.response_url` and are recorded in
:attr:`FakeSlack.responses`.

Usage::

    async with FakeSlack(bot_token="xoxb-test") as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
        await client.chat_postMessage(channel="C1", thread_ts="1.0", text="hi")
        await slack.wait_for(lambda: len(slack.replies_in("C1", "1.0")) == 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import WSMsgType, web

from bot.manifest import BOT_SCOPES
from tests.fakes import eventually

TEAM: Final = "T0TEAM"
BOT_USER: Final = "U0BOT"
BOT_ID: Final = "B0BOT"
DEFAULT_BOT_TOKEN: Final = "xoxb-fake-bot-token"
WORKSPACE_URL: Final = "https://fake.slack.test/"
_FIRST_TS_MICROS: Final = 1_700_000_000_000_100


@dataclass(frozen=True, slots=True)
class SlackCall:
    """One Web API call. ``args`` merges query, form and JSON fields; JSON-valued form fields
    (``blocks``, ``attachments``, ...) are decoded. ``headers`` keys are lower-cased.
    ``received_at`` is ``time.monotonic()`` when the request arrived (before any :meth:`FakeSlack.delay`)."""

    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    token: str | None
    received_at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(slots=True)
class _Fault:
    status: int
    retry_after: float | str | None
    error: str
    times: int


Handler = Callable[[dict[str, Any]], dict[str, Any]]


class FakeSlack:
    """The Slack Web API subset agent-relay uses, on ``http://127.0.0.1:<port>``."""

    def __init__(
        self,
        bot_token: str = DEFAULT_BOT_TOKEN,
        *,
        team_id: str = TEAM,
        bot_user_id: str = BOT_USER,
        bot_id: str = BOT_ID,
        enterprise_id: str | None = None,
        org_wide: bool = False,
    ) -> None:
        """``enterprise_id``: the installing workspace belongs to that Enterprise Grid organisation;
        ``org_wide``: the app is installed on the whole organisation (``auth.test`` then names no
        team, ``is_enterprise_install`` is true)."""
        self.bot_token = bot_token
        self.team_id = team_id
        self.enterprise_id = enterprise_id
        self.org_wide = org_wide
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.calls: list[SlackCall] = []
        self.messages: list[dict[str, Any]] = []  # posted by the bot (updated / deleted in place)
        self.deleted: list[dict[str, Any]] = []
        self.ephemeral_messages: list[dict[str, Any]] = []
        self.reactions: dict[tuple[str, str], list[str]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.usergroups: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}  # conversations.info answers by channel id
        self.history: list[dict[str, Any]] = []  # messages people wrote (conversations.replies)
        self.responses: list[tuple[str, dict[str, Any]]] = []
        #: The scopes granted to the bot token, sent as ``x-oauth-scopes`` with every answer to it
        #: (as Slack does); None sends no such header.
        self.scopes: list[str] | None = list(BOT_SCOPES)
        self.native_status = False  # agents.sessions.setStatus accepted (else unknown_method)
        self.native_statuses: list[tuple[str, str, str]] = []  # (channel, thread_ts, status) accepted
        # Socket Mode: apps.connections.open (with ``app_token``) hands out ws://.../socket
        self.app_token: str | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self.socket_acks: list[dict[str, Any]] = []
        self._envelopes = 0
        self._faults: dict[str, _Fault] = {}
        self._delays: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._ts_micros = _FIRST_TS_MICROS
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._methods: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "users.info": self._users_info,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
            "agents.sessions.setStatus": self._agents_sessions_set_status,
            "conversations.replies": self._conversations_replies,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        if self._port is None:
            raise RuntimeError("FakeSlack is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """``base_url`` for slack_sdk clients (ends with ``/api/``)."""
        return f"{self.url}/api/"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeSlack already started")
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/response/{tag}", self._handle_response_url)
        app.router.add_get("/socket", self._handle_socket)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        self._stopping.set()  # delayed answers are cut short
        for socket in list(self._sockets):
            await socket.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- set-up --------------------------------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        display_name: str,
        real_name: str | None = None,
        *,
        is_admin: bool = False,
        is_owner: bool = False,
        team_id: str = TEAM,
        is_bot: bool = False,
        enterprise_id: str | None = None,
    ) -> dict[str, Any]:
        """A person ``users.info`` knows; with ``enterprise_id``, a member of that Enterprise Grid
        organisation (``enterprise_user``, as Slack sends it for Grid members)."""
        real = real_name if real_name is not None else display_name
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": team_id,
            "name": display_name.lower().replace(" ", "."),
            "real_name": real,
            "is_admin": is_admin,
            "is_owner": is_owner,
            "is_bot": is_bot,
            "deleted": False,
            "profile": {"display_name": display_name, "real_name": real},
        }
        if enterprise_id is not None:
            user["enterprise_user"] = {
                "id": user_id,
                "enterprise_id": enterprise_id,
                "enterprise_name": "Fake Org",
                "is_admin": False,
                "is_owner": False,
                "teams": [team_id],
            }
        self.users[user_id] = user
        return user

    def add_channel(self, channel_id: str, name: str, *, is_private: bool = False) -> None:
        """A channel ``conversations.info`` names (others get their id lower-cased, or an error
        through :meth:`fail_next`)."""
        self.channels[channel_id] = {
            "id": channel_id,
            "name": name,
            "is_channel": not is_private,
            "is_group": is_private,
            "is_private": is_private,
        }

    def remember(self, channel: str, message: dict[str, Any]) -> None:
        """A message a person wrote in ``channel`` (an event a test sends, say), so that
        ``conversations.replies`` returns it like Slack would."""
        self.history.append({**message, "channel": channel})

    def add_usergroup(
        self, group_id: str, handle: str, members: list[str], *, disabled: bool = False
    ) -> None:
        """A user group; a disabled one is listed by ``usergroups.list`` only with ``include_disabled``."""
        self.usergroups[group_id] = {
            "id": group_id,
            "team_id": self.team_id,
            "is_usergroup": True,
            "name": handle.replace("-", " ").title(),
            "handle": handle,
            "date_delete": 1_700_000_000 if disabled else 0,
            "users": list(members),
        }

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: float | str | None = 1,
        error: str = "ratelimited",
        times: int = 1,
    ) -> None:
        """The next ``times`` calls of ``method`` get HTTP ``status`` with ``{"ok": false, "error": error}``
        (and ``Retry-After: retry_after`` when given: whole seconds, a fraction such as ``0.5``, or a
        string sent as is, e.g. an HTTP date). Such calls are still recorded."""
        self._faults[method] = _Fault(status, retry_after, error, times)

    def delay(self, method: str, seconds: float) -> None:
        """Answer every later call of ``method`` ``seconds`` late (0 turns it off). The call is recorded
        when it arrives; its effect (a message posted, a reaction added) happens after the delay.
        Delayed answers are cut short when the fake stops."""
        if seconds > 0:
            self._delays[method] = seconds
        else:
            self._delays.pop(method, None)

    def response_url(self, tag: str) -> str:
        """A slash-command ``response_url`` on this fake; posts to it are recorded under ``tag``."""
        return f"{self.url}/response/{tag}"

    # -- queries -------------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[SlackCall]:
        return [call for call in self.calls if call.method == method]

    def replies_in(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """Messages the bot posted in that thread (current text, deleted ones excluded)."""
        return [m for m in self.messages if m["channel"] == channel and m.get("thread_ts") == thread_ts]

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.ephemeral_messages
            if (channel is None or m["channel"] == channel) and (user is None or m["user"] == user)
        ]

    def responses_for(self, tag: str) -> list[dict[str, Any]]:
        return [body for t, body in self.responses if t == tag]

    def reactions_on(self, channel: str, ts: str) -> list[str]:
        return list(self.reactions.get((channel, ts), []))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await eventually(predicate, timeout, message=self._summary)

    def _summary(self) -> str:
        calls = ", ".join(call.method for call in self.calls) or "none"
        return f"Slack calls so far: {calls}; responses: {self.responses}"

    # -- serving -------------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _request_args(request)
        headers = {k.lower(): v for k, v in request.headers.items()}
        auth = headers.get("authorization", "")
        token: str | None = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not token and isinstance(args.get("token"), str):
            token = args.pop("token")
        self.calls.append(SlackCall(method, args, headers, token or None))
        delay = self._delays.get(method)
        if delay is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

        fault = self._faults.get(method)
        if fault is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[method]
            extra = {"Retry-After": _retry_after(fault.retry_after)} if fault.retry_after is not None else {}
            return web.json_response({"ok": False, "error": fault.error}, status=fault.status, headers=extra)

        if method == "apps.connections.open":
            if self.app_token is None or token != self.app_token:
                return web.json_response({"ok": False, "error": "invalid_auth"})
            return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self._port}/socket"})
        if token != self.bot_token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        granted = {"x-oauth-scopes": ",".join(self.scopes)} if self.scopes is not None else {}
        handler = self._methods.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, headers=granted)
        return web.json_response(handler(args), headers=granted)

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        self.responses.append((tag, await _request_args(request)))
        return web.Response(text="ok", content_type="text/plain")

    async def _handle_socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json(
            {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0APP"}, "debug_info": {}}
        )
        try:
            async for frame in socket:
                if frame.type == WSMsgType.TEXT:
                    self.socket_acks.append(json.loads(frame.data))
        finally:
            self._sockets.remove(socket)
        return socket

    @property
    def socket_connected(self) -> bool:
        return bool(self._sockets)

    @property
    def socket_count(self) -> int:
        return len(self._sockets)

    async def socket_send(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        retry_attempt: int = 0,
        spread: random.Random | None = None,
    ) -> str:
        """Send one Socket Mode envelope (``events_api``, ``slash_commands``...) and wait for its ack.

        With several connections open (several replicas), ``spread`` picks one at random for each
        envelope, as Slack does; without it the newest connection gets it. Returns the envelope id.
        Raises AssertionError if no client is connected or no ack comes.
        """
        await eventually(lambda: bool(self._sockets), message="no Socket Mode client connected")
        self._envelopes += 1
        envelope_id = f"env-{self._envelopes}"
        socket = spread.choice(self._sockets) if spread is not None else self._sockets[-1]
        await socket.send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
                "retry_attempt": retry_attempt,
                "retry_reason": "timeout" if retry_attempt else "",
            }
        )
        await eventually(
            lambda: any(ack.get("envelope_id") == envelope_id for ack in self.socket_acks),
            message=f"envelope {envelope_id} was never acknowledged",
        )
        return envelope_id

    # -- methods -------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        micros = self._ts_micros
        self._ts_micros += 1
        seconds, fraction = divmod(micros, 1_000_000)
        return f"{seconds}.{fraction:06d}"

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "ok": True,
            "url": WORKSPACE_URL,
            "team": "Fake",
            "user": "agent-relay",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": self.org_wide,
        } | ({"enterprise_id": self.enterprise_id} if self.enterprise_id else {})
        if self.org_wide:
            del answer["team_id"]
            answer["team"] = None
        return answer

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("text") and not args.get("blocks") and not args.get("attachments"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "channel": str(channel),
            "ts": ts,
            "thread_ts": args.get("thread_ts"),
            "text": args.get("text", ""),
            "blocks": args.get("blocks"),
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "username": args.get("username"),  # the sender's name shown (chat:write.customize)
        }
        self.messages.append(message)
        return {"ok": True, "channel": channel, "ts": ts, "message": _public(message)}

    def _agents_sessions_set_status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Slack's native agent-session status; refused (``unknown_method``) unless
        :attr:`native_status` is on, as for an app without the feature."""
        if not self.native_status:
            return {"ok": False, "error": "unknown_method"}
        self.native_statuses.append(
            (str(args.get("channel")), str(args.get("thread_ts")), str(args.get("status")))
        )
        return {"ok": True}

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, user = args.get("channel"), args.get("user")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not user:
            return {"ok": False, "error": "user_not_in_channel"}
        ts = self._next_ts()
        self.ephemeral_messages.append(
            {
                "channel": str(channel),
                "user": str(user),
                "ts": ts,
                "thread_ts": args.get("thread_ts"),
                "text": args.get("text", ""),
                "blocks": args.get("blocks"),
            }
        )
        return {"ok": True, "message_ts": ts}

    def _find(self, channel: object, ts: object) -> dict[str, Any] | None:
        for message in self.messages:
            if message["channel"] == channel and message["ts"] == ts:
                return message
        return None

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        message = self._find(channel, ts)
        if message is not None:
            for key in ("text", "blocks"):
                if key in args:
                    message[key] = args[key]
        text = message["text"] if message is not None else args.get("text", "")
        return {"ok": True, "channel": channel, "ts": ts, "text": text}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        message = self._find(channel, ts)
        if message is not None:
            self.messages.remove(message)
            self.deleted.append(message)
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_get_permalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel", "")), str(args.get("message_ts", ""))
        return {
            "ok": True,
            "channel": channel,
            "permalink": f"{WORKSPACE_URL}archives/{channel}/p{ts.replace('.', '')}",
        }

    def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (str(args.get("channel")), str(args.get("timestamp")))
        name = str(args.get("name"))
        names = self.reactions.setdefault(key, [])
        if name in names:
            return {"ok": False, "error": "already_reacted"}
        names.append(name)
        return {"ok": True}

    def _reactions_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        key = (str(args.get("channel")), str(args.get("timestamp")))
        name = str(args.get("name"))
        names = self.reactions.get(key, [])
        if name not in names:
            return {"ok": False, "error": "no_reaction"}
        names.remove(name)
        if not names:
            del self.reactions[key]
        return {"ok": True}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": copy.deepcopy(user)}

    def _usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        """Like Slack: disabled groups only with ``include_disabled``, members only with ``include_users``."""
        with_disabled = _flag(args.get("include_disabled"))
        with_users = _flag(args.get("include_users"))
        groups = [
            {k: copy.deepcopy(v) for k, v in group.items() if with_users or k != "users"}
            for group in self.usergroups.values()
            if with_disabled or not group["date_delete"]
        ]
        return {"ok": True, "usergroups": groups}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = self.usergroups.get(str(args.get("usergroup")))
        if group is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(group["users"])}

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        known = self.channels.get(str(channel))
        return {"ok": True, "channel": copy.deepcopy(known or {"id": channel, "name": str(channel).lower()})}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """Like Slack: the parent first, then the replies in ts order; ``oldest``/``latest`` bound the
        replies (exclusive unless ``inclusive``), ``limit`` and ``cursor`` page through them."""
        channel, ts = str(args.get("channel") or ""), str(args.get("ts") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        known = [
            {k: v for k, v in m.items() if k != "channel" and v is not None}
            for m in [*self.history, *self.messages]
            if m["channel"] == channel and (m["ts"] == ts or m.get("thread_ts") == ts)
        ]
        parent = [m for m in known if m["ts"] == ts]
        if not parent:
            return {"ok": False, "error": "thread_not_found"}
        inclusive = _flag(args.get("inclusive"))
        oldest, latest = args.get("oldest"), args.get("latest")

        def in_range(m: dict[str, Any]) -> bool:
            key = _ts(m["ts"])
            if oldest is not None and (key < _ts(str(oldest)) or (key == _ts(str(oldest)) and not inclusive)):
                return False
            return latest is None or key < _ts(str(latest)) or (key == _ts(str(latest)) and inclusive)

        replies = sorted((m for m in known if m["ts"] != ts and in_range(m)), key=lambda m: _ts(m["ts"]))
        start = int(args.get("cursor") or 0)
        limit = int(args.get("limit") or 1000)
        page = replies[start : start + limit]
        more = start + limit < len(replies)
        return {
            "ok": True,
            "messages": copy.deepcopy(parent[:1] + page),
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }


def _retry_after(value: float | str) -> str:
    """The header value: ``1`` for 1 or 1.0, ``0.5`` for 0.5, a string as given."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _public(message: Mapping[str, Any]) -> dict[str, Any]:
    """A stored message as Slack returns it (no channel key, no null thread_ts/blocks)."""
    return {k: v for k, v in message.items() if k != "channel" and v is not None}


async def _request_args(request: web.Request) -> dict[str, Any]:
    """Query string + body fields. JSON bodies are taken as is; form fields holding JSON
    (``blocks``, ``attachments``, ``metadata`` ...) are decoded."""
    args: dict[str, Any] = {k: _maybe_json(v) for k, v in request.query.items()}
    if not request.can_read_body:
        return args
    content_type = request.content_type
    if content_type == "application/json":
        document = await request.json()
        if isinstance(document, dict):
            args.update(document)
        return args
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        for key, value in form.items():
            args[key] = _maybe_json(value) if isinstance(value, str) else value
        return args
    raw = await request.text()
    args["_raw_body"] = raw
    return args


def _ts(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros.ljust(6, "0")[:6] or 0)


def _flag(value: object) -> bool:
    """A boolean argument as Slack reads it: ``true``/``1`` (any case), or a JSON true."""
    return value is True or (isinstance(value, str | int) and str(value).lower() in ("true", "1"))


def _maybe_json(value: str) -> Any:
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except ValueError:
            return value
    return value


__all__ = ["BOT_ID", "BOT_USER", "TEAM", "FakeSlack", "SlackCall"]
