"""The ``agent-relay`` command: ``run`` the bot, ``migrate`` the database, check everything with
``doctor``, or print the Slack app ``manifest``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bot.doctor import run_doctor
from bot.logs import configure_logging
from bot.manifest import render_manifest
from bot.runtime import StartupError, serve
from bot.settings import MissingSettings, Settings
from storage import StoreError, open_store
from storage._common import redact_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-relay", description="Steer AI coding-agent sessions from Slack."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bot")
    run.add_argument("--mode", choices=["socket", "http"], help="default: socket if SLACK_APP_TOKEN is set")
    run.add_argument("--port", type=int, help="HTTP mode port (default: PORT or 3000)")
    run.add_argument("--host", default="0.0.0.0", help="HTTP mode address (default: 0.0.0.0)")  # noqa: S104
    sub.add_parser("migrate", help="apply the database migrations and exit (run also migrates)")
    doctor = sub.add_parser("doctor", help="check settings, Slack, the database and the providers")
    doctor.add_argument("--mode", choices=["socket", "http"], help="default: as run would choose")
    manifest = sub.add_parser("manifest", help="print the Slack app manifest")
    manifest.add_argument("--http-url", help="public base URL for HTTP mode (default: Socket Mode)")
    return parser


def _settings_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = "_".join(str(p) for p in error["loc"]).upper() or "settings"
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts)


async def migrate(database_url: str) -> str:
    """Apply every pending migration; say what was done. Raises :class:`StoreError`."""
    before = 0
    existing = open_store(database_url)
    try:
        await existing.open_existing()
        before = await existing.schema_version()
    except StoreError:
        pass  # a new database (or not even a file yet): init() says what is really wrong
    finally:
        await existing.close()
    store = open_store(database_url)
    try:
        await store.init()
        after = await store.schema_version()
    finally:
        await store.close()
    applied = after - before
    done = f"{applied} migration(s) applied" if applied else "already current"
    return f"{redact_url(database_url)} is at schema version {after} ({done})"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "manifest":
        sys.stdout.write(render_manifest(http_url=args.http_url))
        return 0
    if args.command == "doctor":
        try:  # the libraries' own warnings, redacted like every log line (the checklist is stdout)
            secrets = Settings().secrets()
        except ValidationError:
            secrets = []
        configure_logging(level="WARNING", fmt="console", secrets=secrets)
        return asyncio.run(run_doctor(mode=args.mode))
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"agent-relay: invalid settings: {_settings_errors(exc)}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())
        try:
            print(f"agent-relay: {asyncio.run(migrate(settings.database_url))}")
        except StoreError as exc:
            print(f"agent-relay: {exc}", file=sys.stderr)
            return 1
        return 0
    mode = settings.run_mode(args.mode)
    try:
        settings.check_required(mode)
    except MissingSettings as exc:
        print(f"agent-relay: {exc} ({mode} mode)", file=sys.stderr)
        return 2
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())
    port = args.port if args.port is not None else settings.port
    try:
        asyncio.run(serve(settings, mode=mode, host=args.host, port=port))
    except (StartupError, StoreError) as exc:
        print(f"agent-relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it first
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
