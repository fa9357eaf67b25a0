"""Slack mrkdwn -> the plain text an agent receives."""

from __future__ import annotations

import pytest

from bot.mrkdwn import (
    mentioned_user_ids,
    mentioned_usergroup_ids,
    strip_leading_mention,
    to_plain,
    unnamed_channel_ids,
)

USERS = {"U123": "Ada Lovelace", "W777": "Grace"}
GROUPS = {"S123": "backend"}


# --- users -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hi <@U123>", "hi @Ada Lovelace"),
        ("<@W777> look", "@Grace look"),
        ("ping <@U999>", "ping @U999"),
        ("ping <@U999|bob>", "ping @bob"),
        ("ping <@U999|>", "ping @U999"),
        ("ping <@U123|old_name>", "ping @Ada Lovelace"),
        ("<@U123><@W777>", "@Ada Lovelace@Grace"),
    ],
)
def test_user_mentions_become_names(text: str, expected: str) -> None:
    assert to_plain(text, users=USERS) == expected


def test_user_mentions_without_a_mapping_show_the_id() -> None:
    assert to_plain("thanks <@U123>!") == "thanks @U123!"


def test_display_name_is_inserted_verbatim_not_unescaped() -> None:
    assert to_plain("<@U1>", users={"U1": "R&amp;D"}) == "@R&amp;D"


# --- channels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see <#C123|general>", "see #general"),
        ("see <#C123>", "see #C123"),
        ("see <#C123|>", "see #C123"),
        ("see <#G42|private-ops>", "see #private-ops"),
    ],
)
def test_channel_mentions(text: str, expected: str) -> None:
    assert to_plain(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see <#C123>", "see #general"),
        ("see <#C123|>", "see #general"),
        ("see <#C123|old-name>", "see #old-name"),  # the label Slack wrote wins: no lookup needed
        ("see <#C999>", "see #C999"),  # not resolved
        ("see <#G42>", "see #private-ops"),
    ],
)
def test_unlabelled_channels_take_the_name_the_caller_resolved(text: str, expected: str) -> None:
    assert to_plain(text, channels={"C123": "general", "G42": "#private-ops"}) == expected


def test_unnamed_channel_ids_are_only_the_unlabelled_ones() -> None:
    text = "<#C1> <#C2|> <#C3|named> <#C1> <@U1> <#bad> <!subteam^S1>"
    assert unnamed_channel_ids(text) == ["C1", "C2"]


# --- specials --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<!here> deploy", "@here deploy"),
        ("<!channel>", "@channel"),
        ("<!everyone>", "@everyone"),
        ("<!here|here>", "@here"),
        ("<!date^1392734382^{date} at {time}|Feb 18, 2014 at 6:39 AM>", "Feb 18, 2014 at 6:39 AM"),
        ("<!date^1392734382^{date}^https://x.y|Feb 18>", "Feb 18 (https://x.y)"),
        ("<!date^1392734382^{date}^https://x.y/a?b=1&amp;c=2|Feb 18>", "Feb 18 (https://x.y/a?b=1&c=2)"),
        ("<!date^1392734382^{date}^not-a-link|Feb 18>", "Feb 18"),
        ("<!date^1392734382^{date}>", "2014-02-18 14:39 UTC"),
        ("<!date^1392734382^{date}^https://x.y>", "2014-02-18 14:39 UTC (https://x.y)"),
        ("<!date^123^{date}>", "1970-01-01 00:02 UTC"),
        ("<!somethingnew|a label>", "a label"),
        ("<!somethingnew>", "@somethingnew"),
        ("<!foo^bar>", "@foo"),
        ("<!foo^bar|Foo Bar>", "Foo Bar"),
        ("<!foo^bar^baz|a &amp; b>", "a & b"),
    ],
)
def test_special_mentions(text: str, expected: str) -> None:
    assert to_plain(text) == expected


@pytest.mark.parametrize(
    ("text", "groups", "expected"),
    [
        ("<!subteam^S123> please", GROUPS, "@backend please"),
        ("<!subteam^S123>", {}, "@S123"),
        ("<!subteam^S999|@frontend>", GROUPS, "@frontend"),
        ("<!subteam^S999|frontend>", {}, "@frontend"),
        ("<!subteam^S123|@old-handle>", GROUPS, "@backend"),
        ("<!subteam^S1>", {"S1": "@ops"}, "@ops"),
    ],
)
def test_usergroup_mentions(text: str, groups: dict[str, str], expected: str) -> None:
    assert to_plain(text, usergroups=groups) == expected


# --- links -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<https://x.y/z|the docs>", "the docs (https://x.y/z)"),
        ("<https://x.y/z|https://x.y/z>", "https://x.y/z"),
        ("<https://x.y/z|x.y/z>", "https://x.y/z"),
        ("<https://x.y/|x.y>", "https://x.y/"),
        ("<https://x.y>", "https://x.y"),
        ("<http://x.y/a?b=1&amp;c=2>", "http://x.y/a?b=1&c=2"),
        ("<mailto:a@b.c|a@b.c>", "a@b.c"),
        ("<mailto:a@b.c>", "a@b.c"),
        ("<mailto:a@b.c|Alice>", "Alice (mailto:a@b.c)"),
        ("<https://x.y|a &lt;b&gt; &amp; c>", "a <b> & c (https://x.y)"),
        ("read <https://x.y|this> and <https://z.w|that>", "read this (https://x.y) and that (https://z.w)"),
        (
            "<mailto:a@b.c?subject=Hello, World|label>",
            "label (mailto:a@b.c?subject=Hello, World)",
        ),
        ("<mailto:a@b.c?subject=Hello, World>", "a@b.c?subject=Hello, World"),
        ("<https://x.y/a b|spaced>", "spaced (https://x.y/a b)"),
    ],
)
def test_links(text: str, expected: str) -> None:
    assert to_plain(text) == expected


