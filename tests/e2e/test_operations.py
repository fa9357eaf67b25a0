"""Operations, end to end: health endpoints, metrics that move with relays, retries and errors, log
context, ``app_rate_limited``, the side port in Socket Mode, retention in the running app, and lease
takeovers counted by a restarted process."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import bot.retention
import bot.runtime
from bot.runtime import Runtime
from storage import MessageState, StoreError
from tests.e2e.test_process import bot_env, bot_process, fakes, free_port, link, send_all, sender_for, states
from tests.e2e.test_socket_mode import APP_TOKEN, envelope, wait_bound
from tests.fakes import eventually
from tests.fakes.providers import Answer, FakeProvider
from tests.fakes.slack import TEAM, FakeSlack
from tests.harness import (
    ALICE,
    BOT_TOKEN,
    CHANNEL,
    DEVIN_SESSION,
    KEYS,
    Harness,
    make_settings,
    message_event,
    running,
)
from tests.logcapture import captured_logs, log_records

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DELIVERED = "white_check_mark"


async def scrape(client: httpx.AsyncClient, base: str) -> Samples:
    response = await client.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"never {what}"
        await asyncio.sleep(0.02)


async def status_of(h: Harness, path: str) -> tuple[int, object]:
    response = await h.sender.client.get(f"{h.sender.url}{path}")
    return response.status_code, response.json()


# -- health ----------------------------------------------------------------------------------------


async def test_health_endpoints_answer_unsigned_and_reveal_nothing(relay: Harness) -> None:
    relay.slack.add_user(ALICE, "alice")
    thread = await relay.link("devin")
    event = await relay.reply(thread, "the launch code is tulip")
    await relay.slack.wait_for(lambda: relay.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED])

    bodies = {}
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        response = await relay.sender.client.get(f"{relay.sender.url}{path}")  # no signature at all
        assert response.status_code == 200, (path, response.text)
        bodies[path] = response.text

    assert json.loads(bodies["/livez"])["ok"] is True
    assert json.loads(bodies["/readyz"]) == json.loads(bodies["/healthz"]) == {"ok": True}
    everything = "\n".join(bodies.values())
    for private in (thread, event["ts"], CHANNEL, TEAM, ALICE, DEVIN_SESSION, "tulip", *KEYS.values()):
        assert private not in everything, private
    assert "agent_relay_messages_total" in bodies["/metrics"]


async def test_livez_fails_while_the_heartbeat_is_stale(relay: Harness) -> None:
    heartbeat = relay.runtime.heartbeat
    assert heartbeat is not None
    assert (await status_of(relay, "/livez"))[0] == 200

    await heartbeat.stop()  # as if the loop had not run it for two minutes
    heartbeat.beat_at -= 120
    code, body = await status_of(relay, "/livez")
    assert code == 503
    assert isinstance(body, dict)
    assert body["ok"] is False
    assert body["heartbeat_age"] >= 120
    assert (await status_of(relay, "/readyz"))[0] == 200  # readiness is another question

    heartbeat.start()
    assert (await status_of(relay, "/livez"))[0] == 200


@pytest.fixture
def fast_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.runtime, "STORE_CHECK_INTERVAL", 0.05)
    monkeypatch.setattr(bot.runtime, "STORE_METRICS_INTERVAL", 0.05)


@pytest.mark.usefixtures("fast_checks")
async def test_readiness_follows_the_store_and_its_migrations(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",)) as h:
        store = h.store
        healthy = store.check

        async def failing() -> None:
            raise StoreError("connection refused by the database server")

        store.check = failing  # type: ignore[method-assign]
        await until(lambda: _is(h, "/readyz", 503, ["store unavailable"]), "not ready")
        assert (await status_of(h, "/livez"))[0] == 200
        store.check = healthy  # type: ignore[method-assign]
        await until(lambda: _is(h, "/readyz", 200, None), "ready again")

        with closing(sqlite3.connect(tmp_path / "relay.db")) as db, db:
            db.execute("UPDATE schema_version SET version = version - 1")
        await until(lambda: _is(h, "/readyz", 503, ["database migrations missing"]), "not ready")
        with closing(sqlite3.connect(tmp_path / "relay.db")) as db, db:
            db.execute("UPDATE schema_version SET version = version + 1")
        await until(lambda: _is(h, "/readyz", 200, None), "ready again")


@pytest.mark.usefixtures("fast_checks")
async def test_a_lost_store_makes_the_replica_not_ready(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",)) as h:
        (tmp_path / "relay.db").unlink()
        await until(lambda: _is(h, "/readyz", 503, ["store lost"]), "not ready")
        assert (await status_of(h, "/healthz"))[0] == 503
        assert (await status_of(h, "/livez"))[0] == 200


async def _is(h: Harness, path: str, code: int, reasons: list[str] | None) -> bool:
    got, body = await status_of(h, path)
    if reasons is None:
        return got == code
    return got == code and isinstance(body, dict) and body.get("not_ready") == reasons


# -- metrics ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fast_checks")
async def test_metrics_move_with_relays_retries_duplicates_and_slack_errors(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",)) as h:
        h.slack.add_user(ALICE, "alice")
        devin = h.providers["devin"]
        client, base = h.sender.client, h.sender.url
        before = await scrape(client, base)
        assert value(before, "agent_relay_messages_total", provider="devin", outcome="delivered") == 0

        thread = await h.link("devin")
        first = await h.reply(thread, "one")
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, first["ts"]) == [DELIVERED])
        devin.script(Answer.status(503), Answer.delivered())
        second = await h.reply(thread, "two")
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, second["ts"]) == [DELIVERED])
        await h.sender.event(first, retry_num=1)  # Slack's retry of the first: stored once already
        await h.settle()
        h.slack.fail_next("reactions.add", status=400, error="message_not_found", retry_after=None)
        third = await h.reply(thread, "three")
        await until(lambda: _finished(h, thread, third["ts"]), "third finished")
        await h.settle()

        after = await scrape(client, base)
        assert value(after, "agent_relay_messages_total", provider="devin", outcome="delivered") == 3
        assert (
            value(after, "agent_relay_delivery_retries_total", provider="devin", outcome="unavailable") == 1
        )
        assert value(after, "agent_relay_provider_request_duration_seconds_count", provider="devin") == 4
        assert value(after, "agent_relay_message_latency_seconds_count", provider="devin") == 3
        assert value(after, "agent_relay_events_received_total", type="message", retry="0") == 3
        assert value(after, "agent_relay_events_received_total", type="message", retry="1") == 1
        assert value(after, "agent_relay_events_received_total", type="slash_command", retry="0") == 1
        assert value(after, "agent_relay_intake_decisions_total", decision="queued") == 3
        assert value(after, "agent_relay_intake_decisions_total", decision="duplicate") == 1
        assert value(after, "agent_relay_slack_api_calls_total", method="reactions.add") >= 4
        errors = (
            "agent_relay_slack_api_errors_total",
            {"method": "reactions.add", "error": "message_not_found"},
        )
        assert value(before, errors[0], **errors[1]) == 0
        assert value(after, errors[0], **errors[1]) == 1
        assert value(after, "agent_relay_lease_takeovers_total") == 0
        assert value(after, "agent_relay_delivery_in_flight") == 0
        assert ("agent_relay_event_loop_lag_seconds", frozenset()) in after

        async def gauges_caught_up() -> bool:
            now = await scrape(client, base)
            return (
                value(now, "agent_relay_outbox_messages", state="delivered") == 3
                and value(now, "agent_relay_outbox_messages", state="pending") == 0
                and value(now, "agent_relay_feedback_queue_items") == 0
                and value(now, "agent_relay_outbox_oldest_due_age_seconds") == 0
            )

        await until(gauges_caught_up, "store gauges refreshed")


async def _finished(h: Harness, thread: str, ts: str) -> bool:
    row = await h.store.get_message(h.thread(thread), ts)
    return row is not None and row.state.final


@pytest.mark.usefixtures("fast_checks")
async def test_outbox_gauges_show_a_message_in_flight(tmp_path: Path) -> None:
    async with running(tmp_path, providers=("devin",)) as h:
        h.slack.add_user(ALICE, "alice")
        devin = h.providers["devin"]
        client, base = h.sender.client, h.sender.url
        thread = await h.link("devin")
        devin.script(Answer.slow(1.5))
        event = await h.reply(thread, "slow one")

        async def in_flight() -> bool:
            now = await scrape(client, base)
            return (
                value(now, "agent_relay_outbox_messages", state="sending") == 1
                and value(now, "agent_relay_delivery_in_flight") == 1
            )

        await until(in_flight, "shown in flight")
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED])

        async def delivered() -> bool:
            now = await scrape(client, base)
            return (
                value(now, "agent_relay_outbox_messages", state="sending") == 0
                and value(now, "agent_relay_outbox_messages", state="delivered") == 1
            )

        await until(delivered, "shown delivered")


async def test_app_rate_limited_is_acknowledged_logged_and_counted(tmp_path: Path) -> None:
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",)) as h:
            body = json.dumps(
                {
                    "token": "legacy-verification-token",
                    "team_id": TEAM,
                    "minute_rate_limited": 1518467820,
                    "api_app_id": "A0APP",
                    "type": "app_rate_limited",
                }
            )
            response = await h.sender.post_raw(body, h.sender._headers(body, "application/json"))
            assert response.status_code == 200
            samples = await scrape(h.sender.client, h.sender.url)
    assert value(samples, "agent_relay_slack_app_rate_limited_total") == 1
    assert value(samples, "agent_relay_events_received_total", type="app_rate_limited", retry="0") == 1
    [warning] = [r for r in log_records(log) if r["event"] == "slack_app_rate_limited"]
    assert (warning["level"], warning["team"], warning["minute_rate_limited"]) == (
        "warning",
        TEAM,
        1518467820,
    )


# -- logs ------------------------------------------------------------------------------------------


async def test_every_line_about_a_message_carries_its_context_and_never_its_text(tmp_path: Path) -> None:
    secret_words = "the plan is under the old oak"
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",)) as h:
            h.slack.add_user(ALICE, "alice")
            thread = await h.link("devin")
            h.providers["devin"].script(Answer.status(502), Answer.delivered())
            event = await h.reply(thread, secret_words)
            await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED])
    records = log_records(log)
    context = {"team": TEAM, "channel": CHANNEL, "thread": thread, "ts": event["ts"], "provider": "devin"}

    [finished] = [r for r in records if r["event"] == "message_finished"]
    assert {k: finished[k] for k in context} == context
    assert (finished["session"], finished["outcome"], finished["attempts"]) == (DEVIN_SESSION, "delivered", 2)
    assert finished["level"] == "info"
    assert 0 <= finished["latency"] < 60
    [retry] = [r for r in records if r["event"] == "relay_retry"]
    assert {k: retry[k] for k in context} == context
    assert (retry["session"], retry["attempt"], retry["outcome"]) == (DEVIN_SESSION, 1, "unavailable")
    [decision] = [r for r in records if r["event"] == "intake_decision" and r.get("ts") == event["ts"]]
    assert decision["level"] == "debug"
    assert (decision["team"], decision["thread"], decision["slack_retry"]) == (TEAM, thread, 0)
    assert str(decision["event_id"]).startswith("Ev")
    loud = [r for r in records if r["level"] != "debug"]
    assert loud, "nothing above debug was logged"
    assert not [r for r in loud if secret_words in json.dumps(r)]


# -- Socket Mode: the side port --------------------------------------------------------------------


async def test_socket_mode_serves_health_and_metrics_on_the_metrics_port(tmp_path: Path) -> None:
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider("devin", KEYS["devin"]) as devin:
        slack.app_token = APP_TOKEN
        slack.add_user(ALICE, "alice")
        settings = make_settings(
            tmp_path, slack, {"devin": devin}, slack_app_token=APP_TOKEN, slack_signing_secret=None
        )
        runtime = Runtime(settings, mode="socket", metrics_port=0, host="127.0.0.1")
        await runtime.start()
        stopping: asyncio.Task[None] | None = None
        try:
            assert runtime.metrics_port
            base = f"http://127.0.0.1:{runtime.metrics_port}"
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(f"{base}/livez")).status_code == 200
                assert (await client.get(f"{base}/readyz")).json() == {"ok": True}
                assert (await client.get(f"{base}/slack/events")).status_code == 404  # not here

                await slack.socket_send(
                    "slash_commands",
                    {
                        "team_id": TEAM,
                        "channel_id": CHANNEL,
                        "user_id": ALICE,
                        "command": "/agent",
                        "text": f"link devin {DEVIN_SESSION}",
                        "response_url": slack.response_url("socket"),
                        "trigger_id": "t.1",
                    },
                )
                await eventually(lambda: len(slack.messages) == 1)
                thread = str(slack.messages[0]["ts"])
                await wait_bound(runtime, thread)
                reply = message_event("over the socket", thread_ts=thread)
                await slack.socket_send("events_api", envelope(reply, "Ev1"))
                await slack.socket_send("events_api", envelope(reply, "Ev1"), retry_attempt=2)
                limited = {"team_id": TEAM, "minute_rate_limited": 1, "api_app_id": "A0APP"}
                await slack.socket_send("events_api", {**limited, "type": "app_rate_limited"})
                await eventually(lambda: slack.reactions_on(CHANNEL, reply["ts"]) == [DELIVERED])

                samples = await scrape(client, base)
                assert value(samples, "agent_relay_events_received_total", type="message", retry="0") == 1
                assert value(samples, "agent_relay_events_received_total", type="message", retry="2") == 1
                assert value(samples, "agent_relay_slack_app_rate_limited_total") == 1
                assert (
                    value(samples, "agent_relay_messages_total", provider="devin", outcome="delivered") == 1
                )

                # Stopping: readiness fails at once, while a send in flight gets its deadline.
                devin.set_default(Answer.hang())
                hung = message_event("hangs", thread_ts=thread)
                await slack.socket_send("events_api", envelope(hung, "Ev2"))
                await devin.wait_for(lambda: len(devin.requests) == 2)
                stopping = asyncio.create_task(runtime.stop())
                await until(
                    lambda: _side_is(client, f"{base}/readyz", 503, ["stopping"]), "not ready while stopping"
                )
                assert (await client.get(f"{base}/livez")).status_code == 200
                await stopping
        finally:
            if stopping is None:
                await runtime.stop()
        devin.assert_no_violations()


async def _side_is(client: httpx.AsyncClient, url: str, code: int, reasons: list[str]) -> bool:
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return False
    return response.status_code == code and response.json().get("not_ready") == reasons


# -- retention in the running app ------------------------------------------------------------------


async def test_retention_blanks_old_text_and_keeps_bindings_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.retention, "FIRST_DELAY", 0.5)
    monkeypatch.setattr(bot.retention, "INTERVAL", 0.2)
    async with running(tmp_path, providers=("devin",), retention_days=0.1 / 86_400) as h:
        h.slack.add_user(ALICE, "alice")
        thread = await h.link("devin")
        event = await h.reply(thread, "remember me not")
        await h.slack.wait_for(lambda: h.slack.reactions_on(CHANNEL, event["ts"]) == [DELIVERED])
        key = h.thread(thread)

        async def blanked() -> bool:
            row = await h.store.get_message(key, event["ts"])
            return row is not None and row.text == ""

        await until(blanked, "blanked by retention")
        row = await h.store.get_message(key, event["ts"])
        assert row is not None
        assert (row.state, row.outcome) == (MessageState.DELIVERED, "delivered")
        assert await h.store.get_binding(key) is not None
        assert (await h.store.count_messages(key))[MessageState.DELIVERED] == 1
        samples = await scrape(h.sender.client, h.sender.url)
        assert value(samples, "agent_relay_retention_purged_total", table="messages") == 1
        assert value(samples, "agent_relay_retention_purged_total", table="feedback") >= 1  # ✅ reaction


# -- several processes: takeovers ------------------------------------------------------------------


async def test_a_restarted_process_counts_the_claims_it_took_over(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    async with fakes() as (slack, devin):
        devin.set_default(Answer.hang())
        env = bot_env(slack, devin, db)
        async with bot_process(env, tmp_path, "first") as first, sender_for(first, slack) as sender:
            threads = {s: await link(sender, slack, db, s) for s in ("devin-take0", "devin-take1")}
            count = await send_all(sender, threads, 2)
            await devin.wait_for(lambda: len(devin.requests) == len(threads))
            first.process.send_signal(signal.SIGKILL)
            await first.process.wait()
        devin.set_default(Answer.delivered())
        async with bot_process(env, tmp_path, "second") as second:
            await eventually(lambda: states(db) == {"delivered": count}, timeout=15)
            async with httpx.AsyncClient(timeout=5) as client:
                samples = await scrape(client, second.url)
                assert (await client.get(f"{second.url}/readyz")).json() == {"ok": True}
        assert value(samples, "agent_relay_lease_takeovers_total") == len(threads)
        assert value(samples, "agent_relay_messages_total", provider="devin", outcome="delivered") == count
        log = second.log.read_text()
        assert log.count('"relay_lease_taken_over"') == len(threads)


# -- the side port in HTTP mode, and start-up failures ---------------------------------------------


async def test_http_mode_with_a_metrics_port_serves_one_registry_on_both(tmp_path: Path) -> None:
    side = free_port()
    async with running(tmp_path, providers=("devin",), metrics_port=side) as h:
        assert h.runtime.metrics_port == side
        await h.sender.command("help")
        async with httpx.AsyncClient(timeout=5) as client:
            on_side = await scrape(client, f"http://127.0.0.1:{side}")
            on_app = await scrape(client, h.sender.url)
            assert (await client.get(f"http://127.0.0.1:{side}/readyz")).json() == {"ok": True}
            assert (await client.post(f"http://127.0.0.1:{side}/slack/events")).status_code == 404
    counted = ("agent_relay_events_received_total", {"type": "slash_command", "retry": "0"})
    assert value(on_side, counted[0], **counted[1]) == value(on_app, counted[0], **counted[1]) == 1


async def test_a_metrics_port_in_use_stops_start_up_cleanly(tmp_path: Path) -> None:
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider("devin", KEYS["devin"]) as devin:
        settings = make_settings(tmp_path, slack, {"devin": devin})
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            runtime = Runtime(
                settings, mode="http", host="127.0.0.1", port=0, metrics_port=taken.getsockname()[1]
            )
            assert runtime.readiness() == ["starting"]
            with captured_logs() as log, pytest.raises(OSError):
                await runtime.start()
        assert runtime.deps is None
        assert runtime.heartbeat is None
        assert runtime.readiness() == ["starting"]
        assert [
            t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("relay:", "feedback:"))
        ] == []
        assert [r for r in log_records(log) if r["level"] in ("error", "critical")] == []
