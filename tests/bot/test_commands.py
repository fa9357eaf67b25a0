"""Parsing ``/agent ...`` and ``@bot ...`` command text."""

from __future__ import annotations

import pytest

from bot.commands import (
    Help,
    Invalid,
    Link,
    ListBindings,
    Mute,
    SessionRef,
    SessionRefError,
    Status,
    Unlink,
    Unmute,
    help_text,
    parse_command,
    parse_session_ref,
)
from bot.providers import PROVIDERS

ALL = tuple(PROVIDERS)
UUID = "123e4567-e89b-12d3-a456-426614174000"


def invalid(text: str, enabled: tuple[str, ...] = ALL) -> str:
    """The message of the Invalid that ``text`` must produce."""
    command = parse_command(text, enabled=enabled)
    assert isinstance(command, Invalid), command
    return command.message


def ref_error(args: list[str], enabled: tuple[str, ...] = ALL) -> str:
    with pytest.raises(SessionRefError) as info:
        parse_session_ref(args, enabled=enabled)
    return str(info.value)


# --- commands --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\u00a0"])
def test_empty_text_is_help(text: str) -> None:
    assert parse_command(text, enabled=ALL) == Help()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unlink", Unlink()),
        ("status", Status()),
        ("help", Help()),
        ("list", ListBindings()),
        ("mute", Mute()),
        ("unmute", Unmute()),
        ("STATUS", Status()),
        ("  Mute  ", Mute()),
        ('"unlink"', Unlink()),
        ("“help”", Help()),
    ],
)
def test_commands_without_arguments(text: str, expected: object) -> None:
    assert parse_command(text, enabled=ALL) == expected


@pytest.mark.parametrize("name", ["unlink", "status", "help", "list", "mute", "unmute"])
def test_extra_arguments_are_refused_with_usage(name: str) -> None:
    message = invalid(f"{name} now please")
    assert f"`{name}` takes no arguments" in message
    assert f"Usage: `{name}`" in message


def test_unknown_command_lists_the_commands() -> None:
    message = invalid("xyz")
    assert message.startswith("Unknown command `xyz`.")
    for name in ("link", "unlink", "status", "mute", "unmute", "list", "help"):
        assert f"`{name}`" in message


def test_unknown_command_that_looks_like_a_session_suggests_link() -> None:
    message = invalid("https://app.devin.ai/sessions/abc")
    assert "Unknown command" in message
    assert "`link <session-url-or-id>`" in message


def test_unknown_command_echo_is_short_and_safe() -> None:
    message = invalid("x" * 500 + "`<!channel>`")
    assert "x" * 60 not in message
    assert "<!channel>" not in message
    assert "Unknown command `" in message


def test_unknown_command_cannot_ping_the_channel() -> None:
    message = invalid("x&lt;!channel&gt;")
    assert "<!channel>" not in message
    assert "`x&lt;!channel&gt;`" in message


# --- link: provider and session --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("link devin devin-abc123", SessionRef("devin", "devin-abc123")),
        ("LINK Devin devin-abc_DEF-1", SessionRef("devin", "devin-abc_DEF-1")),
        ("link devin abc123", SessionRef("devin", "devin-abc123")),
        ("link devin DEVIN-abc", SessionRef("devin", "devin-abc")),
        (f"link feather {UUID}", SessionRef("feather", UUID)),
        (f"link FEATHER {UUID.upper()}", SessionRef("feather", UUID)),
        (f"link feather {UUID.replace('-', '')}", SessionRef("feather", UUID)),
        (f"link feather {{{UUID}}}", SessionRef("feather", UUID)),
        ("link agen sess_01:abc.def-9", SessionRef("agen", "sess_01:abc.def-9")),
        ("link agen 7", SessionRef("agen", "7")),
        ("link\tdevin\u00a0\u00a0devin-abc", SessionRef("devin", "devin-abc")),
        ("  link   agen    a1  ", SessionRef("agen", "a1")),
        ("link devin 'devin-abc'", SessionRef("devin", "devin-abc")),
        ('link "agen" "a1"', SessionRef("agen", "a1")),
        ("link devin “devin-abc”", SessionRef("devin", "devin-abc")),
        ("link devin ‘devin-abc’", SessionRef("devin", "devin-abc")),  # noqa: RUF001
        ("link devin `devin-abc`", SessionRef("devin", "devin-abc")),
        ("link devin-abc devin", SessionRef("devin", "devin-abc")),
    ],
)
def test_link_with_provider(text: str, expected: SessionRef) -> None:
    assert parse_command(text, enabled=ALL) == Link(expected)


def test_unknown_provider_lists_enabled_ones() -> None:
    message = invalid("link gemini abc", enabled=("devin", "feather"))
    assert message.startswith("Unknown provider `gemini`. Enabled providers: Devin, Feather.")
    assert "Usage: `link <provider> <session>` or `link <session-url-or-id>`" in message


def test_unknown_provider_when_none_enabled() -> None:
    message = invalid("link gemini abc", enabled=())
    assert "Unknown provider `gemini`." in message
    assert "No providers are enabled" in message


