"""The agent-relay command as a user runs it: a real subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiosqlite
import yaml

from storage.migrations import apply_migrations, load_migrations

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DEVIN_", "FEATHER_", "AGEN_"))
    }
    clean.pop("DATABASE_URL", None)
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_manifest_prints_valid_yaml() -> None:
    result = run_cli("manifest")
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["features"]["slash_commands"][0]["command"] == "/agent"


def test_missing_settings_stop_start_up_with_one_line_naming_each(tmp_path: Path) -> None:
    result = run_cli("run", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "SLACK_BOT_TOKEN" in lines[0]
    assert "SLACK_SIGNING_SECRET" in lines[0]  # no app token: HTTP mode
    assert "DEVIN_API_KEY" in lines[0]


def test_socket_mode_needs_the_app_token(tmp_path: Path) -> None:
    result = run_cli(
        "run", "--mode", "socket", env={"SLACK_BOT_TOKEN": "xoxb-1", "AGEN_API_KEY": "k"}, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "SLACK_APP_TOKEN" in result.stderr
    assert "SLACK_BOT_TOKEN" not in result.stderr


def test_invalid_setting_is_named_without_echoing_its_value(tmp_path: Path) -> None:
    result = run_cli("run", env={"PORT": "not-a-port-secretish", "SLACK_BOT_TOKEN": "xoxb-1"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "PORT" in result.stderr
    assert "not-a-port-secretish" not in result.stderr


def test_refused_bot_token_stops_start_up_without_showing_it(tmp_path: Path) -> None:
    # Nothing listens on port 9 of loopback: the token cannot be checked, and start-up says so.
    token = "xoxb-000-000-NOTREAL"
    result = run_cli(
        "run",
        "--port",
        "0",
        env={
            "SLACK_BOT_TOKEN": token,
            "SLACK_SIGNING_SECRET": "s",
            "SLACK_API_URL": "http://127.0.0.1:9/api/",
            "DEVIN_API_KEY": "k",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        },
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "cannot reach the Slack Web API" in result.stderr
    assert token not in result.stderr


def _v1_database(path: Path) -> None:
    """A SQLite file at schema version 1, as an old agent-relay left it."""

    async def make() -> None:
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await apply_migrations(conn, load_migrations("sqlite")[:1])

    asyncio.run(make())


def test_migrate_applies_the_migrations_once_and_exits(tmp_path: Path) -> None:
    latest = load_migrations("sqlite")[-1].version
    db = tmp_path / "relay.db"
    _v1_database(db)
    env = {"DATABASE_URL": f"sqlite:///{db}"}

    first = run_cli("migrate", env=env, cwd=tmp_path)
    second = run_cli("migrate", env=env, cwd=tmp_path)
    fresh = run_cli("migrate", env={"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(f"is at schema version {latest} ({latest - 1} migration(s) applied)")
    assert second.stdout.strip().endswith(f"is at schema version {latest} (already current)")
    assert fresh.stdout.strip().endswith(f"is at schema version {latest} ({latest} migration(s) applied)")


def test_migrate_names_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    result = run_cli(
        "migrate", env={"DATABASE_URL": "postgresql://relay:hunter2-pw@127.0.0.1:9/relay"}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "cannot open the PostgreSQL database" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_doctor_prints_a_checklist_and_fails_on_any_failure(tmp_path: Path) -> None:
    token = "xoxb-000-000-NOTREAL"
    result = run_cli(
        "doctor",
        env={
            "SLACK_BOT_TOKEN": token,
            "SLACK_SIGNING_SECRET": "s3cr3t-signing",
            "SLACK_API_URL": "http://127.0.0.1:9/api/",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'missing.db'}",
            "RELAY_CONCURRENCY": "0",
        },
        cwd=tmp_path,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert any(entry.startswith("✗ RELAY_CONCURRENCY: invalid") for entry in lines)
    assert "✗ one of DEVIN_API_KEY, FEATHER_API_KEY, AGEN_API_KEY: missing (http mode needs it)" in lines
    assert any(entry.startswith("✗ Slack auth.test: cannot reach the Slack Web API") for entry in lines)
    assert any(entry.startswith("✗ database: cannot open") for entry in lines)
    assert lines[-1].endswith("failed")
    assert token not in result.stdout + result.stderr
    assert "s3cr3t-signing" not in result.stdout + result.stderr
    assert not (tmp_path / "missing.db").exists()
