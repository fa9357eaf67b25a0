"""Splitting long mrkdwn into Slack-sized messages (bot.mirror.split)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.mirror.markdown import to_mrkdwn
from bot.mirror.split import FENCE, LIMIT, split_message


def fences_balanced(part: str) -> bool:
    return sum(1 for line in part.split("\n") if line == FENCE) % 2 == 0


def content(text: str) -> str:
    """What a reader gets, whatever the split: the text without backticks (fences are closed and
    opened again) and without whitespace."""
    return "".join(text.replace("\u200b", "").replace("`", "").split())


def test_a_short_message_is_one_part() -> None:
    assert split_message("hello\n\nworld") == ["hello\n\nworld"]


def test_the_default_limit_is_inside_slacks() -> None:
    text = ("word " * 9_000 + "\n\n") * 2  # two paragraphs of 45,000 characters
    parts = split_message(text)
    assert len(parts) == 4  # each paragraph in two: a part never starts in the middle of the next one
    assert all(len(part) <= LIMIT < 40_000 for part in parts)
    assert content("".join(parts)) == content(text)


def test_paragraph_boundaries_are_preferred() -> None:
    paragraphs = [f"paragraph {n} " + "x" * 30 for n in range(6)]
    parts = split_message("\n\n".join(paragraphs), limit=100)
    assert parts == ["\n\n".join(paragraphs[i : i + 2]) for i in (0, 2, 4)]


def test_a_long_paragraph_is_split_at_lines_then_words() -> None:
    lines = ["line one is here", "line two is here", "and a third line that is longer than the limit by far"]
    parts = split_message("\n".join(lines), limit=40)
    assert parts[0] == "line one is here\nline two is here"
    assert all(len(part) <= 40 for part in parts)
    assert " ".join(parts[1:]).split() == lines[2].split()


def test_a_code_block_is_closed_and_reopened_across_a_split() -> None:
    code = "\n".join(f"print({n})  # some code" for n in range(20))
    text = f"Here is the script:\n\n{FENCE}\n{code}\n{FENCE}\n\nThat is all."
    parts = split_message(text, limit=200)
    assert len(parts) > 2
    assert all(len(part) <= 200 for part in parts)
    assert all(fences_balanced(part) for part in parts)
    inside = [part for part in parts if FENCE in part]
    assert len(inside) >= 2  # the block went over more than one part, each part a whole block
    assert all(part.startswith(FENCE) or part.endswith(FENCE) for part in inside)
    assert content("".join(parts)) == content(text)


def test_a_code_block_after_text_without_a_blank_line() -> None:
    text = "intro\n" + FENCE + "\n" + "\n".join("y" * 30 for _ in range(8)) + "\n" + FENCE
    parts = split_message(text, limit=100)
    assert all(fences_balanced(part) for part in parts)
    assert parts[0].startswith("intro")


def test_an_unclosed_code_block_is_closed() -> None:
    parts = split_message("a " * 40 + "\n" + FENCE + "\ncode " * 30, limit=80)
    assert all(fences_balanced(part) for part in parts)


def test_a_word_longer_than_the_limit_is_cut_but_not_inside_an_entity_or_a_link() -> None:
    word = "a" * 35 + "&amp;" + "b" * 30
    parts = split_message(word, limit=38)
    assert parts[0] == "a" * 35
    assert parts[1].startswith("&amp;")
    linked = "c" * 30 + "<https://example.test/x|label>" + "d" * 10
    parts = split_message(linked, limit=40)
    assert parts[0] == "c" * 30
    assert parts[1].startswith("<https://example.test/x|label>")


def test_a_code_line_longer_than_the_limit_is_cut_inside_its_block() -> None:
    text = f"{FENCE}\n{'z' * 100}\n{FENCE}"
    parts = split_message(text, limit=40)
    assert all(
        len(part) <= 40 and part.startswith(FENCE + "\n") and part.endswith("\n" + FENCE) for part in parts
    )
    assert "".join(part[4:-4] for part in parts) == "z" * 100


def test_a_tiny_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="16"):
        split_message("x" * 100, limit=10)


_PIECES = st.sampled_from(
    ["word", "a", "&amp;", "<https://x.test|x>", " ", "\n", "\n\n", FENCE, f"\n{FENCE}\n"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=200).map("".join), st.integers(min_value=16, max_value=120))
def test_parts_fit_keep_code_blocks_whole_and_lose_nothing(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert all(len(part) <= limit for part in parts)
    if len(parts) > 1:
        assert all(fences_balanced(part) for part in parts)
        assert all(part.strip() for part in parts)
    assert content("".join(parts)) == content(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["word ", "`x`", "```py\n", "```\n", "\n", "\n\n", "# h\n", "- i\n", "<&>"])
    ).map("".join),
    st.integers(min_value=16, max_value=80),
)
def test_converted_markdown_splits_into_parts_that_each_show_right(markdown: str, limit: int) -> None:
    parts = split_message(to_mrkdwn(markdown), limit)
    assert all(len(part) <= limit for part in parts)
    assert all(fences_balanced(part) for part in parts)
