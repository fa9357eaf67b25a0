from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.settings import CoreSettings, MissingSettings, Settings


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_provider_is_enabled_by_its_key_and_urls_are_configurable() -> None:
    settings = make(agen_api_key="k", agen_api_url="http://127.0.0.1:8000/", feather_api_key="  ")
    assert settings.provider_key("agen") is not None
    assert settings.provider_key("feather") is None  # blank is not a key
    assert settings.provider_key("devin") is None
    assert settings.provider_url("agen") == "http://127.0.0.1:8000"
    assert settings.provider_url("devin") == "https://api.devin.ai"


def test_lists_are_comma_separated_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOW_LINK", " U1, S2 ,admins,")
    monkeypatch.setenv("DEVIN_CHANNELS", "C1")
    settings = make()
    assert settings.allow_link == ("U1", "S2", "admins")
    assert settings.provider_channels("devin") == ("C1",)
    assert settings.allowed_channels == ()


def test_mode_follows_the_app_token_and_required_names_follow_the_mode() -> None:
    assert make(slack_app_token="xapp-1").run_mode() == "socket"
    assert make().run_mode() == "http"
    assert make(slack_app_token="xapp-1").run_mode("http") == "http"
    with pytest.raises(MissingSettings) as caught:
        make(slack_bot_token="xoxb-1").check_required("http")
    assert caught.value.names == [
        "SLACK_SIGNING_SECRET",
        "one of DEVIN_API_KEY, FEATHER_API_KEY, AGEN_API_KEY",
    ]


def test_secrets_never_show_in_repr_or_errors() -> None:
    settings = make(slack_bot_token="xoxb-very-secret", devin_api_key="apk_secret")
    assert "xoxb-very-secret" not in repr(settings)
    assert sorted(settings.secrets()) == ["apk_secret", "xoxb-very-secret"]
    with pytest.raises(ValidationError) as caught:
        make(port="secret-looking-port")
    assert "secret-looking-port" not in str(caught.value)


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name.upper() for name in CoreSettings.model_fields if f"`{name.upper()}`" not in readme]
    assert missing == []
