"""``agent-relay doctor`` against the fake Slack and fake providers: good and bad keys, a missing
scope, a database that is unreachable or behind, invalid settings. It never sends a message."""

from __future__ import annotations

import io
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import httpx
import pytest

from bot.doctor import READ_PROBES, check_providers, run_doctor
from bot.manifest import BOT_EVENTS, BOT_SCOPES, EVENT_SCOPES
from bot.providers import PROVIDERS
from bot.settings import Settings
from storage import StoreError, open_store
from storage.migrations import apply_migrations, load_migrations
from storage.sqlite import SQLiteStore
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import FakeSlack
from tests.fakes.specs import PROVIDER_READ_OPERATIONS, SpecValidator
from tests.harness import BOT_TOKEN, KEYS, SIGNING_SECRET

APP_TOKEN = "xapp-1-A0APP-0000000000000-TESTdoctorapptoken0123"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class World:
    slack: FakeSlack
    providers: dict[str, FakeProvider]
    db: Path
    env: pytest.MonkeyPatch

    async def doctor(self, mode: str | None = None) -> tuple[int, list[str]]:
        out = io.StringIO()
        code = await run_doctor(mode=mode, out=out)  # type: ignore[arg-type]
        text = out.getvalue()
        for secret in [BOT_TOKEN, SIGNING_SECRET, APP_TOKEN, *KEYS.values(), "wrong-key-123"]:
            assert secret not in text
        return code, text.splitlines()


def line(lines: list[str], start: str) -> str:
    found = [entry for entry in lines if entry.startswith(start)]
    assert len(found) == 1, f"{start!r} in {lines}"
    return found[0]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    return monkeypatch


