"""What a reader sees in a message's blocks and shared attachments, as Slack mrkdwn.

Slack clients show a message's ``blocks`` when it has any; its ``text`` is then what notifications
show, and for a message an app built it may be only a summary ("New deploy request"). A shared
(forwarded) message keeps the writer's words in ``text`` and the message they shared in
``attachments`` (``is_share``; a pasted message link unfurls the same way with ``is_msg_unfurl``).

Everything here returns Slack mrkdwn, the markup of ``text``: words are escaped (``&`` ``<`` ``>``),
people, channels and user groups become the tokens Slack itself writes (``<@U1>``, ``<#C1>``,
``<!subteam^S1>``). So a rendered message goes through the same conversion to plain text and the
same name look-ups (:mod:`bot.mrkdwn`, at send time) as any typed one, and an edit of it compares
and stores like one.

Rendering, block by block:

* ``rich_text``: sections as written; lists one item a line (``• item``, nested ``◦``/``▪``, or
  ``1. item``), indented four spaces a level; preformatted text fenced with ```` ``` ````; quotes
  with ``> `` on every line. Bold, italic, strike and code keep Slack's markers (``*b*``, ``_i_``,
  ``~s~``, `` `c` ``), as in the ``text`` Slack writes for a typed message.
* ``section`` (its ``text``, then each of its ``fields`` on a line), ``header``, ``context`` (its text
  elements), ``markdown``; ``divider``, ``image``, ``actions``, ``file`` and accessories show no
  words and are skipped.
* Anything else (a block or element type this module does not know) makes the rendering
  incomplete: :func:`shown_text` then prefers the message's own ``text``.

Pure functions: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Rendered", "escape", "forwarded_text", "render_blocks", "shown_text"]

_ID = re.compile(r"[A-Z0-9]+")
_BROADCASTS = frozenset({"here", "channel", "everyone"})
_BULLETS = ("•", "◦", "▪")
_SILENT_BLOCKS = frozenset({"divider", "image", "actions", "file", "video", "call"})
_INDENT = "    "


def escape(text: str) -> str:
    """Plain text as mrkdwn: ``&``, ``<``, ``>`` escaped, as Slack escapes them in ``text``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True, slots=True)
class Rendered:
    """Blocks as mrkdwn. ``complete``: every block and element was understood."""

    text: str
    complete: bool = True


def _dicts(value: object) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _styled(text: str, style: object) -> str:
    """``text`` inside Slack's markers for its style; surrounding spaces stay outside them."""
    if not isinstance(style, dict) or not text.strip():
        return text
    core = text.strip()
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
    for key, mark in (("code", "`"), ("strike", "~"), ("italic", "_"), ("bold", "*")):
        if style.get(key):
            core = f"{mark}{core}{mark}"
    return f"{lead}{core}{trail}"


def _token(prefix: str, value: object, fallback: str = "") -> str | None:
    """``<{prefix}{id}>`` when ``value`` is a Slack id, else None."""
    if isinstance(value, str) and _ID.fullmatch(value):
        return f"<{prefix}{value}{fallback}>"
    return None


def _inline(element: Mapping[str, Any]) -> Rendered:
    """One element of a rich-text section."""
    kind = element.get("type")
    style = element.get("style")
    token: str | None = None
    if kind == "text":
        return Rendered(_styled(escape(_str(element.get("text"))), style))
    if kind == "link":
        url, label = _str(element.get("url")), _str(element.get("text"))
        if not url:
            return Rendered(escape(label), complete=bool(label))
        token = f"<{escape(url)}|{escape(label)}>" if label else f"<{escape(url)}>"
        return Rendered(_styled(token, style))
    if kind == "user":
        token = _token("@", element.get("user_id"))
    elif kind == "channel":
        token = _token("#", element.get("channel_id"))
    elif kind == "usergroup":
        token = _token("!subteam^", element.get("usergroup_id"))
    elif kind == "broadcast":
        where = element.get("range")
        token = f"<!{where}>" if where in _BROADCASTS else None
    elif kind == "emoji":
        name = _str(element.get("name"))
        tone = element.get("skin_tone")
        token = (f":{name}:" + (f":skin-tone-{tone}:" if isinstance(tone, int) else "")) if name else None
    elif kind == "date":
        token = _date(element)
    elif kind == "color":
        token = escape(_str(element.get("value"))) or None
    if token is not None:
        return Rendered(token)
    words = _str(element.get("text")) or _str(element.get("fallback"))
    return Rendered(escape(words), complete=False)


def _date(element: Mapping[str, Any]) -> str | None:
    timestamp = element.get("timestamp")
    if not isinstance(timestamp, int | str) or not str(timestamp).isdigit():
        return None
    fmt = _str(element.get("format")) or "{date_short_pretty} at {time}"
    url = _str(element.get("url"))
    fallback = _str(element.get("fallback"))
    head = f"!date^{timestamp}^{escape(fmt)}" + (f"^{escape(url)}" if url else "")
    return f"<{head}|{escape(fallback)}>" if fallback else f"<{head}>"


def _section(elements: object) -> Rendered:
    parts = [_inline(element) for element in _dicts(elements)]
    return Rendered("".join(p.text for p in parts), all(p.complete for p in parts))


def _join_lines(parts: list[Rendered]) -> Rendered:
    """Parts one after another, each starting on a new line."""
    text = ""
    for part in parts:
        if text and not text.endswith("\n"):
            text += "\n"
        text += part.text
    return Rendered(text.rstrip("\n"), all(p.complete for p in parts))


