"""The interface every provider client implements, and the HTTP answer -> outcome mapping they share.

A client owns one long-lived ``httpx.AsyncClient`` (closed by :meth:`Provider.aclose`), builds the
request body from a pydantic model that matches the provider's OpenAPI file, and returns a typed
:data:`bot.outcomes.Outcome`. It never raises for an answer a provider can give, and never puts an
exception's text or a key into an outcome: reasons are plain words.

Room for what is coming: mirroring agent replies back into the thread will add a method to read a
session's events; ``Delivered.provider_message_id`` already carries the id to correlate them.
"""

from __future__ import annotations

import abc
import dataclasses
import email.utils
import time
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from bot import __version__
from bot.outcomes import (
    NotFound,
    NotRunning,
    Outcome,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
    ValidationIssue,
)


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
    """An agent vendor's send-message API."""

    name: ClassVar[str]  # "devin"
    label: ClassVar[str]  # "Devin"

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str,
        timeout: float = 20.0,
        web_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._web_url = web_url.rstrip("/") if web_url else None
        self._secret = api_key.get_secret_value()
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={**self._auth_headers(api_key), "user-agent": f"agent-relay/{__version__}"},
            transport=transport,
            follow_redirects=False,
        )

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

    # -- shared --------------------------------------------------------------------------------
    async def send_message(self, session_id: str, text: str, *, client_id: str) -> Outcome:
        """Send ``text`` to the session. ``client_id`` is a stable id of the Slack message."""
        body = self._body(text, client_id).model_dump(mode="json", exclude_none=True)
        try:
            response = await self._client.post(self._path(session_id), json=body)
        except httpx.TimeoutException:
            return Unavailable(reason=f"{self.label} did not answer in time")
        except httpx.ConnectError:
            return Unavailable(reason=f"could not connect to {self.label}")
        except httpx.TransportError:
            return Unavailable(reason=f"the connection to {self.label} failed")
        return self._without_key(self._outcome(response))

    def _without_key(self, outcome: Outcome) -> Outcome:
        """The outcome with this client's API key removed from the provider's own words.

        A provider that echoes the key back (in a 422 item or a "not running" detail) must not get it
        shown in Slack or kept in the store.
        """
        key = self._secret
        if len(key) < 4:
            return outcome

        def clean(text: str) -> str:
            return text.replace(key, "[redacted]")

        if isinstance(outcome, NotRunning) and key in outcome.detail:
            return dataclasses.replace(outcome, detail=clean(outcome.detail))
        if isinstance(outcome, Rejected) and any(
            key in issue.msg or key in issue.type or any(key in str(p) for p in issue.loc)
            for issue in outcome.errors
        ):
            errors = tuple(
                ValidationIssue(
                    loc=tuple(clean(p) if isinstance(p, str) else p for p in issue.loc),
                    msg=clean(issue.msg),
                    type=clean(issue.type),
                )
                for issue in outcome.errors
            )
            return dataclasses.replace(outcome, errors=errors)
        return outcome

    def _outcome(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return self._delivered(response)
        if status in (401, 403):
            return Unauthorized(status=status)
        if status == 404:
            return NotFound()
        if status == 429:
            return RateLimited(retry_after=parse_retry_after(response.headers.get("retry-after")))
        if status == 408 or status >= 500:
            return Unavailable(reason=f"{self.label} answered HTTP {status}", status=status)
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
