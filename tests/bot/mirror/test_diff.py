"""What is new in a session since the watermark (bot.mirror.diff) and how soon to read again (pace)."""

from __future__ import annotations

import random

import pytest

from bot.mirror.diff import Watermark, diff
from bot.mirror.pace import Pace
from bot.providers.base import AgentItem, ItemKind, SessionState


def item(
    key: str, kind: ItemKind = ItemKind.AGENT, *, seq: int | None = None, done: bool = True
) -> AgentItem:
    return AgentItem(key=key, kind=kind, text=f"text of {key}", seq=seq, done=done)


ITEMS = [item("a"), item("b", ItemKind.USER), item("c"), item("d", ItemKind.OTHER), item("e")]


def keys(items: tuple[AgentItem, ...]) -> list[str]:
    return [i.key for i in items]


def test_the_first_read_shows_nothing_and_marks_the_newest() -> None:
    found = diff(ITEMS, None)
    assert found.new == ()
    assert found.watermark == Watermark("e")


def test_the_first_read_of_an_empty_session_shows_everything_later() -> None:
    assert diff([], None).watermark == Watermark()
    later = diff(ITEMS[:2], Watermark())
    assert keys(later.new) == ["a", "b"]
    assert later.watermark == Watermark("b")


def test_new_items_are_those_after_the_watermark_in_order() -> None:
    found = diff(ITEMS, Watermark("b"))
    assert keys(found.new) == ["c", "d", "e"]
    assert found.watermark == Watermark("e")
    assert diff(ITEMS, Watermark("e")).new == ()


def test_a_vanished_key_is_found_again_by_its_number() -> None:
    numbered = [item("x1", seq=1), item("x3", seq=3), item("x4", seq=4)]
    found = diff(numbered, Watermark("x2", 2))
    assert keys(found.new) == ["x3", "x4"]
    assert diff(numbered, Watermark("x9", 9)).new == ()


def test_a_vanished_key_without_a_number_moves_to_the_newest_and_shows_nothing() -> None:
    found = diff(ITEMS, Watermark("gone"))
    assert (found.new, found.watermark, found.lost) == ((), Watermark("e"), True)


def test_an_agent_item_not_done_holds_itself_and_what_follows() -> None:
    items = [item("a"), item("b", done=False), item("c")]
    held = diff(items, Watermark("a"))
    assert held.new == ()
    assert held.watermark == Watermark("a")
    items[1] = item("b")
    assert keys(diff(items, held.watermark).new) == ["b", "c"]


def test_a_user_message_not_done_holds_nothing() -> None:
    items = [item("a"), item("b", ItemKind.USER, done=False), item("c")]
    assert keys(diff(items, Watermark("a")).new) == ["b", "c"]


@pytest.mark.parametrize("stored", [None, "", "not json", "[1]", '{"key": 5, "seq": "x"}', '{"seq": true}'])
def test_a_watermark_that_cannot_be_read(stored: str | None) -> None:
    mark = Watermark.decode(stored)
    assert mark is None or mark == Watermark()


def test_a_watermark_round_trips() -> None:
    for mark in (Watermark(), Watermark("k"), Watermark("k", 7)):
        assert Watermark.decode(mark.encode()) == mark


PACE = Pace(interval=5.0, idle_max=60.0, failure_max=300.0, jitter=0.1)


def test_a_working_session_or_news_keeps_the_quick_pace() -> None:
    assert PACE.after_read(SessionState.WORKING, news=False, idle_polls=4) == (5.0, 0)
    assert PACE.after_read(SessionState.WAITING, news=True, idle_polls=4) == (5.0, 0)


def test_an_idle_session_doubles_up_to_the_cap() -> None:
    waits = []
    idle = 0
    for _ in range(6):
        wait, idle = PACE.after_read(SessionState.WAITING, news=False, idle_polls=idle)
        waits.append(wait)
    assert waits == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert PACE.after_read(SessionState.SUSPENDED, news=False, idle_polls=0) == (10.0, 1)


@pytest.mark.parametrize("state", [SessionState.FINISHED, SessionState.EXPIRED])
def test_a_finished_or_expired_session_is_not_read_until_woken(state: SessionState) -> None:
    assert PACE.after_read(state, news=True, idle_polls=3) == (None, 0)


def test_failures_back_off_and_retry_after_is_honoured() -> None:
    assert [PACE.after_failure(n) for n in (1, 2, 3, 10)] == [10.0, 20.0, 40.0, 300.0]
    assert PACE.after_failure(1, retry_after=90.0) == 90.0
    assert PACE.after_failure(5, retry_after=1.0) == 160.0


def test_jitter_spreads_both_ways_within_its_fraction() -> None:
    rng = random.Random(7)
    waits = [PACE.jittered(10.0, rng) for _ in range(200)]
    assert min(waits) >= 9.0
    assert max(waits) <= 11.0
    assert min(waits) < 9.5 < 10.5 < max(waits)
