"""The interface every provider implements, and the HTTP answer -> outcome mapping they share.

A provider module is the one place that knows its vendor: the class declares its name and label, its
settings block (:attr:`Provider.default_api_url`, :attr:`Provider.default_web_url`; the key and the
channel list every provider has), its optional :attr:`Provider.capabilities`, and how people refer
to its sessions (:meth:`Provider.normalise_session_id`, :meth:`Provider.session_id_from_url`,
:attr:`Provider.id_prefix`, :attr:`Provider.web_domains`). Settings, the command parser, help
and the manifest read them from the registry in :mod:`bot.providers`.

A client owns one long-lived ``httpx.AsyncClient`` (closed by :meth:`Provider.aclose`; its bytes go
through aiohttp, :mod:`bot.providers.transport` says why), builds the
request body from a pydantic model that matches the provider's OpenAPI file, and returns a typed
:data:`bot.outcomes.Outcome`. It never raises for an answer a provider can give, and never puts an
exception's text or a key into an outcome: reasons are plain words.

Reading a session (:attr:`Capability.READ_SESSION`): :meth:`Provider.read_session` returns a
:class:`SessionSnapshot` (a normalised :class:`SessionState`, title, pull request, cost, and the
session's items as :class:`AgentItem` values in the provider's order) or a :data:`ReadFailure`, typed
like the outcomes of a send. Reading is defensive: unknown message types and statuses, missing
optional fields and extra fields are normal; an item that cannot be understood is skipped (logged at
debug) and never fails the read. Each provider module turns its own JSON into a snapshot
(``_read_path`` and ``_snapshot``); the HTTP answer mapping is shared here.
"""

from __future__ import annotations

import abc
import dataclasses
import email.utils
import enum
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, assert_never
from urllib.parse import quote

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from bot import __version__
from bot.outcomes import (
    Delivered,
    NotFound,
    NotRunning,
    Outcome,
    RateLimited,
    Refused,
    Rejected,
    Unauthorized,
    Unavailable,
    ValidationIssue,
)
from bot.providers.transport import AiohttpTransport

log = structlog.get_logger(__name__)

_ECHO_MAX = 60


class Capability(enum.Enum):
    """What a provider can do besides sending a message, as its API documentation says."""

    READ_SESSION = "read_session"  # read a session's messages and state (the ``*-read.yaml`` specs)
    END_SESSION = "end_session"  # end (stop, archive) a session


class SessionRefError(ValueError):
    """A session reference could not be understood; ``str()`` is the user-readable message."""


class SessionState(enum.StrEnum):
    """A session's state, the same words for every provider."""

    WORKING = "working"
    WAITING = "waiting"  # for an answer from a person
    FINISHED = "finished"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    UNKNOWN = "unknown"  # the provider said something we do not know, or nothing

    @property
    def stopped(self) -> bool:
        """The session does nothing more until someone wakes it (or never again)."""
        return self in (SessionState.FINISHED, SessionState.SUSPENDED, SessionState.EXPIRED)


class ItemKind(enum.StrEnum):
    """Who speaks in one item of a session."""

    AGENT = "agent"  # Devin ``devin_message``, Feather's non-user roles, Agen ``agent_message``
    QUESTION = "question"  # the agent asks a person (Agen ``agent_ask_user``)
    USER = "user"  # a message sent to the session: ours, or someone's from the provider's web app
    OTHER = "other"  # tool steps, system events, anything else


