"""Agen: ``POST /api/v1/sessions/{sessionId}/messages`` with ``x-api-key``.

``client_id`` is the caller's own id of the message; agent-relay sends a stable id of the Slack
message, the same on every attempt, so a retry after a lost answer can be recognised.

Session ids: 1..128 of ``[A-Za-z0-9._:-]``, starting with a letter or digit. Agen documents no
session pages for people.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from bot.outcomes import Delivered, Outcome
from bot.providers.base import Capability, Provider, SessionRefError, echo, encode_segment, json_or_none

ID_MAX = 128
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


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
