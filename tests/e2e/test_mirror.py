"""The agent's side in the thread (issue 12): its messages, questions and state, against the fakes.

The bot runs for real (HTTP mode, loopback) with ``MIRROR_DEFAULT=on``; the fake providers serve
scripted sessions from their read endpoints (every body checked against the read specs), and every
assertion is on what the fake Slack received. Scenarios print how many agent messages were scripted,
posted, posted twice and posted out of order.

"Nothing was posted" is never asserted after a sleep: a later message in the same thread is the
barrier (a thread's posts go out in order, so once a later one is there, an earlier one would be too).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.runtime import Runtime
from storage import MessageState, MirrorWatch
from storage.postgres import PostgresStore
from tests.e2e.test_commands import ephemeral_answer, mention
from tests.fakes import eventually
from tests.fakes.providers import Answer, FakeProvider
from tests.fakes.slack import FakeSlack
from tests.harness import (
    AGEN_SESSION,
    ALICE,
    BOB,
    BOT_TOKEN,
    CHANNEL,
    DEVIN_SESSION,
    FEATHER_SESSION,
    KEYS,
    SESSIONS,
    Harness,
    SlackSender,
    make_settings,
    message_event,
    new_ts,
    running,
)

ROOT = Path(__file__).resolve().parents[2]
MARK = re.compile(r"^m\d{2}:")
LABELS = {"devin": "Devin", "feather": "Feather", "agen": "Agen"}


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
    """Texts the bot posted in ``thread`` under the provider's name, in order."""
    return [
        str(m["text"]) for m in slack.messages if m.get("thread_ts") == thread and m.get("username") == label
    ]


def thread_posts(slack: FakeSlack, thread: str) -> list[str]:
    return [str(m["text"]) for m in slack.replies_in(CHANNEL, thread)]


def tally(scripted: Sequence[str], posts: Sequence[str]) -> Tally:
    """Scripted messages start with a marker ``mNN:``; the later parts of a long one carry none."""
    wanted = [s.split(":", 1)[0] for s in scripted]
    marks = [p.split(":", 1)[0] for p in posts if MARK.match(p)]
    firsts = [m for i, m in enumerate(marks) if m not in marks[:i] and m in wanted]
    return Tally(
        scripted=len(wanted),
        posted=len(set(marks) & set(wanted)),
        duplicated=len(marks) - len(set(marks)),
        out_of_order=sum(1 for a, b in itertools.pairwise(firsts) if wanted.index(a) > wanted.index(b)),
        missing=len(set(wanted) - set(marks)),
    )


async def until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    await eventually(predicate, timeout, message=what)


