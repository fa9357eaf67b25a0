"""Devin v1: ``POST /v1/sessions/{session_id}/message`` with ``Authorization: Bearer``.

200 with JSON ``null`` means delivered; 200 with ``{"detail": "..."}`` means the session is not
running and the message was not taken (the detail is shown word for word).

Reading (``GET /v1/sessions/{session_id}``): ``status_enum`` (else ``status``) gives the state
(``blocked`` is waiting for an answer; the suspend and resume words are suspended and working);
``devin_message`` items are Devin speaking, ``user_message`` and ``initial_user_message`` are
messages sent to the session (ours included, with ``origin`` saying where from), anything else is
neither. Items without an ``event_id`` or a text are skipped.

Session ids: ``devin-`` followed by 1..64 of ``[A-Za-z0-9_-]``; a bare id (as in a
``https://app.devin.ai/sessions/<id>`` URL) gets the ``devin-`` prefix. Session pages live on
``devin.ai`` and its subdomains.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from bot.outcomes import Delivered, NotRunning, Outcome
from bot.providers.base import (
    AgentItem,
    Capability,
    ItemKind,
    Provider,
    SessionRefError,
    SessionSnapshot,
    SessionState,
    echo,
    encode_segment,
    json_or_none,
    on_domain,
    parse_time,
    read_items,
    text_field,
)

ID_PREFIX = "devin-"
ID_MAX = 64  # characters after ``devin-``
_BARE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


#: ``status_enum`` values (and, when it is absent, ``status`` words) -> state.
STATES: dict[str, SessionState] = {
    "working": SessionState.WORKING,
    "running": SessionState.WORKING,
    "resumed": SessionState.WORKING,
    "resume_requested": SessionState.WORKING,
    "resume_requested_frontend": SessionState.WORKING,
    "blocked": SessionState.WAITING,
    "finished": SessionState.FINISHED,
    "stopped": SessionState.FINISHED,
    "exit": SessionState.FINISHED,
    "expired": SessionState.EXPIRED,
    "suspended": SessionState.SUSPENDED,
    "suspend_requested": SessionState.SUSPENDED,
    "suspend_requested_frontend": SessionState.SUSPENDED,
}
_KINDS = {
    "devin_message": ItemKind.AGENT,
    "user_message": ItemKind.USER,
    "initial_user_message": ItemKind.USER,
}


def _state(payload: dict[str, Any]) -> SessionState:
    for field in ("status_enum", "status"):
        value = payload.get(field)
        if isinstance(value, str) and value.strip().lower() in STATES:
            return STATES[value.strip().lower()]
    return SessionState.UNKNOWN


def _item(raw: dict[str, Any]) -> AgentItem | None:
    key, text = raw.get("event_id"), raw.get("message")
    if not isinstance(key, str) or not key or not isinstance(text, str):
        return None
    kind = _KINDS.get(str(raw.get("type")), ItemKind.OTHER)
    return AgentItem(
        key=key,
        kind=kind,
        text=text,
        created=parse_time(raw.get("timestamp")),
        origin=text_field(raw, "origin"),
        author=text_field(raw, "username"),
    )


class PostMessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str


class MessageSentResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    detail: str


class DevinProvider(Provider):
    name: ClassVar[str] = "devin"
    label: ClassVar[str] = "Devin"
    default_api_url: ClassVar[str] = "https://api.devin.ai"
    default_web_url: ClassVar[str | None] = "https://app.devin.ai"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ_SESSION})
    id_prefix: ClassVar[str | None] = ID_PREFIX
    web_domains: ClassVar[tuple[str, ...]] = ("devin.ai",)
    session_url_example: ClassVar[str | None] = "https://app.devin.ai/sessions/<id>"

    @classmethod
    def _normalise_session_id(cls, raw: str) -> str:
        bare = raw[len(ID_PREFIX) :] if raw.lower().startswith(ID_PREFIX) else raw
        if len(bare) > ID_MAX:
            raise cls._too_long(ID_MAX + len(ID_PREFIX))
        if not bare or _BARE_ID.fullmatch(bare) is None:
            raise SessionRefError(
                f"{echo(raw)} is not a Devin session id. A Devin session id looks like "
                "`devin-0123456789abcdef` (letters, digits, `-` and `_`)."
            )
        return ID_PREFIX + bare

    @classmethod
    def session_id_from_url(cls, url: str) -> str | None:
        """``abc`` for ``https://app.devin.ai/sessions/abc`` (any ``devin.ai`` host, http or https)."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return None
        if parts.scheme.lower() not in ("http", "https") or not on_domain(host, cls.web_domains):
            return None
        segments = parts.path.strip("/").split("/")
        if len(segments) != 2 or segments[0] != "sessions" or not segments[1]:
            return None
        return segments[1]

    @staticmethod
    def _auth_headers(api_key: SecretStr) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key.get_secret_value()}"}

    def _path(self, session_id: str) -> str:
        return f"/v1/sessions/{encode_segment(session_id)}/message"

    def _body(self, text: str, client_id: str) -> BaseModel:
        return PostMessageParams(message=text)

    def _delivered(self, response: httpx.Response) -> Outcome:
        payload = json_or_none(response)
        if payload is None:
            return Delivered()
        try:
            return NotRunning(detail=MessageSentResponse.model_validate(payload).detail)
        except ValidationError:
            # A 200 we do not recognise: the spec knows only null and {"detail"}; the message was
            # accepted as far as HTTP tells.
            return Delivered()

    def _read_path(self, session_id: str) -> str:
        return f"/v1/sessions/{encode_segment(session_id)}"

    def _snapshot(self, payload: Any) -> SessionSnapshot | None:
        if not isinstance(payload, dict):
            return None
        pull_request = payload.get("pull_request")
        return SessionSnapshot(
            state=_state(payload),
            items=tuple(read_items(payload.get("messages"), _item, provider=self.name)),
            title=text_field(payload, "title"),
            pr_url=text_field(pull_request, "url"),
            status=text_field(payload, "status_enum", "status"),
        )

    def session_url(self, session_id: str) -> str | None:
        if not self._web_url:
            return None
        return f"{self._web_url}/sessions/{encode_segment(session_id.removeprefix(ID_PREFIX))}"
