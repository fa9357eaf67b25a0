"""The store watch (:meth:`bot.runtime.Runtime._watch_store`): a SQLite file deleted or replaced under
the running bot.

The process still holds the old file open and could go on writing into it, but nobody would ever
read those rows again. So once the watch notices, the bot stops acknowledging events: over HTTP they
are answered 503 (Slack delivers them again later, to a bot that has a store), in Socket Mode the
connection is closed (Slack sends the events to the other connections), and the log says why once,
with what to do. A store check that merely fails (the file is still the same) changes nothing.

The watch looks every ``STORE_CHECK_INTERVAL`` seconds (2 s); the tests make it look every 50 ms.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import bot.runtime
from bot.runtime import Runtime
from storage import StoreError
from tests.e2e.test_socket_mode import APP_TOKEN
from tests.fakes import eventually
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import FakeSlack
from tests.harness import (
    ALICE,
    BOT_TOKEN,
    CHANNEL,
    KEYS,
    Harness,
    make_settings,
    message_event,
    running,
)
from tests.logcapture import captured_logs, log_records

DELIVERED = "white_check_mark"
ACTION = "events are no longer acknowledged (Slack will retry them); restart agent-relay"


@pytest.fixture(autouse=True)
def quick_store_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.runtime, "STORE_CHECK_INTERVAL", 0.05)


def delete(db: Path) -> None:
    db.unlink()


def replace(db: Path) -> None:
    """Another file put in its place (a restore from a backup, say): same name, another inode."""
    copy = db.with_name("restored.db")
    shutil.copyfile(db, copy)
    os.replace(copy, db)


async def post_event(h: Harness, event: dict[str, Any]) -> httpx.Response:
    body = h.sender.event_body(event)
    return await h.sender.post_raw(body, h.sender._headers(body, "application/json"))


async def relayed(h: Harness, thread: str, text: str) -> dict[str, Any]:
    event = await h.reply(thread, text)
    await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED])
    return event


@pytest.mark.parametrize("lose", [delete, replace], ids=["deleted", "replaced"])
async def test_a_lost_sqlite_file_stops_the_bot_acknowledging_events(
    tmp_path: Path, lose: Callable[[Path], None]
) -> None:
    db = tmp_path / "relay.db"
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",)) as h:
            h.slack.add_user(ALICE, "alice")
            devin = h.providers["devin"]
            thread = await h.link("devin")
            await relayed(h, thread, "before")

            lose(db)
            await eventually(lambda: h.runtime.store_lost is not None, message="the loss was not noticed")

            # Events are refused, so that Slack delivers them again later; nothing reads them.
            late = message_event("after the loss", thread_ts=thread)
            answer = await post_event(h, late)
            assert (answer.status_code, answer.json()) == (503, {"ok": False, "error": "not_ready"})
            assert await h.store.get_message(h.thread(thread), late["ts"]) is None
            assert devin.messages() == ["alice (via Slack): before"]

    lost = [r for r in log_records(log) if r.get("event") == "store_lost"]
    assert len(lost) == 1, lost  # said once, though the watch kept running until the stop
    (line,) = lost
    assert line["level"] == "error"
    assert line["error"] == f"the SQLite database {db} was deleted or replaced while open"
    assert line["action"] == ACTION
    assert not [r for r in log_records(log) if r.get("event") == "store_check_failed"]


async def test_a_failing_store_check_on_the_same_file_keeps_taking_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",)) as h:
            h.slack.add_user(ALICE, "alice")
            thread = await h.link("devin")
            check = h.store.check
            failures = 0

            async def flaky_check() -> None:
                nonlocal failures
                if failures < 3:
                    failures += 1
                    raise StoreError("database is locked")
                await check()

            monkeypatch.setattr(h.store, "check", flaky_check)
            await eventually(lambda: failures == 3)
            await relayed(h, thread, "still relayed")
            assert h.runtime.store_lost is None
            assert h.providers["devin"].messages() == ["alice (via Slack): still relayed"]

    warnings = [r for r in log_records(log) if r.get("event") == "store_check_failed"]
    assert [(r["level"], r["error"]) for r in warnings] == [("warning", "database is locked")] * 3
    assert not [r for r in log_records(log) if r.get("event") == "store_lost"]


async def test_socket_mode_closes_its_connection_when_the_file_is_lost(tmp_path: Path) -> None:
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider("devin", KEYS["devin"]) as devin:
        slack.app_token = APP_TOKEN
        settings = make_settings(
            tmp_path, slack, {"devin": devin}, slack_app_token=APP_TOKEN, slack_signing_secret=None
        )
        with captured_logs(settings.secrets()) as log:
            runtime = Runtime(settings, mode="socket")
            await runtime.start()
            try:
                assert slack.socket_connected
                delete(tmp_path / "relay.db")
                # Slack sends the events to the other connections (another replica) from now on.
                await eventually(lambda: not slack.socket_connected, message="the socket stayed open")
                assert runtime.store_lost == (
                    f"the SQLite database {tmp_path / 'relay.db'} was deleted or replaced while open"
                )
            finally:
                await runtime.stop()
        assert not slack.socket_connected
        lost = [r for r in log_records(log) if r.get("event") == "store_lost"]
        assert [r["action"] for r in lost] == [ACTION]
