"""Settings, read once from the environment or a ``.env`` file (pydantic-settings).

Names are exactly the documented environment variables (README, "Settings"). Secrets are
``SecretStr`` so that they never show in a repr, a log line or a validation error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CsvList = Annotated[tuple[str, ...], NoDecode]
POLICY_KEYWORDS = frozenset({"everyone", "admins", "linker"})

DEFAULT_URLS = {
    "devin": "https://api.devin.ai",
    "feather": "https://api-sandbox.featherhq.com",
    "agen": "https://api.agenhq.com",
}


class MissingSettings(Exception):
    """Raised with the names of every missing variable, for a one-line start-up error."""

    def __init__(self, names: list[str]) -> None:
        super().__init__("missing settings: " + ", ".join(names))
        self.names = names


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    # Slack
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None  # Socket Mode
    slack_signing_secret: SecretStr | None = None  # HTTP mode
    slack_api_url: str | None = None  # Web API base URL, e.g. for a proxy or a test double

    # Providers: enabled when the key is set
    devin_api_key: SecretStr | None = None
    devin_api_url: str = DEFAULT_URLS["devin"]
    devin_web_url: str = "https://app.devin.ai"
    feather_api_key: SecretStr | None = None
    feather_api_url: str = DEFAULT_URLS["feather"]
    agen_api_key: SecretStr | None = None
    agen_api_url: str = DEFAULT_URLS["agen"]
    provider_timeout: float = Field(default=20.0, gt=0)  # seconds, per attempt
    max_message_chars: int = Field(default=30_000, ge=100)

    # Storage and serving
    database_url: str = "sqlite:///./data/agent-relay.db"
    port: int = Field(default=3000, ge=1, le=65535)
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

    # Access policy
    allow_link: CsvList = ("everyone",)
    allow_unlink: CsvList = ("linker", "admins")
    allowed_channels: CsvList = ()  # empty: every channel the bot is in
    devin_channels: CsvList = ()
    feather_channels: CsvList = ()
    agen_channels: CsvList = ()
    allowed_external_teams: CsvList = ()
    aside_prefix: str = "!aside"

    @field_validator(
        "allow_link",
        "allow_unlink",
        "allowed_channels",
        "devin_channels",
        "feather_channels",
        "agen_channels",
        "allowed_external_teams",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
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

    # -- derived -------------------------------------------------------------------------------
    def provider_key(self, name: str) -> SecretStr | None:
        key: SecretStr | None = getattr(self, f"{name}_api_key")
        if key is None or not key.get_secret_value().strip():
            return None
        return key

    def provider_url(self, name: str) -> str:
        url: str = getattr(self, f"{name}_api_url")
        return url.rstrip("/")

    def provider_channels(self, name: str) -> tuple[str, ...]:
        channels: tuple[str, ...] = getattr(self, f"{name}_channels")
        return channels

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction and leak tests."""
        values = [
            self.slack_bot_token,
            self.slack_app_token,
            self.slack_signing_secret,
            self.devin_api_key,
            self.feather_api_key,
            self.agen_api_key,
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
        if not any(self.provider_key(name) for name in DEFAULT_URLS):
            missing.append("one of DEVIN_API_KEY, FEATHER_API_KEY, AGEN_API_KEY")
        if missing:
            raise MissingSettings(missing)
