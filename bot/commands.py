"""Parse what users type after ``/agent`` or after mentioning the bot in a thread.

Pure functions: no I/O. :func:`parse_command` never raises for any input; it returns a
:data:`Command`, and :class:`Invalid` carries the specific, user-readable reason plus a usage hint.
Messages are Slack mrkdwn: echoed user input is wrapped in backticks, cut short, and has
``&`` ``<`` ``>`` escaped so that it can never turn into a mention or a link.

Session ids are validated here, before any network call, so that a crafted id can never change a
request path or host. The rules are each provider's own (``normalise_session_id`` and
``session_id_from_url`` in ``bot/providers/<name>.py``); this module only asks the registry
(:data:`bot.providers.PROVIDERS`), at call time, which providers exist and which one a reference is for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from bot.providers import PROVIDERS
from bot.providers.base import SessionRefError, echo

__all__ = [
    "COMMANDS",
    "LINK_USAGE",
    "Command",
    "Help",
    "Invalid",
    "Link",
    "ListBindings",
    "Mirror",
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

COMMANDS: tuple[str, ...] = ("link", "unlink", "status", "mute", "unmute", "mirror", "list", "help")
LINK_USAGE = "Usage: `link <provider> <session>` or `link <session-url-or-id>`"
MIRROR_MODES: tuple[str, ...] = ("on", "off", "final")
MIRROR_USAGE = "Usage: `mirror on`, `mirror off` or `mirror final`"

_QUOTES = "'\"“”‘’`"  # noqa: RUF001 - typographic quotes are what phones and Slack insert
# ``<https://...>`` / ``<https://...|label>`` as Slack sends links; the label may hold spaces.
_SLACK_LINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^<>|\s]*)(?:\|[^<>]*)?>")
_ENTITY = re.compile(r"&(lt|gt|amp);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&"}


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRef:
    """One provider session: ``provider`` is a name in :data:`bot.providers.PROVIDERS`."""

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
class Mirror:
    """What the thread shows of the agent's session: ``on``, ``off`` or ``final``."""

    mode: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """The input could not be understood; ``message`` says why and how to write it."""

    message: str


Command: TypeAlias = Link | Unlink | Status | Help | ListBindings | Mute | Unmute | Mirror | Invalid

_NO_ARGUMENT_COMMANDS: dict[str, Command] = {
    "unlink": Unlink(),
    "status": Status(),
    "help": Help(),
    "list": ListBindings(),
    "mute": Mute(),
    "unmute": Unmute(),
}


# --- helpers ---------------------------------------------------------------------------------


def provider_label(provider: str) -> str:
    """``Devin`` for ``devin``; an unknown name is capitalised."""
    cls = PROVIDERS.get(provider)
    return cls.label if cls is not None else provider.capitalize()


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


def _with_usage(reason: str) -> str:
    return reason if "Usage:" in reason else f"{reason}\n{LINK_USAGE}"


def _has_scheme(value: str) -> bool:
    return "://" in value or value.lower().startswith(("http:", "https:"))


def _on_provider_domain(value: str) -> bool:
    """``app.devin.ai/...``: a page on a provider's domain, pasted without a scheme."""
    domains = [re.escape(d) for p in PROVIDERS.values() for d in p.web_domains]
    if not domains:
        return False
    pattern = rf"(?:[a-z0-9-]+\.)*(?:{'|'.join(domains)})/"
    return re.match(pattern, value, re.IGNORECASE | re.ASCII) is not None


def _looks_like_url(value: str) -> bool:
    return _has_scheme(value) or _on_provider_domain(value)


def _prefixed_provider(value: str) -> str | None:
    """The provider whose :attr:`~bot.providers.base.Provider.id_prefix` ``value`` starts with."""
    lowered = value.lower()
    for name, provider in PROVIDERS.items():
        if provider.id_prefix and lowered.startswith(provider.id_prefix.lower()):
            return name
    return None


def _not_a_session_page(value: str) -> SessionRefError:
    pages = " or ".join(
        f"a {p.label} session URL (`{p.session_url_example}`)"
        for p in PROVIDERS.values()
        if p.session_url_example
    )
    paste = f"Paste {pages} or the session id." if pages else "Paste the session id."
    return SessionRefError(f"That URL is not a session page I recognise: {echo(value)}. {paste}")


def _session_from_url(value: str) -> tuple[str, str]:
    """The provider and raw session id of a session page URL; raises for anything else."""
    url = value if _has_scheme(value) else f"https://{value}"
    for name, provider in PROVIDERS.items():
        session = provider.session_id_from_url(url)
        if session is not None:
            return name, session
    raise _not_a_session_page(value)


