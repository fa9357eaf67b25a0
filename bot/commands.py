"""Parse what users type after ``/agent`` or after mentioning the bot in a thread.

Pure functions: no I/O. :func:`parse_command` never raises for any input; it returns a
:data:`Command`, and :class:`Invalid` carries the specific, user-readable reason plus a usage hint.
Messages are Slack mrkdwn: echoed user input is wrapped in backticks, cut short, and has
``&`` ``<`` ``>`` escaped so that it can never turn into a mention or a link.

Session ids are validated here, before any network call, so that a crafted id can never change a
request path or host:

* devin: ``devin-`` followed by 1..64 of ``[A-Za-z0-9_-]`` (a bare id, e.g. from a
  ``https://app.devin.ai/sessions/<id>`` URL, gets the ``devin-`` prefix);
* feather: a UUID, normalised to the canonical lowercase hyphenated form;
* agen: 1..128 of ``[A-Za-z0-9._:-]``, starting with a letter or digit.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urlsplit

__all__ = [
    "COMMANDS",
    "KNOWN_PROVIDERS",
    "LINK_USAGE",
    "PROVIDER_LABELS",
    "Command",
    "Help",
    "Invalid",
    "Link",
    "ListBindings",
    "Mute",
    "SessionRef",
    "SessionRefError",
    "Status",
    "Unlink",
    "Unmute",
    "help_text",
    "parse_command",
    "parse_session_ref",
    "provider_label",
]

KNOWN_PROVIDERS: tuple[str, ...] = ("devin", "feather", "agen")
PROVIDER_LABELS: dict[str, str] = {"devin": "Devin", "feather": "Feather", "agen": "Agen"}

COMMANDS: tuple[str, ...] = ("link", "unlink", "status", "mute", "unmute", "list", "help")
LINK_USAGE = "Usage: `link <provider> <session>` or `link <session-url-or-id>`"

DEVIN_ID_MAX = 64  # characters after ``devin-``
AGEN_ID_MAX = 128
_ECHO_MAX = 60

_DEVIN_PREFIX = "devin-"
_DEVIN_ID = re.compile(r"devin-[A-Za-z0-9_-]{1,64}")
_DEVIN_BARE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AGEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_HEX = "[0-9a-fA-F]"
_UUID_HEX = rf"(?:{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}})"
_FEATHER_ID = re.compile(rf"(?:urn:uuid:)?(?:\{{{_UUID_HEX}\}}|{_UUID_HEX})")
_FEATHER_ID_MAX = len("urn:uuid:{}") + 36
_FEATHER_EXAMPLE = "123e4567-e89b-12d3-a456-426614174000"

_QUOTES = "'\"“”‘’`"  # noqa: RUF001 - typographic quotes are what phones and Slack insert
# ``<https://...>`` / ``<https://...|label>`` as Slack sends links; the label may hold spaces.
_SLACK_LINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^<>|\s]*)(?:\|[^<>]*)?>")
_ENTITY = re.compile(r"&(lt|gt|amp);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&"}
_SCHEMELESS_DEVIN = re.compile(r"(?:[a-z0-9-]+\.)*devin\.ai/", re.IGNORECASE | re.ASCII)


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRef:
    """One provider session: ``provider`` is a name from :data:`KNOWN_PROVIDERS`."""

    provider: str
    session_id: str


@dataclass(frozen=True, slots=True)
class Link:
    """Bind the thread (or a new anchor message) to ``ref``."""

    ref: SessionRef


@dataclass(frozen=True, slots=True)
class Unlink:
    """Unbind the thread."""


@dataclass(frozen=True, slots=True)
class Status:
    """Show the thread's binding."""


@dataclass(frozen=True, slots=True)
class Help:
    """Show :func:`help_text`."""


@dataclass(frozen=True, slots=True)
class ListBindings:
    """List the bound threads."""


