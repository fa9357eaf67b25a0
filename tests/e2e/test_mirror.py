"""The agent's side in the thread (issue 12): its messages, questions and state, against the fakes.

The bot runs for real (HTTP mode, loopback) with ``MIRROR_DEFAULT=on``; the fake providers serve
scripted sessions from their read endpoints (checked against the read specs), and every assertion is
on what the fake Slack received. Each scenario prints how many agent messages were scripted, posted,
posted twice and posted out of order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.runtime import Runtime
from storage import MirrorWatch
from tests.fakes import eventually
from tests.fakes.providers import Answer, FakeProvider, FakeSession
from tests.fakes.slack import FakeSlack
from tests.harness import (
    AGEN_SESSION,
    ALICE,
    BOB,
    BOT_USER,
    CHANNEL,
    DEVIN_SESSION,
    FEATHER_SESSION,
    Harness,
    message_event,
    new_ts,
    running,
)

MARK = re.compile(r"^m\d{2}:")


@dataclass(frozen=True, slots=True)
class Tally:
    scripted: int
    posted: int
    duplicated: int
    out_of_order: int
    missing: int

    def show(self, scenario: str) -> str:
        return (
            f"{scenario}: agent messages scripted {self.scripted}, posted {self.posted}, "
            f"duplicated {self.duplicated}, out of order {self.out_of_order}, missing {self.missing}"
        )


def agent_posts(slack: FakeSlack, thread: str, label: str) -> list[str]:
    """Texts the bot posted in ``thread`` under the provider's name, in order (successful posts)."""
    return [
        str(m["text"]) for m in slack.messages if m.get("thread_ts") == thread and m.get("username") == label
    ]


def thread_posts(slack: FakeSlack, thread: str) -> list[str]:
    return [str(m["text"]) for m in slack.replies_in(CHANNEL, thread)]


def tally(scripted: Sequence[str], posts: Sequence[str]) -> Tally:
    """Scripted messages start with a marker ``mNN:``; a long one's later parts carry none."""
    marks = [p.split(":", 1)[0] for p in posts if MARK.match(p)]
    wanted = [s.split(":", 1)[0] for s in scripted]
    firsts = [m for i, m in enumerate(marks) if m not in marks[:i]]
    return Tally(
        scripted=len(wanted),
        posted=len(set(marks) & set(wanted)),
        duplicated=len(marks) - len(set(marks)),
        out_of_order=sum(
            1
            for a, b in itertools.pairwise(firsts)
            if a in wanted and b in wanted and wanted.index(a) > wanted.index(b)
        ),
        missing=len(set(wanted) - set(marks)),
    )


async def watch_of(h: Harness, thread: str) -> MirrorWatch:
    watch = await h.store.get_watch(h.thread(thread))
    assert watch is not None, f"thread {thread} has no watch"
    return watch


async def read_once(h: Harness, thread: str, within: float = 10.0) -> None:
    """Wait until the thread's session was read once (the watermark is set: history is behind it)."""
    import asyncio
    import time

    deadline = time.monotonic() + within
    while (await watch_of(h, thread)).watermark is None:
        assert time.monotonic() < deadline, "the session was never read"
        await asyncio.sleep(0.02)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    await eventually(predicate, timeout, message=what)


@asynccontextmanager
async def mirrored(tmp_path: Path, *providers: str, **overrides: Any) -> AsyncIterator[Harness]:
    async with running(tmp_path, providers=providers or ("devin",), mirror_default="on", **overrides) as h:
        h.slack.add_user(ALICE, "alice")
        h.slack.add_user(BOB, "bob")
        yield h


async def test_devin_messages_code_long_text_and_state_reach_the_thread_once(tmp_path: Path) -> None:
    async with mirrored(tmp_path) as h:
        session = h.providers["devin"].session(DEVIN_SESSION)
        session.say("m99: said before the link, never shown")
        thread = await h.link("devin")
        await read_once(h, thread)

        code = "m01: Here is the fix:\n\n```python\nif a < b:\n    return '<ok>' & 1\n```\nThat is it."
        long = "m02: " + "\n\n".join(f"Paragraph {n:02d}: " + "word " * 200 for n in range(50))
        short = "m03: **Bold**, `x < y` and [the docs](https://docs.test/a?b=1&c=2)"
        scripted = [code, long, short]

        def answer(text: str) -> None:
            for message in scripted:
                session.say(message)

        session.on_message = answer
        await h.reply(thread, "please fix the bug")
        await until(
            lambda: any(p.startswith("m03:") for p in agent_posts(h.slack, thread, "Devin")), "m03 posted"
        )
        session.finish(pr_url="https://github.test/o/r/pull/12")
        await until(lambda: any("Devin finished" in p for p in thread_posts(h.slack, thread)), "finish said")
        await h.settle()

        posts = agent_posts(h.slack, thread, "Devin")
        result = tally(scripted, posts)
        print(f"\n{result.show('Devin, one thread')}")
        assert result == Tally(3, 3, 0, 0, 0)
        assert not any("m99" in p for p in thread_posts(h.slack, thread))  # no history dump
        assert not any("(via Slack)" in p for p in thread_posts(h.slack, thread))  # ours not echoed
        assert posts[0] == (
            "m01: Here is the fix:\n\n```\nif a &lt; b:\n    return '&lt;ok&gt;' &amp; 1\n```\nThat is it."
        )
        long_parts = posts[1:-1]
        assert len(long_parts) == 2
        assert all(len(p) <= 39_000 for p in long_parts)
        assert [f"Paragraph {n:02d}:" in "".join(long_parts) for n in range(50)] == [True] * 50
        assert posts[-1] == "m03: *Bold*, `x &lt; y` and <https://docs.test/a?b=1&c=2|the docs>"
        finished = [p for p in thread_posts(h.slack, thread) if "Devin finished" in p]
        assert finished == [":checkered_flag: Devin finished · <https://github.test/o/r/pull/12|PR #12>"]

        anchor = h.slack.messages[0]
        assert anchor["ts"] == thread
        assert anchor["text"].startswith(f":link: <@{ALICE}> linked this thread to Devin session")
        assert anchor["text"].endswith(
            ":checkered_flag: Devin is finished · <https://github.test/o/r/pull/12|PR #12>"
        )
        updates = [c.args["text"] for c in h.slack.calls_to("chat.update") if c.args.get("ts") == thread]
        assert any("Devin is working" in u for u in updates)
        assert (await watch_of(h, thread)).next_poll_at is None  # finished: not read again until woken
        assert "chat:write.customize" in Path("manifest.yml").read_text()


