"""Thin Bolt listeners, one module per Slack surface. They translate; ``bot/`` decides."""

from __future__ import annotations

from typing import TYPE_CHECKING

from handlers import commands, mentions, messages

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp

    from bot.app import Deps

MODULES = (commands, mentions, messages)


def register_all(app: AsyncApp, deps: Deps) -> None:
    for module in MODULES:
        module.register(app, deps)