def test_known_provider_not_enabled() -> None:
    message = invalid(f"link feather {UUID}", enabled=("devin", "agen"))
    assert message.startswith(
        "Feather is not enabled here (no API key is configured). Enabled providers: Devin, Agen."
    )


def test_link_without_arguments_asks_for_a_session() -> None:
    message = invalid("link")
    assert "Tell me which session" in message
    assert "Usage:" in message


def test_link_with_only_a_provider_name_asks_which_session() -> None:
    message = invalid("link feather")
    assert "Which Feather session?" in message
    assert "`link feather <session>`" in message


def test_link_with_too_many_arguments() -> None:
    message = invalid("link devin devin-abc extra")
    assert "Too many arguments" in message
    assert "Usage: `link <provider> <session>`" in message


# --- link: one argument ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected_id"),
    [
        ("https://app.devin.ai/sessions/abc123def", "devin-abc123def"),
        ("https://app.devin.ai/sessions/devin-abc123def", "devin-abc123def"),
        ("http://app.devin.ai/sessions/abc", "devin-abc"),
        ("https://devin.ai/sessions/abc", "devin-abc"),
        ("https://preview.app.devin.ai/sessions/abc/", "devin-abc"),
        ("https://app.devin.ai/sessions/abc?tab=chat#bottom", "devin-abc"),
        ("HTTPS://APP.DEVIN.AI/sessions/abc", "devin-abc"),
        ("app.devin.ai/sessions/abc", "devin-abc"),
        ("<https://app.devin.ai/sessions/abc>", "devin-abc"),
        ("<https://app.devin.ai/sessions/abc|my session>", "devin-abc"),
        ("<https://app.devin.ai/sessions/abc|https://app.devin.ai/sessions/abc>", "devin-abc"),
        ("devin-abc", "devin-abc"),
    ],
)
def test_devin_url_or_id_needs_no_provider(arg: str, expected_id: str) -> None:
    assert parse_command(f"link {arg}", enabled=ALL) == Link(SessionRef("devin", expected_id))


def test_devin_url_with_explicit_provider() -> None:
    command = parse_command("link devin https://app.devin.ai/sessions/abc", enabled=ALL)
    assert command == Link(SessionRef("devin", "devin-abc"))


def test_devin_url_for_another_provider_is_refused() -> None:
    message = invalid("link agen https://app.devin.ai/sessions/abc")
    assert "That is a Devin session URL, not a Agen one." in message


def test_devin_url_when_devin_is_not_enabled() -> None:
    message = invalid("link https://app.devin.ai/sessions/abc", enabled=("feather",))
    assert message.startswith("Devin is not enabled here")
    assert "Enabled providers: Feather." in message


def test_only_enabled_provider_is_used_for_a_bare_id() -> None:
    assert parse_command(f"link {UUID}", enabled=("feather",)) == Link(SessionRef("feather", UUID))
    assert parse_command("link run-42", enabled=("agen",)) == Link(SessionRef("agen", "run-42"))


def test_bare_id_with_several_providers_asks_which() -> None:
    message = invalid(f"link {UUID}", enabled=("feather", "agen"))
    assert message.startswith(f"Which provider is `{UUID}` for?")
    assert "Use `link <provider> <session>` with one of: Feather, Agen." in message


def test_bare_id_with_no_provider_enabled() -> None:
    assert "No providers are enabled" in invalid("link abc", enabled=())


def test_bare_id_valid_for_no_enabled_provider() -> None:
    message = invalid("link ../../x", enabled=("feather", "agen"))
    assert "does not look like a session id for Feather or Agen" in message


def test_single_enabled_provider_still_validates() -> None:
    message = invalid("link not-a-uuid", enabled=("feather",))
    assert "A Feather session id is a UUID, like 123e4567-e89b-12d3-a456-426614174000." in message


# --- URLs that are not session pages ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/x",
        "http://",
        "https://",
        "https://app.devin.ai/settings",
        "https://app.devin.ai/sessions",
        "https://app.devin.ai/sessions/",
        "https://app.devin.ai/sessions/abc/extra",
        "https://app.devin.ai/org/sessions/abc",
        "https://devin.ai.evil.com/sessions/abc",
        "https://evildevin.ai/sessions/abc",
        "https://app.devin.ai@evil.com/sessions/abc",
        "ftp://app.devin.ai/sessions/abc",
        "javascript://app.devin.ai/sessions/abc",
        "https://[::1/sessions/abc",
        "http:app.devin.ai/sessions/abc",
    ],
)
def test_unrecognised_urls(url: str) -> None:
    message = invalid(f"link {url}")
    assert "That URL is not a session page I recognise" in message


def test_unrecognised_url_with_provider() -> None:
    message = invalid("link devin https://example.com/sessions/abc")
    assert "That URL is not a session page I recognise" in message


def test_url_with_hostile_session_segment() -> None:
    message = invalid("link https://app.devin.ai/sessions/%2e%2e")
    assert "is not a Devin session id" in message


