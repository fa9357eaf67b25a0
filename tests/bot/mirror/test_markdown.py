"""Markdown -> Slack mrkdwn (bot.mirror.markdown)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.mirror.markdown import RULE, to_mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("plain words", "plain words"),
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("2 * 3 * 4 = 24", "2 * 3 * 4 = 24"),
        ("snake_case_name and a*b*c", "snake_case_name and a*b*c"),
        ("use `x < y && z`", "use `x &lt; y &amp;&amp; z`"),
        ("``a `tick` here``", "`a `tick` here`"),
        ("[the docs](https://example.com/a?b=1&c=2)", "<https://example.com/a?b=1&c=2|the docs>"),
        ("[wiki](https://en.wikipedia.org/wiki/Foo_(bar))", "<https://en.wikipedia.org/wiki/Foo_(bar)|wiki>"),
        ('[t](https://x.test "a title")', "<https://x.test|t>"),
        ("![diagram](https://x.test/d.png)", "<https://x.test/d.png|diagram>"),
        ("[](https://x.test)", "<https://x.test|https://x.test>"),
        ("<https://x.test/path>", "<https://x.test/path>"),
        ("[mail me](mailto:a@b.test)", "<mailto:a@b.test|mail me>"),
        ("[click](javascript:alert(1))", "click (javascript:alert(1))"),
        ("[a **b** `c`](https://x.test)", "<https://x.test|a *b* `c`>"),
        ("**see [docs](https://d.test)**", "*see <https://d.test|docs>*"),
        ("# Title", "*Title*"),
        ("### Closed heading ###", "*Closed heading*"),
        ("## **Bold** heading", "*Bold heading*"),
        ("#hashtag", "#hashtag"),
        ("- one\n- two", "• one\n• two"),
        ("* star\n+ plus", "• star\n• plus"),
        ("- top\n  - nested\n    - deeper", "• top\n    • nested\n        • deeper"),
        ("- [ ] todo\n- [x] done", "☐ todo\n☑ done"),
        ("1. first\n2) second", "1. first\n2. second"),
        ("> quoted **b**\n> - item", "> quoted *b*\n> • item"),
        (">> nested\n> > twice", "> nested\n> twice"),
        ("above\n\n---\n\nbelow", f"above\n\n{RULE}\n\nbelow"),
        ("a & b < c > d", "a &amp; b &lt; c &gt; d"),
        ("<!channel> <@U123> <#C1>", "&lt;!channel&gt; &lt;@U123&gt; &lt;#C1&gt;"),
        ("tab\there", "tab\there"),
    ],
)
def test_examples(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_fenced_code_keeps_its_lines_and_drops_the_language() -> None:
    markdown = "Run:\n```python\nif a < b:\n    print('**not bold**')\n```\nDone."
    assert to_mrkdwn(markdown) == "Run:\n```\nif a &lt; b:\n    print('**not bold**')\n```\nDone."


def test_tilde_fences_and_longer_fences() -> None:
    assert to_mrkdwn("~~~\nx\n~~~") == "```\nx\n```"
    assert to_mrkdwn("````md\n```\ninner\n```\n````") == "```\n``\u200b`\ninner\n``\u200b`\n```"


def test_an_unclosed_fence_runs_to_the_end_and_is_closed() -> None:
    assert to_mrkdwn("text\n```\ncode <b>\nmore") == "text\n```\ncode &lt;b&gt;\nmore\n```"


def test_a_backtick_fence_with_backticks_in_its_info_is_not_a_fence() -> None:
    out = to_mrkdwn("``` a ` b\nnext")
    assert "```" not in out.split("\n")
    assert out.endswith("\nnext")


def test_windows_line_ends_and_placeholder_characters_in_the_input() -> None:
    assert to_mrkdwn("a\r\nb\rc") == "a\nb\nc"
    assert to_mrkdwn("x\x000\x00y [l](https://x.test)") == "x0y <https://x.test|l>"


_SLACK_LINK = re.compile(r"<(?:https?://|mailto:)[^\s<>|]+(?:\|[^<>]*)?>")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([*"ab *_~`#->[]()<>&!|:/\n\t.1", "http://x.test", "```", "\n```\n"])).map(
        "".join
    )
)
def test_any_input_converts_without_raising_and_without_stray_markup(markdown: str) -> None:
    out = to_mrkdwn(markdown)
    assert "\x00" not in out
    assert "\x01" not in out
    # Every < and > left is part of a link this module wrote; every & starts an entity.
    bare = "\n".join(line.removeprefix(">") for line in _SLACK_LINK.sub("", out).split("\n"))
    assert "<" not in bare
    assert ">" not in bare
    assert re.sub(r"&(?:amp|lt|gt);", "", bare).count("&") == 0
    # Code blocks are balanced.
    assert sum(1 for line in out.split("\n") if line == "```") % 2 == 0
