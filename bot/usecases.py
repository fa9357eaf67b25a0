"""The commands' use cases: link, unlink, mute, unmute, status, list, mirror.

Each takes a typed :class:`Invocation` (who asked, where) and returns a typed result. No Slack text
is written here: :mod:`bot.render.control` turns results into what people read, so that a slash
command, a mention, and later a modal or a button, call the same use cases without parsing text.

What each may touch: the store (bindings, the relay log) and the policy. The only Slack call is
posting the anchor message of ``/agent link`` (whose ts becomes the thread's key) and, when the
binding could not be stored, taking that anchor back. A failed write is never reported as success:
the result is :class:`NotStored` and nothing is linked.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from bot.commands import SessionRef
from bot.events import NO_INSTALLATION, Installation
from bot.policy import Policy
from bot.providers.base import Capability, Provider
from bot.slack import SlackGateway
from storage import Binding, MirrorMode, OutboxMessage, Store, StoreError, ThreadKey

log = structlog.get_logger(__name__)

MAX_LISTED = 50


@dataclass(frozen=True, slots=True)
class Invocation:
    """Who asked, where. ``thread_ts`` is None for a slash command (run in a channel).

    ``message_ts`` is the ts of the mention that carried the command (None for a slash command);
    ``installation`` is who received it (``team`` is its key team).
    """

    team: str
    channel: str
    user: str
    thread_ts: str | None = None
    message_ts: str | None = None
    installation: Installation = NO_INSTALLATION

    @property
    def thread(self) -> ThreadKey:
        assert self.thread_ts is not None, "a thread command needs thread_ts"
        return ThreadKey(self.team, self.channel, self.thread_ts)


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Linked:
    binding: Binding


@dataclass(frozen=True, slots=True)
class AlreadyLinked:
    binding: Binding  # the binding in force
    same_session: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The policy said no; ``reason`` is the policy's sentence for this person."""

    reason: str


@dataclass(frozen=True, slots=True)
class AnchorNotPosted:
    """Slack refused the anchor message of ``/agent link``: nothing was linked."""

    error: str | None


@dataclass(frozen=True, slots=True)
class NotStored:
    """The store failed: nothing was changed."""


@dataclass(frozen=True, slots=True)
class NotLinked:
    """The thread is not linked to a session."""


@dataclass(frozen=True, slots=True)
class Unlinked:
    binding: Binding
    by: str


@dataclass(frozen=True, slots=True)
class MuteChanged:
    muted: bool
    by: str


@dataclass(frozen=True, slots=True)
class AlreadyMuted:
    muted: bool


@dataclass(frozen=True, slots=True)
class StatusReport:
    binding: Binding
    last: OutboxMessage | None
    mirror: MirrorMode | None = None  # in force; None: the session is not mirrored (cannot be read)
    last_agent: str | None = None  # the agent's newest message seen, as it wrote it


@dataclass(frozen=True, slots=True)
class MirrorChanged:
    mode: MirrorMode
    by: str


@dataclass(frozen=True, slots=True)
class MirrorUnchanged:
    mode: MirrorMode


@dataclass(frozen=True, slots=True)
class MirrorUnavailable:
    """The provider's sessions cannot be read."""

    label: str


@dataclass(frozen=True, slots=True)
class ListEntry:
    binding: Binding
    permalink: str | None


@dataclass(frozen=True, slots=True)
class Listing:
    entries: tuple[ListEntry, ...]
    total: int


LinkResult = Linked | AlreadyLinked | Refused | AnchorNotPosted | NotStored
UnlinkResult = Unlinked | NotLinked | Refused | NotStored
MuteResult = MuteChanged | AlreadyMuted | NotLinked | NotStored
StatusResult = StatusReport | NotLinked
MirrorResult = MirrorChanged | MirrorUnchanged | MirrorUnavailable | NotLinked

#: Renders the anchor message of a new link: (who linked, what) -> Slack text.
AnchorText = Callable[[str, SessionRef], str]

#: Called once a link is stored, with the binding and the command that made it.
OnLinked = Callable[[Binding, Invocation], Awaitable[None]]


