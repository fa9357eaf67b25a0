"""The Bolt app's global error handler (:func:`bot.app.create_app`): when handling a command fails, the
person who asked is told in plain words, and the log has the failure with its context.

A mention command that fails is answered with an ephemeral message (``tests/e2e/test_real_messages.py``
and ``tests/e2e/test_faults.py``); these tests are about ``/agent``, answered through its
``response_url``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.render.control import UNEXPECTED_ERROR
from storage import StoreError
from tests.harness import CHANNEL, TEAM, running
from tests.logcapture import captured_logs, log_records


async def test_a_slash_command_whose_run_fails_is_answered_through_its_response_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/agent list`` while the store fails: the person is told something went wrong, privately.

    Before the fix: ``/agent`` runs in a Bolt lazy listener, and Bolt catches a lazy listener's exception
    itself (it logs "Failed to run an internal function" and nothing else), so the global error
    handler, whose ``response_url`` branch would answer, is never called: the person gets no answer.
    """
    with captured_logs() as log:
        async with running(tmp_path, providers=("devin",)) as h:

            async def failing_list(team: str, channel: str) -> list[object]:
                raise StoreError("database is locked")

            monkeypatch.setattr(h.store, "list_bindings", failing_list)
            await h.sender.command("list")
            await h.slack.wait_for(lambda: len(h.slack.responses) == 1, timeout=3.0)
            ((_tag, answer),) = h.slack.responses
            assert answer == {
                "text": UNEXPECTED_ERROR,
                "response_type": "ephemeral",
                "replace_original": False,
            }

    (failed,) = [r for r in log_records(log) if r.get("event") == "listener_failed"]
    assert (failed["level"], failed["team"], failed["channel"], failed["event_type"]) == (
        "error",
        TEAM,
        CHANNEL,
        "/agent",
    )
    assert "database is locked" in str(failed.get("exception"))
