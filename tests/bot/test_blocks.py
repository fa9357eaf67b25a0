"""Blocks and shared attachments -> the mrkdwn a reader sees (bot/blocks.py), and on to plain text."""

from __future__ import annotations

from typing import Any

import pytest

from bot.blocks import escape, forwarded_text, render_blocks, shown_text
from bot.mrkdwn import to_plain


def rich(*elements: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "rich_text", "block_id": "b1", "elements": list(elements)}]


def section(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "rich_text_section", "elements": list(elements)}


def text(words: str, **style: bool) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "text", "text": words}
    if style:
        element["style"] = style
    return element


# -- rich text ---------------------------------------------------------------------------------


def test_every_inline_element_becomes_the_token_slack_writes() -> None:
    blocks = rich(
        section(
            text("hi "),
            {"type": "user", "user_id": "U0BOB"},
            text(" see "),
            {"type": "channel", "channel_id": "C0DEV"},
            text(", "),
            {"type": "usergroup", "usergroup_id": "S0ONCALL"},
            text(" "),
            {"type": "broadcast", "range": "here"},
            text(" "),
            {"type": "link", "url": "https://x.y/a?b=1&c=2", "text": "the docs"},
            text(" "),
            {"type": "link", "url": "https://x.y"},
            text(" "),
            {"type": "emoji", "name": "wave", "unicode": "1f44b"},
            {"type": "emoji", "name": "thumbsup", "skin_tone": 3},
            text(" a < b & c > d"),
        )
    )
    rendered = render_blocks(blocks)
    assert rendered.complete
    assert rendered.text == (
        "hi <@U0BOB> see <#C0DEV>, <!subteam^S0ONCALL> <!here> <https://x.y/a?b=1&amp;c=2|the docs> "
        "<https://x.y> :wave::thumbsup::skin-tone-3: a &lt; b &amp; c &gt; d"
    )
    plain = to_plain(rendered.text, users={"U0BOB": "bob"}, usergroups={"S0ONCALL": "oncall"})
    assert plain == (
        "hi @bob see #C0DEV, @oncall @here the docs (https://x.y/a?b=1&c=2) https://x.y "
        ":wave::thumbsup::skin-tone-3: a < b & c > d"
    )


def test_styles_keep_slacks_markers_with_spaces_outside() -> None:
    blocks = rich(
        section(
            text("bold ", bold=True),
            text("it", italic=True),
            text(" "),
            text("gone", strike=True),
            text(" "),
            text("ls -la", code=True),
            text(" "),
            text("all", bold=True, italic=True),
            text("   ", bold=True),
        )
    )
    assert render_blocks(blocks).text == "*bold* _it_ ~gone~ `ls -la` *_all_*   "


def test_lists_quotes_and_code() -> None:
    blocks = rich(
        section(text("Steps:\n")),
        {
            "type": "rich_text_list",
            "style": "ordered",
            "indent": 0,
            "elements": [section(text("build")), section(text("test"))],
        },
        {
            "type": "rich_text_list",
            "style": "bullet",
            "indent": 1,
            "elements": [section(text("unit")), section(text("e2e"))],
        },
        {"type": "rich_text_list", "style": "ordered", "offset": 2, "elements": [section(text("ship"))]},
        {"type": "rich_text_preformatted", "elements": [text("if a < b:\n    go()")]},
        {"type": "rich_text_quote", "elements": [text("they said\nthis")]},
        section(text("done")),
    )
    rendered = render_blocks(blocks)
    assert rendered.complete
    assert to_plain(rendered.text) == (
        "Steps:\n"
        "1. build\n"
        "2. test\n"
        "    ◦ unit\n"
        "    ◦ e2e\n"
        "3. ship\n"
        "```\nif a < b:\n    go()\n```\n"
        "> they said\n"
        "> this\n"
        "done"
    )


