"""What people read in answer to a command: use-case results in, Slack text out.

Pure: no I/O. :class:`Reply` says whether the answer is for the thread (``public``) or only for the
person who asked (ephemeral).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import assert_never

from bot.commands import SessionRef, help_text
from bot.providers.base import Provider
from bot.render import mirror as mirror_text
from bot.render.text import escape, slack_date
from bot.usecases import (
    AlreadyLinked,
    AlreadyMuted,
    AnchorNotPosted,
    Linked,
    LinkResult,
    Listing,
    MirrorChanged,
    MirrorResult,
    MirrorUnavailable,
    MirrorUnchanged,
    MuteChanged,
    MuteResult,
    NotLinked,
    NotStored,
    Refused,
    StatusReport,
    StatusResult,
    Unlinked,
    UnlinkResult,
)

NOT_STORED = (
    "Something went wrong while saving that (the bot's database did not answer); nothing was changed. "
    "Please try again in a moment."
)
NOT_LINKED = "This thread is not linked to an agent session. Link it with `@agent-relay link …`."
OUTSIDER_COMMAND = (
    "Commands from people outside this organisation are not accepted here (Slack Connect). "
    "Ask someone in the workspace that runs agent-relay."
)
OUTSIDER_NOTICE = (
    "Messages from people outside this organisation are not relayed to the agent "
    "in this thread (Slack Connect). Ask whoever runs agent-relay to allow your team."
)
REDACTED_NOTICE = (
    "Your message contained a key or token that agent-relay is configured with (or something shaped "
    "like a Slack token). It was replaced with `[redacted]` before it was stored or sent to the agent."
)
UNEXPECTED_ERROR = (
    "Sorry, something went wrong on my side while handling that; nothing was changed. "
    "Please try again in a moment."
)


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    public: bool = False  # False: only the person who asked sees it


class ControlText:
    def __init__(self, providers: Mapping[str, Provider], *, aside_prefix: str) -> None:
        self._providers = providers
        self._aside = aside_prefix

    def help(self) -> str:
        return help_text(list(self._providers), aside_prefix=self._aside)

    def greeting(self) -> str:
        return f"Hi! I relay linked threads to agent sessions.\n{self.help()}"

    def session(self, provider: str, session_id: str) -> str:
        client = self._providers.get(provider)
        label = client.label if client else provider
        url = client.session_url(session_id) if client else None
        shown = f"`{escape(session_id)}`"
        return f"{label} session <{url}|{shown}>" if url else f"{label} session {shown}"

    def anchor(self, user: str, ref: SessionRef) -> str:
        return (
            f":link: <@{user}> linked this thread to {self.session(ref.provider, ref.session_id)}.\n"
            f"Reply in this thread to message the agent. Start a reply with `{self._aside}` to keep it out."
        )

    def thread_only(self, word: str) -> Reply:
        return Reply(
            f"`{word}` works inside a linked thread: mention me there, like `@agent-relay {word}`. "
            "Slack does not run slash commands in threads."
        )

    def link(self, result: LinkResult, *, user: str) -> Reply | None:
        """None: nothing more to say (the anchor of ``/agent link`` says it)."""
        if isinstance(result, Linked):
            if result.binding.anchor_ts is not None:
                return None
            session = self.session(result.binding.provider, result.binding.session_id)
            return Reply(
                f":link: <@{user}> linked this thread to {session}. "
                f"Replies here now go to the agent; start one with `{self._aside}` to keep it out.",
                public=True,
            )
        if isinstance(result, AlreadyLinked):
            current = self.session(result.binding.provider, result.binding.session_id)
            if result.same_session:
                return Reply(f"This thread is already linked to {current}.")
            return Reply(
                f"This thread is already linked to {current}. Unlink it first with `@agent-relay unlink`."
            )
        if isinstance(result, Refused):
            return Reply(result.reason)
        if isinstance(result, AnchorNotPosted):
            if result.error in ("not_in_channel", "channel_not_found"):
                return Reply(
                    "I can't post in this channel. Invite me with `/invite @agent-relay` and try again."
                )
            return Reply(f"Slack refused the anchor message ({result.error}); nothing was linked. Try again.")
        if isinstance(result, NotStored):
            return Reply(NOT_STORED)
        assert_never(result)

    def unlink(self, result: UnlinkResult) -> Reply:
        if isinstance(result, Unlinked):
            session = self.session(result.binding.provider, result.binding.session_id)
            return Reply(
                f":broken_chain: <@{result.by}> unlinked this thread from {session}. "
                "Replies here are no longer sent.",
                public=True,
            )
        if isinstance(result, NotLinked):
            return Reply(NOT_LINKED)
        if isinstance(result, Refused):
            return Reply(result.reason)
        if isinstance(result, NotStored):
            return Reply(NOT_STORED)
        assert_never(result)

    def mute(self, result: MuteResult) -> Reply:
        if isinstance(result, MuteChanged):
            if result.muted:
                return Reply(
                    f":double_vertical_bar: <@{result.by}> paused relaying: replies in this thread are not "
                    "sent to the agent until someone mentions me with `unmute`.",
                    public=True,
                )
            return Reply(f":arrow_forward: <@{result.by}> resumed relaying to the agent.", public=True)
        if isinstance(result, AlreadyMuted):
            return Reply(f"Relaying is already {'paused' if result.muted else 'on'} in this thread.")
        if isinstance(result, NotLinked):
            return Reply(NOT_LINKED)
        if isinstance(result, NotStored):
            return Reply(NOT_STORED)
        assert_never(result)

    def status(self, result: StatusResult) -> Reply:
        if isinstance(result, NotLinked):
            return Reply(NOT_LINKED)
        if not isinstance(result, StatusReport):
            assert_never(result)
        binding = result.binding
        lines = [
            f"This thread is linked to {self.session(binding.provider, binding.session_id)}.",
            f"Linked by <@{binding.linked_by}> on {slack_date(binding.linked_at)}.",
            "Relaying is paused (`unmute` to resume)." if binding.muted else "Relaying is on.",
        ]
        last = result.last
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
        if result.mirror is not None:
            lines.append(f"Mirroring the agent's side here: `{result.mirror.value}`.")
        if result.last_agent:
            client = self._providers.get(binding.provider)
            label = client.label if client else binding.provider
            lines.append(f"Last from {label}: “{mirror_text.excerpt(result.last_agent)}”")
        return Reply("\n".join(lines))

    def mirror(self, result: MirrorResult) -> Reply:
        if isinstance(result, MirrorChanged):
            return Reply(mirror_text.mirror_changed(result.mode.value, result.by), public=True)
        if isinstance(result, MirrorUnchanged):
            return Reply(mirror_text.mirror_unchanged(result.mode.value))
        if isinstance(result, MirrorUnavailable):
            return Reply(mirror_text.mirror_unavailable(result.label))
        if isinstance(result, NotLinked):
            return Reply(NOT_LINKED)
        assert_never(result)

    def listing(self, result: Listing) -> Reply:
        if not result.entries:
            return Reply(
                "No threads in this channel are linked to an agent session. Start one with `/agent link`."
            )
        lines = [f"Threads in this channel linked to an agent session ({result.total}):"]
        for entry in result.entries:
            binding = entry.binding
            where = f"<{entry.permalink}|thread>" if entry.permalink else f"thread {binding.key.thread_ts}"
            muted = " (muted)" if binding.muted else ""
            lines.append(
                f"• {where}: {self.session(binding.provider, binding.session_id)}, "
                f"linked by <@{binding.linked_by}>{muted}"
            )
        if result.total > len(result.entries):
            lines.append(f"…and {result.total - len(result.entries)} more.")
        return Reply("\n".join(lines))
