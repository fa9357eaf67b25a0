"""Persistent state of agent-relay behind one async interface (see :mod:`storage.base`)."""

from storage.base import (
    Binding,
    MessageState,
    OutboxMessage,
    Store,
    StoreError,
    ThreadKey,
)
from storage.factory import open_store

__all__ = [
    "Binding",
    "MessageState",
    "OutboxMessage",
    "Store",
    "StoreError",
    "ThreadKey",
    "open_store",
]
