"""Capture every log line through the app's own logging set-up, and put the previous set-up back."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from bot.logs import configure_logging


@contextmanager
def captured_logs(secrets: list[str] | None = None, *, replace: bool = True) -> Iterator[io.StringIO]:
    """Every log line (ours and the libraries', DEBUG and up) as JSON, redacting ``secrets``.

    ``replace=False`` keeps a capture that is already running (a test inside the harness's own one).
    Restores the previous logging and structlog configuration afterwards.
    """
    stream = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    old_structlog = structlog.get_config()
    handler = configure_logging(
        level="DEBUG", fmt="json", secrets=secrets or [], stream=stream, replace=replace
    )
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        structlog.configure(**old_structlog)


def log_records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
