"""The ``agent-relay`` command: ``run`` the bot, or print the Slack app ``manifest``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bot.logs import configure_logging
from bot.manifest import render_manifest
from bot.runtime import StartupError, serve
from bot.settings import MissingSettings, Settings
from storage import StoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-relay", description="Steer AI coding-agent sessions from Slack."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bot")
    run.add_argument("--mode", choices=["socket", "http"], help="default: socket if SLACK_APP_TOKEN is set")
    run.add_argument("--port", type=int, help="HTTP mode port (default: PORT or 3000)")
    run.add_argument("--host", default="0.0.0.0", help="HTTP mode address (default: 0.0.0.0)")  # noqa: S104
    manifest = sub.add_parser("manifest", help="print the Slack app manifest")
    manifest.add_argument("--http-url", help="public base URL for HTTP mode (default: Socket Mode)")
    return parser


def _settings_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = "_".join(str(p) for p in error["loc"]).upper() or "settings"
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "manifest":
        sys.stdout.write(render_manifest(http_url=args.http_url))
        return 0
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"agent-relay: invalid settings: {_settings_errors(exc)}", file=sys.stderr)
        return 2
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
