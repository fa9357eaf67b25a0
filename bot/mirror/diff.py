"""What is new in a session since it was last read: a snapshot against a watermark. Pure: no I/O.

The watermark is the last item handled, by its key (Devin ``event_id``, Feather ``id``, Agen event
``id``) and, where the provider numbers its items (Feather ``seq``), by that number. New items are
those after it in the provider's order. When the key is not in the snapshot any more, the number
finds the place (items with a greater ``seq``); without one the place is lost, and the watermark
moves to the newest item without showing anything (nothing old is dumped into the thread).

An agent item the provider may still change (``done`` False: an Agen event queued or processing)
holds the watermark before it: it and everything after it are new again at the next read, once it
is done. A message to the session or a tool step that is not done does not hold anything.

The first read of a thread (no watermark) only sets the watermark at the newest item: mirroring
starts from the newest message at link time.

Posting each item once does not rest on the watermark alone: every post carries a dedupe key made
of the thread and the item's key, so reading an item again (a takeover, a watermark written late)
never shows it twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bot.providers.base import AgentItem, ItemKind

__all__ = ["Diff", "Watermark", "diff"]

_SPOKEN = (ItemKind.AGENT, ItemKind.QUESTION)


@dataclass(frozen=True, slots=True)
class Watermark:
    """The last item handled; both None: the session had no items when it was first read."""

    key: str | None = None
    seq: int | None = None

    @classmethod
    def after(cls, item: AgentItem | None) -> Watermark:
        return cls() if item is None else cls(item.key, item.seq)

    def encode(self) -> str:
        return json.dumps({"key": self.key, "seq": self.seq}, separators=(",", ":"))

    @classmethod
    def decode(cls, stored: str | None) -> Watermark | None:
        """The stored watermark; None when there is none or it cannot be read (read afresh)."""
        if not stored:
            return None
        try:
            value = json.loads(stored)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        key, seq = value.get("key"), value.get("seq")
        return cls(
            key if isinstance(key, str) else None,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class Diff:
    new: tuple[AgentItem, ...]  # in the provider's order
    watermark: Watermark
    lost: bool = False  # the watermark's place was not found: moved to the newest item


def diff(items: Sequence[AgentItem], mark: Watermark | None) -> Diff:
    """The items after ``mark``, and the watermark after handling them."""
    if mark is None:
        return Diff((), Watermark.after(items[-1] if items else None))
    start = _start(items, mark)
    if start is None:
        return Diff((), Watermark.after(items[-1] if items else None), lost=True)
    new: list[AgentItem] = []
    moved = mark
    for item in items[start:]:
        if item.kind in _SPOKEN and not item.done:
            break
        new.append(item)
        moved = Watermark.after(item)
    return Diff(tuple(new), moved)


def _start(items: Sequence[AgentItem], mark: Watermark) -> int | None:
    """The index of the first item after ``mark``; None when its place is lost."""
    if mark.key is None and mark.seq is None:
        return 0
    for index, item in enumerate(items):
        if item.key == mark.key:
            return index + 1
    if mark.seq is not None:
        for index, item in enumerate(items):
            if item.seq is not None and item.seq > mark.seq:
                return index
        return len(items)
    return None
