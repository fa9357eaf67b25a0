"""Persistent state of agent-relay behind one async interface (see :mod:`storage.base`)."""

from storage.base import (
    Binding,
    Claim,
    FeedbackItem,
    FeedbackState,
    MessageState,
    MirrorMode,
    MirrorProgress,
    MirrorWatch,
    NewFeedback,
    NewMessage,
    OutboxMessage,
    Purged,
    Store,
    StoreError,
    ThreadKey,
)
from storage.factory import open_store

__all__ = [
    "Binding",
    "Claim",
    "FeedbackItem",
    "FeedbackState",
    "MessageState",
    "MirrorMode",
    "MirrorProgress",
    "MirrorWatch",
    "NewFeedback",
    "NewMessage",
    "OutboxMessage",
    "Purged",
    "Store",
    "StoreError",
    "ThreadKey",
    "open_store",
]