@dataclass(frozen=True, slots=True)
class Mute:
    """Stop relaying the thread's replies (the binding stays)."""


@dataclass(frozen=True, slots=True)
class Unmute:
    """Resume relaying the thread's replies."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """The input could not be understood; ``message`` says why and how to write it."""

    message: str


Command: TypeAlias = Link | Unlink | Status | Help | ListBindings | Mute | Unmute | Invalid

_NO_ARGUMENT_COMMANDS: dict[str, Command] = {
    "unlink": Unlink(),
    "status": Status(),
    "help": Help(),
    "list": ListBindings(),
    "mute": Mute(),
    "unmute": Unmute(),
}


class SessionRefError(ValueError):
    """A session reference could not be understood; ``str()`` is the user-readable message."""


# --- helpers ---------------------------------------------------------------------------------


def provider_label(provider: str) -> str:
    """``Devin`` for ``devin``; an unknown name is capitalised."""
    return PROVIDER_LABELS.get(provider, provider.capitalize())


def _labels(providers: Sequence[str], last: str = "") -> str:
    """``Devin, Feather, Agen``; with ``last="or"``: ``Devin, Feather or Agen``."""
    labels = [provider_label(p) for p in providers]
    if last and len(labels) > 1:
        return f"{', '.join(labels[:-1])} {last} {labels[-1]}"
    return ", ".join(labels)


def _enabled_sentence(enabled: Sequence[str]) -> str:
    if not enabled:
        return "No providers are enabled here (no API keys are configured)."
    return f"Enabled providers: {_labels(enabled)}."


def _echo(value: str) -> str:
    """Hostile input made safe to show: no backticks, newlines or control/format characters,
    at most ~60 characters, Slack's three special characters escaped, in backticks."""
    cleaned = "".join(
        ch for ch in value if ch != "`" and unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
    )
    if len(cleaned) > _ECHO_MAX:
        cleaned = cleaned[: _ECHO_MAX - 1] + "…"
    cleaned = cleaned.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"`{cleaned}`" if cleaned.strip() else "(empty)"


def _unescape(text: str) -> str:
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], text)


def _clean_token(token: str) -> str:
    """One argument without surrounding whitespace, quotes or Slack's ``<url|label>`` wrapping."""
    token = token.strip().strip(_QUOTES).strip()
    if token.startswith("<") and token.endswith(">"):
        token = token[1:-1].split("|", 1)[0].strip().strip(_QUOTES).strip()
    return token


def _words(text: str) -> list[str]:
    """Split command text on any whitespace (including U+00A0) into cleaned, non-empty words."""
    text = _SLACK_LINK.sub(lambda m: m.group(1), text)
    text = _unescape(text)
    return [word for word in (_clean_token(raw) for raw in text.split()) if word]


def _with_usage(reason: str, usage: str = LINK_USAGE) -> str:
    return reason if "Usage:" in reason else f"{reason}\n{usage}"


def _looks_like_url(value: str) -> bool:
    lowered = value.lower()
    return (
        "://" in value
        or lowered.startswith(("http:", "https:"))
        or _SCHEMELESS_DEVIN.match(value) is not None
    )


def _not_a_session_page(value: str) -> SessionRefError:
    return SessionRefError(
        f"That URL is not a session page I recognise: {_echo(value)}. "
        "Paste a Devin session URL (`https://app.devin.ai/sessions/<id>`) or the session id."
    )


def _devin_id_from_url(value: str) -> str:
    """The raw session id in a Devin session page URL; raises for anything else."""
    url = value if "://" in value or value.lower().startswith(("http:", "https:")) else f"https://{value}"
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise _not_a_session_page(value) from None
    if parts.scheme.lower() not in ("http", "https") or not (
        host == "devin.ai" or host.endswith(".devin.ai")
    ):
        raise _not_a_session_page(value)
    segments = parts.path.strip("/").split("/")
    if len(segments) != 2 or segments[0] != "sessions" or not segments[1]:
        raise _not_a_session_page(value)
    return segments[1]