async def test_a_question_mentions_whoever_last_steered_the_session(tmp_path: Path) -> None:
    async with mirrored(tmp_path, "agen") as h:
        session = h.providers["agen"].session(AGEN_SESSION)
        thread = await h.link("agen", user=ALICE)
        await read_once(h, thread)
        session.on_message = lambda text: session.ask("m01: Which branch should I use?")
        await h.reply(thread, "rebase onto main", user=BOB)
        await until(
            lambda: any(p.startswith("m01:") for p in agent_posts(h.slack, thread, "Agen")), "question"
        )
        await h.settle()

        [question] = agent_posts(h.slack, thread, "Agen")
        assert question.startswith("m01: Which branch should I use?\n")
        assert f"<@{BOB}> Agen is asking. Reply in this thread to answer." in question
        assert f"<@{ALICE}>" not in question
        await until(lambda: "waiting for an answer" in h.slack.messages[0]["text"], "anchor says waiting")


async def test_a_blocked_devin_without_relayed_messages_mentions_the_linker(tmp_path: Path) -> None:
    async with mirrored(tmp_path) as h:
        session = h.providers["devin"].session(DEVIN_SESSION)
        thread = await h.link("devin", user=ALICE)
        await read_once(h, thread)
        session.ask("m01: Should I also update the docs?")
        await until(lambda: bool(agent_posts(h.slack, thread, "Devin")), "question posted")
        [question] = agent_posts(h.slack, thread, "Devin")
        assert f"<@{ALICE}> Devin is asking" in question


async def test_feather_thread_linked_by_mention_gets_a_status_message_updated_in_place(
    tmp_path: Path,
) -> None:
    async with mirrored(tmp_path, "feather") as h:
        session = h.providers["feather"].session(FEATHER_SESSION)
        session.cost_usd = 0.12
        parent = new_ts()
        await h.sender.event(message_event("can an agent look at the flaky build?", ts=parent, user=BOB))
        ts = new_ts()
        text = f"link feather {FEATHER_SESSION}"
        await h.sender.event(message_event(f"<@{BOT_USER}> {text}", thread_ts=parent, ts=ts))
        from tests.harness import mention_event

        await h.sender.event(mention_event(text, thread_ts=parent, ts=ts))
        await h.wait_bound(parent)
        await until(
            lambda: (
                (watch := h.slack.replies_in(CHANNEL, parent))
                and any(m["text"].startswith("Session state:") for m in watch)
            ),
            "status message posted",
        )
        await eventually_status_ts(h, parent)
        session.say("m01: First pass done.")
        session.cost_usd = 0.5
        await until(lambda: bool(agent_posts(h.slack, parent, "Feather")), "agent message")
        session.finish()
        await until(
            lambda: any("Feather finished" in p for p in thread_posts(h.slack, parent)), "finish said"
        )
        await h.settle()

        status = [m for m in h.slack.replies_in(CHANNEL, parent) if m["text"].startswith("Session state:")]
        assert len(status) == 1  # one message, updated in place
        assert status[0]["text"] == "Session state: :checkered_flag: Feather is finished · $0.50 so far"
        updated = [
            c.args["text"] for c in h.slack.calls_to("chat.update") if c.args.get("ts") == status[0]["ts"]
        ]
        assert updated[-1] == status[0]["text"]
        assert agent_posts(h.slack, parent, "Feather") == ["m01: First pass done."]


async def eventually_status_ts(h: Harness, thread: str) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + 10
    while (await watch_of(h, thread)).status_ts is None:
        assert time.monotonic() < deadline, "the status message ts was never stored"
        await asyncio.sleep(0.02)
