"""``agent-relay doctor``: check the settings, Slack, the database and the providers, change nothing.

A checklist, one line per check: ``✓`` passed, ``✗`` failed (the command exits 1), ``-`` could not be
checked from here (says why; not a failure). Every request it makes is harmless:

* Slack: ``auth.test`` (who the token is; the granted scopes come in its ``x-oauth-scopes`` header
  and are compared with the manifest's), and in Socket Mode ``apps.connections.open`` (the app-level
  token; the WebSocket address it returns is never opened). Event subscriptions cannot be read
  with these tokens (only an app configuration token can export the manifest): the doctor checks
  that each subscribed event's scope is granted, and says so.
* The database: opened without migrating or creating anything, its schema version compared with
  this code's migrations, and ``check()`` (reachable, writable).
* Each enabled provider: one GET of the session-read endpoint for a session id that cannot exist.
  404 means the key was accepted (and the session, as expected, not found); 401 or 403 that it was
  refused. No message is ever sent.

No secret is printed: settings are named, never shown.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import aiohttp
import httpx
from pydantic import ValidationError
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot import __version__
from bot.manifest import BOT_EVENTS, BOT_SCOPES, EVENT_SCOPES
from bot.providers import PROVIDERS
from bot.providers.base import encode_segment
from bot.settings import MissingSettings, Settings
from storage import StoreError, open_store
from storage._common import redact_url

PASS, FAIL, SKIP = "✓", "✗", "-"
PROBE_TIMEOUT = 10.0

#: Per provider, a harmless read request (from ``tests/specs/*-read.yaml``) and a session id that
#: cannot exist, so that the answer says whether the key was accepted without touching a session.
READ_PROBES: Mapping[str, tuple[str, str]] = {
    "devin": ("/v1/sessions/{id}", "devin-agentrelaydoctor0000"),
    "feather": ("/v1/ask-feather/sessions/{id}", "00000000-0000-0000-0000-000000000000"),
    "agen": ("/api/v1/sessions/{id}/events", "agentrelaydoctor0000"),
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool | None  # None: could not be checked from here
    detail: str

    def line(self) -> str:
        mark = SKIP if self.ok is None else PASS if self.ok else FAIL
        return f"{mark} {self.name}: {self.detail}"


def _setting_name(loc: Sequence[int | str]) -> str:
    return "_".join(str(part) for part in loc).upper() or "settings"


def load_settings(**values: Any) -> tuple[Settings, list[Check]]:
    """Settings from the environment, and one failed check per invalid variable. The invalid ones
    are replaced by their defaults (every default is valid) so that the other checks can still run."""
    try:
        return Settings(**values), [Check("settings", True, "every variable set is valid")]
    except ValidationError as exc:
        errors = exc.errors()
    checks = [Check(_setting_name(e["loc"]), False, f"invalid: {e['msg']}") for e in errors]
    fields = Settings.model_fields
    defaults = {str(e["loc"][0]): fields[str(e["loc"][0])].default for e in errors if e["loc"]}
    return Settings(**{**values, **defaults}), checks


def check_required(settings: Settings, mode: Literal["socket", "http"]) -> list[Check]:
    try:
        settings.check_required(mode)
    except MissingSettings as exc:
        return [Check(name, False, f"missing ({mode} mode needs it)") for name in exc.names]
    return [Check("required settings", True, f"all set for {mode} mode")]


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return str(value[0] if isinstance(value, list | tuple) and value else value)
    return None


async def _ask_slack(
    call: Awaitable[AsyncSlackResponse], variable: str
) -> tuple[AsyncSlackResponse | None, str]:
    """Slack's answer, or None and why there is none."""
    try:
        return await call, ""
    except SlackApiError as exc:
        return None, f"{variable} refused ({exc.response.get('error') or 'no reason given'})"
    except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        return None, f"cannot reach the Slack Web API ({type(exc).__name__})"


async def check_slack(settings: Settings, mode: Literal["socket", "http"]) -> list[Check]:
    token = settings.slack_bot_token
    if token is None:
        return [Check("Slack auth.test", None, "not tried: SLACK_BOT_TOKEN is not set")]
    kwargs: dict[str, Any] = {"timeout": PROBE_TIMEOUT}
    if settings.slack_api_url:
        url = settings.slack_api_url
        kwargs["base_url"] = url if url.endswith("/") else url + "/"
    auth, why = await _ask_slack(
        AsyncWebClient(token=token.get_secret_value(), **kwargs).auth_test(), "SLACK_BOT_TOKEN"
    )
    if auth is None:
        return [Check("Slack auth.test", False, why)]
    who = f"bot user {auth.get('user_id')} ({auth.get('user')})"
    who += f" in team {auth.get('team_id')} ({auth.get('team')})"
    checks = [Check("Slack auth.test", True, who)]
    checks += _scope_checks(_header(auth.headers, "x-oauth-scopes"))
    if mode == "socket" and settings.slack_app_token is not None:
        # A WebSocket address is handed out and never opened: nothing connects.
        app_token = settings.slack_app_token.get_secret_value()
        client = AsyncWebClient(token=app_token, **kwargs)
        opened, why = await _ask_slack(client.apps_connections_open(app_token=app_token), "SLACK_APP_TOKEN")
        detail = "SLACK_APP_TOKEN accepted (apps.connections.open; nothing connected)"
        checks.append(Check("Socket Mode", opened is not None, why or detail))
    elif mode == "http" and settings.slack_signing_secret is not None:
        detail = "set; only Slack's own signed requests can prove it right (a wrong one: 401 to every event)"
        checks.append(Check("SLACK_SIGNING_SECRET", None, detail))
    return checks


