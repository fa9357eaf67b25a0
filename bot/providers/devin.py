"""Devin v1: ``POST /v1/sessions/{session_id}/message`` with ``Authorization: Bearer``.

200 with JSON ``null`` means delivered; 200 with ``{"detail": "..."}`` means the session is not
running and the message was not taken (the detail is shown word for word).
"""

from __future__ import annotations

from typing import ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from bot.outcomes import Delivered, NotRunning, Outcome
from bot.providers.base import Provider, encode_segment, json_or_none


class PostMessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str


class MessageSentResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    detail: str


class DevinProvider(Provider):
    name: ClassVar[str] = "devin"
    label: ClassVar[str] = "Devin"

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

    def session_url(self, session_id: str) -> str | None:
        if not self._web_url:
            return None
        return f"{self._web_url}/sessions/{encode_segment(session_id.removeprefix('devin-'))}"