class UseCases:
    def __init__(
        self,
        *,
        store: Store,
        slack: SlackGateway,
        policy: Policy,
        providers: Mapping[str, Provider],
        anchor_text: AnchorText,
        on_linked: OnLinked | None = None,
        workspace_url: str | None = None,
        mirror_default: MirrorMode = MirrorMode.ON,
    ) -> None:
        self._mirror_default = mirror_default
        self._store = store
        self._slack = slack
        self._policy = policy
        self._providers = providers
        self._anchor_text = anchor_text
        self._on_linked = on_linked
        self._workspace_url = workspace_url.rstrip("/") if workspace_url else None

    @property
    def enabled(self) -> list[str]:
        return list(self._providers)

    def label(self, provider: str) -> str:
        p = self._providers.get(provider)
        return p.label if p else provider

    async def _may_link(self, who: Invocation, ref: SessionRef) -> Refused | None:
        decision = await self._policy.may_link(who.user, who.channel, ref.provider, self.label(ref.provider))
        return None if decision.allowed else Refused(decision.reason)

    async def link_new_thread(self, who: Invocation, ref: SessionRef) -> LinkResult:
        """``/agent link`` in a channel: post an anchor message and bind the thread under it."""
        refused = await self._may_link(who, ref)
        if refused is not None:
            return refused
        ts, error = await self._slack.post_message(who.channel, self._anchor_text(who.user, ref))
        if ts is None:
            return AnchorNotPosted(error)
        binding = Binding(
            key=ThreadKey(who.team, who.channel, ts),
            provider=ref.provider,
            session_id=ref.session_id,
            linked_by=who.user,
            linked_at=time.time(),
            anchor_ts=ts,
        )
        try:
            await self._store.bind(binding)
        except StoreError:
            log.exception("link_not_stored", channel=who.channel, thread=ts)
            await self._slack.delete_message(who.channel, ts)  # the anchor must not claim a link
            return NotStored()
        log.info("thread_linked", channel=who.channel, thread=ts, provider=ref.provider, via="slash")
        if self._on_linked is not None:
            await self._on_linked(binding, who)
        return Linked(binding)

    async def link_here(self, who: Invocation, ref: SessionRef) -> LinkResult:
        """``@agent-relay link …`` inside an existing thread. Store errors propagate (Slack retries).

        People often type the first instruction right after the link mention, and Slack may deliver
        it before the binding is stored (it is then not relayed: not bound yet). ``on_linked``
        (wired to :class:`bot.relay.catchup.CatchUp`) relays the replies newer than the mention.
        """
        refused = await self._may_link(who, ref)
        if refused is not None:
            return refused
        wanted = Binding(
            key=who.thread,
            provider=ref.provider,
            session_id=ref.session_id,
            linked_by=who.user,
            linked_at=time.time(),
        )
        in_force = await self._store.bind(wanted)
        if in_force != wanted:
            same = (in_force.provider, in_force.session_id) == (ref.provider, ref.session_id)
            return AlreadyLinked(in_force, same_session=same)
        log.info(
            "thread_linked", channel=who.channel, thread=who.thread_ts, provider=ref.provider, via="mention"
        )
        if self._on_linked is not None:
            await self._on_linked(in_force, who)
        return Linked(in_force)

    async def unlink(self, who: Invocation) -> UnlinkResult:
        binding = await self._store.get_binding(who.thread)
        if binding is None:
            return NotLinked()
        decision = await self._policy.may_unlink(who.user, binding)
        if not decision.allowed:
            return Refused(decision.reason)
        await self._store.unbind(binding.key)
        log.info("thread_unlinked", channel=binding.key.channel, thread=binding.key.thread_ts)
        return Unlinked(binding, by=who.user)

    async def set_muted(self, who: Invocation, muted: bool) -> MuteResult:
        binding = await self._store.get_binding(who.thread)
        if binding is None:
            return NotLinked()
        if binding.muted == muted:
            return AlreadyMuted(muted)
        await self._store.set_muted(binding.key, muted)
        return MuteChanged(muted, by=who.user)

    async def status(self, who: Invocation) -> StatusResult:
        binding = await self._store.get_binding(who.thread)
        if binding is None:
            return NotLinked()
        last = await self._store.last_message(binding.key)
        if not self._readable(binding.provider):
            return StatusReport(binding, last)
        watch = await self._store.get_watch(binding.key)
        mode = (watch.mode if watch else None) or self._mirror_default
        return StatusReport(binding, last, mirror=mode, last_agent=watch.last_agent_text if watch else None)

    def _readable(self, provider: str) -> bool:
        client = self._providers.get(provider)
        return client is not None and Capability.READ_SESSION in client.capabilities

    async def set_mirror(self, who: Invocation, mode: MirrorMode) -> MirrorResult:
        """``mirror on|off|final``. Turning it on after it was off shows nothing older than now."""
        binding = await self._store.get_binding(who.thread)
        if binding is None:
            return NotLinked()
        if not self._readable(binding.provider):
            return MirrorUnavailable(self.label(binding.provider))
        watch = await self._store.get_watch(binding.key)
        if watch is None:  # linked before this version, or its watch was lost: watch it now
            await self._store.watch_thread(
                binding.key, binding.provider, binding.session_id, status_ts=binding.anchor_ts
            )
        before = (watch.mode if watch else None) or self._mirror_default
        if before is mode:
            return MirrorUnchanged(mode)
        await self._store.set_watch_mode(
            binding.key, mode, reset=before is MirrorMode.OFF and mode is not MirrorMode.OFF
        )
        key = binding.key
        log.info("mirror_mode_set", channel=key.channel, thread=key.thread_ts, mode=mode.value)
        return MirrorChanged(mode, by=who.user)

    async def _permalink(self, channel: str, ts: str) -> str | None:
        """A thread's link. Threads are keyed by a top-level message, whose permalink is
        ``<workspace>/archives/<channel>/p<ts without the dot>``: built here from ``auth.test``'s
        workspace address, so ``list`` makes no Slack call per thread (and answers before Slack's
        3-second deadline with 50 threads); Slack is asked only when the address is unknown."""
        if self._workspace_url:
            return f"{self._workspace_url}/archives/{channel}/p{ts.replace('.', '')}"
        return await self._slack.permalink(channel, ts)

    async def list_channel(self, who: Invocation) -> Listing:
        bindings = await self._store.list_bindings(who.team, who.channel)
        entries = []
        for binding in bindings[:MAX_LISTED]:
            entries.append(ListEntry(binding, await self._permalink(who.channel, binding.key.thread_ts)))
        return Listing(tuple(entries), total=len(bindings))
