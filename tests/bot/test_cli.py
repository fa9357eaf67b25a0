"""The agent-relay command as a user runs it: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

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
