"""The provider registry is the only list of providers: settings, parser, help and manifest follow it.

A throwaway fourth provider, registered for one test, must be configurable, linkable and named in
help and the manifest without any other production change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from bot.commands import Invalid, Link, SessionRef, help_text, parse_command
from bot.manifest import build_manifest
from bot.outcomes import Delivered, Outcome
from bot.providers import PROVIDERS, Capability, Provider, SessionRefError, build_providers
from bot.providers.base import echo
from bot.settings import MissingSettings, Settings, settings_class
from tests.fakes.specs import PROVIDER_OPERATIONS, spec_path, specs_dir

_ZED_ID = re.compile(r"[a-z0-9]{1,8}")


class _ZedMessage(BaseModel):
    text: str


class ZedProvider(Provider):
    """A provider that exists only in this test module."""

    name: ClassVar[str] = "zed"
    label: ClassVar[str] = "Zed"
    default_api_url: ClassVar[str] = "https://api.zed.test"
    default_web_url: ClassVar[str | None] = "https://zed.test"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.END_SESSION})
    id_prefix: ClassVar[str | None] = "zed-"
    web_domains: ClassVar[tuple[str, ...]] = ("zed.test",)
    session_url_example: ClassVar[str | None] = "https://zed.test/s/<id>"

    @classmethod
    def _normalise_session_id(cls, raw: str) -> str:
        bare = raw.lower().removeprefix("zed-")
        if _ZED_ID.fullmatch(bare) is None:
            raise SessionRefError(f"{echo(raw)} is not a Zed session id.")
        return f"zed-{bare}"

    @classmethod
    def session_id_from_url(cls, url: str) -> str | None:
        parts = urlsplit(url)
        if parts.hostname == "zed.test" and parts.path.startswith("/s/"):
            return parts.path.removeprefix("/s/")
        return None

    @staticmethod
    def _auth_headers(api_key: SecretStr) -> dict[str, str]:
        return {"x-zed-key": api_key.get_secret_value()}

    def _path(self, session_id: str) -> str:
        return f"/s/{session_id}"

    def _body(self, text: str, client_id: str) -> BaseModel:
        return _ZedMessage(text=text)

    def _delivered(self, response: httpx.Response) -> Outcome:
        return Delivered()

    def session_url(self, session_id: str) -> str | None:
        return f"{self._web_url}/s/{session_id}" if self._web_url else None


@pytest.fixture
def zed(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Provider]]:
    """The registry with Zed added after the real providers, for one test."""
    monkeypatch.setitem(cast("dict[str, type[Provider]]", PROVIDERS), "zed", ZedProvider)
    yield ZedProvider
    assert list(PROVIDERS)[-1] == "zed"  # nothing replaced the registry object under the test


async def test_a_registered_provider_gets_its_settings_block(
    zed: type[Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZED_API_KEY", "zed-secret-key")
    monkeypatch.setenv("ZED_API_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("ZED_CHANNELS", "C1, C2")
    settings = settings_class(PROVIDERS)(_env_file=None)  # type: ignore[call-arg]
    assert settings.provider_key("zed") == SecretStr("zed-secret-key")
    assert settings.provider_url("zed") == "http://127.0.0.1:9"
    assert settings.provider_web_url("zed") == "https://zed.test"  # the provider's default
    assert settings.provider_channels("zed") == ("C1", "C2")
    assert "zed-secret-key" in settings.secrets()
    assert settings.provider_key("devin") is None  # the real blocks are still there

    clients = build_providers(settings)
    try:
        assert list(clients) == ["zed"]
        assert isinstance(clients["zed"], ZedProvider)
        assert clients["zed"].session_url("zed-a1") == "https://zed.test/s/zed-a1"
    finally:
        for client in clients.values():
            await client.aclose()

    monkeypatch.delenv("ZED_API_KEY")
    slack: dict[str, Any] = {"slack_bot_token": "xoxb-1", "slack_app_token": "xapp-1"}
    empty = settings_class(PROVIDERS)(_env_file=None, **slack)  # type: ignore[call-arg]
    with pytest.raises(MissingSettings) as caught:
        empty.check_required("socket")
    assert caught.value.names == ["one of DEVIN_API_KEY, FEATHER_API_KEY, AGEN_API_KEY, ZED_API_KEY"]


def test_a_registered_provider_can_be_linked(zed: type[Provider]) -> None:
    enabled = ("devin", "zed")
    assert parse_command("link zed a1", enabled=enabled) == Link(SessionRef("zed", "zed-a1"))
    assert parse_command("link ZED-B2", enabled=enabled) == Link(SessionRef("zed", "zed-b2"))
    assert parse_command("link https://zed.test/s/c3", enabled=enabled) == Link(SessionRef("zed", "zed-c3"))
    assert parse_command("link zed.test/s/d4", enabled=enabled) == Link(SessionRef("zed", "zed-d4"))
    wrong = parse_command("link devin https://zed.test/s/c3", enabled=enabled)
    assert isinstance(wrong, Invalid)
    assert "That is a Zed session URL, not a Devin one. Use `link zed <url>`" in wrong.message
    unknown = parse_command("link gemini x", enabled=enabled)
    assert isinstance(unknown, Invalid)
    assert "Enabled providers: Devin, Zed." in unknown.message
    page = parse_command("link https://example.com/x", enabled=enabled)
    assert isinstance(page, Invalid)
    assert "a Zed session URL (`https://zed.test/s/<id>`)" in page.message
    assert isinstance(parse_command("link zed a1", enabled=("devin",)), Invalid)  # not enabled


def test_help_and_manifest_name_a_registered_provider(zed: type[Provider]) -> None:
    text = help_text(("zed",))
    assert "Enabled providers: Zed." in text
    assert "the provider comes from a Devin or Zed URL or id" in text
    description = build_manifest()["display_information"]["description"]
    assert "(Devin, Feather, Agen, Zed)" in description


# -- the real registry -------------------------------------------------------------------------


def test_the_registry_lists_the_three_providers_in_order() -> None:
    assert [(name, cls.label) for name, cls in PROVIDERS.items()] == [
        ("devin", "Devin"),
        ("feather", "Feather"),
        ("agen", "Agen"),
    ]
    assert all(name == cls.name for name, cls in PROVIDERS.items())


def test_settings_fields_come_from_the_registry() -> None:
    assert Settings.provider_names == tuple(PROVIDERS)
    generated = {f for f in Settings.model_fields if f.split("_", 1)[0] in PROVIDERS}
    assert generated == {
        "devin_api_key",
        "devin_api_url",
        "devin_web_url",
        "devin_channels",
        "feather_api_key",
        "feather_api_url",
        "feather_channels",
        "agen_api_key",
        "agen_api_url",
        "agen_channels",
    }


def test_help_and_manifest_name_every_registered_provider() -> None:
    text = help_text(tuple(PROVIDERS))
    assert "Enabled providers: Devin, Feather, Agen." in text
    assert build_manifest()["display_information"]["description"] == (
        "Steer AI coding-agent sessions (Devin, Feather, Agen) from Slack threads."
    )


def _operations(provider: str) -> list[tuple[str, str]]:
    """(method, path) of every operation in the provider's spec files (send and read)."""
    stem = PROVIDER_OPERATIONS[provider].spec_file.removesuffix(".yaml")
    found = []
    for path in sorted(specs_dir().glob(f"{stem}*.yaml")):
        document = yaml.safe_load(spec_path(path.name).read_text(encoding="utf-8"))
        for route, item in document["paths"].items():
            found += [(method.upper(), route) for method in item if method in ("get", "post", "delete")]
    return found


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_capabilities_are_what_the_specs_document(provider: str) -> None:
    operations = _operations(provider)
    assert ("POST", PROVIDER_OPERATIONS[provider].path_template) in operations
    reads = any(method == "GET" and "/sessions/{" in route for method, route in operations)
    ends = any(
        method == "DELETE" or re.search(r"/(end|stop|terminate|archive|cancel)$", route)
        for method, route in operations
    )
    declared = PROVIDERS[provider].capabilities
    assert (Capability.READ_SESSION in declared) == reads
    assert (Capability.END_SESSION in declared) == ends


def test_the_registry_reports_capabilities() -> None:
    assert {name: cls.capabilities for name, cls in PROVIDERS.items()} == {
        "devin": {Capability.READ_SESSION},
        "feather": {Capability.READ_SESSION},
        "agen": {Capability.READ_SESSION},
    }