def _too_long(label: str, limit: int) -> SessionRefError:
    return SessionRefError(f"That {label} session id is too long (at most {limit} characters).")


def _normalise_id(provider: str, raw: str) -> str:
    """``raw`` validated and normalised for ``provider``; raises :class:`SessionRefError`."""
    label = provider_label(provider)
    if not raw.strip():
        raise SessionRefError(f"The {label} session id is empty.")
    if provider == "devin":
        bare = raw[len(_DEVIN_PREFIX) :] if raw.lower().startswith(_DEVIN_PREFIX) else raw
        if len(bare) > DEVIN_ID_MAX:
            raise _too_long(label, DEVIN_ID_MAX + len(_DEVIN_PREFIX))
        if not bare or _DEVIN_BARE.fullmatch(bare) is None:
            raise SessionRefError(
                f"{_echo(raw)} is not a Devin session id. A Devin session id looks like "
                "`devin-0123456789abcdef` (letters, digits, `-` and `_`)."
            )
        return _DEVIN_PREFIX + bare
    if provider == "feather":
        if len(raw) > _FEATHER_ID_MAX:
            raise SessionRefError(
                "That Feather session id is too long. "
                f"A Feather session id is a UUID, like {_FEATHER_EXAMPLE}."
            )
        if _FEATHER_ID.fullmatch(raw) is None:
            raise SessionRefError(
                f"{_echo(raw)} is not a Feather session id. "
                f"A Feather session id is a UUID, like {_FEATHER_EXAMPLE}."
            )
        return str(uuid.UUID(raw))
    if provider == "agen":
        if len(raw) > AGEN_ID_MAX:
            raise _too_long(label, AGEN_ID_MAX)
        if _AGEN_ID.fullmatch(raw) is None:
            raise SessionRefError(
                f"{_echo(raw)} is not an Agen session id. An Agen session id is up to {AGEN_ID_MAX} "
                "letters, digits, `.`, `_`, `:` and `-`, starting with a letter or digit."
            )
        return raw
    raise SessionRefError(f"Unknown provider {_echo(provider)}.")  # unreachable for known providers


def _check_enabled(provider: str, enabled: Sequence[str]) -> None:
    if provider not in enabled:
        raise SessionRefError(
            f"{provider_label(provider)} is not enabled here (no API key is configured). "
            + _enabled_sentence(enabled)
        )


def _provider_name(value: str) -> str | None:
    lowered = value.lower()
    return lowered if lowered in KNOWN_PROVIDERS else None


def _devin_url_ref(value: str, enabled: Sequence[str]) -> SessionRef:
    session = _devin_id_from_url(value)
    _check_enabled("devin", enabled)
    return SessionRef("devin", _normalise_id("devin", session))


def _ref_for(provider: str, value: str, enabled: Sequence[str]) -> SessionRef:
    """``link <provider> <value>``."""
    _check_enabled(provider, enabled)
    if _looks_like_url(value):
        ref = _devin_url_ref(value, enabled)
        if provider != "devin":
            label = provider_label(provider)
            raise SessionRefError(
                f"That is a Devin session URL, not a {label} one. "
                f"Use `link devin <url>`, or give the {label} session id."
            )
        return ref
    return SessionRef(provider, _normalise_id(provider, value))


# --- parsing ---------------------------------------------------------------------------------


