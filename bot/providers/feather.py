"""Feather (ask-feather): ``POST /v1/ask-feather/sessions/{uuid}/messages`` with ``x-api-key``.

Session ids are UUIDs (hyphenated or not, in braces, or as ``urn:uuid:``), normalised to the
canonical lowercase hyphenated form. Feather documents no session pages for people.

Reading (``GET /v1/ask-feather/sessions/{uuid}``): every role but ``user`` is the agent side; a
message's text is its ``text`` content items, and any other content item shows as a short note.
Items are ordered by their increasing ``seq`` (a message without one is skipped). The status words
are not documented: the usual ones are mapped, anything else is ``unknown``. ``usage.cost_usd`` is
the cost so far.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

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
    parse_time,
    read_items,
    text_field,
)

_HEX = "[0-9a-fA-F]"
_UUID_HEX = rf"(?:{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}})"
_ID = re.compile(rf"(?:urn:uuid:)?(?:\{{{_UUID_HEX}\}}|{_UUID_HEX})")
_ID_MAX = len("urn:uuid:{}") + 36
_EXAMPLE = "123e4567-e89b-12d3-a456-426614174000"


#: Feather's status words are not documented; these are the usual ones.
STATES: dict[str, SessionState] = {
    **dict.fromkeys(
        ("active", "running", "working", "in_progress", "processing", "pending", "queued"),
        SessionState.WORKING,
    ),
    **dict.fromkeys(
        ("waiting", "waiting_for_input", "awaiting_input", "input_required", "blocked", "idle"),
        SessionState.WAITING,
    ),
    **dict.fromkeys(
        ("completed", "complete", "finished", "done", "closed", "failed", "error", "cancelled", "canceled"),
        SessionState.FINISHED,
    ),
    **dict.fromkeys(("suspended", "paused"), SessionState.SUSPENDED),
    **dict.fromkeys(("expired", "timed_out", "timeout"), SessionState.EXPIRED),
}


def _text(content: object) -> str:
    """The text items of a message, joined by blank lines; other items as short notes."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for piece in content:
        if not isinstance(piece, dict):
            continue
        text = piece.get("text")
        if piece.get("type") in ("text", None) and isinstance(text, str):
            parts.append(text)
        else:
            kind = piece.get("type")
            name = kind if isinstance(kind, str) and kind.isidentifier() and len(kind) <= 40 else "other"
            parts.append(f"_(a {name} item, not shown here)_")
    return "\n\n".join(part for part in parts if part.strip())


def _item(raw: dict[str, Any]) -> AgentItem | None:
    seq = raw.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    key = raw.get("id")
    role = raw.get("role")
    return AgentItem(
        key=key if isinstance(key, str) and key else f"seq:{seq}",
        kind=ItemKind.USER if role == "user" else ItemKind.AGENT,
        text=_text(raw.get("content")),
        created=parse_time(raw.get("created_at")),
        seq=seq,
    )


def _cost(usage: object) -> float | None:
    value = usage.get("cost_usd") if isinstance(usage, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


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

    def _read_path(self, session_id: str) -> str:
        return f"/v1/ask-feather/sessions/{encode_segment(session_id)}"

    def _snapshot(self, payload: Any) -> SessionSnapshot | None:
        if not isinstance(payload, dict):
            return None
        status = text_field(payload, "status")
        items = read_items(payload.get("messages"), _item, provider=self.name)
        items.sort(key=lambda item: item.seq or 0)
        return SessionSnapshot(
            state=STATES.get((status or "").strip().lower(), SessionState.UNKNOWN),
            items=tuple(items),
            title=text_field(payload, "title"),
            cost_usd=_cost(payload.get("usage")),
            status=status,
        )
