"""Starting agent-relay when start-up fails part-way (:meth:`bot.runtime.Runtime.start`).

The store watch and the stop are tested end to end in ``tests/e2e/test_store_loss.py`` and
``tests/e2e/test_delivery.py``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.runtime import Runtime
from tests.fakes.providers import FakeProvider
from tests.fakes.slack import FakeSlack
from tests.harness import BOT_TOKEN, KEYS, make_settings
from tests.logcapture import captured_logs, log_records

ENGINE_TASKS = ("relay:dispatcher", "feedback:sender", "store:watch")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def engine_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() in ENGINE_TASKS and not t.done()]


async def test_a_start_that_fails_part_way_leaves_nothing_running(tmp_path: Path, taken_port: int) -> None:
    """HTTP mode on a port that is taken: the error reaches the caller, and nothing the start had begun
    goes on running: no store, and no engine task left trying to use the store it closed (each such
    task would log ``relay_claim_failed`` / ``feedback_claim_failed`` at ERROR every poll interval).
    """
    async with FakeSlack(bot_token=BOT_TOKEN) as slack, FakeProvider("devin", KEYS["devin"]) as devin:
        settings = make_settings(tmp_path, slack, {"devin": devin}, relay_poll_interval=0.05)
        with captured_logs(settings.secrets()) as log:
            runtime = Runtime(settings, mode="http", host="127.0.0.1", port=taken_port)
            with pytest.raises(OSError, match="address already in use"):
                await runtime.start()
            assert runtime.deps is None
            left = engine_tasks()
            try:
                assert [t.get_name() for t in left] == []
            finally:  # do not let a leak spill into other tests
                for task in left:
                    task.cancel()
                await asyncio.gather(*left, return_exceptions=True)
        assert not [r for r in log_records(log) if r.get("event") == "agent_relay_started"]

        # The same store file is usable at once by a start on a free port.
        again = Runtime(settings, mode="http", host="127.0.0.1", port=0)
        await again.start()
        try:
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"http://127.0.0.1:{again.port}/readyz")
            assert ready.status_code == 200
        finally:
            await again.stop()