def parse_session_ref(args: Sequence[str], *, enabled: Sequence[str]) -> SessionRef:
    """The session named by the arguments of ``link``.

    ``args`` is ``[<provider>, <session>]`` or ``[<session-url-or-id>]``; ``enabled`` lists the
    providers with an API key configured. Raises :class:`SessionRefError` with a message for the
    user for anything else, and never anything but that.
    """
    enabled = [p for p in (name.lower() for name in enabled) if p in KNOWN_PROVIDERS]
    cleaned = [_clean_token(arg) for arg in args]
    if not cleaned:
        raise SessionRefError(_with_usage("Tell me which session to link."))
    if len(cleaned) > 2:
        raise SessionRefError(_with_usage("Too many arguments for `link`."))
    if len(cleaned) == 2:
        first, second = cleaned
        provider = _provider_name(first)
        if provider is None and _provider_name(second) is not None and first:
            first, second = second, first  # ``link <session> <provider>``: order is obvious
            provider = _provider_name(first)
        if provider is None:
            raise SessionRefError(f"Unknown provider {_echo(first)}. {_enabled_sentence(enabled)}")
        return _ref_for(provider, second, enabled)

    (value,) = cleaned
    if not value:
        raise SessionRefError(_with_usage("The session id is empty."))
    named = _provider_name(value)
    if named is not None:
        raise SessionRefError(
            f"Which {provider_label(named)} session? Use `link {named} <session>` with the session id or URL."
        )
    if _looks_like_url(value):
        return _devin_url_ref(value, enabled)
    if value.lower().startswith(_DEVIN_PREFIX):
        return _ref_for("devin", value, enabled)
    if len(enabled) == 1:
        return _ref_for(enabled[0], value, enabled)
    if not enabled:
        raise SessionRefError(_enabled_sentence(enabled))
    if not any(_is_valid_raw(provider, value) for provider in enabled):
        raise SessionRefError(
            f"{_echo(value)} does not look like a session id for {_labels(enabled, 'or')}. "
            "Use `link <provider> <session>` with the session id or URL."
        )
    raise SessionRefError(
        f"Which provider is {_echo(value)} for? "
        f"Use `link <provider> <session>` with one of: {_labels(enabled)}."
    )


def _is_valid_raw(provider: str, value: str) -> bool:
    try:
        _normalise_id(provider, value)
    except SessionRefError:
        return False
    return True


def parse_command(text: str, *, enabled: Sequence[str]) -> Command:
    """The command in ``text`` (what follows ``/agent`` or the bot mention). Never raises."""
    words = _words(text)
    if not words:
        return Help()
    name, args = words[0].lower(), words[1:]
    if name == "link":
        try:
            return Link(parse_session_ref(args, enabled=enabled))
        except SessionRefError as error:
            return Invalid(_with_usage(str(error)))
    if name in _NO_ARGUMENT_COMMANDS:
        if args:
            return Invalid(f"`{name}` takes no arguments. Usage: `{name}`")
        return _NO_ARGUMENT_COMMANDS[name]
    commands = ", ".join(f"`{c}`" for c in COMMANDS)
    hint = ""
    if _looks_like_url(words[0]) or words[0].lower().startswith(_DEVIN_PREFIX):
        hint = " To bind a session, use `link <session-url-or-id>`."
    return Invalid(f"Unknown command {_echo(words[0])}.{hint} Commands: {commands}. Try `help`.")


def help_text(enabled: Sequence[str], *, aside_prefix: str = "!aside") -> str:
    """Short help for ``/agent help`` and ``@bot help``."""
    return "\n".join(
        [
            "*agent-relay* binds a Slack thread to an AI coding-agent session: "
            "every reply in the thread is sent to the session.",
            _enabled_sentence([p for p in enabled if p in KNOWN_PROVIDERS]),
            "• `/agent link <provider> <session>`: in a channel, posts an anchor message; "
            "reply in its thread",
            "• `/agent link <session-url-or-id>`: the provider comes from a Devin URL or id, "
            "or is the only one enabled",
            "• `/agent list`: the threads bound to sessions",
            "• `/agent help`: this help",
            "In a thread, mention me followed by `link <provider> <session>`, `unlink`, `status`, "
            "`mute` (stop relaying), `unmute` or `help`.",
            f"Start a message with `{aside_prefix}` to keep it out of the agent's session.",
        ]
    )
