"""Commands typed in Slack: parse, run the use case, render the answer.

Slash commands cannot run inside threads (Slack refuses), so ``/agent link`` posts an anchor message
in the channel and binds the thread under it; inside an existing thread, people mention the bot.
Answers that concern only the person asking are ephemeral; changes everyone in the thread should
know about (linked, unlinked, muted) are posted in the thread. Decisions live in
:mod:`bot.usecases`; every sentence in :mod:`bot.render.control`.
"""

from __future__ import annotations

from typing import assert_never

from bot.classify import command_text
from bot.commands import (
    Command,
    Help,
    Invalid,
    Link,
    ListBindings,
    Mirror,
    Mute,
    Status,
    Unlink,
    Unmute,
    parse_command,
)
from bot.events import SlackMessage
from bot.policy import Policy
from bot.relay.intake import Decision, Intake
from bot.render.control import OUTSIDER_COMMAND, ControlText, Reply
from bot.usecases import Invocation, UseCases
from storage import MirrorMode, Store


class Control:
    def __init__(
        self,
        *,
        usecases: UseCases,
        text: ControlText,
        intake: Intake,
        policy: Policy,
        store: Store,
        bot_user_id: str,
    ) -> None:
        self._uc = usecases
        self._text = text
        self._intake = intake
        self._policy = policy
        self._store = store
        self._bot_user_id = bot_user_id

    async def _common(self, who: Invocation, text: str) -> tuple[Command, Reply | None]:
        """Parse ``text`` and answer what needs no thread: help, refusals, usage errors, ``list``."""
        command = parse_command(text, enabled=self._uc.enabled)
        if isinstance(command, Help):
            return command, Reply(self._text.help())
        allowed = self._policy.channel_allowed(who.channel)
        if not allowed.allowed:
            return command, Reply(allowed.reason)
        if isinstance(command, Invalid):
            return command, Reply(command.message)
        if isinstance(command, ListBindings):
            return command, self._text.listing(await self._uc.list_channel(who))
        return command, None

    # -- slash command -------------------------------------------------------------------------
    async def slash(self, who: Invocation, text: str, *, payload_team: str | None = None) -> Reply | None:
        """``/agent …`` in a channel. None: nothing to tell the person (the anchor says it).

        The same outsider rule as for mentions: the payload carries no ``user_team``, so the person's
        own team comes from ``users.info`` (``payload_team``, the team the payload names, when
        Slack cannot say).
        """
        if await self._policy.is_outsider_user(who.installation, who.user, payload_team=payload_team):
            return Reply(OUTSIDER_COMMAND)
        command, answered = await self._common(who, text)
        if answered is not None:
            return answered
        if isinstance(command, Link):
            return self._text.link(await self._uc.link_new_thread(who, command.ref), user=who.user)
        return self._text.thread_only(type(command).__name__.lower())

    # -- mention -------------------------------------------------------------------------------
    async def on_mention(self, message: SlackMessage) -> Reply | None:
        """An ``app_mention``: run the command it starts with (once, although Slack may deliver it
        again), or relay it as a message when the thread is linked.

        The once-only marker is taken before the command runs, so a redelivery that arrives while it
        runs does nothing; if the run fails, the marker is given back and the error propagates, so
        Slack's retry runs the command again.
        """
        if message.from_bot or not message.user:
            return None
        text = command_text(message.text, self._bot_user_id)
        if text is None:
            decision = await self._intake.on_message(message)
            if decision not in (Decision.NOT_BOUND, Decision.NOT_A_REPLY):
                return None
        marker = f"{message.team}:{message.channel}:{message.ts}"
        if not await self._store.claim("mention", marker):
            return None
        try:
            if text is None:
                return Reply(self._text.greeting())
            if await self._policy.is_outsider(message.installation, message.user, message.user_team):
                return Reply(OUTSIDER_COMMAND)
            who = Invocation(
                message.team,
                message.channel,
                message.user,
                thread_ts=message.thread_key_ts,
                message_ts=message.ts,
                installation=message.installation,
            )
            return await self.mention(who, text)
        except BaseException:
            await self._store.unclaim("mention", marker)
            raise

    async def mention(self, who: Invocation, text: str) -> Reply | None:
        """``@agent-relay …`` where ``text`` is what follows the mention, in thread ``who.thread_ts``."""
        command, answered = await self._common(who, text)
        if answered is not None:
            return answered
        if isinstance(command, Link):
            return self._text.link(await self._uc.link_here(who, command.ref), user=who.user)
        if isinstance(command, Unlink):
            return self._text.unlink(await self._uc.unlink(who))
        if isinstance(command, Status):
            return self._text.status(await self._uc.status(who))
        if isinstance(command, Mute | Unmute):
            return self._text.mute(await self._uc.set_muted(who, isinstance(command, Mute)))
        if isinstance(command, Mirror):
            return self._text.mirror(await self._uc.set_mirror(who, MirrorMode(command.mode)))
        if isinstance(command, Help | Invalid | ListBindings):  # answered by _common
            return None
        assert_never(command)
