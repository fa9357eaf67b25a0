"""Real loopback HTTP servers standing in for Slack and the agent providers in end-to-end tests.

- :mod:`tests.fakes.slack`: :class:`~tests.fakes.slack.FakeSlack`, the Slack Web API subset the bot uses.
- :mod:`tests.fakes.providers`: :class:`~tests.fakes.providers.FakeProvider`, one provider's
  send-message endpoint, validating every request against the provider's OpenAPI file.
- :mod:`tests.fakes.specs`: locating those OpenAPI files and validating against them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    predicate: Callable[[], bool],
    timeout: float = 5.0,  # noqa: ASYNC109 - a polling deadline, not an I/O timeout
    interval: float = 0.01,
    *,
    message: str | Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; raise AssertionError if ``timeout`` seconds pass first.

    ``message`` (a string, or a callable evaluated at timeout so it can describe the current state)
    is added to the AssertionError.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            name = getattr(predicate, "__qualname__", repr(predicate))
            detail = message() if callable(message) else message
            text = f"condition {name} still false after {timeout:g}s"
            raise AssertionError(f"{text}: {detail}" if detail else text)
        await asyncio.sleep(interval)
