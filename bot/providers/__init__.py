"""The provider registry: one module per agent vendor behind :class:`bot.providers.base.Provider`.

:data:`PROVIDERS` is the only list of providers. Settings (``<NAME>_API_KEY`` ...), the command
parser, help, the manifest and the test fakes iterate it, so adding a provider is writing its
module and adding its class here. The order is the order providers are listed to people.

This package does not import :mod:`bot.settings` (which builds its fields from the registry):
:func:`build_providers` takes anything shaped like :class:`ProviderSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import httpx
from pydantic import SecretStr

from bot.providers.agen import AgenProvider
from bot.providers.base import Capability, Provider, SessionRefError
from bot.providers.devin import DevinProvider
from bot.providers.feather import FeatherProvider

PROVIDERS: Mapping[str, type[Provider]] = {
    cls.name: cls for cls in (DevinProvider, FeatherProvider, AgenProvider)
}


class ProviderSettings(Protocol):
    """What :func:`build_providers` reads (:class:`bot.settings.Settings` has it)."""

    @property
    def provider_timeout(self) -> float: ...

    def provider_key(self, name: str) -> SecretStr | None: ...

    def provider_url(self, name: str) -> str: ...

    def provider_web_url(self, name: str) -> str | None: ...

    def secrets(self) -> list[str]: ...


def build_providers(
    settings: ProviderSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Provider]:
    """One client per provider whose API key is set, in the order of :data:`PROVIDERS`."""
    providers: dict[str, Provider] = {}
    for name, cls in PROVIDERS.items():
        key = settings.provider_key(name)
        if key is None:
            continue
        providers[name] = cls(
            api_key=key,
            base_url=settings.provider_url(name),
            timeout=settings.provider_timeout,
            web_url=settings.provider_web_url(name),
            transport=transport,
            redact=settings.secrets(),
        )
    return providers


__all__ = [
    "PROVIDERS",
    "AgenProvider",
    "Capability",
    "DevinProvider",
    "FeatherProvider",
    "Provider",
    "ProviderSettings",
    "SessionRefError",
    "build_providers",
]
