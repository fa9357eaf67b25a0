"""Splitting mrkdwn into Slack-sized messages. Pure: no I/O.

Slack cuts a message's text beyond 40,000 characters; :func:`split_message` keeps each part within
``limit`` (39,000 by default). It prefers paragraph boundaries (blank lines), then line breaks, then
spaces, and cuts a word only when it must (never inside an ``&amp;`` entity or a ``<url|text>``
link when that can be avoided). A code block (the ```` ``` ```` lines :mod:`bot.mirror.markdown`
writes) is never left open across a split: the part that stops inside it closes the fence, and the
next part opens it again.
"""

from __future__ import annotations

import re

__all__ = ["FENCE", "LIMIT", "split_message"]

LIMIT = 39_000
FENCE = "```"
_ENTITY_TAIL = re.compile(r"&[a-z]{0,4}$")
_NOT_A_FENCE = "``\u200b`"  # a piece of text that is only ``` would read as a code block in Slack


def split_message(text: str, limit: int = LIMIT) -> list[str]:
    """``text`` in parts of at most ``limit`` characters (one part when it fits)."""
    if limit < 16:
        raise ValueError("a split limit under 16 characters cannot hold a code block")
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    current = ""
    for block in _blocks(text):
        for piece in _fit(block, limit):
            if not piece.strip():
                continue  # spaces a cut left over: nothing to show
            joined = f"{current}\n\n{piece}" if current else piece
            if len(joined) <= limit:
                current = joined
            else:
                if current:
                    parts.append(current)
                current = piece
    if current:
        parts.append(current)
    return parts


def _blocks(text: str) -> list[str]:
    """Paragraphs and whole code blocks, in order (blank lines between paragraphs dropped)."""
    blocks: list[str] = []
    lines: list[str] = []
    in_code = False
    for line in text.split("\n"):
        if line == FENCE:
            if not in_code and lines:
                blocks.append("\n".join(lines))
                lines = []
            lines.append(line)
            if in_code:
                blocks.append("\n".join(lines))
                lines = []
            in_code = not in_code
            continue
        if not in_code and not line.strip():
            if lines:
                blocks.append("\n".join(lines))
                lines = []
            continue
        lines.append(line)
    if lines:
        if in_code:
            lines.append(FENCE)
        blocks.append("\n".join(lines))
    return blocks


def _fit(block: str, limit: int) -> list[str]:
    """``block`` in pieces of at most ``limit``; a code block's pieces each open and close it."""
    if len(block) <= limit:
        return [block]
    if block.startswith(FENCE + "\n") and block.endswith("\n" + FENCE):
        inner = block[len(FENCE) + 1 : -(len(FENCE) + 1)]
        room = limit - 2 * (len(FENCE) + 1)
        return [f"{FENCE}\n{piece}\n{FENCE}" for piece in _pack(inner.split("\n"), "\n", room)]
    return _pack(block.split("\n"), "\n", limit)


def _pack(units: list[str], glue: str, limit: int) -> list[str]:
    """Join ``units`` with ``glue`` into pieces of at most ``limit``; a unit too long on its own is
    split at spaces (lines) or cut (words)."""
    pieces: list[str] = []
    current: str | None = None
    for unit in units:
        if len(unit) > limit:
            if current is not None:
                pieces.append(current)
                current = None
            words = glue == "\n" and " " in unit
            smaller = _pack(unit.split(" "), " ", limit) if words else _cut(unit, limit)
            pieces.extend(smaller[:-1])
            current = smaller[-1]
            continue
        joined = unit if current is None else f"{current}{glue}{unit}"
        if len(joined) <= limit:
            current = joined
        else:
            if current is not None:
                pieces.append(current)
            current = unit
    if current is not None:
        pieces.append(current)
    return [_no_fence_lines(piece) for piece in pieces]


def _no_fence_lines(piece: str) -> str:
    """A cut can leave a line that is only ``` (the end of a longer run of backticks): it would
    open or close a code block in Slack, so it is broken with a zero-width space."""
    if FENCE not in piece:
        return piece
    return "\n".join(_NOT_A_FENCE if line == FENCE else line for line in piece.split("\n"))


def _cut(word: str, limit: int) -> list[str]:
    """Cut ``word`` into pieces of at most ``limit``, backing off an entity or a link cut in half."""
    pieces: list[str] = []
    while len(word) > limit:
        end = limit
        head = word[:end]
        opened = head.rfind("<")
        if opened > 0 and head.rfind(">") < opened:
            end = opened
        elif (entity := _ENTITY_TAIL.search(head)) is not None and entity.start() > 0:
            end = entity.start()
        pieces.append(word[:end])
        word = word[end:]
    pieces.append(word)
    return pieces