# --- entities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a &lt; b &amp;&amp; c &gt; d", "a < b && c > d"),
        ("&amp;lt;", "&lt;"),
        ("&amp;amp;", "&amp;"),
        ("&lt;@U123&gt;", "<@U123>"),
        ("&quot;kept&quot; &nbsp;", "&quot;kept&quot; &nbsp;"),
        ("AT&T", "AT&T"),
        ("&lt", "&lt"),
    ],
)
def test_entities_are_unescaped_once(text: str, expected: str) -> None:
    assert to_plain(text, users=USERS) == expected


# --- things that are not tokens --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a < b",
        "x > y",
        "<",
        ">",
        "<>",
        "<<>>",
        "<not a token>",
        "<@lowercase>",
        "<#general>",
        "<!subteam^bad id>",
        "<!date^soon^{date}>",
        "<!date^99999999999999999999^{date}>",
        "<!^x>",
        "<https:// >",
        "<foo:bar>",
        "<@U123\nmore>",
        "unbalanced <@U123",
        "unbalanced @U123>",
    ],
)
def test_malformed_tokens_are_kept(text: str) -> None:
    assert to_plain(text, users=USERS) == text


def test_token_inside_stray_brackets_is_still_rewritten() -> None:
    assert to_plain("<<@U123>>", users=USERS) == "<@Ada Lovelace>"


def test_entities_inside_a_malformed_token_are_unescaped() -> None:
    assert to_plain("<a &amp; b>") == "<a & b>"


# --- code, emoji, unicode, whitespace --------------------------------------------------------


def test_code_block_content_is_unescaped_and_kept() -> None:
    text = '```\nif a &lt; b &amp;&amp; c:\n    print("&lt;@U123&gt;")\n```'
    assert to_plain(text, users=USERS) == '```\nif a < b && c:\n    print("<@U123>")\n```'


def test_inline_code_is_kept() -> None:
    assert to_plain("run `ls -la &gt; out.txt` now") == "run `ls -la > out.txt` now"


@pytest.mark.parametrize(
    "text",
    [
        ":tada: shipped :white_check_mark:",
        "great work 🎉👩‍💻",  # ZWJ sequence
        "שלום עולם - مرحبا",
        "zero\u200bwidth\u200djoiner\u200eltr\u200frtl",
        "  leading and trailing  ",
        "line one\n\nline three\r\n\ttabbed",
        "*bold* _italic_ ~strike~ > quote",
    ],
)
def test_plain_text_is_preserved_exactly(text: str) -> None:
    assert to_plain(text) == text


def test_mixed_message() -> None:
    text = "<@U123> can you fix <https://github.com/o/r/issues/1|#1> in <#C1|dev>? :pray:\n&gt; it fails"
    assert to_plain(text, users=USERS) == (
        "@Ada Lovelace can you fix #1 (https://github.com/o/r/issues/1) in #dev? :pray:\n> it fails"
    )


# --- mentioned ids ---------------------------------------------------------------------------


def test_mentioned_user_ids_are_distinct_and_in_order() -> None:
    text = "<@U2> and <@U1|one> and <@U2> and <!subteam^S1> <#C1> &lt;@U3&gt; <@bad>"
    assert mentioned_user_ids(text) == ["U2", "U1"]


def test_mentioned_usergroup_ids_are_distinct_and_in_order() -> None:
    text = "<!subteam^S2|@b> <!subteam^S1> <!subteam^S2> <@U1> <!here>"
    assert mentioned_usergroup_ids(text) == ["S2", "S1"]


def test_no_mentions() -> None:
    assert mentioned_user_ids("plain text, <https://x.y>") == []
    assert mentioned_usergroup_ids("plain text, <!channel>") == []


# --- leading bot mention ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@UBOT> link devin devin-abc", "link devin devin-abc"),
        ("  <@UBOT|agent>   status  ", "status"),
        ("<@UBOT>", ""),
        ("<@UBOT>help", "help"),
        ("\n<@UBOT>\nunlink\n", "unlink"),
    ],
)
def test_strip_leading_mention(text: str, expected: str) -> None:
    assert strip_leading_mention(text, "UBOT") == expected


@pytest.mark.parametrize(
    "text",
    [
        "hello <@UBOT> link",
        "<@UBOTX> link",
        "<@UOTHER> link",
        "@UBOT link",
        "&lt;@UBOT&gt; link",
        "",
    ],
)
def test_strip_leading_mention_none_when_not_addressed(text: str) -> None:
    assert strip_leading_mention(text, "UBOT") is None


def test_strip_leading_mention_with_empty_bot_id() -> None:
    assert strip_leading_mention("<@> hi", "") is None
