"""Provider clients: one module per agent vendor behind :class:`bot.providers.base.Provider`."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from bot.providers.agen import AgenProvider
from bot.providers.base import Provider
from bot.providers.devin import DevinProvider
from bot.providers.feather import FeatherProvider
from bot.settings import Settings

PROVIDER_CLASSES: Mapping[str, type[Provider]] = {
    "devin": DevinProvider,
    "feather": FeatherProvider,
    "agen": AgenProvider,
}


def build_providers(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Provider]:
    """One client per provider whose API key is set, in the order of ``PROVIDER_CLASSES``."""
    providers: dict[str, Provider] = {}
    for name, cls in PROVIDER_CLASSES.items():
        key = settings.provider_key(name)
        if key is None:
            continue
        providers[name] = cls(
            api_key=key,
            base_url=settings.provider_url(name),
            timeout=settings.provider_timeout,
            web_url=settings.devin_web_url if name == "devin" else None,
            transport=transport,
        )
    return providers


__all__ = [
    "PROVIDER_CLASSES",
    "AgenProvider",
    "DevinProvider",
    "FeatherProvider",
    "Provider",
    "build_providers",
]
