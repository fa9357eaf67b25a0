"""Property tests: the converters and parsers never raise and never let bad input through."""

from __future__ import annotations

import operator
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.commands import (
    Command,
    Help,
    Invalid,
    Link,
    ListBindings,
    Mirror,
    Mute,
    SessionRefError,
    Status,
    Unlink,
    Unmute,
    parse_command,
    parse_session_ref,
)
from bot.mrkdwn import to_plain
from bot.providers import PROVIDERS

KNOWN_PROVIDERS = tuple(PROVIDERS)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)

# Written out here rather than imported, so that a loosened validator in bot.commands fails.
VALID_ID = {
    "devin": re.compile(r"devin-[A-Za-z0-9_-]{1,64}"),
    "feather": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "agen": re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"),
}
COMMAND_TYPES = (Link, Unlink, Status, Help, ListBindings, Mute, Unmute, Mirror, Invalid)

enabled_sets = st.lists(st.sampled_from(KNOWN_PROVIDERS), unique=True).map(
    lambda chosen: tuple(p for p in KNOWN_PROVIDERS if p in chosen)
)

# Pieces that real and hostile command text is made of, so that generated text reaches ``Link``.
fragments = st.sampled_from(
    [
        "link",
        "LINK",
        "devin",
        "Feather",
        "agen",
        "gemini",
        "devin-abc123",
        "devin-",
        "DEVIN-x",
        "abc",
        "123e4567-e89b-12d3-a456-426614174000",
        "{123E4567E89B12D3A456426614174000}",
        "https://app.devin.ai/sessions/abc",
        "<https://app.devin.ai/sessions/abc|label here>",
        "app.devin.ai/sessions/x",
        "https://app.devin.ai/sessions/%2e%2e",
        "https://app.devin.ai@evil.com/sessions/a",
        "http://",
        "https://[",
        "../../x",
        "a/b?c#d",
        "%2e%2e",
        ".",
        "..",
        "a:b.c_d-e",
        '"',
        "'",
        "“",
        "`",
        "<",
        ">",
        "|",
        "&amp;",
        "&lt;",
        "\u00a0",
        "\t",
        "\n",
        "\u200b",
        "\u202e",
        "é",
        "\u0661",
        "x" * 70,
        "a" * 130,
    ]
)
structured_text = st.lists(st.one_of(fragments, st.text(max_size=8)), max_size=6).map(" ".join)
joined_text = st.lists(st.one_of(fragments, st.text(max_size=4)), max_size=5).map("".join)
# Valid id characters, and every character that could escape a path or a host.
valid_chars = "abcXYZ0189-_.:"
hostile_chars = [*"/?#%`'\"<>|&@\\ {}", "é", "\u200b", "\u00a0", "\u0661", "\n", "\u212a"]
valid_text = st.text(alphabet=valid_chars, min_size=1, max_size=70)
session_ids = st.builds(
    operator.add,
    st.sampled_from(["", "", "devin-", "DEVIN-", "https://app.devin.ai/sessions/", "app.devin.ai/sessions/"]),
    st.one_of(
        valid_text,
        # one hostile character somewhere in an otherwise valid id
        st.builds(
            "{}{}{}".format, valid_text, st.sampled_from(hostile_chars), st.text(valid_chars, max_size=8)
        ),
        st.text(alphabet=st.sampled_from([*valid_chars, *hostile_chars]), max_size=140),
    ),
)
link_text = st.builds(
    "link {} {}".format,
    st.sampled_from(["", "devin", "Feather", "agen", "gemini"]),
    st.one_of(session_ids, st.uuids().map(str), st.uuids().map(lambda u: u.hex.upper())),
)
command_text = st.one_of(
    st.text(), structured_text, joined_text, joined_text.map(lambda t: "link " + t), link_text
)


def assert_safe(command: Command, enabled: tuple[str, ...]) -> None:
    assert isinstance(command, COMMAND_TYPES)
    if isinstance(command, Link):
        assert command.ref.provider in enabled
        assert VALID_ID[command.ref.provider].fullmatch(command.ref.session_id), command.ref
    if isinstance(command, Invalid):
        assert command.message.strip()


