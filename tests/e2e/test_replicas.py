"""Several replicas of agent-relay on one store: nothing lost, duplicated or reordered.

Socket Mode with several connections (one per replica): Slack spreads events over them at random,
and a retry after a reconnect can reach another replica than the first delivery. Here the fake Slack
does the same, with a seeded random choice per envelope.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.runtime import Runtime
from tests.e2e.test_socket_mode import APP_TOKEN, envelope, wait_bound
from tests.fakes import eventually
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import TEAM, FakeSlack
from tests.harness import ALICE, BOT_TOKEN, CHANNEL, KEYS, make_settings, message_event


@dataclass(frozen=True, slots=True)
class Tally:
    sent: int
    delivered: int
    duplicated: int
    reordered: int
    lost: int

    def show(self, scenario: str) -> str:
        return (
            f"{scenario}: sent {self.sent}, delivered {self.delivered}, duplicated {self.duplicated}, "
            f"reordered {self.reordered}, lost {self.lost}"
        )


def tally(provider: FakeProvider, expected: dict[str, list[str]]) -> Tally:
    """Count, per session, what the provider received against what was sent (texts carry a number)."""
    delivered = duplicated = reordered = lost = 0
    for session, texts in expected.items():
        got = [m.split(": ", 1)[1] for m in provider.messages(session)]
        delivered += len(set(got) & set(texts))
        duplicated += len(got) - len(set(got))
        lost += len(set(texts) - set(got))
        firsts = [t for i, t in enumerate(got) if t not in got[:i]]
        reordered += sum(1 for a, b in itertools.pairwise(firsts) if texts.index(a) > texts.index(b))
    return Tally(sum(map(len, expected.values())), delivered, duplicated, reordered, lost)


@asynccontextmanager
async def replicas(
    tmp_path: Path, slack: FakeSlack, devin: FakeProvider, count: int, **overrides: Any
) -> AsyncIterator[list[Runtime]]:
    settings = make_settings(
        tmp_path, slack, {"devin": devin}, slack_app_token=APP_TOKEN, slack_signing_secret=None, **overrides
    )
    async with AsyncExitStack() as stack:
        runtimes = []
        for _ in range(count):
            runtime = Runtime(settings, mode="socket")
            await runtime.start()
            stack.push_async_callback(runtime.stop)
            runtimes.append(runtime)
        await eventually(lambda: slack.socket_count == count, message="not every replica connected")
        yield runtimes


async def test_three_socket_mode_replicas_share_events_spread_at_random(tmp_path: Path) -> None:
    spread = random.Random(20261201)
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider("devin", KEYS["devin"]) as devin:
        slack.app_token = APP_TOKEN
        slack.add_user(ALICE, "alice")
        async with replicas(tmp_path, slack, devin, 3) as runtimes:
            sessions = [f"devin-replica{i}" for i in range(3)]
            threads: dict[str, str] = {}
            for session in sessions:
                before = len(slack.messages)
                await slack.socket_send(
                    "slash_commands",
                    {
                        "team_id": TEAM,
                        "channel_id": CHANNEL,
                        "user_id": ALICE,
                        "command": "/agent",
                        "text": f"link devin {session}",
                        "response_url": slack.response_url(session),
                        "trigger_id": f"t.{session}",
                    },
                    spread=spread,
                )
                await eventually(lambda before=before: len(slack.messages) > before)  # type: ignore[misc]
                threads[session] = str(slack.messages[before]["ts"])
                await wait_bound(runtimes[0], threads[session])

            expected: dict[str, list[str]] = {s: [] for s in sessions}
            plan = [s for s in sessions for _ in range(10)]
            spread.shuffle(plan)
            redelivered = 0
            for n, session in enumerate(plan):
                text = f"{session}-m{len(expected[session]):02d}"
                expected[session].append(text)
                event = message_event(text, thread_ts=threads[session])
                await slack.socket_send("events_api", envelope(event, f"Ev{n}"), spread=spread)
                if spread.random() < 0.3:  # a redelivery, to whichever connection Slack picks
                    redelivered += 1
                    await slack.socket_send(
                        "events_api", envelope(event, f"Ev{n}"), retry_attempt=1, spread=spread
                    )
            await eventually(
                lambda: sum(len(devin.messages(s)) for s in sessions) >= len(plan),
                timeout=20,
                message=lambda: (
                    f"provider has {sum(len(devin.messages(s)) for s in sessions)} of {len(plan)}"
                ),
            )
            for runtime in runtimes:
                assert runtime.deps is not None
                await runtime.deps.feedback.drain()
        result = tally(devin, expected)
        print(f"\n{result.show(f'3 Socket Mode replicas, {redelivered} redeliveries')}")
        assert result == Tally(len(plan), len(plan), 0, 0, 0)
        assert redelivered > 0
        devin.assert_no_violations()
