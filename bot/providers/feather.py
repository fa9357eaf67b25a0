"""Feather (ask-feather): ``POST /v1/ask-feather/sessions/{uuid}/messages`` with ``x-api-key``.

Session ids are UUIDs (hyphenated or not, in braces, or as ``urn:uuid:``), normalised to the
canonical lowercase hyphenated form. Feather documents no session pages for people.
"""

from __future__ import annotations

import re
import uuid
from typing import ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bot.outcomes import Delivered, Outcome
from bot.providers.base import Capability, Provider, SessionRefError, echo, encode_segment

_HEX = "[0-9a-fA-F]"
_UUID_HEX = rf"(?:{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}})"
_ID = re.compile(rf"(?:urn:uuid:)?(?:\{{{_UUID_HEX}\}}|{_UUID_HEX})")
_ID_MAX = len("urn:uuid:{}") + 36
_EXAMPLE = "123e4567-e89b-12d3-a456-426614174000"


class SendMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(min_length=1)
    workflow: str | None = None


class FeatherProvider(Provider):
    name: ClassVar[str] = "feather"
    label: ClassVar[str] = "Feather"
    default_api_url: ClassVar[str] = "https://api-sandbox.featherhq.com"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.READ_SESSION})

    @classmethod
    def _normalise_session_id(cls, raw: str) -> str:
        if len(raw) > _ID_MAX:
            raise SessionRefError(
                f"That Feather session id is too long. A Feather session id is a UUID, like {_EXAMPLE}."
            )
        if _ID.fullmatch(raw) is None:
            raise SessionRefError(
                f"{echo(raw)} is not a Feather session id. A Feather session id is a UUID, like {_EXAMPLE}."
            )
        return str(uuid.UUID(raw))

    @staticmethod
    def _auth_headers(api_key: SecretStr) -> dict[str, str]:
        return {"x-api-key": api_key.get_secret_value()}

    def _path(self, session_id: str) -> str:
        return f"/v1/ask-feather/sessions/{encode_segment(session_id)}/messages"

    def _body(self, text: str, client_id: str) -> BaseModel:
        return SendMessageRequest(content=text)

    def _delivered(self, response: httpx.Response) -> Outcome:
        return Delivered()  # the spec leaves the 200 body unspecified
