"""Shared fixtures: ``relay`` is agent-relay running for real against loopback fakes; ``pg_server`` and
``pg_url`` a throwaway PostgreSQL server (one per run) and a fresh database per test (:mod:`tests.pg`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Harness, running
from tests.pg import pg_server, pg_url

__all__ = ["pg_server", "pg_url", "relay"]


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as harness:
        yield harness
