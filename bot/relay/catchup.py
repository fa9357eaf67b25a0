"""After ``@agent-relay link …`` in an existing thread: relay the replies written meanwhile.

People type the link mention and, a moment later, the first instruction. Slack may deliver that
instruction before the link is stored; intake then leaves it out (the thread was not bound yet).
So once the binding is stored, the thread's replies newer than the link mention are read from Slack
(``conversations.replies``) and handed to intake like any event. Intake's unique key on the message
identity makes each one stored once, whether the event or this read gets there first, and the
delivery engine sends a thread's rows in ts order.

What it may touch: Slack (one read, a few pages at most) and intake. It starts in the mention
listener, after the binding is stored; the listener waits for it at most ``WAIT`` seconds, so a slow
Slack never holds the acknowledgement past Slack's deadline (the read then finishes in the
background). A failed read is logged by the gateway and leaves only what the events bring.
"""

from __future__ import annotations

import asyncio

import structlog

from bot.events import message_from_event
from bot.relay.intake import Decision, Intake
from bot.slack import SlackGateway
from bot.usecases import Invocation
from storage import Binding

log = structlog.get_logger(__name__)

WAIT = 1.5  # seconds the mention listener waits for the catch-up before Slack is acknowledged


class CatchUp:
    def __init__(self, *, slack: SlackGateway, intake: Intake) -> None:
        self._slack = slack
        self._intake = intake
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, binding: Binding, who: Invocation) -> None:
        """Relay the replies in ``binding``'s thread newer than the mention ``who`` came from.

        Nothing to do for ``/agent link``: its thread starts with the anchor just posted.
        """
        if who.message_ts is None or binding.anchor_ts is not None:
            return
        task = asyncio.create_task(self._catch_up(binding, who), name=f"catchup:{binding.key.thread_ts}")
        self._background.add(task)
        task.add_done_callback(self._done)
        try:
            await asyncio.wait_for(asyncio.shield(task), WAIT)
        except TimeoutError:
            pass  # it finishes in the background
        except Exception:  # noqa: BLE001, S110 - logged by _done; the link stands and is announced
            pass

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("thread_catch_up_failed", exc_info=task.exception())

    async def _catch_up(self, binding: Binding, who: Invocation) -> None:
        assert who.message_ts is not None
        key = binding.key
        replies = await self._slack.thread_replies(key.channel, key.thread_ts, after=who.message_ts)
        queued = 0
        for raw in replies:
            message = message_from_event({**raw, "channel": key.channel}, who.installation)
            if message is None or message.subtype in ("message_changed", "message_deleted"):
                continue
            if await self._intake.on_message(message) is Decision.QUEUED:
                queued += 1
        if replies:
            log.info("thread_caught_up", channel=key.channel, thread=key.thread_ts, queued=queued)