def test_a_typed_message_renders_as_the_text_slack_wrote_for_it() -> None:
    """For an ordinary typed message, blocks and text say the same: nothing changes for it."""
    slack_text = "<@U0BOB> can you look at <https://x.y/1|#1>? *soon* please :pray:"
    blocks = rich(
        section(
            {"type": "user", "user_id": "U0BOB"},
            text(" can you look at "),
            {"type": "link", "url": "https://x.y/1", "text": "#1"},
            text("? "),
            text("soon", bold=True),
            text(" please "),
            {"type": "emoji", "name": "pray"},
        )
    )
    assert shown_text(slack_text, blocks) == slack_text


def test_dates_colors_and_unknown_elements() -> None:
    blocks = rich(
        section(
            {"type": "date", "timestamp": 1392734382, "format": "{date}", "fallback": "Feb 18"},
            text(" "),
            {"type": "date", "timestamp": 1392734382, "url": "https://x.y", "fallback": "Feb 18"},
            text(" "),
            {"type": "color", "value": "#ff0000"},
        )
    )
    rendered = render_blocks(blocks)
    assert rendered.complete
    assert to_plain(rendered.text) == "Feb 18 Feb 18 (https://x.y) #ff0000"
    odd = render_blocks(rich(section(text("a "), {"type": "canvas", "text": "words"}, {"type": "x"})))
    assert not odd.complete
    assert odd.text == "a words"


def test_bad_ids_are_not_made_into_tokens() -> None:
    rendered = render_blocks(rich(section({"type": "user", "user_id": "<@U1>"}, text("x"))))
    assert not rendered.complete
    assert rendered.text == "x"


# -- other blocks ------------------------------------------------------------------------------


def test_section_header_and_context_blocks() -> None:
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "Deploy <prod> & more"}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "*Service* <https://x.y|api> is &lt;down&gt;"},
            "fields": [
                {"type": "mrkdwn", "text": "*Owner:* <@U0BOB>"},
                {"type": "plain_text", "text": "Region: eu"},
            ],
            "accessory": {"type": "button", "text": {"type": "plain_text", "text": "Ack"}},
        },
        {"type": "divider"},
        {"type": "image", "image_url": "https://x.y/i.png", "alt_text": "graph"},
        {
            "type": "context",
            "elements": [
                {"type": "image", "image_url": "https://x.y/a.png", "alt_text": "a"},
                {"type": "mrkdwn", "text": "by <@U0BOB>"},
                {"type": "plain_text", "text": "at noon"},
            ],
        },
        {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Go"}}]},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "only a field"}]},
    ]
    rendered = render_blocks(blocks)
    assert rendered.complete
    assert to_plain(rendered.text, users={"U0BOB": "bob"}) == (
        "Deploy <prod> & more\n"
        "*Service* api (https://x.y) is <down>\n"
        "*Owner:* @bob\n"
        "Region: eu\n"
        "by @bob at noon\n"
        "only a field"
    )


@pytest.mark.parametrize(
    ("raw_text", "blocks", "shown"),
    [
        # text is only a fallback: the blocks are what the reader sees
        (
            "New alert",
            [{"type": "section", "text": {"type": "mrkdwn", "text": "CPU at *99%*"}}],
            "CPU at *99%*",
        ),
        ("", rich(section(text("only blocks"))), "only blocks"),
        # no blocks, or blocks with no words: the text
        ("plain", None, "plain"),
        ("plain", [], "plain"),
        ("plain", [{"type": "divider"}], "plain"),
        ("plain", "not a list", "plain"),
        # a block this module does not know: the text, which Slack wrote for it
        ("fallback", [{"type": "fancy_new_block", "text": "partial"}], "fallback"),
        # ...unless there is no text: what the blocks had
        ("", [{"type": "fancy_new_block", "text": "partial"}], "partial"),
    ],
)
def test_shown_text(raw_text: str, blocks: object, shown: str) -> None:
    assert shown_text(raw_text, blocks) == shown


