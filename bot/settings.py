"""Settings, read once from the environment or a ``.env`` file (pydantic-settings).

Names are exactly the documented environment variables (README, "Settings"). Secrets are
``SecretStr`` so that they never show in a repr, a log line or a validation error.

Provider settings come from the registry (:data:`bot.providers.PROVIDERS`): each provider class
declares its block (:attr:`~bot.providers.base.Provider.default_api_url`, and
:attr:`~bot.providers.base.Provider.default_web_url` where it has session pages), and
:func:`settings_class` adds flat fields ``<name>_api_key``, ``<name>_api_url``, ``<name>_web_url``
(only with a web URL) and ``<name>_channels`` to :class:`CoreSettings` with
``pydantic.create_model``. Flat fields keep the environment names (``DEVIN_API_KEY``) and keyword
construction (``Settings(devin_api_key=...)``) as they were.

For mypy, :data:`Settings` is :class:`CoreSettings`: the generated fields are not attributes the
type checker knows, so code reads them through :meth:`CoreSettings.provider_key`,
:meth:`~CoreSettings.provider_url`, :meth:`~CoreSettings.provider_web_url` and
:meth:`~CoreSettings.provider_channels`, which are typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, SecretStr, create_model
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.providers import PROVIDERS
from bot.providers.base import Provider

POLICY_KEYWORDS = frozenset({"everyone", "admins", "linker"})


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, list | tuple):
        # Keywords in any case (``Admins``, ``EVERYONE``) mean the keyword, not a user id.
        return tuple(
            part.lower() if part.lower() in POLICY_KEYWORDS else part
            for part in (str(p).strip() for p in value)
            if part
        )
    return value


#: A comma-separated list in the environment (not JSON), a tuple in Python.
CsvList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_csv)]


class MissingSettings(Exception):
    """Raised with the names of every missing variable, for a one-line start-up error."""

    def __init__(self, names: list[str]) -> None:
        super().__init__("missing settings: " + ", ".join(names))
        self.names = names


class CoreSettings(BaseSettings):
    """Every setting but the providers' own; :func:`settings_class` adds those."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    #: The providers whose fields the class has, in registry order (set by :func:`settings_class`).
    provider_names: ClassVar[tuple[str, ...]] = ()

    # Slack
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None  # Socket Mode
    slack_signing_secret: SecretStr | None = None  # HTTP mode
    slack_api_url: str | None = None  # Web API base URL, e.g. for a proxy or a test double

    # Providers: <name>_api_key (enabled when set), <name>_api_url, <name>_web_url, <name>_channels
    provider_timeout: float = Field(default=20.0, gt=0)  # seconds, per attempt
    max_message_chars: int = Field(default=30_000, ge=100)

    # Storage and serving
    database_url: str = "sqlite:///./data/agent-relay.db"
    port: int = Field(default=3000, ge=1, le=65535)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # /livez, /readyz, /metrics on a side port
    retention_days: float | None = Field(default=None, gt=0)  # purge stored text after this many days
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    # Relay behaviour (delivery guarantees)
    relay_concurrency: int = Field(default=32, ge=1)  # threads sent to at once
    relay_retry_budget: float = Field(default=300.0, gt=0)  # seconds per message
    relay_retry_max_wait: float = Field(default=30.0, gt=0)  # cap of one backoff wait
    relay_order_window: float = Field(default=0.25, ge=0)  # seconds to let late events arrive
    relay_edits: bool = True
    relay_lease_seconds: float = Field(default=30.0, ge=1)  # a claim's lease; renewed during long calls
    relay_poll_interval: float = Field(default=1.0, gt=0)  # longest sleep between looks at the store
    shutdown_deadline: float = Field(default=10.0, gt=0)

    # The agent's side in the thread (bot.mirror)
    mirror_default: Literal["on", "off", "final"] = "on"  # a thread's mode until `mirror ...` changes it
    mirror_poll_interval: float = Field(default=5.0, gt=0)  # seconds between reads of a working session
    mirror_idle_max: float = Field(default=120.0, gt=0)  # cap of the doubling wait of an idle session
    mirror_reads_per_provider: int = Field(default=4, ge=1)  # reads in flight per provider, per process
    mirror_web_messages: bool = False  # show others' messages from the provider's web app
    mirror_slack_status: bool = False  # also set Slack's native agent-session status

    # Access policy
    allow_link: CsvList = ("everyone",)
    allow_unlink: CsvList = ("linker", "admins")
    allowed_channels: CsvList = ()  # empty: every channel the bot is in
    allowed_external_teams: CsvList = ()
    aside_prefix: str = "!aside"

    # -- derived -------------------------------------------------------------------------------
    def provider_key(self, name: str) -> SecretStr | None:
        key: SecretStr | None = getattr(self, f"{name}_api_key")
        if key is None or not key.get_secret_value().strip():
            return None
        return key

    def provider_url(self, name: str) -> str:
        url: str = getattr(self, f"{name}_api_url")
        return url.rstrip("/")

    def provider_web_url(self, name: str) -> str | None:
        """Where the provider shows a session to people; None when it has no such pages."""
        url: str | None = getattr(self, f"{name}_web_url", None)
        return url.rstrip("/") if url else None

    def provider_channels(self, name: str) -> tuple[str, ...]:
        channels: tuple[str, ...] = getattr(self, f"{name}_channels")
        return channels

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction and leak tests."""
        values: list[SecretStr | None] = [
            self.slack_bot_token,
            self.slack_app_token,
            self.slack_signing_secret,
            *(getattr(self, f"{name}_api_key") for name in self.provider_names),
        ]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]

    def run_mode(self, override: str | None = None) -> Literal["socket", "http"]:
        if override in ("socket", "http"):
            return override  # type: ignore[return-value]
        return "socket" if self.slack_app_token else "http"

    def check_required(self, mode: Literal["socket", "http"]) -> None:
        """Raise :class:`MissingSettings` naming every variable that ``mode`` needs and lacks."""
        missing: list[str] = []
        if not self.slack_bot_token:
            missing.append("SLACK_BOT_TOKEN")
        if mode == "socket" and not self.slack_app_token:
            missing.append("SLACK_APP_TOKEN")
        if mode == "http" and not self.slack_signing_secret:
            missing.append("SLACK_SIGNING_SECRET")
        if not any(self.provider_key(name) for name in self.provider_names):
            keys = ", ".join(f"{name.upper()}_API_KEY" for name in self.provider_names)
            missing.append(f"one of {keys}")
        if missing:
            raise MissingSettings(missing)


def _provider_fields(provider: type[Provider]) -> dict[str, Any]:
    """The settings block of one provider, as ``create_model`` field definitions."""
    name = provider.name
    fields: dict[str, Any] = {
        f"{name}_api_key": (SecretStr | None, None),
        f"{name}_api_url": (str, provider.default_api_url),
    }
    if provider.default_web_url is not None:
        fields[f"{name}_web_url"] = (str, provider.default_web_url)
    fields[f"{name}_channels"] = (CsvList, ())
    return fields


def settings_class(providers: Mapping[str, type[Provider]]) -> type[CoreSettings]:
    """:class:`CoreSettings` with the settings block of every provider in ``providers``."""
    fields: dict[str, Any] = {}
    for provider in providers.values():
        fields.update(_provider_fields(provider))
    cls = create_model("Settings", __base__=CoreSettings, __module__=__name__, **fields)
    cls.provider_names = tuple(providers)
    return cls


if TYPE_CHECKING:
    Settings = CoreSettings
else:
    Settings = settings_class(PROVIDERS)
