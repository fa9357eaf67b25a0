"""Agen: ``POST /api/v1/sessions/{sessionId}/messages`` with ``x-api-key``.

``client_id`` is the caller's own id of the message; agent-relay sends a stable id of the Slack
message, the same on every attempt, so a retry after a lost answer can be recognised.

Session ids: 1..128 of ``[A-Za-z0-9._:-]``, starting with a letter or digit. Agen documents no
session pages for people.

Reading (``GET /api/v1/sessions/{sessionId}/events``): ``agent_message`` is the agent speaking,
``agent_ask_user`` a question to a person, ``user_message`` and ``user_ask_user_response`` are
messages sent to the session (ours carry our ``client_id``); every other event type (tool steps,
system messages) is neither. Only the ``user_message`` payload is documented, so the text is a
``message``, ``text`` or ``question`` string of the payload. An event is ``done`` once it is
``completed`` or ``canceled`` (a canceled agent message is not shown); until then its text may
still change. There is no session status: the state comes from the events (the last of
``session_finished``/``session_closed``, a question, or a message to the session decides; any event
still queued or processing means working).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from bot.outcomes import Delivered, Outcome
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
    parse_time,
    read_items,
    text_field,
)

ID_MAX = 128
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


_KINDS = {
    "agent_message": ItemKind.AGENT,
    "agent_ask_user": ItemKind.QUESTION,
    "user_message": ItemKind.USER,
    "user_ask_user_response": ItemKind.USER,
}
_ENDS = frozenset({"session_finished", "session_closed"})


def _item(raw: dict[str, Any]) -> AgentItem | None:
    key, kind_word, status = raw.get("id"), raw.get("type"), raw.get("status")
    if not isinstance(key, str) or not key or not isinstance(kind_word, str):
        return None
    kind = _KINDS.get(kind_word, ItemKind.OTHER)
    text = text_field(raw.get("payload"), "message", "text", "question") or ""
    if kind in (ItemKind.AGENT, ItemKind.QUESTION) and (not text.strip() or status == "canceled"):
        kind = ItemKind.OTHER  # nothing to show
    client_id = raw.get("client_id")
    return AgentItem(
        key=key,
        kind=kind,
        text=text if kind is not ItemKind.OTHER else kind_word,
        created=parse_time(raw.get("created_at")),
        client_id=client_id if isinstance(client_id, str) else None,
        done=status not in ("queued", "processing"),
    )


def _state(events: list[dict[str, Any]]) -> SessionState:
    if any(event.get("status") in ("queued", "processing") for event in events):
        return SessionState.WORKING
    for event in reversed(events):
        kind = event.get("type")
        if kind in _ENDS:
            return SessionState.FINISHED
        if kind == "agent_ask_user":
            return SessionState.WAITING
        if kind in ("user_message", "user_ask_user_response"):
            return SessionState.WORKING
    return SessionState.UNKNOWN


class SendMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1)
    client_id: str | None = None


class SessionEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    session_id: str
    type: str
    payload: dict[str, object]
    status: Literal["completed", "queued", "processing", "canceled"]
    client_id: str | None
    session_goal_id: str | None
    session_task_id: str | None
    created_at: str
    updated_at: str


class AgenProvider(Provider):
    name: ClassVar[str] = "agen"
    label: ClassVar[str] = "Agen"
    default_api_url: ClassVar[str] = "https://api.agenhq.com"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ_SESSION})

    @classmethod
    def _normalise_session_id(cls, raw: str) -> str:
        if len(raw) > ID_MAX:
            raise cls._too_long(ID_MAX)
        if _ID.fullmatch(raw) is None:
            raise SessionRefError(
                f"{echo(raw)} is not an Agen session id. An Agen session id is up to {ID_MAX} "
                "letters, digits, `.`, `_`, `:` and `-`, starting with a letter or digit."
            )
        return raw

    @staticmethod
    def _auth_headers(api_key: SecretStr) -> dict[str, str]:
        return {"x-api-key": api_key.get_secret_value()}

    def _path(self, session_id: str) -> str:
        return f"/api/v1/sessions/{encode_segment(session_id)}/messages"

    def _body(self, text: str, client_id: str) -> BaseModel:
        return SendMessageRequest(message=text, client_id=client_id)

    def _delivered(self, response: httpx.Response) -> Outcome:
        try:
            event = SessionEvent.model_validate(json_or_none(response))
        except ValidationError:
            return Delivered()
        return Delivered(provider_message_id=event.id, status=event.status)

    def _read_path(self, session_id: str) -> str:
        return f"/api/v1/sessions/{encode_segment(session_id)}/events"

    def _snapshot(self, payload: Any) -> SessionSnapshot | None:
        if not isinstance(payload, list):
            return None
        events = [event for event in payload if isinstance(event, dict)]
        return SessionSnapshot(
            state=_state(events), items=tuple(read_items(events, _item, provider=self.name))
        )