@dataclass(frozen=True, slots=True)
class AgentItem:
    """One item of a session, normalised.

    ``key`` is stable for the item within its session (Devin ``event_id``, Feather ``id``, Agen
    event ``id``). ``seq`` is Feather's increasing position. ``done`` is False while the provider
    may still change the item (an Agen event ``queued`` or ``processing``). ``created`` is Unix
    seconds when the provider gave a readable time. ``origin`` (Devin) and ``author`` are what the
    provider says about where a user message came from and who wrote it.
    """

    key: str
    kind: ItemKind
    text: str
    created: float | None = None
    client_id: str | None = None
    seq: int | None = None
    done: bool = True
    origin: str | None = None
    author: str | None = None


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session as read at one moment."""

    state: SessionState
    items: tuple[AgentItem, ...] = ()
    title: str | None = None
    pr_url: str | None = None
    cost_usd: float | None = None  # Feather's usage, so far
    status: str | None = None  # the provider's own status word, for logs


#: What a read can end in besides a snapshot (the same types as a send's outcomes).
ReadFailure = Unauthorized | NotFound | RateLimited | Unavailable


def parse_time(value: object) -> float | None:
    """Unix seconds of an ISO 8601 date-time (``Z`` or an offset; naive means UTC); None otherwise."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def read_items(
    raw: object, parse: Callable[[dict[str, Any]], AgentItem | None], *, provider: str
) -> list[AgentItem]:
    """Every item of ``raw`` (a JSON list) that ``parse`` understands, in order. An item that is not
    an object, that ``parse`` rejects (None) or that it trips over is skipped and logged at debug."""
    if not isinstance(raw, list):
        return []
    items: list[AgentItem] = []
    for index, entry in enumerate(raw):
        try:
            item = parse(entry) if isinstance(entry, dict) else None
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            item = None
        if item is None:
            log.debug("session_item_skipped", provider=provider, index=index)
            continue
        items.append(item)
    return items


def text_field(mapping: object, *names: str) -> str | None:
    """The first of ``names`` in ``mapping`` whose value is a string, or None."""
    if not isinstance(mapping, dict):
        return None
    for name in names:
        value = mapping.get(name)
        if isinstance(value, str):
            return value
    return None


def echo(value: str) -> str:
    """Hostile input made safe to show: no backticks, newlines or control/format characters,
    at most ~60 characters, Slack's three special characters escaped, in backticks."""
    cleaned = "".join(
        ch for ch in value if ch != "`" and unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
    )
    if len(cleaned) > _ECHO_MAX:
        cleaned = cleaned[: _ECHO_MAX - 1] + "…"
    cleaned = cleaned.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"`{cleaned}`" if cleaned.strip() else "(empty)"


def on_domain(host: str, domains: tuple[str, ...]) -> bool:
    """True when ``host`` (lower case) is one of ``domains`` or a subdomain of one."""
    return any(host == domain or host.endswith(f".{domain}") for domain in domains)


class _ValidationItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    loc: list[str | int] = []
    msg: str = ""
    type: str = ""


class HTTPValidationError(BaseModel):
    """FastAPI's 422 body, as in every provider spec: ``{"detail": [{loc, msg, type}]}``."""

    model_config = ConfigDict(extra="ignore")
    detail: list[_ValidationItem] | str


