"""Commands: what ``/agent …`` and ``@agent-relay …`` do, decided here and answered as :class:`Reply`.

Slash commands cannot run inside threads (Slack refuses), so ``/agent link`` posts an anchor message
in the channel and binds the thread under it; inside an existing thread, people mention the bot.
Answers that concern only the person asking are ephemeral; changes everyone in the thread should know
about (linked, unlinked, muted) are posted in the thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from bot.commands import (
    Command,
    Help,
    Invalid,
    Link,
    ListBindings,
    Mute,
    Status,
    Unlink,
    Unmute,
    help_text,
    parse_command,
)
from bot.events import SlackMessage
from bot.policy import Policy
from bot.relay import Decision as RelayDecision
from bot.relay import Relay
from bot.render import escape
from bot.slack import SlackGateway
from storage import Binding, Store, ThreadKey

log = structlog.get_logger(__name__)

MAX_LISTED = 50


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    public: bool = False  # False: only the person who asked sees it


@dataclass(frozen=True, slots=True)
class Invocation:
    """Who asked, where. ``thread_ts`` is None for a slash command (run in a channel)."""

    team: str
    channel: str
    user: str
    thread_ts: str | None = None


def slack_date(ts: float) -> str:
    """A date Slack shows in each reader's own time zone."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return f"<!date^{int(ts)}^{{date_short_pretty}} at {{time}}|{fallback}>"