@pytest.fixture
async def world(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[World]:
    db = tmp_path / "relay.db"
    store = open_store(f"sqlite:///{db}")
    await store.init()
    await store.close()
    async with FakeSlack(bot_token=BOT_TOKEN) as slack:
        fakes = {name: FakeProvider(name, KEYS[name]) for name in PROVIDERS}
        for fake in fakes.values():
            fake.only_known_sessions = True  # as the providers do: an id that does not exist is 404
            await fake.start()
        try:
            clean_env.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
            clean_env.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            clean_env.setenv("SLACK_API_URL", slack.api_url)
            clean_env.setenv("DATABASE_URL", f"sqlite:///{db}")
            for name, fake in fakes.items():
                clean_env.setenv(f"{name.upper()}_API_KEY", KEYS[name])
                clean_env.setenv(f"{name.upper()}_API_URL", fake.url)
            yield World(slack, fakes, db, clean_env)
        finally:
            for fake in fakes.values():
                await fake.stop()
            for fake in fakes.values():
                fake.assert_no_violations()
                assert fake.requests == [], "the doctor sent something"


async def test_everything_in_order_passes(world: World) -> None:
    code, lines = await world.doctor()

    assert code == 0, lines
    assert lines[-1].endswith(" 0 failed")
    assert all(entry[0] in "✓-" for entry in lines[:-1]), lines
    assert line(lines, "✓ Slack auth.test").endswith("in team T0TEAM (Fake)")
    assert line(lines, "✓ scopes") == f"✓ scopes: all {len(BOT_SCOPES)} scopes of the manifest are granted"
    assert "cannot be read" in line(lines, "✓ event subscriptions")
    latest = load_migrations("sqlite")[-1].version
    assert line(lines, "✓ migrations") == f"✓ migrations: current (schema version {latest})"
    line(lines, "✓ database writable")
    for name, cls in PROVIDERS.items():
        assert f"{name.upper()}_API_KEY accepted" in line(lines, f"✓ {cls.label}:")
        [probe] = world.providers[name].reads
        assert probe.session_id == READ_PROBES[name][1]
        assert (probe.valid, probe.authorized, probe.status) == (True, True, 404)
    line(lines, "- SLACK_SIGNING_SECRET")


async def test_a_refused_key_and_a_missing_scope_fail(world: World) -> None:
    world.env.setenv("DEVIN_API_KEY", "wrong-key-123")
    world.slack.scopes = [s for s in BOT_SCOPES if s not in ("reactions:write", "groups:history")]

    code, lines = await world.doctor()

    assert code == 1
    assert line(lines, "✗ Devin:").startswith("✗ Devin: DEVIN_API_KEY refused (HTTP 401")
    line(lines, "✓ Feather:")
    line(lines, "✓ Agen:")
    assert line(lines, "✗ scopes") == (
        "✗ scopes: missing groups:history, reactions:write: add them (or paste manifest.yml again) "
        "and reinstall the app"
    )
    assert line(lines, "✗ event subscriptions") == (
        "✗ event subscriptions: cannot be delivered: message.groups needs groups:history"
    )
    assert lines[-1].endswith(" 3 failed")


async def test_unknown_scopes_are_said_not_failed(world: World) -> None:
    world.slack.scopes = None

    code, lines = await world.doctor()

    assert code == 0
    assert "no x-oauth-scopes header" in line(lines, "- scopes")
    line(lines, "- event subscriptions")


async def test_an_unreachable_database_fails_without_showing_its_password(world: World) -> None:
    world.env.setenv("DATABASE_URL", f"postgresql://relay:hunter2-pw@127.0.0.1:{free_port()}/relay")

    code, lines = await world.doctor()

    assert code == 1
    failed = line(lines, "✗ database")
    assert "cannot open postgresql://***@127.0.0.1" in failed
    assert "hunter2" not in "\n".join(lines)
    assert not [entry for entry in lines if entry.startswith("✓ migrations")]
    line(lines, "✓ Slack auth.test")  # the other checks still ran
    line(lines, "✓ Agen:")


async def test_a_database_file_that_does_not_exist_is_not_created(world: World, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "relay.db"
    world.env.setenv("DATABASE_URL", f"sqlite:///{missing}")

    code, lines = await world.doctor()

    assert code == 1
    assert "does not exist" in line(lines, "✗ database")
    assert not missing.parent.exists()


async def test_missing_migrations_say_how_to_apply_them(world: World, tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    async with aiosqlite.connect(old, isolation_level=None) as conn:
        await apply_migrations(conn, load_migrations("sqlite")[:1])
    world.env.setenv("DATABASE_URL", f"sqlite:///{old}")

    code, lines = await world.doctor()

    assert code == 1
    missing = len(load_migrations("sqlite")) - 1
    assert line(lines, "✗ migrations") == (
        f"✗ migrations: schema version 1, {missing} migration(s) missing: run `agent-relay migrate`"
    )
    line(lines, "✓ database writable")


async def test_invalid_settings_are_named_one_per_line_and_the_rest_still_runs(world: World) -> None:
    world.env.setenv("PORT", "not-a-port-secretish")
    world.env.setenv("RELAY_CONCURRENCY", "0")

    code, lines = await world.doctor()

    assert code == 1
    assert line(lines, "✗ PORT").startswith("✗ PORT: invalid: ")
    assert line(lines, "✗ RELAY_CONCURRENCY").startswith("✗ RELAY_CONCURRENCY: invalid: ")
    assert "not-a-port-secretish" not in "\n".join(lines)
    line(lines, "✓ Slack auth.test")
    line(lines, "✓ Devin:")


async def test_missing_settings_of_the_mode_are_named(world: World) -> None:
    world.env.delenv("SLACK_SIGNING_SECRET")

    code, lines = await world.doctor(mode="http")

    assert code == 1
    assert line(lines, "✗ SLACK_SIGNING_SECRET") == "✗ SLACK_SIGNING_SECRET: missing (http mode needs it)"


async def test_socket_mode_checks_the_app_token(world: World) -> None:
    world.slack.app_token = APP_TOKEN
    world.env.setenv("SLACK_APP_TOKEN", APP_TOKEN)

    code, lines = await world.doctor()
    assert code == 0, lines
    assert "SLACK_APP_TOKEN accepted" in line(lines, "✓ Socket Mode")
    assert world.slack.socket_count == 0  # nothing connected

    world.env.setenv("SLACK_APP_TOKEN", "xapp-1-A0APP-0000000000000-wrongwrongwrong")
    code, lines = await world.doctor()
    assert code == 1
    assert line(lines, "✗ Socket Mode") == "✗ Socket Mode: SLACK_APP_TOKEN refused (invalid_auth)"


async def test_a_refused_or_unreachable_slack_fails(world: World) -> None:
    world.env.setenv("SLACK_BOT_TOKEN", "xoxb-000-000-NOTTHEBOTTOKEN")
    code, lines = await world.doctor()
    assert code == 1
    assert line(lines, "✗ Slack auth.test") == "✗ Slack auth.test: SLACK_BOT_TOKEN refused (invalid_auth)"
    assert not [entry for entry in lines if "scopes" in entry]

    world.env.setenv("SLACK_API_URL", f"http://127.0.0.1:{free_port()}/api/")
    code, lines = await world.doctor()
    assert code == 1
    assert "cannot reach the Slack Web API" in line(lines, "✗ Slack auth.test")


async def test_an_unreachable_or_disabled_provider(world: World) -> None:
    world.env.setenv("AGEN_API_URL", f"http://127.0.0.1:{free_port()}")
    world.env.delenv("FEATHER_API_KEY")

    code, lines = await world.doctor()

    assert code == 1
    assert line(lines, "✗ Agen:").startswith("✗ Agen: cannot reach http://127.0.0.1:")
    assert line(lines, "- Feather:") == "- Feather: not enabled (FEATHER_API_KEY is not set)"


def test_every_provider_has_a_probe_on_its_read_spec() -> None:
    assert set(READ_PROBES) == set(PROVIDERS) == set(PROVIDER_READ_OPERATIONS)
    for name, (template, session) in READ_PROBES.items():
        operation = PROVIDER_READ_OPERATIONS[name]
        validator = SpecValidator(operation.spec_file, operation.path_template, operation.method)
        path = template.format(id=session)
        assert validator.match(path) is not None, (name, path)
        assert PROVIDERS[name].accepts_session_id(session)


def test_every_subscribed_event_names_its_scope() -> None:
    assert set(EVENT_SCOPES) == set(BOT_EVENTS)
    assert set(EVENT_SCOPES.values()) <= set(BOT_SCOPES)


async def test_database_problems_each_have_their_line(world: World, tmp_path: Path) -> None:
    world.env.setenv("DATABASE_URL", "mysql://relay@127.0.0.1/relay")
    code, lines = await world.doctor()
    assert code == 1
    assert "unsupported DATABASE_URL" in line(lines, "✗ database")

    empty = tmp_path / "empty.db"
    empty.touch()
    world.env.setenv("DATABASE_URL", f"sqlite:///{empty}")
    code, lines = await world.doctor()
    assert line(lines, "✗ migrations") == "✗ migrations: no schema yet: run `agent-relay migrate`"

    world.env.setenv("DATABASE_URL", "sqlite:///:memory:")
    code, lines = await world.doctor()
    assert line(lines, "✗ migrations") == "✗ migrations: no schema yet: run `agent-relay migrate`"

    world.env.setenv("DATABASE_URL", "postgresql://relay:hunter2-pw@127.0.0.1:notaport/relay")
    code, lines = await world.doctor()
    assert "invalid PostgreSQL URL postgresql://***@127.0.0.1:notaport/relay" in line(lines, "✗ database")
    assert "hunter2" not in "\n".join(lines)

    with closing(sqlite3.connect(world.db)) as db, db:
        db.execute("UPDATE schema_version SET version = 99")
    world.env.setenv("DATABASE_URL", f"sqlite:///{world.db}")
    code, lines = await world.doctor()
    assert code == 1
    assert "schema version 99 is newer than this agent-relay" in line(lines, "✗ migrations")


async def test_a_database_that_refuses_writes_fails(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async def read_only(_self: SQLiteStore) -> None:
        raise StoreError("attempt to write a readonly database")

    monkeypatch.setattr(SQLiteStore, "check", read_only)
    code, lines = await world.doctor()
    assert code == 1
    assert line(lines, "✗ database writable") == "✗ database writable: attempt to write a readonly database"
    line(lines, "✓ migrations")


async def test_without_a_bot_token_slack_is_not_tried(world: World) -> None:
    world.env.delenv("SLACK_BOT_TOKEN")
    code, lines = await world.doctor()
    assert code == 1
    assert line(lines, "✗ SLACK_BOT_TOKEN") == "✗ SLACK_BOT_TOKEN: missing (http mode needs it)"
    assert line(lines, "- Slack auth.test") == "- Slack auth.test: not tried: SLACK_BOT_TOKEN is not set"
    assert world.slack.calls == []


async def test_socket_mode_token_refused_by_a_failing_slack(world: World) -> None:
    world.slack.app_token = APP_TOKEN
    world.env.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    world.slack.fail_next(
        "apps.connections.open", status=400, error="not_allowed_token_type", retry_after=None
    )
    code, lines = await world.doctor(mode="socket")
    assert code == 1
    assert line(lines, "✗ Socket Mode") == "✗ Socket Mode: SLACK_APP_TOKEN refused (not_allowed_token_type)"


async def test_a_provider_without_a_known_read_is_said_not_checked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(READ_PROBES, "agen")
    code, lines = await world.doctor()
    assert code == 0
    assert line(lines, "- Agen") == "- Agen: AGEN_API_KEY not checked: no harmless request is known"
    assert world.providers["agen"].reads == []


@pytest.mark.parametrize(
    ("answer", "mark", "says"),
    [
        (403, "✗", "DEVIN_API_KEY refused (HTTP 403 to GET /v1/sessions/devin-agentrelaydoctor0000"),
        (200, "✓", "DEVIN_API_KEY accepted"),
        (500, "✗", "unexpected HTTP 500 from http://devin.test"),
        ("timeout", "✗", "http://devin.test did not answer within"),
    ],
)
async def test_provider_answers(
    clean_env: pytest.MonkeyPatch, answer: int | str, mark: str, says: str
) -> None:
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if answer == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        assert isinstance(answer, int)
        return httpx.Response(answer, json={"detail": "x"})

    settings = Settings(_env_file=None, devin_api_key="k-123456", devin_api_url="http://devin.test")  # type: ignore[call-arg]
    [devin, *_] = await check_providers(settings, transport=httpx.MockTransport(reply))

    assert devin.line().startswith(f"{mark} Devin: {says}"), devin.line()
    [request] = seen
    assert (request.method, request.headers["authorization"]) == ("GET", "Bearer k-123456")
