"""The mirror's settings: defaults, validation, and the README's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.deps import mirror_config
from bot.settings import Settings
from storage import MirrorMode

ROOT = Path(__file__).resolve().parents[2]


def settings(**values: Any) -> Settings:
    values = {"slack_bot_token": "xoxb-1", "devin_api_key": "k" * 8, **values}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults() -> None:
    config = mirror_config(settings())
    assert config.default_mode is MirrorMode.ON
    assert (config.pace.interval, config.pace.idle_max) == (5.0, 120.0)
    assert (config.reads_per_provider, config.web_messages, config.slack_status) == (4, False, False)
    assert config.lease >= config.read_timeout  # a read never outlives the session's lease


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRROR_DEFAULT", "final")
    monkeypatch.setenv("MIRROR_POLL_INTERVAL", "2")
    monkeypatch.setenv("MIRROR_IDLE_MAX", "1")  # below the interval: the interval wins
    monkeypatch.setenv("MIRROR_WEB_MESSAGES", "true")
    monkeypatch.setenv("MIRROR_SLACK_STATUS", "1")
    config = mirror_config(settings())
    assert config.default_mode is MirrorMode.FINAL
    assert (config.pace.interval, config.pace.idle_max) == (2.0, 2.0)
    assert config.web_messages
    assert config.slack_status


@pytest.mark.parametrize(
    ("name", "value"),
    [("mirror_default", "sometimes"), ("mirror_poll_interval", 0), ("mirror_reads_per_provider", 0)],
)
def test_bad_values_are_refused(name: str, value: object) -> None:
    with pytest.raises(ValidationError):
        settings(**{name: value})


def test_every_mirror_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = [name.upper() for name in Settings.model_fields if name.startswith("mirror_")]
    assert len(names) == 6
    assert [name for name in names if f"| `{name}` |" not in readme] == []