def _scope_checks(header: str | None) -> list[Check]:
    events = ", ".join(BOT_EVENTS)
    not_visible = (
        "the subscriptions themselves cannot be read with a bot or app token; compare the app's "
        f"Event Subscriptions with manifest.yml ({events})"
    )
    if header is None:
        return [
            Check("scopes", None, "Slack sent no x-oauth-scopes header, so the granted scopes are unknown"),
            Check("event subscriptions", None, not_visible),
        ]
    granted = {scope.strip() for scope in header.split(",") if scope.strip()}
    missing = [scope for scope in BOT_SCOPES if scope not in granted]
    if missing:
        scopes = Check(
            "scopes",
            False,
            f"missing {', '.join(missing)}: add them (or paste manifest.yml again) and reinstall the app",
        )
    else:
        scopes = Check("scopes", True, f"all {len(BOT_SCOPES)} scopes of the manifest are granted")
    undeliverable = [event for event in BOT_EVENTS if EVENT_SCOPES[event] not in granted]
    if undeliverable:
        needs = ", ".join(f"{event} needs {EVENT_SCOPES[event]}" for event in undeliverable)
        subscriptions = Check("event subscriptions", False, f"cannot be delivered: {needs}")
    else:
        subscriptions = Check(
            "event subscriptions", True, f"every subscribed event's scope is granted; {not_visible}"
        )
    return [scopes, subscriptions]


async def check_database(settings: Settings) -> list[Check]:
    where = redact_url(settings.database_url)
    try:
        store = open_store(settings.database_url)
    except StoreError as exc:
        return [Check("database", False, str(exc))]
    try:
        try:
            await store.open_existing()
        except StoreError as exc:
            return [Check("database", False, f"cannot open {where}: {exc}")]
        checks = [Check("database", True, f"reachable ({where})")]
        try:
            version, missing = await store.schema_version(), await store.migrations_missing()
        except StoreError:
            checks.append(Check("migrations", False, "no schema yet: run `agent-relay migrate`"))
            return checks
        if missing > 0:
            detail = f"schema version {version}, {missing} migration(s) missing: run `agent-relay migrate`"
            checks.append(Check("migrations", False, detail))
        elif missing < 0:
            detail = f"schema version {version} is newer than this agent-relay ({__version__}) knows"
            checks.append(Check("migrations", False, detail + ": upgrade agent-relay"))
        else:
            checks.append(Check("migrations", True, f"current (schema version {version})"))
        try:
            await store.check()
        except StoreError as exc:
            checks.append(Check("database writable", False, str(exc)))
        else:
            checks.append(Check("database writable", True, "a write probe succeeded"))
        return checks
    finally:
        await store.close()


async def check_providers(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[Check]:
    checks = []
    for name, cls in PROVIDERS.items():
        variable = f"{name.upper()}_API_KEY"
        key = settings.provider_key(name)
        if key is None:
            checks.append(Check(cls.label, None, f"not enabled ({variable} is not set)"))
            continue
        probe = READ_PROBES.get(name)
        if probe is None:
            checks.append(Check(cls.label, None, f"{variable} not checked: no harmless request is known"))
            continue
        template, session = probe
        path = template.format(id=encode_segment(session))
        base = settings.provider_url(name)
        headers = {**cls._auth_headers(key), "user-agent": f"agent-relay/{__version__} doctor"}
        timeout = min(settings.provider_timeout, PROBE_TIMEOUT)
        try:
            async with httpx.AsyncClient(
                base_url=base, headers=headers, timeout=timeout, transport=transport, follow_redirects=False
            ) as client:
                response = await client.get(path)
        except httpx.TimeoutException:
            checks.append(Check(cls.label, False, f"{base} did not answer within {timeout:g}s"))
            continue
        except httpx.TransportError as exc:
            checks.append(Check(cls.label, False, f"cannot reach {base} ({type(exc).__name__})"))
            continue
        status = response.status_code
        asked = f"GET {path}, a session that cannot exist"
        if status in (401, 403):
            checks.append(Check(cls.label, False, f"{variable} refused (HTTP {status} to {asked})"))
        elif status == 404 or 200 <= status < 300:
            checks.append(Check(cls.label, True, f"{variable} accepted ({asked} answered {status})"))
        else:
            checks.append(Check(cls.label, False, f"unexpected HTTP {status} from {base} to {asked}"))
    return checks


async def run_doctor(
    *,
    mode: Literal["socket", "http"] | None = None,
    out: TextIO | None = None,
    settings_values: Mapping[str, Any] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Print the checklist; return 1 when any check failed, else 0."""
    out = out or sys.stdout
    checks: list[Check] = []

    def report(new: list[Check]) -> None:
        for check in new:
            out.write(check.line() + "\n")
            out.flush()
        checks.extend(new)

    settings, loaded = load_settings(**dict(settings_values or {}))
    report(loaded)
    run_mode = settings.run_mode(mode)
    report(check_required(settings, run_mode))
    report(await check_slack(settings, run_mode))
    report(await check_database(settings))
    report(await check_providers(settings, transport=transport))
    failed = sum(1 for check in checks if check.ok is False)
    out.write(f"{len(checks)} checks, {failed} failed\n")
    return 1 if failed else 0
