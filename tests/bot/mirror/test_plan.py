"""What one read makes a thread show (bot.mirror.plan), without Slack or a store."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bot.mirror.diff import Watermark
from bot.mirror.plan import PlanConfig, ThreadView, is_ours, plan
from bot.providers.base import AgentItem, ItemKind, SessionSnapshot, SessionState
from storage import Binding, MirrorMode, MirrorWatch, ThreadKey

THREAD = ThreadKey("T1", "C1", "1700000000.000100")
BINDING = Binding(key=THREAD, provider="devin", session_id="devin-s", linked_by="ULINKER", linked_at=5.0)
ANCHORED = replace(BINDING, anchor_ts=THREAD.thread_ts)


def watch(**changes: Any) -> MirrorWatch:
    base = MirrorWatch(
        thread=THREAD,
        provider="devin",
        session_id="devin-s",
        mode=None,
        watermark=Watermark("k0").encode(),
        state="working",
        status_ts="1700000000.000900",
        status_text=None,
        last_agent_text=None,
        idle_polls=0,
        failures=0,
        next_poll_at=0.0,
    )
    return replace(base, **changes)


def view(mode: MirrorMode = MirrorMode.ON, **changes: Any) -> ThreadView:
    return ThreadView(
        binding=changes.pop("binding", BINDING),
        watch=watch(**changes),
        mode=mode,
        label="Devin",
        anchor=None,
        steerer="USTEER",
    )


def agent(key: str, text: str = "", kind: ItemKind = ItemKind.AGENT) -> AgentItem:
    return AgentItem(key=key, kind=kind, text=text or f"message {key}")


def snap(*items: AgentItem, state: SessionState = SessionState.WORKING, **extra: Any) -> SessionSnapshot:
    return SessionSnapshot(state=state, items=(agent("k0"), *items), **extra)


def posts(planned: Any) -> list[dict[str, Any]]:
    return [dict(i.payload) for i in planned.feedback if i.kind == "post"]


def test_new_agent_messages_are_posted_in_order_under_the_providers_name() -> None:
    planned = plan(view(), snap(agent("k1", "**one**"), agent("k2", "two")), PlanConfig())
    shown = posts(planned)
    assert [p["text"] for p in shown] == ["*one*", "two"]
    assert {p["username"] for p in shown} == {"Devin"}
    assert {p["thread_ts"] for p in shown} == {THREAD.thread_ts}
    keys = [i.dedupe_key for i in planned.feedback if i.kind == "post"]
    assert keys == [f"mirror:T1:C1:{THREAD.thread_ts}:k1", f"mirror:T1:C1:{THREAD.thread_ts}:k2"]
    assert Watermark.decode(planned.watermark) == Watermark("k2")
    assert planned.last_agent_text == "two"
    assert planned.news


def test_the_first_read_posts_nothing_but_sets_the_watermark_and_the_state() -> None:
    planned = plan(view(watermark=None, state=None), snap(agent("k1")), PlanConfig())
    assert posts(planned) == []
    assert Watermark.decode(planned.watermark) == Watermark("k1")
    assert [i.kind for i in planned.feedback] == ["update"]
    assert planned.last_agent_text == "message k1"  # status shows it at once


def test_our_own_messages_and_others_are_not_posted_unless_asked() -> None:
    ours = agent("k1", "alice (via Slack): fix it", ItemKind.USER)
    web = AgentItem(key="k2", kind=ItemKind.USER, text="from the **web**", origin="web", author="Bob")
    tool = agent("k3", "ran tests", ItemKind.OTHER)
    assert posts(plan(view(), snap(ours, web, tool), PlanConfig())) == []

    shown = posts(plan(view(), snap(ours, web, tool), PlanConfig(web_messages=True)))
    assert [p["text"] for p in shown] == ["_via the web (Bob):_ from the *web*"]
    assert "username" not in shown[0]


def test_is_ours_knows_our_client_id_and_our_form() -> None:
    assert is_ours(AgentItem(key="a", kind=ItemKind.USER, text="x", client_id="slack:T:C:1.0"))
    assert is_ours(
        AgentItem(key="a", kind=ItemKind.USER, text="Ann (via Slack) edited their earlier message")
    )
    assert not is_ours(AgentItem(key="a", kind=ItemKind.USER, text="hi\nsee (via Slack) below"))
    assert not is_ours(AgentItem(key="a", kind=ItemKind.USER, text="x", client_id="web-1"))


def test_a_question_mentions_the_steerer_and_says_how_to_answer() -> None:
    question = agent("k1", "Which branch?", ItemKind.QUESTION)
    [shown] = posts(plan(view(), snap(question, state=SessionState.WAITING), PlanConfig()))
    assert shown["text"].startswith("Which branch?\n")
    assert "<@USTEER>" in shown["text"]
    assert "Reply in this thread to answer" in shown["text"]


def test_a_blocked_session_makes_its_newest_message_the_question() -> None:
    planned = plan(
        view(), snap(agent("k1", "first"), agent("k2", "Shall I?"), state=SessionState.WAITING), PlanConfig()
    )
    first, second = posts(planned)
    assert "<@USTEER>" not in first["text"]
    assert "<@USTEER>" in second["text"]
    assert not [i for i in planned.feedback if i.dedupe_key and ":waiting:" in i.dedupe_key]


def test_waiting_without_a_new_message_posts_a_notice_once() -> None:
    planned = plan(view(), snap(state=SessionState.WAITING), PlanConfig())
    [notice] = posts(planned)
    assert "<@USTEER> Devin is waiting for an answer" in notice["text"]
    [key] = [i.dedupe_key for i in planned.feedback if i.kind == "post"]
    assert key == f"mirror:T1:C1:{THREAD.thread_ts}:waiting:k0"
    again = plan(view(state="waiting"), snap(state=SessionState.WAITING), PlanConfig())
    assert posts(again) == []


def test_finishing_is_said_once_with_the_pull_request() -> None:
    planned = plan(
        view(), snap(state=SessionState.FINISHED, pr_url="https://github.test/o/r/pull/12"), PlanConfig()
    )
    [said] = posts(planned)
    assert said["text"] == ":checkered_flag: Devin finished · <https://github.test/o/r/pull/12|PR #12>"
    again = plan(view(state="finished"), snap(state=SessionState.FINISHED), PlanConfig())
    assert posts(again) == []
    suspended = plan(view(), snap(state=SessionState.SUSPENDED), PlanConfig())
    assert [p["text"] for p in posts(suspended)] == [":double_vertical_bar: Devin suspended"]


def test_final_mode_shows_only_the_last_message_when_the_session_stops() -> None:
    busy = plan(view(MirrorMode.FINAL), snap(agent("k1"), agent("k2")), PlanConfig())
    assert posts(busy) == []
    assert Watermark.decode(busy.watermark) == Watermark("k2")

    done = plan(
        view(MirrorMode.FINAL, watermark=busy.watermark),
        snap(agent("k1"), agent("k2"), agent("k3", "All done."), state=SessionState.FINISHED),
        PlanConfig(),
    )
    texts = [p["text"] for p in posts(done)]
    assert texts == ["All done.", ":checkered_flag: Devin finished"]


def test_final_mode_still_shows_a_question() -> None:
    planned = plan(
        view(MirrorMode.FINAL), snap(agent("k1", "Deploy?"), state=SessionState.WAITING), PlanConfig()
    )
    [asked] = posts(planned)
    assert asked["text"].startswith("Deploy?\n")
    assert "<@USTEER>" in asked["text"]


def test_a_long_message_is_split_with_a_key_per_part() -> None:
    text = "\n\n".join(f"paragraph {n} " + "x" * 90 for n in range(30))
    planned = plan(view(), snap(agent("k1", text)), PlanConfig(part_limit=500))
    keys = [i.dedupe_key for i in planned.feedback if i.kind == "post"]
    assert len(keys) > 5
    base = f"mirror:T1:C1:{THREAD.thread_ts}:k1"
    assert keys == [base] + [f"{base}:{n}" for n in range(1, len(keys))]
    assert all(len(p["text"]) <= 500 for p in posts(planned))


def test_the_anchor_is_updated_with_the_state_only_when_it_changes() -> None:
    anchored = ThreadView(
        binding=ANCHORED,
        watch=watch(status_ts=THREAD.thread_ts),
        mode=MirrorMode.ON,
        label="Devin",
        anchor="Linked.",
    )
    planned = plan(anchored, snap(pr_url="https://x.test/pull/3", cost_usd=0.5), PlanConfig())
    [update] = [i for i in planned.feedback if i.kind == "update"]
    assert update.payload == {
        "channel": "C1",
        "ts": THREAD.thread_ts,
        "text": "Linked.\n:large_green_circle: Devin is working"
        " · <https://x.test/pull/3|PR #3> · $0.50 so far",
    }
    same = replace(anchored, watch=watch(status_ts=THREAD.thread_ts, status_text=planned.status_text))
    assert [
        i.kind for i in plan(same, snap(pr_url="https://x.test/pull/3", cost_usd=0.5), PlanConfig()).feedback
    ] == []


def test_a_thread_linked_by_mention_gets_one_status_message() -> None:
    at_link = plan(view(status_ts=None, watermark=None), snap(), PlanConfig())
    assert at_link.feedback == ()  # the link's own reply goes first
    assert at_link.status_text is None
    first = plan(view(status_ts=None), snap(), PlanConfig())
    [post] = [i for i in first.feedback if i.kind == "status_post"]
    assert post.dedupe_key == f"mirror:T1:C1:{THREAD.thread_ts}:status:5.0"
    assert post.payload["text"] == "Session state: :large_green_circle: Devin is working"
    # Until Slack has given its ts, the message is not posted again nor updated.
    pending = plan(
        view(status_ts=None, status_text=first.status_text), snap(state=SessionState.WAITING), PlanConfig()
    )
    assert [i.kind for i in pending.feedback if i.kind in ("status_post", "update")] == []
    assert pending.status_text == first.status_text


def test_native_status_follows_state_changes_when_asked() -> None:
    planned = plan(view(), snap(state=SessionState.WAITING), PlanConfig(slack_status=True))
    [native] = [i for i in planned.feedback if i.kind == "agent_status"]
    assert native.payload == {"channel": "C1", "thread_ts": THREAD.thread_ts, "status": "active"}
    assert not [
        i for i in plan(view(), snap(), PlanConfig(slack_status=True)).feedback if i.kind == "agent_status"
    ]
    assert not [
        i
        for i in plan(view(), snap(state=SessionState.WAITING), PlanConfig()).feedback
        if i.kind == "agent_status"
    ]


def test_an_unknown_stored_state_counts_as_none() -> None:
    planned = plan(view(state="bogus"), snap(state=SessionState.FINISHED), PlanConfig())
    assert posts(planned) == []  # not a change we can name: nothing said
    assert planned.state is SessionState.FINISHED


def test_an_empty_message_is_not_posted() -> None:
    assert posts(plan(view(), snap(agent("k1", "   ")), PlanConfig())) == []