def test_junk_is_skipped_not_raised() -> None:
    blocks: list[Any] = [
        None,
        "x",
        {"type": "rich_text", "elements": [None, {"type": "rich_text_section", "elements": [1, {}]}]},
        {"type": "rich_text_list", "elements": "x"},
        {"type": "section", "text": "not an object"},
    ]
    assert render_blocks(blocks).text == ""


# -- shared messages ---------------------------------------------------------------------------


def share(**fields: Any) -> dict[str, Any]:
    return {
        "is_share": True,
        "is_msg_unfurl": True,
        "author_id": "U0BOB",
        "author_name": "Bob",
        "from_url": "https://fake.slack.test/archives/C0OPS/p1700000000000100",
        "channel_id": "C0OPS",
        "ts": "1700000000.000100",
        "fallback": "[November 14th, 2023 10:13 PM] bob: the build is red",
        "text": "the build is red",
        "mrkdwn_in": ["text"],
        **fields,
    }


def test_a_forwarded_message_names_its_author_and_link_and_quotes_it() -> None:
    assert to_plain(forwarded_text([share()])) == (
        "Forwarded message from Bob (https://fake.slack.test/archives/C0OPS/p1700000000000100):\n"
        "> the build is red"
    )


def test_the_shared_blocks_win_over_the_attachment_text() -> None:
    blocks = rich(section(text("line one\nline "), text("two", bold=True), text(" <&>")))
    attachment = share(
        text="short",
        message_blocks=[{"team": "T0TEAM", "channel": "C0OPS", "ts": "1.0", "message": {"blocks": blocks}}],
    )
    assert to_plain(forwarded_text([attachment])) == (
        "Forwarded message from Bob (https://fake.slack.test/archives/C0OPS/p1700000000000100):\n"
        "> line one\n"
        "> line *two* <&>"
    )


def test_what_is_left_when_the_share_says_little() -> None:
    no_name = share(author_name="", text="", fallback="a & b", from_url="")
    assert forwarded_text([no_name]) == "Forwarded message from <@U0BOB>:\n&gt; a &amp; b"
    assert (
        to_plain(forwarded_text([no_name]), users={"U0BOB": "bob"}) == "Forwarded message from @bob:\n> a & b"
    )
    assert forwarded_text([share(text="", fallback="")]) == (
        "Forwarded message from Bob (<https://fake.slack.test/archives/C0OPS/p1700000000000100>)"
    )
    assert forwarded_text([share(author_name="", author_id=None, text="", fallback="")]) == ""
    blank_lines = forwarded_text([share(text="one\n\nthree")])
    assert blank_lines.endswith("&gt; one\n&gt;\n&gt; three")


def test_urls_with_ampersands_survive_the_round_trip() -> None:
    url = "https://fake.slack.test/archives/C0OPS/p1700000000000200?thread_ts=1700000000.000100&cid=C0OPS"
    assert to_plain(forwarded_text([share(from_url=url)])).splitlines()[0] == (
        f"Forwarded message from Bob ({url}):"
    )


def test_a_pasted_message_link_preview_and_other_attachments() -> None:
    unfurl = share(is_share=None)
    preview = {"title": "Example", "title_link": "https://example.com", "text": "A web page", "fallback": "x"}
    app_card = {"color": "#36a64f", "text": "from an app", "fallback": "from an app"}
    rendered = to_plain(forwarded_text([preview, unfurl, app_card, share(author_name="Carol", text="hi")]))
    assert rendered == (
        "Linked message from Bob (https://fake.slack.test/archives/C0OPS/p1700000000000100):\n"
        "> the build is red\n\n"
        "Forwarded message from Carol (https://fake.slack.test/archives/C0OPS/p1700000000000100):\n"
        "> hi"
    )
    assert forwarded_text(None) == ""
    assert forwarded_text([preview]) == ""


def test_escape() -> None:
    assert escape("a & <b> &amp;") == "a &amp; &lt;b&gt; &amp;amp;"
    assert to_plain(escape("a & <b> &amp;")) == "a & <b> &amp;"
