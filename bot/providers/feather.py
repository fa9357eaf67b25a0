"""Feather (ask-feather): ``POST /v1/ask-feather/sessions/{uuid}/messages`` with ``x-api-key``."""

from __future__ import annotations

from typing import ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bot.outcomes import Delivered, Outcome
from bot.providers.base import Provider, encode_segment


class SendMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(min_length=1)
    workflow: str | None = None


class FeatherProvider(Provider):
    name: ClassVar[str] = "feather"
    label: ClassVar[str] = "Feather"

    @staticmethod
    def _auth_headers(api_key: SecretStr) -> dict[str, str]:
        return {"x-api-key": api_key.get_secret_value()}

    def _path(self, session_id: str) -> str:
        return f"/v1/ask-feather/sessions/{encode_segment(session_id)}/messages"

    def _body(self, text: str, client_id: str) -> BaseModel:
        return SendMessageRequest(content=text)

    def _delivered(self, response: httpx.Response) -> Outcome:
        return Delivered()  # the spec leaves the 200 body unspecified