def _list(element: Mapping[str, Any]) -> Rendered:
    indent = element.get("indent")
    level = indent if isinstance(indent, int) and 0 <= indent < 10 else 0
    offset = element.get("offset")
    first = (offset if isinstance(offset, int) and offset >= 0 else 0) + 1
    ordered = element.get("style") == "ordered"
    items = []
    for number, item in enumerate(_dicts(element.get("elements")), start=first):
        body = _section(item.get("elements"))
        mark = f"{number}." if ordered else _BULLETS[level % len(_BULLETS)]
        items.append(Rendered(f"{_INDENT * level}{mark} {body.text}", body.complete))
    return _join_lines(items)


def _quoted(text: str) -> str:
    return "\n".join(f"&gt; {line}" if line else "&gt;" for line in text.split("\n"))


def _rich_text(elements: object) -> Rendered:
    parts = []
    for element in _dicts(elements):
        kind = element.get("type")
        if kind == "rich_text_section":
            parts.append(_section(element.get("elements")))
        elif kind == "rich_text_list":
            parts.append(_list(element))
        elif kind == "rich_text_preformatted":
            code = _section(element.get("elements"))
            parts.append(Rendered(f"```\n{code.text.strip(chr(10))}\n```", code.complete))
        elif kind == "rich_text_quote":
            quote = _section(element.get("elements"))
            parts.append(Rendered(_quoted(quote.text.rstrip("\n")), quote.complete))
        else:
            parts.append(Rendered("", complete=False))
    return _join_lines(parts)


def _text_object(value: object) -> Rendered:
    """A composition text object: ``mrkdwn`` is already mrkdwn, ``plain_text`` is escaped."""
    if not isinstance(value, dict):
        return Rendered("")
    text = _str(value.get("text"))
    if value.get("type") == "mrkdwn":
        return Rendered(text)
    if value.get("type") == "plain_text":
        return Rendered(escape(text))
    return Rendered(escape(text), complete=False)


def _block(block: Mapping[str, Any]) -> Rendered:
    kind = block.get("type")
    if kind == "rich_text":
        return _rich_text(block.get("elements"))
    if kind == "section":
        parts = [_text_object(block.get("text"))] if block.get("text") else []
        parts += [_text_object(field) for field in _dicts(block.get("fields"))]
        return _join_lines(parts)
    if kind == "header":
        return _text_object(block.get("text"))
    if kind == "context":
        words = [_text_object(e) for e in _dicts(block.get("elements")) if e.get("type") != "image"]
        return Rendered(" ".join(w.text for w in words if w.text), all(w.complete for w in words))
    if kind == "markdown":
        return Rendered(escape(_str(block.get("text"))))
    if kind in _SILENT_BLOCKS:
        return Rendered("")
    return Rendered(escape(_str(block.get("text"))), complete=False)


def render_blocks(blocks: object) -> Rendered:
    """``blocks`` (a message's, or a shared message's) as mrkdwn, one block after another."""
    parts = [_block(block) for block in _dicts(blocks)]
    return _join_lines([p for p in parts if p.text or not p.complete])


def shown_text(text: str, blocks: object) -> str:
    """What a reader sees of a message with ``text`` and ``blocks``, as mrkdwn.

    The blocks when they have words and were understood in full (Slack shows blocks, not
    ``text``); the ``text`` otherwise, and the partial blocks when ``text`` is empty.
    """
    rendered = render_blocks(blocks)
    if rendered.text.strip() and (rendered.complete or not text.strip()):
        return rendered.text
    return text


def _shared_body(attachment: Mapping[str, Any]) -> str:
    parts = [
        render_blocks(inner.get("blocks"))
        for shared in _dicts(attachment.get("message_blocks"))
        if isinstance(inner := shared.get("message"), dict)
    ]
    blocks = _join_lines([p for p in parts if p.text])
    text = _str(attachment.get("text"))
    if blocks.text.strip() and (blocks.complete or not text.strip()):
        return blocks.text
    if text.strip():
        return text
    return escape(_str(attachment.get("fallback")))


def _shared(attachment: Mapping[str, Any]) -> str:
    body = _shared_body(attachment).strip("\n")
    name = _str(attachment.get("author_name")).strip()
    author = escape(name) if name else (_token("@", attachment.get("author_id")) or "")
    url = _str(attachment.get("from_url"))
    if not body.strip() and not author:
        return ""
    head = "Forwarded message" if attachment.get("is_share") else "Linked message"
    if author:
        head += f" from {author}"
    if url:
        head += f" (<{escape(url)}>)"
    return f"{head}:\n{_quoted(body)}" if body.strip() else head


def forwarded_text(attachments: object) -> str:
    """The messages shared in ``attachments`` (``is_share`` or ``is_msg_unfurl``), as mrkdwn.

    Each reads ``Forwarded message from <author> (<link>):`` (``Linked message`` for the preview of
    a pasted message link) and then the message quoted line by line; link previews of web pages and
    app attachments are not shared messages and are left out. ``""`` when nothing was shared.
    """
    parts = [
        text
        for attachment in _dicts(attachments)
        if attachment.get("is_share") or attachment.get("is_msg_unfurl")
        if (text := _shared(attachment))
    ]
    return "\n\n".join(parts)