class Control:
    def __init__(
        self, *, store: Store, relay: Relay, slack: SlackGateway, policy: Policy, aside_prefix: str
    ) -> None:
        self._store = store
        self._relay = relay
        self._slack = slack
        self._policy = policy
        self._aside = aside_prefix

    @property
    def enabled(self) -> list[str]:
        return list(self._relay.providers)

    def help(self) -> str:
        return help_text(self.enabled, aside_prefix=self._aside)

    def _session_text(self, provider: str, session_id: str) -> str:
        client = self._relay.providers.get(provider)
        label = self._relay.label(provider)
        url = client.session_url(session_id) if client else None
        shown = f"`{escape(session_id)}`"
        return f"{label} session <{url}|{shown}>" if url else f"{label} session {shown}"

    async def _common(self, who: Invocation, text: str) -> tuple[Command, Reply | None]:
        """Parse ``text`` and answer what needs no thread: help, refusals, usage errors, ``list``."""
        command = parse_command(text, enabled=self.enabled)
        if isinstance(command, Help):
            return command, Reply(self.help())
        allowed = self._policy.channel_allowed(who.channel)
        if not allowed.allowed:
            return command, Reply(allowed.reason)
        if isinstance(command, Invalid):
            return command, Reply(command.message)
        if isinstance(command, ListBindings):
            return command, Reply(await self._list(who))
        return command, None

    # -- slash command -------------------------------------------------------------------------
    async def slash(self, who: Invocation, text: str) -> Reply | None:
        """``/agent …`` in a channel. None: nothing to tell the person (the anchor says it)."""
        command, answered = await self._common(who, text)
        if answered is not None:
            return answered
        if isinstance(command, Link):
            return await self._link_with_anchor(who, command)
        word = type(command).__name__.lower()
        return Reply(
            f"`{word}` works inside a linked thread: mention me there, like `@agent-relay {word}`. "
            "Slack does not run slash commands in threads."
        )

    async def _link_with_anchor(self, who: Invocation, command: Link) -> Reply | None:
        ref = command.ref
        decision = await self._policy.may_link(
            who.user, who.channel, ref.provider, self._relay.label(ref.provider)
        )
        if not decision.allowed:
            return Reply(decision.reason)
        session = self._session_text(ref.provider, ref.session_id)
        anchor = (
            f":link: <@{who.user}> linked this thread to {session}.\n"
            f"Reply in this thread to message the agent. Start a reply with `{self._aside}` to keep it out."
        )
        ts, error = await self._slack.post_message(who.channel, anchor)
        if ts is None:
            if error in ("not_in_channel", "channel_not_found"):
                return Reply(
                    "I can't post in this channel. Invite me with `/invite @agent-relay` and try again."
                )
            return Reply(f"Slack refused the anchor message ({error}); nothing was linked. Try again.")
        binding = Binding(
            key=ThreadKey(who.team, who.channel, ts),
            provider=ref.provider,
            session_id=ref.session_id,
            linked_by=who.user,
            linked_at=time.time(),
            anchor_ts=ts,
        )
        await self._store.bind(binding)
        log.info("thread_linked", channel=who.channel, thread=ts, provider=ref.provider, via="slash")
        return None

    async def _list(self, who: Invocation) -> str:
        bindings = await self._store.list_bindings(who.team, who.channel)
        if not bindings:
            return "No threads in this channel are linked to an agent session. Start one with `/agent link`."
        lines = [f"Threads in this channel linked to an agent session ({len(bindings)}):"]
        for binding in bindings[:MAX_LISTED]:
            link = await self._slack.permalink(who.channel, binding.key.thread_ts)
            where = f"<{link}|thread>" if link else f"thread {binding.key.thread_ts}"
            muted = " (muted)" if binding.muted else ""
            lines.append(
                f"• {where}: {self._session_text(binding.provider, binding.session_id)}, "
                f"linked by <@{binding.linked_by}>{muted}"
            )
        if len(bindings) > MAX_LISTED:
            lines.append(f"…and {len(bindings) - MAX_LISTED} more.")
        return "\n".join(lines)

    # -- mention -------------------------------------------------------------------------------
    async def on_mention(self, message: SlackMessage) -> Reply | None:
        """An ``app_mention``: run the command it starts with (once, although Slack may deliver it
        again), or relay it as a message when the thread is linked."""
        if message.from_bot or not message.user:
            return None
        text = self._relay.command_text(message.text)
        if text is None:
            decision = await self._relay.on_message(message)
            if decision is not RelayDecision.NOT_BOUND and decision is not RelayDecision.NOT_A_REPLY:
                return None
            if not await self._store.claim("mention", f"{message.team}:{message.channel}:{message.ts}"):
                return None
            return Reply(f"Hi! I relay linked threads to agent sessions.\n{self.help()}")
        if not await self._store.claim("mention", f"{message.team}:{message.channel}:{message.ts}"):
            return None
        if self._policy.is_outsider(message.team, message.user_team):
            return Reply(
                "Commands from people outside this organisation are not accepted here (Slack Connect). "
                "Ask someone in the workspace that runs agent-relay."
            )
        who = Invocation(message.team, message.channel, message.user, thread_ts=message.thread_key_ts)
        return await self.mention(who, text)

    async def mention(self, who: Invocation, text: str) -> Reply | None:
        """``@agent-relay …`` where ``text`` is what follows the mention. ``who.thread_ts`` is the thread."""
        assert who.thread_ts is not None
        key = ThreadKey(who.team, who.channel, who.thread_ts)
        command, answered = await self._common(who, text)
        if answered is not None:
            return answered
        if isinstance(command, Link):
            return await self._link_here(who, key, command)
        binding = await self._store.get_binding(key)
        if binding is None:
            return Reply("This thread is not linked to an agent session. Link it with `@agent-relay link …`.")
        if isinstance(command, Unlink):
            return await self._unlink(who, binding)
        if isinstance(command, Status):
            return Reply(await self._status(binding))
        if isinstance(command, Mute | Unmute):
            muted = isinstance(command, Mute)
            if binding.muted == muted:
                return Reply(f"Relaying is already {'paused' if muted else 'on'} in this thread.")
            await self._store.set_muted(key, muted)
            if muted:
                return Reply(
                    f":double_vertical_bar: <@{who.user}> paused relaying: replies in this thread are not "
                    "sent to the agent until someone mentions me with `unmute`.",
                    public=True,
                )
            return Reply(f":arrow_forward: <@{who.user}> resumed relaying to the agent.", public=True)
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    async def _link_here(self, who: Invocation, key: ThreadKey, command: Link) -> Reply:
        ref = command.ref
        decision = await self._policy.may_link(
            who.user, who.channel, ref.provider, self._relay.label(ref.provider)
        )
        if not decision.allowed:
            return Reply(decision.reason)
        wanted = Binding(
            key=key,
            provider=ref.provider,
            session_id=ref.session_id,
            linked_by=who.user,
            linked_at=time.time(),
        )
        in_force = await self._store.bind(wanted)
        if in_force.linked_at != wanted.linked_at or in_force.linked_by != wanted.linked_by:
            if (in_force.provider, in_force.session_id) == (ref.provider, ref.session_id):
                return Reply(
                    f"This thread is already linked to {self._session_text(ref.provider, ref.session_id)}."
                )
            current = self._session_text(in_force.provider, in_force.session_id)
            return Reply(
                f"This thread is already linked to {current}. Unlink it first with `@agent-relay unlink`."
            )
        log.info(
            "thread_linked", channel=who.channel, thread=key.thread_ts, provider=ref.provider, via="mention"
        )
        return Reply(
            f":link: <@{who.user}> linked this thread to {self._session_text(ref.provider, ref.session_id)}. "
            f"Replies here now go to the agent; start one with `{self._aside}` to keep it out.",
            public=True,
        )

    async def _unlink(self, who: Invocation, binding: Binding) -> Reply:
        decision = await self._policy.may_unlink(who.user, binding)
        if not decision.allowed:
            return Reply(decision.reason)
        await self._store.unbind(binding.key)
        log.info("thread_unlinked", channel=binding.key.channel, thread=binding.key.thread_ts)
        return Reply(
            f":broken_chain: <@{who.user}> unlinked this thread from "
            f"{self._session_text(binding.provider, binding.session_id)}. Replies here are no longer sent.",
            public=True,
        )

    async def _status(self, binding: Binding) -> str:
        lines = [
            f"This thread is linked to {self._session_text(binding.provider, binding.session_id)}.",
            f"Linked by <@{binding.linked_by}> on {slack_date(binding.linked_at)}.",
            "Relaying is paused (`unmute` to resume)." if binding.muted else "Relaying is on.",
        ]
        last = await self._store.last_message(binding.key)
        if last is None:
            lines.append("No message has been relayed yet.")
        else:
            state = last.state.value if last.outcome is None else last.outcome.replace("_", " ")
            if last.state.value in ("pending", "sending"):
                state = "waiting to be sent"
            detail = (
                f" ({escape(last.detail)})" if last.detail and last.outcome not in (None, "delivered") else ""
            )
            lines.append(
                f"Last message: from <@{last.user}> on {slack_date(last.received_at)}: {state}{detail}."
            )
        return "\n".join(lines)
