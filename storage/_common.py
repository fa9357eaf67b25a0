"""What the backends share: row mappers (sqlite3 rows and asyncpg records), the feedback payload
encoding, the wake-up callbacks, and URL redaction (here rather than in :mod:`storage.factory`,
which imports the backends)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from storage.base import (
    Binding,
    FeedbackItem,
    MessageState,
    MirrorMode,
    MirrorWatch,
    OutboxMessage,
    ThreadKey,
    WakeCallback,
    WakeKind,
)

log = structlog.get_logger(__name__)

# Two characters at least, so that a Windows drive letter ("C:\relay.db") is not taken for a scheme.
URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?P<rest>.*)$", re.DOTALL)


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@``, safe to show in a message."""
    match = URL_SCHEME.match(url)
    head, rest = (match["scheme"] + ":", match["rest"]) if match else ("", url)
    if "@" in rest:
        slashes = "//" if rest.startswith("//") else ""
        rest = f"{slashes}***@{rest.rsplit('@', 1)[1]}"
    return head + rest


class Row(Protocol):
    """What both ``sqlite3.Row`` and ``asyncpg.Record`` offer: values by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def thread_of(row: Row) -> ThreadKey:
    return ThreadKey(str(row["team"]), str(row["channel"]), str(row["thread_ts"]))


def binding_of(row: Row) -> Binding:
    return Binding(
        key=thread_of(row),
        provider=str(row["provider"]),
        session_id=str(row["session_id"]),
        linked_by=str(row["linked_by"]),
        linked_at=float(row["linked_at"]),
        muted=bool(row["muted"]),
        anchor_ts=optional_str(row["anchor_ts"]),
    )


def message_of(row: Row) -> OutboxMessage:
    return OutboxMessage(
        id=int(row["id"]),
        thread=thread_of(row),
        ts=str(row["ts"]),
        revision=str(row["revision"]),
        order_ts=str(row["order_ts"]),
        user=str(row["user"]),
        text=str(row["text"]),
        files=str(row["files"]),
        provider=str(row["provider"]),
        session_id=str(row["session_id"]),
        state=MessageState(row["state"]),
        attempts=int(row["attempts"]),
        outcome=optional_str(row["outcome"]),
        detail=optional_str(row["detail"]),
        received_at=float(row["received_at"]),
        updated_at=float(row["updated_at"]),
    )


def encode_payload(payload: Mapping[str, object]) -> str:
    """A feedback payload as stored: a JSON object. Raises :class:`TypeError` for values JSON lacks."""
    return json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False)


def decode_payload(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):  # pragma: no cover - only encode_payload writes the column
        raise TypeError(f"a feedback payload must be a JSON object, not {type(value).__name__}")
    return value


def feedback_of(row: Row, owner: str) -> FeedbackItem:
    return FeedbackItem(
        id=int(row["id"]),
        team=str(row["team"]),
        channel=str(row["channel"]),
        kind=str(row["kind"]),
        payload=decode_payload(str(row["payload"])),
        attempts=int(row["attempts"]),
        created_at=float(row["created_at"]),
        owner=owner,
    )


def watch_of(row: Row) -> MirrorWatch:
    mode = row["mode"]
    next_poll_at = row["next_poll_at"]
    return MirrorWatch(
        thread=thread_of(row),
        provider=str(row["provider"]),
        session_id=str(row["session_id"]),
        mode=MirrorMode(mode) if mode is not None else None,
        watermark=optional_str(row["watermark"]),
        state=optional_str(row["state"]),
        status_ts=optional_str(row["status_ts"]),
        status_text=optional_str(row["status_text"]),
        last_agent_text=optional_str(row["last_agent_text"]),
        idle_polls=int(row["idle_polls"]),
        failures=int(row["failures"]),
        next_poll_at=None if next_poll_at is None else float(next_poll_at),
    )


def watch_modes(include_unset: bool) -> str:
    """The ``mode`` condition of a due watch (shared SQL text; no values in it)."""
    polled = "mode IN ('on', 'final')"
    return f"({polled} OR mode IS NULL)" if include_unset else polled


class WakeListeners:
    """The callbacks of :meth:`storage.base.Store.add_wake_listener`, called without letting one
    callback's exception reach the store's caller or the other callbacks."""

    def __init__(self) -> None:
        self._callbacks: list[WakeCallback] = []

    def add(self, callback: WakeCallback) -> None:
        self._callbacks.append(callback)

    def fire(self, *kinds: WakeKind) -> None:
        for kind in dict.fromkeys(kinds):
            for callback in list(self._callbacks):
                try:
                    callback(kind)
                except Exception:
                    log.exception("store.wake_listener_failed", kind=kind)
