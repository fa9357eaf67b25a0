"""Markdown (what agents write) -> Slack mrkdwn (what a thread shows). Pure: no I/O.

What is converted:

* fenced code blocks (backticks or tildes, any info string) become Slack code blocks, the
  language dropped (Slack has no syntax highlighting); an unclosed fence runs to the end and is
  closed; a ```` ``` ```` inside the code is broken with a zero-width space so that it cannot end
  the block early;
* inline code stays inline code;
* ``[text](url)`` and ``![alt](url)`` become ``<url|text>``, ``<https://…>`` stays a link; a URL
  that is not ``http``, ``https`` or ``mailto``, or that holds characters a Slack link cannot
  carry, is shown as ``text (url)`` instead;
* ``**bold**`` and ``__bold__`` become ``*bold*``, ``*italic*`` becomes ``_italic_``,
  ``~~strike~~`` becomes ``~strike~``;
* headings become bold lines, list items ``•`` (task boxes ☐/☑), ordered items keep their
  number, block quotes stay block quotes, a horizontal rule becomes a line;
* ``&``, ``<`` and ``>`` are escaped everywhere except in the links this module writes, so that
  agent text can never become a mention (``<!channel>``) or a link it did not ask for.

Anything else (tables, HTML, footnotes) passes through as text.
"""

from __future__ import annotations

import re

__all__ = ["escape", "to_mrkdwn"]

_FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(?P<text>.*?))?[ \t]*#*[ \t]*$")
_RULE = re.compile(r"^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_QUOTE = re.compile(r"^ {0,3}>[ \t]?(?P<rest>.*)$")
_BULLET = re.compile(r"^(?P<indent>[ \t]*)[-*+][ \t]+(?P<rest>.*)$")
_TASK = re.compile(r"^\[(?P<mark>[ xX])\][ \t]+")
_ORDERED = re.compile(r"^(?P<indent>[ \t]*)(?P<n>\d{1,9})[.)][ \t]+(?P<rest>.*)$")

_CODE_SPAN = re.compile(r"(?P<ticks>`+)(?P<code>.+?)(?P=ticks)")
_LINK = re.compile(
    r"(?P<image>!?)\[(?P<label>[^\[\]\n]*)\]"
    r"\(\s*<?(?P<url>[^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)>?(?:\s+\"[^\"\n]*\")?\s*\)"
)
_AUTOLINK = re.compile(r"<(?P<url>(?:https?://|mailto:)[^\s<>|]+)>")
_BOLD = re.compile(
    r"(?<!\*)\*\*(?=\S)(?P<text>.+?)(?<=\S)\*\*(?!\*)"
    r"|(?<!\w)__(?=\S)(?P<text2>.+?)(?<=\S)__(?!\w)"
)
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])(?P<text>[^*\n]+?)(?<=[^\s*])\*(?![\w*])")
_STRIKE = re.compile(r"~~(?=\S)(?P<text>.+?)(?<=\S)~~")
_SAFE_URL = re.compile(r"(?:https?://|mailto:)[^\s<>|]+", re.IGNORECASE)

# Placeholders for pieces already converted (code spans, links): never in agent text (stripped).
_HOLD = "\x00"
_BOLD_MARK = "\x01"
_HELD = re.compile(r"\x00(\d+)\x00")
_CONTROL = re.compile(r"[\x00-\x02]")

RULE = "──────────"


def escape(text: str) -> str:
    """Slack's three special characters, escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """The Markdown ``markdown`` as Slack mrkdwn."""
    lines = _CONTROL.sub("", markdown.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    out: list[str] = []
    fence: str | None = None
    code: list[str] = []
    for line in lines:
        if fence is None:
            opened = _FENCE_OPEN.match(line)
            if opened is not None and not (opened["fence"][0] == "`" and "`" in opened["info"]):
                fence, code = opened["fence"], []
                continue
            out.append(_line(line))
            continue
        closing = line.strip()
        if len(closing) >= len(fence) and closing == fence[0] * len(closing):
            out.append(_code_block(code))
            fence = None
            continue
        code.append(line)
    if fence is not None:
        out.append(_code_block(code))
    return "\n".join(out).strip("\n")


def _code_block(lines: list[str]) -> str:
    body = escape("\n".join(lines)).replace("```", "``\u200b`")
    return f"```\n{body}\n```"


def _line(line: str) -> str:
    """One line outside code blocks."""
    if _RULE.match(line):
        return RULE
    heading = _HEADING.match(line)
    if heading is not None:
        text = (heading["text"] or "").replace("**", "").replace("__", "").strip()
        return f"*{_inline(text)}*" if text else ""
    quote = _QUOTE.match(line)
    if quote is not None:  # Slack has one level of quotes: ">> x" is quoted once
        rest = quote["rest"]
        while (inner := _QUOTE.match(rest)) is not None:
            rest = inner["rest"]
        return f"> {_line(rest)}".rstrip()
    bullet = _BULLET.match(line)
    if bullet is not None:
        rest = bullet["rest"]
        task = _TASK.match(rest)
        marker = "•"
        if task is not None:
            marker = "☑" if task["mark"] in "xX" else "☐"
            rest = rest[task.end() :]
        return f"{_indent(bullet['indent'])}{marker} {_inline(rest)}"
    ordered = _ORDERED.match(line)
    if ordered is not None:
        return f"{_indent(ordered['indent'])}{ordered['n']}. {_inline(ordered['rest'])}"
    return _inline(line)


def _indent(spaces: str) -> str:
    """Nested list items: four spaces a level in Slack (Markdown uses two to four)."""
    width = len(spaces.replace("\t", "    "))
    return "    " * ((width + 1) // 2) if width else ""


def _inline(text: str) -> str:
    """Inline Markdown as mrkdwn: code spans and links first (held aside), then the rest."""
    held: list[str] = []

    def hold(piece: str) -> str:
        held.append(piece)
        return f"{_HOLD}{len(held) - 1}{_HOLD}"

    def code(match: re.Match[str]) -> str:
        inner = match["code"]
        if inner.strip():
            inner = inner.strip(" ") if inner.startswith(" ") and inner.endswith(" ") else inner
        return hold(f"`{escape(inner)}`")

    def link(match: re.Match[str]) -> str:
        label, url = match["label"], match["url"]
        shown = _emphasis(escape(label)) if label.strip() else escape(url)
        if _SAFE_URL.fullmatch(url):
            return hold(f"<{url}|{shown}>")
        return hold(f"{shown} ({escape(url)})" if label.strip() else escape(url))

    def autolink(match: re.Match[str]) -> str:
        return hold(f"<{match['url']}>")

    text = _CODE_SPAN.sub(code, text)
    text = _LINK.sub(link, text)
    text = _AUTOLINK.sub(autolink, text)
    text = _emphasis(escape(text))
    while _HELD.search(text):  # a held link label may hold a code span
        text = _HELD.sub(lambda m: held[int(m.group(1))], text)
    return text


def _emphasis(text: str) -> str:
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m['text'] or m['text2']}{_BOLD_MARK}", text)
    text = _ITALIC.sub(lambda m: f"_{m['text']}_", text)
    text = _STRIKE.sub(lambda m: f"~{m['text']}~", text)
    return text.replace(_BOLD_MARK, "*")