@PROPERTY_SETTINGS
@given(st.text())
def test_to_plain_never_raises(text: str) -> None:
    assert isinstance(to_plain(text, users={"U1": "Ada"}, usergroups={"S1": "ops"}), str)


@PROPERTY_SETTINGS
@given(st.text().filter(lambda t: not set(t) & set("<>&")))
def test_to_plain_keeps_text_without_markup_unchanged(text: str) -> None:
    assert to_plain(text, users={"U1": "Ada"}) == text


# Well-formed tokens and what a reader sees for each (users={"U1": "Ada"}), written out here.
TOKENS = {
    "<@U1>": "@Ada",
    "<#C1|x>": "#x",
    "<https://a.b|l>": "l (https://a.b)",
    "&amp;": "&",
}
# Any text without < > &, and often what sits next to tokens in real messages.
plain_pieces = st.one_of(
    st.sampled_from([" ", "\n", "\t", " x ", "|", ": ", "@", "#", "!", "amp;", "lt;"]),
    st.text(
        alphabet=st.one_of(st.sampled_from(" \n\t|@#!:/.;x"), st.characters(exclude_characters="<>&")),
        min_size=1,
    ),
)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.one_of(
            plain_pieces.map(lambda p: (p, True)),
            st.sampled_from(sorted(TOKENS)).map(lambda t: (t, False)),
        )
    )
)
def test_to_plain_keeps_plain_pieces_between_tokens(pieces: list[tuple[str, bool]]) -> None:
    text = "".join(piece for piece, _ in pieces)
    out = to_plain(text, users={"U1": "Ada"})
    # every plain piece is in the output, in order
    at = 0
    for piece, plain in pieces:
        if plain:
            found = out.find(piece, at)
            assert found >= 0, (piece, out)
            at = found + len(piece)
    # and the output is exactly the pieces with each token rewritten
    assert out == "".join(piece if plain else TOKENS[piece] for piece, plain in pieces)


@PROPERTY_SETTINGS
@given(
    st.lists(st.sampled_from(["<@U1>", "<#C1|dev>", "&amp;", "&lt;", "<", ">", "x", "\n", "é"])).map("".join)
)
def test_to_plain_never_raises_on_markup_soup(text: str) -> None:
    assert "<@U1>" not in to_plain(text, users={"U1": "Ada"})


@PROPERTY_SETTINGS
@given(command_text, enabled_sets)
def test_parse_command_never_raises_and_only_links_valid_ids(text: str, enabled: tuple[str, ...]) -> None:
    assert_safe(parse_command(text, enabled=enabled), enabled)


@PROPERTY_SETTINGS
@given(st.lists(st.one_of(fragments, st.text()), max_size=4), enabled_sets)
def test_parse_session_ref_only_raises_session_ref_error(args: list[str], enabled: tuple[str, ...]) -> None:
    try:
        ref = parse_session_ref(args, enabled=enabled)
    except SessionRefError as error:
        message = str(error)
    else:
        assert ref.provider in enabled
        assert VALID_ID[ref.provider].fullmatch(ref.session_id), ref
        return
    assert message.strip()


@PROPERTY_SETTINGS
@given(st.sampled_from(KNOWN_PROVIDERS), st.text())
def test_any_text_as_a_session_id_is_validated(provider: str, session: str) -> None:
    try:
        ref = parse_session_ref([provider, session], enabled=KNOWN_PROVIDERS)
    except SessionRefError:
        return
    assert ref.provider == provider
    assert VALID_ID[provider].fullmatch(ref.session_id), ref


@PROPERTY_SETTINGS
@given(link_text, enabled_sets)
def test_link_text_only_ever_binds_a_valid_id(text: str, enabled: tuple[str, ...]) -> None:
    assert_safe(parse_command(text, enabled=enabled), enabled)


@PROPERTY_SETTINGS
@given(
    st.sampled_from(KNOWN_PROVIDERS),
    valid_text,
    st.sampled_from(hostile_chars),
    st.text(alphabet=valid_chars, min_size=1, max_size=8),
)
def test_one_hostile_character_is_enough_to_refuse(provider: str, head: str, bad: str, tail: str) -> None:
    with pytest.raises(SessionRefError):
        parse_session_ref([provider, head + bad + tail], enabled=KNOWN_PROVIDERS)
