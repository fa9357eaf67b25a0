"""Slack mrkdwn -> plain text for an agent.

Slack sends message text with its own markup: ``<@U123>`` for a user mention, ``<#C123|general>``
for a channel, ``<!here>`` and ``<!subteam^S123>`` for broadcasts and user groups, ``<url|label>``
for links, and it escapes exactly three characters (``&`` ``<`` ``>``) as ``&amp;`` ``&lt;``
``&gt;``. An agent should see what the human saw, so :func:`to_plain` rewrites the tokens into
readable text and unescapes the three entities. Everything else (emoji shortcodes, unicode,
zero-width characters, whitespace, newlines, code blocks) passes through unchanged.

Tokens are rewritten first and entities unescaped in the same single left-to-right pass, so an
unescaped result is never read again: ``&amp;lt;`` becomes ``&lt;``, not ``<``. Inside code Slack
escapes a literal ``<`` as ``&lt;`` too, so the same rules apply everywhere.

Pure functions: no I/O. The caller resolves names first (:func:`mentioned_user_ids`,
:func:`mentioned_usergroup_ids`, :func:`unnamed_channel_ids`) and passes them in.

What an odd token becomes:

* ``<#C123>`` and ``<#C123|>`` (no label): the channel's name when the caller knows it, else
  ``#C123``; a label Slack wrote (``<#C123|general>``) is used as it is.
* a link whose URL has spaces (``<mailto:a@b.c?subject=Hello, World|label>``) is still a link:
  inside ``<...>`` Slack writes only tokens (a typed ``<`` is escaped), so the brackets are enough.
* ``<!date^1392734382^{date}^https://x.y|Feb 18>``: the fallback and the link, ``Feb 18 (https://x.y)``;
  without a fallback, the time in UTC (``2014-02-18 14:39 UTC``).
* any other special ``<!word^more>``: its label when it has one, else ``@word`` (like ``<!here>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType

__all__ = [
    "mentioned_user_ids",
    "mentioned_usergroup_ids",
    "strip_leading_mention",
    "to_plain",
    "unnamed_channel_ids",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})

# ``<...>`` with no nested brackets and no newline; or one of the three entities Slack escapes.
_TOKEN_OR_ENTITY = re.compile(r"<([^<>\n]*)>|&(lt|gt|amp);")
_TOKEN = re.compile(r"<([^<>\n]*)>")
_ENTITY = re.compile(r"&(lt|gt|amp);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&"}

_SLACK_ID = r"[A-Z0-9]+"
_USER = re.compile(rf"@([A-Z]{_SLACK_ID})(?:\|(.*))?", re.DOTALL)
_CHANNEL = re.compile(rf"#([A-Z]{_SLACK_ID})(?:\|(.*))?", re.DOTALL)
_SUBTEAM = re.compile(rf"subteam\^({_SLACK_ID})")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_BROADCASTS = frozenset({"here", "channel", "everyone"})
# A link: ``scheme://...`` or one of the schemes Slack links without ``//``. Spaces are allowed
# (``mailto:a@b.c?subject=Hello, World``): Slack writes ``<...>`` only around tokens.
_URL = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|(?:mailto|tel):)[^|\n]*[^\s|]")
_TIMESTAMP = re.compile(r"\d{1,12}")


def _unescape(text: str) -> str:
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], text)


def _without_trailing_slash(url: str) -> str:
    return url.rstrip("/") or url


def _link(url: str, label: str) -> str:
    if url.lower().startswith("mailto:"):
        target = url[len("mailto:") :]
        if not label or label in (target, url):
            return target
        return f"{label} ({url})"
    if not label:
        return url
    same = {_without_trailing_slash(url)}
    if "://" in url:
        same.add(_without_trailing_slash(url.split("://", 1)[1]))
    if _without_trailing_slash(label) in same:
        return url
    return f"{label} ({url})"


def _special(body: str, usergroups: Mapping[str, str]) -> str | None:
    """``<!...>``: broadcasts, user groups, dates and other specials; None if not well formed."""
    head, _, label = body.partition("|")
    if head in _BROADCASTS:
        return f"@{head}"
    if head.startswith("subteam^"):
        match = _SUBTEAM.fullmatch(head)
        if match is None:
            return None
        group_id = match.group(1)
        handle = usergroups.get(group_id, "").lstrip("@")
        if handle:
            return f"@{handle}"
        label = _unescape(label)
        if label:
            return label if label.startswith("@") else f"@{label}"
        return f"@{group_id}"
    word, _, rest = head.partition("^")
    if word == "date" and rest:
        return _date(rest, _unescape(label))
    if label:  # any other <!word...|label>
        return _unescape(label)
    if _WORD.fullmatch(word):  # <!somethingnew>, <!foo^bar>
        return f"@{word}"
    return None


def _date(rest: str, label: str) -> str | None:
    """``<!date^timestamp^format[^link]|fallback>``: the fallback (or the time in UTC), then the link."""
    timestamp, _, after = rest.partition("^")
    _format, _, link = after.partition("^")
    shown = label or _utc(timestamp)
    if not shown:
        return None
    url = _unescape(link)
    return f"{shown} ({url})" if _URL.fullmatch(url) else shown


def _utc(timestamp: str) -> str:
    if not _TIMESTAMP.fullmatch(timestamp):
        return ""
    try:
        return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return ""


def _rewrite(
    body: str, users: Mapping[str, str], usergroups: Mapping[str, str], channels: Mapping[str, str]
) -> str | None:
    """The plain text for the token ``<body>``, or None if it is not a well-formed token."""
    if body.startswith("@"):
        match = _USER.fullmatch(body)
        if match is None:
            return None
        user_id, label = match.group(1), _unescape(match.group(2) or "")
        return f"@{users.get(user_id) or label or user_id}"
    if body.startswith("#"):
        match = _CHANNEL.fullmatch(body)
        if match is None:
            return None
        channel_id, label = match.group(1), _unescape(match.group(2) or "")
        return f"#{label or channels.get(channel_id, '').lstrip('#') or channel_id}"
    if body.startswith("!"):
        return _special(body[1:], usergroups)
    url, _, label = body.partition("|")
    if _URL.fullmatch(url):
        return _link(_unescape(url), _unescape(label))
    return None


def to_plain(
    text: str,
    *,
    users: Mapping[str, str] = _EMPTY,
    usergroups: Mapping[str, str] = _EMPTY,
    channels: Mapping[str, str] = _EMPTY,
) -> str:
    """Slack mrkdwn ``text`` as the plain text a human reading the message would type.

    ``users`` maps user id -> display name, ``usergroups`` maps subteam id -> handle and
    ``channels`` maps channel id -> name (used for channel references without a label); unknown
    ids fall back to the token's own label, then to the id. Anything that is not a well-formed
    token is kept as is (with its entities unescaped).
    """

    def replace(match: re.Match[str]) -> str:
        entity = match.group(2)
        if entity is not None:
            return _ENTITIES[entity]
        body = match.group(1)
        rewritten = _rewrite(body, users, usergroups, channels)
        if rewritten is None:
            return f"<{_unescape(body)}>"
        return rewritten

    return _TOKEN_OR_ENTITY.sub(replace, text)


def _distinct(ids: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def mentioned_user_ids(text: str) -> list[str]:
    """Ids of the users mentioned (``<@U123>``, ``<@W123|name>``), distinct, in order."""
    return _distinct(
        match.group(1)
        for token in _TOKEN.finditer(text)
        if (match := _USER.fullmatch(token.group(1))) is not None
    )


def mentioned_usergroup_ids(text: str) -> list[str]:
    """Ids of the user groups mentioned (``<!subteam^S123>``), distinct, in order."""
    return _distinct(
        match.group(1)
        for token in _TOKEN.finditer(text)
        if token.group(1).startswith("!")
        and (match := _SUBTEAM.fullmatch(token.group(1)[1:].partition("|")[0])) is not None
    )


def unnamed_channel_ids(text: str) -> list[str]:
    """Ids of the channels referred to without a label (``<#C123>``, ``<#C123|>``), distinct, in order."""
    return _distinct(
        match.group(1)
        for token in _TOKEN.finditer(text)
        if (match := _CHANNEL.fullmatch(token.group(1))) is not None and not match.group(2)
    )


def strip_leading_mention(text: str, bot_user_id: str) -> str | None:
    """The rest of ``text`` if it starts with a mention of the bot, else None.

    Leading whitespace is ignored; ``<@BOT>`` and ``<@BOT|name>`` both count. The rest is returned
    stripped of surrounding whitespace (it may be empty).
    """
    if not bot_user_id:
        return None
    match = re.match(rf"\s*<@{re.escape(bot_user_id)}(?:\|[^<>\n]*)?>", text)
    if match is None:
        return None
    return text[match.end() :].strip()