async def until_true(check: Callable[[], Awaitable[bool]], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def watch_of(h: Harness, thread: str) -> MirrorWatch:
    watch = await h.store.get_watch(h.thread(thread))
    assert watch is not None, f"thread {thread} has no watch"
    return watch


async def read_once(h: Harness, thread: str) -> None:
    """Wait until the thread's session was read (the watermark is set: older messages are history)."""

    async def read() -> bool:
        # The watch is written just after the binding (the link's last step): wait for it too.
        watch = await h.store.get_watch(h.thread(thread))
        return watch is not None and watch.watermark is not None

    await until_true(read, "the session was never read")


def posted(h: Harness, thread: str, label: str, mark: str) -> Callable[[], bool]:
    return lambda: any(p.startswith(f"{mark}:") for p in agent_posts(h.slack, thread, label))


@asynccontextmanager
async def mirrored(tmp_path: Path, *providers: str, **overrides: Any) -> AsyncIterator[Harness]:
    async with running(tmp_path, providers=providers or ("devin",), mirror_default="on", **overrides) as h:
        h.slack.add_user(ALICE, "alice")
        h.slack.add_user(BOB, "bob")
        yield h


async def link_by_mention(h: Harness, provider: str) -> str:
    """A person's thread, linked with ``@agent-relay link``; returns its parent ts."""
    parent = new_ts()
    await h.sender.event(message_event("can an agent look at the flaky build?", ts=parent, user=BOB))
    await mention(h, f"link {provider} {SESSIONS[provider]}", parent)
    await h.wait_bound(parent)
    return parent


# -- what the thread shows ---------------------------------------------------------------------


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
        await until(posted(h, thread, "Devin", "m03"), "m03 posted")
        session.finish(pr_url="https://github.test/o/r/pull/12")
        await until(lambda: any("Devin finished" in p for p in thread_posts(h.slack, thread)), "finish said")
        await h.settle()

        posts = agent_posts(h.slack, thread, "Devin")
        result = tally(scripted, posts)
        print(f"\n{result.show('Devin, a fix with code and a long message')}")
        assert result == Tally(3, 3, 0, 0, 0)
        everything = thread_posts(h.slack, thread)
        assert not any("m99" in p for p in everything)  # linking does not dump history
        assert not any("(via Slack)" in p for p in everything)  # our message is not echoed
        assert posts[0] == (
            "m01: Here is the fix:\n\n```\nif a &lt; b:\n    return '&lt;ok&gt;' &amp; 1\n```\nThat is it."
        )
        long_parts = posts[1:-1]
        assert len(long_parts) == 2
        assert all(len(p) <= 39_000 for p in long_parts)
        assert all(f"Paragraph {n:02d}:" in "".join(long_parts) for n in range(50))
        assert posts[-1] == "m03: *Bold*, `x &lt; y` and <https://docs.test/a?b=1&c=2|the docs>"
        finished = [p for p in everything if "Devin finished" in p]
        assert finished == [":checkered_flag: Devin finished · <https://github.test/o/r/pull/12|PR #12>"]

        anchor = h.slack.messages[0]
        assert anchor["ts"] == thread
        assert anchor["text"].startswith(f":link: <@{ALICE}> linked this thread to Devin session")
        assert anchor["text"].endswith(
            "\n:checkered_flag: Devin is finished · <https://github.test/o/r/pull/12|PR #12>"
        )
        updates = [str(c.args["text"]) for c in h.slack.calls_to("chat.update") if c.args.get("ts") == thread]
        assert any(u.endswith("Devin is working") for u in updates)
        assert (await watch_of(h, thread)).next_poll_at is None  # finished: not read until woken


async def test_a_question_mentions_whoever_last_steered_the_session(tmp_path: Path) -> None:
    async with mirrored(tmp_path, "agen") as h:
        session = h.providers["agen"].session(AGEN_SESSION)
        thread = await h.link("agen", user=ALICE)
        await read_once(h, thread)

        def ask(text: str) -> None:
            session.ask("m01: Which branch should I use?")

        session.on_message = ask
        await h.reply(thread, "rebase onto main", user=BOB)
        await until(posted(h, thread, "Agen", "m01"), "question posted")
        await until(lambda: "waiting for an answer" in h.slack.messages[0]["text"], "anchor says waiting")

        [question] = agent_posts(h.slack, thread, "Agen")
        assert question.startswith("m01: Which branch should I use?\n")
        assert question.endswith(f"<@{BOB}> Agen is asking. Reply in this thread to answer.")
        assert f"<@{ALICE}>" not in question


async def test_a_blocked_devin_without_relayed_messages_mentions_the_linker(tmp_path: Path) -> None:
    async with mirrored(tmp_path) as h:
        session = h.providers["devin"].session(DEVIN_SESSION)
        thread = await h.link("devin", user=ALICE)
        await read_once(h, thread)
        session.ask("m01: Should I also update the docs?")
        await until(posted(h, thread, "Devin", "m01"), "question posted")
        [question] = agent_posts(h.slack, thread, "Devin")
        assert f"<@{ALICE}> Devin is asking" in question


async def test_feather_thread_linked_by_mention_gets_one_status_message_updated_in_place(
    tmp_path: Path,
) -> None:
    async with mirrored(tmp_path, "feather") as h:
        session = h.providers["feather"].session(FEATHER_SESSION)
        session.cost_usd = 0.12
        parent = await link_by_mention(h, "feather")

        async def status_known() -> bool:
            return (await watch_of(h, parent)).status_ts is not None

        await until_true(status_known, "the status message's ts was never stored")
        session.say("m01: First pass done.")
        session.cost_usd = 0.5
        await until(posted(h, parent, "Feather", "m01"), "agent message")
        session.finish()
        await until(
            lambda: any("Feather finished" in p for p in thread_posts(h.slack, parent)), "finish said"
        )
        await h.settle()

        status = [
            m for m in h.slack.replies_in(CHANNEL, parent) if str(m["text"]).startswith("Session state:")
        ]
        assert len(status) == 1  # one message, updated in place
        assert status[0]["text"] == "Session state: :checkered_flag: Feather is finished · $0.50 so far"
        updated = [
            c.args["text"] for c in h.slack.calls_to("chat.update") if c.args.get("ts") == status[0]["ts"]
        ]
        assert "Session state: :large_green_circle: Feather is working · $0.50 so far" in updated
        assert agent_posts(h.slack, parent, "Feather") == ["m01: First pass done."]
        said = [p for p in thread_posts(h.slack, parent) if "Feather finished" in p]
        assert said == [":checkered_flag: Feather finished"]


async def test_several_threads_on_one_session_each_get_every_message(tmp_path: Path) -> None:
    async with mirrored(tmp_path) as h:
        session = h.providers["devin"].session(DEVIN_SESSION)
        threads = [await h.link("devin"), await h.link("devin", user=BOB)]
        for thread in threads:
            await read_once(h, thread)
        scripted = [f"m{n:02d}: step {n}" for n in range(1, 6)]
        for text in scripted:
            session.say(text)
            await asyncio.sleep(0.05)  # the agent writes over time, not all at once
        for thread in threads:
            await until(posted(h, thread, "Devin", "m05"), "m05 posted")
        await h.settle()
        for n, thread in enumerate(threads):
            result = tally(scripted, agent_posts(h.slack, thread, "Devin"))
            print(f"\n{result.show(f'one session, thread {n + 1} of 2')}")
            assert result == Tally(5, 5, 0, 0, 0)
        reads = len(h.providers["devin"].reads_of(DEVIN_SESSION))
        assert reads < len(scripted) * 20  # one read serves both threads (a loose bound, no timing)


async def test_an_agen_message_still_being_written_is_shown_once_when_complete(tmp_path: Path) -> None:
    async with mirrored(tmp_path, "agen") as h:
        session = h.providers["agen"].session(AGEN_SESSION)
        thread = await h.link("agen")
        await read_once(h, thread)
        key = session.say("m01: Half a th", done=False)
        session.say("m02: written after it")

        async def read_twice() -> bool:
            return h.providers["agen"].sessions[AGEN_SESSION].served >= 3

        await until_true(read_twice, "the session was not read while the message was processing")
        assert agent_posts(h.slack, thread, "Agen") == []
        session.complete(key, "m01: Half a thought, now whole.")
        await until(posted(h, thread, "Agen", "m02"), "m02 posted")
        assert agent_posts(h.slack, thread, "Agen") == [
            "m01: Half a thought, now whole.",
            "m02: written after it",
        ]


async def test_odd_items_are_skipped_and_the_rest_is_shown(tmp_path: Path) -> None:
    async with mirrored(tmp_path, "devin", "agen") as h:
        devin = h.providers["devin"].session(DEVIN_SESSION)
        agen = h.providers["agen"].session(AGEN_SESSION)
        threads = {"devin": await h.link("devin"), "agen": await h.link("agen")}
        for thread in threads.values():
            await read_once(h, thread)

        devin.say("m01: before the odd ones")
        devin.odd({"event_id": "odd-1", "type": "devin_thinking", "message": "hmm", "new_field": [1, 2]})
        devin.odd({"event_id": "odd-2", "type": "devin_message"}, off_spec=True)  # no message
        devin.odd({"type": "devin_message", "message": "no id"}, off_spec=True)
        devin.odd(
            {"event_id": "odd-3", "type": "devin_message", "message": "m02: no timestamp, extra", "x": {}}
        )
        devin.say("m03: after the odd ones")

        agen.say("m01: before")
        agen.odd({"id": "x1", "type": "agent_teleport", "payload": {}, "status": "beamed"}, off_spec=True)
        agen.odd(
            {"id": "x2", "session_id": AGEN_SESSION, "type": "agent_message", "status": "completed"},
            off_spec=True,
        )
        agen.odd(["not", "an", "object"], off_spec=True)  # type: ignore[arg-type]
        agen.say("m02: after")

        await until(posted(h, threads["devin"], "Devin", "m03"), "devin m03")
        await until(posted(h, threads["agen"], "Agen", "m02"), "agen m02")
        devin_posts = agent_posts(h.slack, threads["devin"], "Devin")
        agen_posts = agent_posts(h.slack, threads["agen"], "Agen")
        print(f"\n{tally(['m01', 'm02', 'm03'], devin_posts).show('Devin with odd items')}")
        print(f"{tally(['m01', 'm02'], agen_posts).show('Agen with odd items')}")
        assert devin_posts == [
            "m01: before the odd ones",
            "m02: no timestamp, extra",
            "m03: after the odd ones",
        ]
        assert agen_posts == ["m01: before", "m02: after"]
        for thread in threads.values():
            assert (await watch_of(h, thread)).failures == 0  # the odd items never failed a read


async def test_others_messages_from_the_web_are_shown_only_when_asked(tmp_path: Path) -> None:
    async with mirrored(tmp_path, mirror_web_messages=True) as h:
        session = h.providers["devin"].session(DEVIN_SESSION)
        thread = await h.link("devin")
        await read_once(h, thread)
        session.user("m01: try the **other** branch", author="Carol")
        session.say("m02: ok")
        await until(posted(h, thread, "Devin", "m02"), "m02 posted")
        assert "_via the web (Carol):_ m01: try the *other* branch" in thread_posts(h.slack, thread)

    async with mirrored(tmp_path / "off") as h:
        session = h.providers["devin"].session(DEVIN_SESSION)
        thread = await h.link("devin")
        await read_once(h, thread)
        session.user("m01: from the web", author="Carol")
        session.say("m02: ok")
        await until(posted(h, thread, "Devin", "m02"), "m02 posted")
        assert not any("m01" in p for p in thread_posts(h.slack, thread))


# -- per thread --------------------------------------------------------------------------------


async def test_mirror_off_final_and_on_per_thread_and_status_shows_the_last_message(tmp_path: Path) -> None:
    async with mirrored(tmp_path) as h:
        session = h.providers["devin"].session(DEVIN_SESSION)
        thread = await h.link("devin")
        await read_once(h, thread)

        await mention(h, "mirror off", thread)
        await until(
            lambda: any("turned mirroring off" in p for p in thread_posts(h.slack, thread)), "off said"
        )
        session.say("m01: said while mirroring was off")
        await mention(h, "mirror on", thread)
        await until(lambda: any("turned mirroring on" in p for p in thread_posts(h.slack, thread)), "on said")
        await read_once(h, thread)  # on again: the next read starts from now
        session.say("m02: said while on")
        await until(posted(h, thread, "Devin", "m02"), "m02 posted")
        assert agent_posts(h.slack, thread, "Devin") == ["m02: said while on"]  # m01 stayed history

        await mention(h, "mirror final", thread)
        await until(lambda: any("`final`" in p for p in thread_posts(h.slack, thread)), "final said")
        session.say("m03: working on it")
        session.say("m04: **All done**, see the PR.")
        session.finish(pr_url="https://github.test/o/r/pull/4")
        await until(lambda: any("Devin finished" in p for p in thread_posts(h.slack, thread)), "finish said")
        await h.settle()
        assert agent_posts(h.slack, thread, "Devin") == ["m02: said while on", "m04: *All done*, see the PR."]

        before = len(h.slack.ephemerals(CHANNEL, ALICE))
        await mention(h, "status", thread)
        answer = await ephemeral_answer(h, thread, before=before)
        assert "Mirroring the agent's side here: `final`." in answer
        assert "Last from Devin: “m04: **All done**, see the PR.”" in answer

        before = len(h.slack.ephemerals(CHANNEL, ALICE))
        await mention(h, "mirror final", thread)
        assert (
            await ephemeral_answer(h, thread, before=before) == "Mirroring is already `final` in this thread."
        )


async def test_mirror_command_words(tmp_path: Path) -> None:
    async with mirrored(tmp_path) as h:
        thread = await h.link("devin")
        await mention(h, "mirror", thread)
        answer = await ephemeral_answer(h, thread)
        assert "`mirror` takes one of `on`, `off` or `final`" in answer
        await mention(h, "mirror the repo please", thread)  # a message for the agent, not a command
        await h.providers["devin"].wait_for(lambda: len(h.providers["devin"].messages()) == 1)
        assert h.providers["devin"].messages() == ["alice (via Slack): mirror the repo please"]


# -- how it runs -------------------------------------------------------------------------------


@dataclass
class World:
    slack: FakeSlack
    providers: dict[str, FakeProvider]
    client: httpx.AsyncClient
    tmp_path: Path


@asynccontextmanager
async def world(tmp_path: Path, *names: str) -> AsyncIterator[World]:
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, httpx.AsyncClient(timeout=10) as client:
        slack.add_user(ALICE, "alice")
        providers = {name: FakeProvider(name, KEYS[name]) for name in names}
        for fake in providers.values():
            await fake.start()
        try:
            yield World(slack, providers, client, tmp_path)
        finally:
            for fake in providers.values():
                await fake.stop()
            for fake in providers.values():
                fake.assert_no_violations()


@asynccontextmanager
async def replica(w: World, **overrides: Any) -> AsyncIterator[Harness]:
    settings = make_settings(w.tmp_path, w.slack, w.providers, mirror_default="on", **overrides)
    runtime = Runtime(settings, mode="http", host="127.0.0.1", port=0)
    await runtime.start()
    h = Harness(
        w.slack,
        w.providers,
        runtime,
        SlackSender(f"http://127.0.0.1:{runtime.port}", w.client, w.slack),
        settings,
    )
    try:
        yield h
    finally:
        if runtime.deps is not None:
            await runtime.stop()


async def test_a_restart_on_the_same_store_posts_each_message_once(tmp_path: Path) -> None:
    scripted = [f"m{n:02d}: step {n}" for n in range(1, 7)]
    async with world(tmp_path, "devin") as w:
        session = w.providers["devin"].session(DEVIN_SESSION)
        async with replica(w) as h:
            thread = await h.link("devin")
            await read_once(h, thread)
            for text in scripted[:2]:
                session.say(text)
            await until(posted(h, thread, "Devin", "m02"), "m02 before the restart")
            session.say(scripted[2])  # perhaps read before the stop, perhaps after the start
        for text in scripted[3:5]:
            session.say(text)  # while nothing runs
        async with replica(w) as h:
            session.say(scripted[5])
            await until(posted(h, thread, "Devin", "m06"), "m06 after the restart")
            await h.settle()
        result = tally(scripted, agent_posts(w.slack, thread, "Devin"))
        print(f"\n{result.show('Devin, stopped and started again on one SQLite file')}")
        assert result == Tally(6, 6, 0, 0, 0)


async def halt(h: Harness) -> None:
    """Stop a replica the way a crash would: its database connections cut first, so it hands back
    no lease and records nothing more; then its tasks end."""
    store = h.store
    assert isinstance(store, PostgresStore)
    pool, listener = store._pool, store._listener  # the crash cuts them from outside
    assert pool is not None
    pool.terminate()
    if listener is not None:
        listener.terminate()
    await h.runtime.stop()


async def test_two_replicas_on_postgres_one_halted_mid_read(tmp_path: Path, pg_url: str) -> None:
    scripted = [f"m{n:02d}: step {n}" for n in range(1, 7)]
    async with world(tmp_path, "devin") as w:
        devin = w.providers["devin"]
        session = devin.session(DEVIN_SESSION)
        options = {"database_url": pg_url, "relay_lease_seconds": 1.0, "provider_timeout": 2.0}
        async with replica(w, **options) as one, replica(w, **options) as two:
            thread = await one.link("devin")
            await read_once(one, thread)
            session.say(scripted[0])
            session.say(scripted[1])
            await until(posted(one, thread, "Devin", "m02"), "m02 posted")
            await one.settle()
            await two.settle()

            # The next read answers slowly; whichever replica makes it is halted while it waits.
            before = {id(r): r.runtime.deps.mirror.reads for r in (one, two) if r.runtime.deps}
            devin.script_reads(Answer.slow(1.2))
            session.say(scripted[2])
            await until(lambda: any(r.status is None for r in devin.reads), "the slow read started")
            victim = next(
                r for r in (one, two) if r.runtime.deps and r.runtime.deps.mirror.reads > before[id(r)]
            )
            survivor = two if victim is one else one
            await halt(victim)

            session.say(scripted[3])
            for text in scripted[4:]:
                session.say(text)
            await until(posted(survivor, thread, "Devin", "m06"), "m06 posted by the survivor", timeout=30)
            await survivor.settle()
        result = tally(scripted, agent_posts(w.slack, thread, "Devin"))
        print(f"\n{result.show('two replicas on PostgreSQL, the reading one halted mid-read')}")
        assert result == Tally(6, 6, 0, 0, 0)


async def test_rate_limits_and_failing_providers_hold_up_nobody_else(tmp_path: Path) -> None:
    async with mirrored(tmp_path, "devin", "feather", "agen") as h:
        devin, feather, agen = (h.providers[n] for n in ("devin", "feather", "agen"))
        threads = {name: await h.link(name) for name in ("devin", "feather", "agen")}
        for thread in threads.values():
            await read_once(h, thread)
        feather.script_reads(Answer.status(429, headers={"Retry-After": "60"}))
        agen.script_reads(*[Answer.status(503)] * 1_000)
        await until(lambda: any(r.status == 429 for r in feather.reads), "feather said 429")
        feather_reads = len(feather.reads)
        feather.session(FEATHER_SESSION).say("m01: not read for a minute")

        session = devin.session(DEVIN_SESSION)
        scripted = [f"m{n:02d}: step {n}" for n in range(1, 9)]
        for n, text in enumerate(scripted):
            if n == 3:
                devin.script_reads(Answer.status(429, headers={"Retry-After": "0.3"}), Answer.status(429))
            session.say(text)
            await asyncio.sleep(0.05)
        await until(posted(h, threads["devin"], "Devin", "m08"), "devin m08")
        await h.settle()

        result = tally(scripted, agent_posts(h.slack, threads["devin"], "Devin"))
        print(f"\n{result.show('Devin beside a rate-limited Feather and an unavailable Agen')}")
        assert result == Tally(8, 8, 0, 0, 0)
        assert sum(1 for r in devin.reads if r.status == 429) == 2
        assert len(feather.reads) == feather_reads  # Retry-After: 60 honoured while Devin went on
        assert agent_posts(h.slack, threads["feather"], "Feather") == []
        agen_watch = await watch_of(h, threads["agen"])
        assert agen_watch.failures >= 3
        assert agen_watch.next_poll_at is not None


# -- read-back before re-sending ---------------------------------------------------------------


@pytest.mark.parametrize("provider", ["devin", "feather", "agen"])
async def test_a_message_taken_before_the_connection_dropped_is_not_sent_again(
    tmp_path: Path, provider: str
) -> None:
    async with running(tmp_path, providers=(provider,)) as h:
        h.slack.add_user(ALICE, "alice")
        fake = h.providers[provider]
        fake.script(Answer.drop(taken=True))
        thread = await h.link(provider)
        event = await h.reply(thread, "run the migrations")

        async def delivered() -> bool:
            row = await h.store.get_message(h.thread(thread), event["ts"])
            return row is not None and row.state is MessageState.DELIVERED

        await until_true(delivered, "the message was never recorded delivered")
        row = await h.store.get_message(h.thread(thread), event["ts"])
        assert row is not None
        assert row.attempts == 2
        assert fake.messages() == ["alice (via Slack): run the migrations"]  # sent once
        assert len(fake.reads_of(SESSIONS[provider])) == 1  # read once, before the second attempt
        await h.settle()
        assert "white_check_mark" in h.slack.reactions_on(CHANNEL, event["ts"])


async def test_a_retry_after_a_429_reads_nothing_back(tmp_path: Path) -> None:
    # A 429 means the provider refused the message: nothing to look for before sending it again.
    async with running(tmp_path, providers=("devin",)) as h:
        h.slack.add_user(ALICE, "alice")
        devin = h.providers["devin"]
        devin.script(Answer.status(429, headers={"Retry-After": "0.2"}))
        thread = await h.link("devin")
        await h.reply(thread, "run the migrations")
        await devin.wait_for(lambda: len(devin.delivered_messages()) == 1)
        assert devin.messages() == ["alice (via Slack): run the migrations"] * 2
        assert devin.reads_of(DEVIN_SESSION) == []


async def test_a_message_the_provider_never_got_is_sent_again_after_the_read_back(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",)) as h:
        h.slack.add_user(ALICE, "alice")
        devin = h.providers["devin"]
        devin.script(Answer.drop())
        thread = await h.link("devin")
        await h.reply(thread, "run the migrations")
        await devin.wait_for(lambda: len(devin.delivered_messages()) == 1)
        assert devin.messages() == ["alice (via Slack): run the migrations"] * 2
        assert [i["message"] for i in devin.session(DEVIN_SESSION).items] == [
            "alice (via Slack): run the migrations"
        ]


# -- Slack's native agent status ---------------------------------------------------------------


@pytest.mark.parametrize("accepted", [True, False])
async def test_native_agent_status_is_set_or_quietly_given_up(tmp_path: Path, accepted: bool) -> None:
    async with mirrored(tmp_path, mirror_slack_status=True) as h:
        h.slack.native_status = accepted
        session = h.providers["devin"].session(DEVIN_SESSION)
        thread = await h.link("devin")
        await read_once(h, thread)
        session.ask("m01: shall I?")
        await until(posted(h, thread, "Devin", "m01"), "question")
        session.finish()
        await until(lambda: any("Devin finished" in p for p in thread_posts(h.slack, thread)), "finish said")
        await h.settle()
        calls = h.slack.calls_to("agents.sessions.setStatus")
        if accepted:
            assert [s for _, t, s in h.slack.native_statuses if t == thread] == [
                "processing",
                "active",
                "closed",
            ]
        else:
            assert len(calls) == 1  # refused once: not asked again
            assert h.slack.native_statuses == []


async def test_when_the_read_back_fails_the_message_is_sent_again(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("agen",)) as h:
        h.slack.add_user(ALICE, "alice")
        agen = h.providers["agen"]
        agen.script(Answer.drop(taken=True))
        agen.script_reads(Answer.status(503))
        thread = await h.link("agen")
        await h.reply(thread, "run the migrations")
        await agen.wait_for(lambda: len(agen.delivered_messages()) == 1)
        assert agen.messages() == ["alice (via Slack): run the migrations"] * 2  # could not tell: sent again
        assert [r.status for r in agen.reads] == [503]
        copies = [r.client_id for r in agen.requests]
        assert len(set(copies)) == 1  # the same client_id both times: Agen can tell the copy itself