# --- session id validation -------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["devin", "feather", "agen"])
@pytest.mark.parametrize(
    "hostile",
    [
        "../../x",
        "..",
        ".",
        "a/b?c#d",
        "%2e%2e",
        "%2F",
        "abc/",
        "abc?x=1",
        "abc#frag",
        "ab cd",
        "sessión",
        "abc\u200b",
        "абв",
        "١٢٣",
        "@evil.com",
        "a\\b",
    ],
)
def test_hostile_ids_are_refused(provider: str, hostile: str) -> None:
    with pytest.raises(SessionRefError):
        parse_session_ref([provider, hostile], enabled=ALL)


@pytest.mark.parametrize(
    ("provider", "value"),
    [
        ("devin", "devin-"),
        ("devin", "devin-abc.def"),
        ("devin", "devin-abc:def"),
        ("feather", "123e4567-e89b-12d3-a456-42661417400"),
        ("feather", "123e4567-e89b-12d3-a456-4266141740000"),
        ("feather", "g23e4567-e89b-12d3-a456-426614174000"),
        ("feather", "+23e4567e89b12d3a456426614174000"),
        ("feather", "123e4567_e89b_12d3_a456_426614174000"),
        ("feather", "{123e4567-e89b-12d3-a456-426614174000"),
        ("agen", "-abc"),
        ("agen", ".hidden"),
        ("agen", "_abc"),
    ],
)
def test_malformed_ids_are_refused(provider: str, value: str) -> None:
    with pytest.raises(SessionRefError):
        parse_session_ref([provider, value], enabled=ALL)


def test_feather_error_explains_the_uuid_form() -> None:
    message = ref_error(["feather", "abc"])
    assert message == (
        "`abc` is not a Feather session id. "
        "A Feather session id is a UUID, like 123e4567-e89b-12d3-a456-426614174000."
    )


def test_devin_id_length_limit() -> None:
    assert parse_session_ref(["devin", "devin-" + "a" * 64], enabled=ALL).session_id == "devin-" + "a" * 64
    assert "too long" in ref_error(["devin", "devin-" + "a" * 65])


def test_agen_id_length_limit() -> None:
    assert parse_session_ref(["agen", "a" * 128], enabled=ALL).session_id == "a" * 128
    assert "too long" in ref_error(["agen", "a" * 129])


def test_feather_id_too_long() -> None:
    assert "too long" in ref_error(["feather", "a" * 200])


def test_long_hostile_input_is_not_echoed_in_full() -> None:
    hostile = "x" * 40 + "/" + "y" * 200
    message = ref_error(["agen", hostile[:120]])
    assert "y" * 60 not in message
    assert "x" * 40 in message


def test_echoed_input_loses_backticks_and_newlines() -> None:
    message = ref_error(["agen", "a`b\nc/d"])
    assert message.startswith("`abc/d` is not an Agen session id.")


def test_echoed_input_cannot_mention() -> None:
    message = ref_error(["agen", "hi<!channel>&"])
    assert "<!channel>" not in message
    assert "`hi&lt;!channel&gt;&amp;`" in message


@pytest.mark.parametrize("value", ["", "   ", '""', "''"])
def test_empty_session_ids_are_refused(value: str) -> None:
    assert "empty" in ref_error(["agen", value])
    assert "empty" in ref_error([value])


def test_parse_session_ref_argument_counts() -> None:
    assert "Tell me which session" in ref_error([])
    assert "Too many arguments" in ref_error(["devin", "devin-a", "b"])


def test_parse_session_ref_cleans_raw_arguments() -> None:
    ref = parse_session_ref([" Devin ", " <https://app.devin.ai/sessions/abc|label> "], enabled=ALL)
    assert ref == SessionRef("devin", "devin-abc")


def test_unbalanced_quotes_do_not_raise() -> None:
    assert parse_command('link agen "a1', enabled=ALL) == Link(SessionRef("agen", "a1"))
    assert parse_command("link devin devin-abc”", enabled=ALL) == Link(SessionRef("devin", "devin-abc"))
    assert isinstance(parse_command('link "', enabled=ALL), Invalid)
    assert isinstance(parse_command("'", enabled=ALL), Help)


def test_slack_escaped_ampersand_in_url_is_unescaped() -> None:
    command = parse_command("link <https://app.devin.ai/sessions/abc?a=1&amp;b=2>", enabled=ALL)
    assert command == Link(SessionRef("devin", "devin-abc"))


# --- help ------------------------------------------------------------------------------------


def test_help_text_lists_commands_and_enabled_providers() -> None:
    text = help_text(("devin", "agen"))
    for fragment in (
        "`/agent link <provider> <session>`",
        "anchor message",
        "`/agent link <session-url-or-id>`",
        "`/agent list`",
        "`/agent help`",
        "`unlink`",
        "`status`",
        "`mute`",
        "`unmute`",
        "`help`",
        "Enabled providers: Devin, Agen.",
        "Start a message with `!aside` to keep it out of the agent's session.",
    ):
        assert fragment in text, fragment


def test_help_text_aside_prefix_is_configurable() -> None:
    text = help_text((), aside_prefix="//")
    assert "Start a message with `//` to keep it out of the agent's session." in text
    assert "!aside" not in text
    assert "No providers are enabled" in text
