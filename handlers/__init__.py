"""Thin Bolt listeners, one module per Slack surface. They translate; ``bot/`` decides.

Each listener is a module-level function that takes ``deps`` (injected by Bolt from the context, see
:mod:`bot.app`), so a test can call it directly without a running app.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from handlers import commands, mentions, messages

MODULES = (commands, mentions, messages)


def register_all(app: AsyncApp) -> None:
    for module in MODULES:
        module.register(app)