def _check_enabled(provider: str, enabled: Sequence[str]) -> None:
    if provider not in enabled:
        raise SessionRefError(
            f"{provider_label(provider)} is not enabled here (no API key is configured). "
            + _enabled_sentence(enabled)
        )


def _provider_name(value: str) -> str | None:
    lowered = value.lower()
    return lowered if lowered in PROVIDERS else None


def _url_ref(value: str, enabled: Sequence[str]) -> SessionRef:
    provider, session = _session_from_url(value)
    _check_enabled(provider, enabled)
    return SessionRef(provider, PROVIDERS[provider].normalise_session_id(session))


def _ref_for(provider: str, value: str, enabled: Sequence[str]) -> SessionRef:
    """``link <provider> <value>``."""
    _check_enabled(provider, enabled)
    if _looks_like_url(value):
        ref = _url_ref(value, enabled)
        if ref.provider != provider:
            found, label = provider_label(ref.provider), provider_label(provider)
            raise SessionRefError(
                f"That is a {found} session URL, not a {label} one. "
                f"Use `link {ref.provider} <url>`, or give the {label} session id."
            )
        return ref
    return SessionRef(provider, PROVIDERS[provider].normalise_session_id(value))


# --- parsing ---------------------------------------------------------------------------------


def parse_session_ref(args: Sequence[str], *, enabled: Sequence[str]) -> SessionRef:
    """The session named by the arguments of ``link``.

    ``args`` is ``[<provider>, <session>]`` or ``[<session-url-or-id>]``; ``enabled`` lists the
    providers with an API key configured. Raises :class:`SessionRefError` with a message for the
    user for anything else, and never anything but that.
    """
    enabled = [p for p in (name.lower() for name in enabled) if p in PROVIDERS]
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
            raise SessionRefError(f"Unknown provider {echo(first)}. {_enabled_sentence(enabled)}")
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
        return _url_ref(value, enabled)
    prefixed = _prefixed_provider(value)
    if prefixed is not None:
        return _ref_for(prefixed, value, enabled)
    if len(enabled) == 1:
        return _ref_for(enabled[0], value, enabled)
    if not enabled:
        raise SessionRefError(_enabled_sentence(enabled))
    if not any(PROVIDERS[provider].accepts_session_id(value) for provider in enabled):
        raise SessionRefError(
            f"{echo(value)} does not look like a session id for {_labels(enabled, 'or')}. "
            "Use `link <provider> <session>` with the session id or URL."
        )
    raise SessionRefError(
        f"Which provider is {echo(value)} for? "
        f"Use `link <provider> <session>` with one of: {_labels(enabled)}."
    )


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
    if name == "mirror":
        if len(args) == 1 and args[0].lower() in MIRROR_MODES:
            return Mirror(args[0].lower())
        return Invalid(f"`mirror` takes one of `on`, `off` or `final`. {MIRROR_USAGE}")
    if name in _NO_ARGUMENT_COMMANDS:
        if args:
            return Invalid(f"`{name}` takes no arguments. Usage: `{name}`")
        return _NO_ARGUMENT_COMMANDS[name]
    commands = ", ".join(f"`{c}`" for c in COMMANDS)
    hint = ""
    if _looks_like_url(words[0]) or _prefixed_provider(words[0]) is not None:
        hint = " To bind a session, use `link <session-url-or-id>`."
    return Invalid(f"Unknown command {echo(words[0])}.{hint} Commands: {commands}. Try `help`.")


def _inferred_from() -> str:
    """``the provider comes from a Devin URL or id, or``: how ``link <session-url-or-id>`` finds it."""
    names = [name for name, p in PROVIDERS.items() if p.web_domains or p.id_prefix]
    return f"the provider comes from a {_labels(names, 'or')} URL or id, or" if names else "the provider"


def help_text(enabled: Sequence[str], *, aside_prefix: str = "!aside") -> str:
    """Short help for ``/agent help`` and ``@bot help``."""
    return "\n".join(
        [
            "*agent-relay* binds a Slack thread to an AI coding-agent session: "
            "every reply in the thread is sent to the session.",
            _enabled_sentence([p for p in enabled if p in PROVIDERS]),
            "• `/agent link <provider> <session>`: in a channel, posts an anchor message; "
            "reply in its thread",
            f"• `/agent link <session-url-or-id>`: {_inferred_from()} is the only one enabled",
            "• `/agent list`: the threads bound to sessions",
            "• `/agent help`: this help",
            "In a thread, mention me followed by `link <provider> <session>`, `unlink`, `status`, "
            "`mute` (stop relaying), `unmute` or `help`.",
            "The agent's messages and state show in the thread: `mirror off` stops that, `mirror final` "
            "shows only state changes and the last message, `mirror on` shows everything again.",
            f"Start a message with `{aside_prefix}` to keep it out of the agent's session.",
        ]
    )