def encode_segment(value: str) -> str:
    """Percent-encode one path segment: ``/``, ``?``, ``#``, ``%`` and ``..`` can never escape it."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in {".", ".."} else encoded


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Provider(abc.ABC):
    """An agent vendor: how its sessions are named, its settings, and its send-message API."""

    name: ClassVar[str]  # "devin": the registry key, the command word and the settings prefix
    label: ClassVar[str]  # "Devin"
    #: Default of ``<NAME>_API_URL``. Every provider also has ``<NAME>_API_KEY`` (enabled when set)
    #: and ``<NAME>_CHANNELS`` (channel ids that may link to it; empty: all).
    default_api_url: ClassVar[str]
    #: Default of ``<NAME>_WEB_URL``, where people see a session; None: the provider has no such
    #: pages, and no ``<NAME>_WEB_URL`` setting.
    default_web_url: ClassVar[str | None] = None
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: A session id starting with this (any case) names the provider by itself: ``link devin-abc``.
    id_prefix: ClassVar[str | None] = None
    #: Domains of the provider's session pages; ``app.devin.ai/...`` pasted without a scheme is
    #: then read as a URL, not as a session id.
    web_domains: ClassVar[tuple[str, ...]] = ()
    #: A session page URL as people know it, for messages: ``https://app.devin.ai/sessions/<id>``.
    session_url_example: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str,
        timeout: float = 20.0,
        web_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        redact: Sequence[str] = (),
    ) -> None:
        self._web_url = web_url.rstrip("/") if web_url else None
        # This client's key and every other configured secret: none may leave in provider text.
        own = api_key.get_secret_value()
        self._secrets = sorted({k for k in (own, *redact) if len(k) >= 4}, key=len, reverse=True)
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={**self._auth_headers(api_key), "user-agent": f"agent-relay/{__version__}"},
            transport=transport or AiohttpTransport(),
            follow_redirects=False,
        )

    # -- session references (no instance needed: the command parser runs before any client) -----
    @classmethod
    def normalise_session_id(cls, raw: str) -> str:
        """``raw`` validated and in canonical form; raises :class:`SessionRefError` saying why not.

        Whatever this returns goes into a request path (through :func:`encode_segment`), so it must
        only let through characters that cannot change the path or the host.
        """
        if not raw.strip():
            raise SessionRefError(f"The {cls.label} session id is empty.")
        return cls._normalise_session_id(raw)

    @classmethod
    @abc.abstractmethod
    def _normalise_session_id(cls, raw: str) -> str:
        """:meth:`normalise_session_id` for a ``raw`` that is not blank."""
        raise NotImplementedError  # classmethods are callable on an abstract class: never pass ids

    @classmethod
    def accepts_session_id(cls, raw: str) -> bool:
        try:
            cls.normalise_session_id(raw)
        except SessionRefError:
            return False
        return True

    @classmethod
    def session_id_from_url(cls, url: str) -> str | None:
        """The raw session id in ``url`` (with a scheme) if it is one of this provider's session
        pages, else None. Never raises. The id still goes through :meth:`normalise_session_id`."""
        return None

    @classmethod
    def _too_long(cls, limit: int) -> SessionRefError:
        return SessionRefError(f"That {cls.label} session id is too long (at most {limit} characters).")

    # -- what each provider defines ------------------------------------------------------------
    @staticmethod
    @abc.abstractmethod
    def _auth_headers(api_key: SecretStr) -> dict[str, str]: ...

    @abc.abstractmethod
    def _path(self, session_id: str) -> str:
        """The send-message path, with the session id already passed through :func:`encode_segment`."""

    @abc.abstractmethod
    def _body(self, text: str, client_id: str) -> BaseModel: ...

    @abc.abstractmethod
    def _delivered(self, response: httpx.Response) -> Outcome:
        """The outcome of a 2xx answer."""

    def session_url(self, session_id: str) -> str | None:
        """The session's page for people, where the provider has one."""
        return None

    # -- reading a session (providers with Capability.READ_SESSION) ----------------------------
    def _read_path(self, session_id: str) -> str:
        """The read-session path, the session id passed through :func:`encode_segment`."""
        raise NotImplementedError(f"{self.label} sessions cannot be read")

    def _snapshot(self, payload: Any) -> SessionSnapshot | None:
        """The snapshot in a decoded 2xx body; None when the body is not the shape the spec gives.
        Must not raise for any JSON value: an odd item is skipped, not fatal."""
        raise NotImplementedError(f"{self.label} sessions cannot be read")

    async def read_session(self, session_id: str) -> SessionSnapshot | ReadFailure:
        """Read the session: its state and items. Never raises for an answer the provider can give.

        Only for providers that declare :attr:`Capability.READ_SESSION`. Every configured secret is
        removed from the items' text, as from a send's outcome.
        """
        response = await self._exchange("GET", self._read_path(session_id))
        if isinstance(response, Unavailable):
            return response
        status = response.status_code
        if 200 <= status < 300:
            snapshot = self._snapshot(json_or_none(response))
            if snapshot is None:
                return Unavailable(reason=f"{self.label} answered a session read with an unreadable body")
            return self._clean_snapshot(snapshot)
        return self._refused(response) or Unavailable(reason=f"{self.label} answered HTTP {status}")

    def _clean_snapshot(self, snapshot: SessionSnapshot) -> SessionSnapshot:
        secrets = self._secrets

        def clean(text: str) -> str:
            for secret in secrets:
                text = text.replace(secret, "[redacted]")
            return text

        items = tuple(
            dataclasses.replace(item, text=clean(item.text)) if any(s in item.text for s in secrets) else item
            for item in snapshot.items
        )
        title = clean(snapshot.title) if snapshot.title else snapshot.title
        return dataclasses.replace(snapshot, items=items, title=title)

    # -- shared --------------------------------------------------------------------------------
    async def send_message(self, session_id: str, text: str, *, client_id: str) -> Outcome:
        """Send ``text`` to the session. ``client_id`` is a stable id of the Slack message."""
        body = self._body(text, client_id).model_dump(mode="json", exclude_none=True)
        response = await self._exchange("POST", self._path(session_id), json=body)
        if isinstance(response, Unavailable):
            return response
        return self._without_key(self._outcome(response))

    async def _exchange(self, method: str, path: str, **kwargs: Any) -> httpx.Response | Unavailable:
        """One request; a failure of the connection as the :class:`Unavailable` that says which."""
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            return Unavailable(reason=f"{self.label} did not answer in time")
        except httpx.ConnectError:
            return Unavailable(reason=f"could not connect to {self.label}")
        except httpx.TransportError:
            return Unavailable(reason=f"the connection to {self.label} failed")

    @staticmethod
    def _refused(response: httpx.Response) -> Unauthorized | NotFound | RateLimited | None:
        """The answers a send and a read share: the key refused, no such session, slow down."""
        status = response.status_code
        if status in (401, 403):
            return Unauthorized(status=status)
        if status == 404:
            return NotFound()
        if status == 429:
            return RateLimited(retry_after=parse_retry_after(response.headers.get("retry-after")))
        return None

    def _without_key(self, outcome: Outcome) -> Outcome:
        """The outcome with every configured secret removed from the provider's own words.

        A provider that echoes a key back (its own, or one it was shown some other way, in a 422 item or
        a "not running" detail) must not get it shown in Slack or kept in the store.
        """
        secrets = self._secrets

        def clean(text: str) -> str:
            for secret in secrets:
                text = text.replace(secret, "[redacted]")
            return text

        def has(text: str) -> bool:
            return any(secret in text for secret in secrets)

        match outcome:
            case NotRunning():
                if not has(outcome.detail):
                    return outcome
                return dataclasses.replace(outcome, detail=clean(outcome.detail))
            case Rejected():
                if not any(
                    has(issue.msg) or has(issue.type) or any(has(str(p)) for p in issue.loc)
                    for issue in outcome.errors
                ):
                    return outcome
                errors = tuple(
                    ValidationIssue(
                        loc=tuple(clean(p) if isinstance(p, str) else p for p in issue.loc),
                        msg=clean(issue.msg),
                        type=clean(issue.type),
                    )
                    for issue in outcome.errors
                )
                return dataclasses.replace(outcome, errors=errors)
            # Nothing else carries the provider's free text (Unavailable's reason is our own words).
            case Delivered() | Unauthorized() | NotFound() | RateLimited() | Unavailable() | Refused():
                return outcome
            case _:
                assert_never(outcome)

    def _outcome(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return self._delivered(response)
        refused = self._refused(response)
        if refused is not None:
            return refused
        if status == 408 or status >= 500:
            return Unavailable(reason=f"{self.label} answered HTTP {status}")
        return Rejected(errors=_validation_issues(response), status=status)

    async def aclose(self) -> None:
        await self._client.aclose()


def _validation_issues(response: httpx.Response) -> tuple[ValidationIssue, ...]:
    try:
        parsed = HTTPValidationError.model_validate_json(response.content)
    except ValidationError:
        return ()
    if isinstance(parsed.detail, str):
        return (ValidationIssue(loc=(), msg=parsed.detail),)
    return tuple(ValidationIssue(loc=tuple(i.loc), msg=i.msg, type=i.type) for i in parsed.detail)


def json_or_none(response: httpx.Response) -> Any:
    """The decoded JSON body, or None when the body is empty or not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None
