"""What one read of a session makes a thread show. Pure: no I/O.

:func:`plan` takes a thread's watch and binding and a fresh :class:`SessionSnapshot`, and returns
the Slack calls to queue (posts, the state message updated in place, the native agent status) and
what to store. The poller stores both in one transaction.

What is shown, by mode:

* ``on``: every new agent message (in the provider's order, converted to mrkdwn and split to fit),
  with a question mentioning the person who last steered the session; a notice when the session
  starts waiting without a new message; the state message; "finished" or "suspended" said once.
* ``final``: the state message, "finished"/"suspended" said once, and the agent's newest message
  when the session stops or starts waiting for an answer (a question is worth a notification even
  here: nobody else will answer it).
* Messages sent through the relay are never shown again. Others' messages from the provider's web
  app are shown as "via the web: …" with ``web_messages`` (``MIRROR_WEB_MESSAGES``).

Every post has a dedupe key made of the thread and the item's key (``mirror:{team}:{channel}:
{thread}:{item key}``, then ``:1``, ``:2`` for further parts), the announcement and the notice one
made of the thread, the state and the newest item's key: a restart, a takeover or two replicas never
post one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.mirror.diff import Watermark, diff
from bot.mirror.markdown import to_mrkdwn
from bot.mirror.split import LIMIT, split_message
from bot.providers.base import AgentItem, ItemKind, SessionSnapshot, SessionState
from bot.relay.compose import VIA_SLACK
from bot.render import mirror as text
from storage import Binding, MirrorMode, MirrorWatch, NewFeedback, ThreadKey

__all__ = ["NATIVE_STATUS", "Plan", "PlanConfig", "ThreadView", "is_ours", "plan"]

LAST_AGENT_CHARS = 2_000
_SPOKEN = (ItemKind.AGENT, ItemKind.QUESTION)

#: Slack's agent-session status for each state (``agents.sessions.setStatus``).
NATIVE_STATUS: dict[SessionState, str] = {
    SessionState.WORKING: "processing",
    SessionState.WAITING: "active",
    SessionState.SUSPENDED: "suspended",
    SessionState.FINISHED: "closed",
    SessionState.EXPIRED: "closed",
}


@dataclass(frozen=True, slots=True)
class PlanConfig:
    web_messages: bool = False
    slack_status: bool = False
    part_limit: int = LIMIT - 1_000  # room for a question's mention or a "via the web" prefix


@dataclass(frozen=True, slots=True)
class ThreadView:
    """What the planner knows of one thread."""

    binding: Binding
    watch: MirrorWatch
    mode: MirrorMode  # in force (the thread's, or the default)
    label: str  # "Devin"
    anchor: str | None = None  # the anchor's own text, for threads linked with /agent link
    steerer: str | None = None  # who a question mentions


@dataclass(frozen=True, slots=True)
class Plan:
    feedback: tuple[NewFeedback, ...]
    watermark: str
    state: SessionState
    status_text: str | None
    last_agent_text: str | None
    news: bool  # something new was seen: keep the quick pace


def is_ours(item: AgentItem) -> bool:
    """A message agent-relay sent: our ``client_id`` (Agen), or our "<name> (via Slack)" form."""
    if item.client_id is not None and item.client_id.startswith("slack:"):
        return True
    first = item.text.split("\n", 1)[0]
    return VIA_SLACK in first


def _from_the_web(item: AgentItem) -> bool:
    return item.kind is ItemKind.USER and not is_ours(item) and item.origin not in ("api", "slack")


def plan(view: ThreadView, snapshot: SessionSnapshot, config: PlanConfig) -> Plan:
    watch, thread = view.watch, view.binding.key
    first = watch.watermark is None
    found = diff(snapshot.items, Watermark.decode(watch.watermark))
    before = _state(watch.state)
    state = snapshot.state
    changed = not first and before is not None and state is not before
    spoken = [item for item in snapshot.items if item.kind in _SPOKEN]
    newest = spoken[-1] if spoken else None
    last_key = snapshot.items[-1].key if snapshot.items else "none"

    items: list[NewFeedback] = []
    asked = False
    if not first and view.mode is MirrorMode.ON:
        for item in found.new:
            if item.kind in _SPOKEN:
                asking = state is SessionState.WAITING and item is newest
                question = item.kind is ItemKind.QUESTION or asking
                asked = asked or question
                items += _posts(view, item, question=question, config=config)
            elif config.web_messages and _from_the_web(item):
                items += _posts(view, item, question=False, config=config, web=True)
    if not first and view.mode is MirrorMode.FINAL and newest is not None:
        stopping = state.stopped and (before is None or not before.stopped)
        waiting = state is SessionState.WAITING and before is not SessionState.WAITING
        new_question = any(item.kind is ItemKind.QUESTION for item in found.new)
        if stopping or waiting or new_question:
            asked = waiting or new_question
            items += _posts(view, newest, question=asked, config=config)
    if changed and state is SessionState.WAITING and not asked:
        notice = text.waiting_notice(view.label, view.steerer)
        items.append(_post(thread, notice, key=_key(thread, f"waiting:{last_key}")))
    if changed and state in (SessionState.FINISHED, SessionState.SUSPENDED):
        said = text.announcement(view.label, state, snapshot.pr_url)
        items.append(_post(thread, said, key=_key(thread, f"state:{state.value}:{last_key}")))

    status_text, status_items = _status(view, snapshot)
    items += status_items
    if config.slack_status and state is not before and state in NATIVE_STATUS:
        items.append(
            NewFeedback(
                channel=thread.channel,
                team=thread.team,
                kind="agent_status",
                payload={
                    "channel": thread.channel,
                    "thread_ts": thread.thread_ts,
                    "status": NATIVE_STATUS[state],
                },
            )
        )
    last_text = watch.last_agent_text
    if newest is not None:
        last_text = newest.text[:LAST_AGENT_CHARS]
    return Plan(
        feedback=tuple(items),
        watermark=found.watermark.encode(),
        state=state,
        status_text=status_text,
        last_agent_text=last_text,
        news=bool(found.new) or state is not before,
    )


def _state(stored: str | None) -> SessionState | None:
    try:
        return SessionState(stored) if stored else None
    except ValueError:
        return None


def _key(thread: ThreadKey, what: str) -> str:
    return f"mirror:{thread.team}:{thread.channel}:{thread.thread_ts}:{what}"


def _post(
    thread: ThreadKey, body: str, *, key: str, username: str | None = None, icon: str | None = None
) -> NewFeedback:
    payload: dict[str, object] = {
        "channel": thread.channel,
        "thread_ts": thread.thread_ts,
        "text": body,
        "unfurl_links": False,
        "unfurl_media": False,
    }
    if username:
        payload["username"] = username
        payload["icon_emoji"] = icon or text.AGENT_ICON
    return NewFeedback(channel=thread.channel, team=thread.team, kind="post", payload=payload, dedupe_key=key)


def _posts(
    view: ThreadView, item: AgentItem, *, question: bool, config: PlanConfig, web: bool = False
) -> Sequence[NewFeedback]:
    """One item as posts (several when it is long), labelled with the provider."""
    thread = view.binding.key
    body = to_mrkdwn(item.text)
    if web:
        body = text.web_message(body, item.author)
    parts = split_message(body, config.part_limit) if body.strip() else []
    if not parts:
        return ()
    if question:
        parts[-1] = f"{parts[-1]}\n{text.question_suffix(view.label, view.steerer)}"
    sent_as = None if web else text.sender(view.label)
    base = _key(thread, item.key)
    return [
        _post(thread, part, key=base if n == 0 else f"{base}:{n}", username=sent_as)
        for n, part in enumerate(parts)
    ]


def _status(view: ThreadView, snapshot: SessionSnapshot) -> tuple[str | None, list[NewFeedback]]:
    """The state message's new text and the call that sets it (an update, or the first post)."""
    watch, thread = view.watch, view.binding.key
    line = text.status_line(
        view.label, snapshot.state, pr_url=snapshot.pr_url, cost_usd=snapshot.cost_usd, title=snapshot.title
    )
    wanted = text.anchor_with_status(view.anchor, line) if view.anchor else text.status_message(line)
    if watch.status_ts is None:
        if view.anchor is not None or watch.status_text is not None:
            return watch.status_text, []  # no message to update yet (its post is still queued)
        if watch.watermark is None:
            return None, []  # posted from the next read on: after the link's own reply, not before it
        key = _key(thread, f"status:{view.binding.linked_at!r}")
        payload = {
            "channel": thread.channel,
            "thread_ts": thread.thread_ts,
            "text": wanted,
            "unfurl_links": False,
            "unfurl_media": False,
        }
        item = NewFeedback(
            channel=thread.channel, team=thread.team, kind="status_post", payload=payload, dedupe_key=key
        )
        return wanted, [item]
    if wanted == watch.status_text:
        return wanted, []
    payload = {"channel": thread.channel, "ts": watch.status_ts, "text": wanted}
    return wanted, [NewFeedback(channel=thread.channel, team=thread.team, kind="update", payload=payload)]
