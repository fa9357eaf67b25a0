"""``mirror on|off|final``: parsing, what counts as a command, the use case and its answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar, cast

import pytest
from pydantic import SecretStr

from bot.classify import command_text
from bot.commands import Invalid, Mirror, help_text, parse_command
from bot.policy import Policy
from bot.providers import PROVIDERS
from bot.providers.base import Capability, Provider, SessionState
from bot.render import mirror as text
from bot.render.control import NOT_LINKED, ControlText
from bot.slack import SlackGateway
from bot.usecases import (
    Invocation,
    MirrorChanged,
    MirrorUnavailable,
    MirrorUnchanged,
    NotLinked,
    StatusReport,
    UseCases,
)
from storage import Binding, MirrorMode, MirrorProgress, Store, ThreadKey
from storage.sqlite import SQLiteStore

BOT = "U0BOT"
THREAD = ThreadKey("T1", "C1", "1700000000.000100")
WHO = Invocation("T1", "C1", "U1", thread_ts=THREAD.thread_ts)


@pytest.mark.parametrize(
    ("typed", "command"),
    [
        ("mirror on", Mirror("on")),
        ("mirror OFF", Mirror("off")),
        ("Mirror final", Mirror("final")),
    ],
)
def test_mirror_parses(typed: str, command: Mirror) -> None:
    assert parse_command(typed, enabled=["devin"]) == command


@pytest.mark.parametrize("typed", ["mirror", "mirror sometimes", "mirror on off"])
def test_mirror_needs_one_mode(typed: str) -> None:
    command = parse_command(typed, enabled=["devin"])
    assert isinstance(command, Invalid)
    assert "Usage: `mirror on`, `mirror off` or `mirror final`" in command.message


@pytest.mark.parametrize(
    ("typed", "is_command"),
    [
        (f"<@{BOT}> mirror on", True),
        (f"<@{BOT}> mirror final", True),
        (f"<@{BOT}> mirror", True),  # answered with the usage
        (f"<@{BOT}> mirror the repo", False),  # a message for the agent
        (f"<@{BOT}> mirror on please", False),
    ],
)
def test_what_counts_as_a_mirror_command(typed: str, is_command: bool) -> None:
    assert (command_text(typed, BOT) is not None) is is_command


def test_help_mentions_mirror() -> None:
    assert "`mirror off`" in help_text(["devin"])


class Unreadable(Provider):
    """A provider that cannot read sessions."""

    name: ClassVar[str] = "devin"
    label: ClassVar[str] = "Plain"
    default_api_url: ClassVar[str] = "https://x.test"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    @classmethod
    def _normalise_session_id(cls, raw: str) -> str:
        return raw

    @staticmethod
    def _auth_headers(api_key: SecretStr) -> dict[str, str]:
        return {}

    def _path(self, session_id: str) -> str:
        return "/"

    def _body(self, text: str, client_id: str) -> object:  # type: ignore[override]
        raise NotImplementedError

    def _delivered(self, response: object) -> object:  # type: ignore[override]
        raise NotImplementedError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = SQLiteStore(tmp_path / "relay.db")
    await opened.init()
    yield opened
    await opened.close()


def usecases(store: Store, provider: Provider, default: MirrorMode = MirrorMode.ON) -> UseCases:
    return UseCases(
        store=store,
        slack=cast(SlackGateway, None),
        policy=cast(Policy, None),
        providers={"devin": provider},
        anchor_text=lambda user, ref: "",
        mirror_default=default,
    )


def devin() -> Provider:
    return PROVIDERS["devin"](api_key=SecretStr("k" * 8), base_url="https://x.test")


async def bind(store: Store, *, watch: bool = True) -> None:
    await store.bind(
        Binding(key=THREAD, provider="devin", session_id="devin-s", linked_by="U9", linked_at=1.0)
    )
    if watch:
        await store.watch_thread(THREAD, "devin", "devin-s")


async def test_mirror_on_an_unlinked_thread(store: Store) -> None:
    assert await usecases(store, devin()).set_mirror(WHO, MirrorMode.ON) == NotLinked()


async def test_mirror_of_a_provider_that_cannot_read(store: Store) -> None:
    await bind(store)
    provider = Unreadable(api_key=SecretStr("k" * 8), base_url="https://x.test")
    uc = usecases(store, provider)
    assert await uc.set_mirror(WHO, MirrorMode.OFF) == MirrorUnavailable("Plain")
    report = await uc.status(WHO)
    assert isinstance(report, StatusReport)
    assert report.mirror is None
    await provider.aclose()


async def test_mirror_changes_the_mode_and_forgets_the_watermark_only_after_off(store: Store) -> None:
    await bind(store)
    await store.record_poll(THREAD, "devin", "devin-s", MirrorProgress('{"key":"k"}', "working", None, "hi"))
    provider = devin()
    uc = usecases(store, provider)

    assert await uc.set_mirror(WHO, MirrorMode.ON) == MirrorUnchanged(MirrorMode.ON)  # the default
    assert await uc.set_mirror(WHO, MirrorMode.FINAL) == MirrorChanged(MirrorMode.FINAL, by="U1")
    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert watch.watermark == '{"key":"k"}'
    assert await uc.set_mirror(WHO, MirrorMode.OFF) == MirrorChanged(MirrorMode.OFF, by="U1")
    assert await uc.set_mirror(WHO, MirrorMode.ON) == MirrorChanged(MirrorMode.ON, by="U1")
    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert (watch.mode, watch.watermark) == (MirrorMode.ON, None)

    report = await uc.status(WHO)
    assert isinstance(report, StatusReport)
    assert (report.mirror, report.last_agent) == (MirrorMode.ON, "hi")
    await provider.aclose()


async def test_mirror_of_a_thread_without_a_watch_starts_one(store: Store) -> None:
    await bind(store, watch=False)
    provider = devin()
    uc = usecases(store, provider, default=MirrorMode.OFF)
    assert await uc.set_mirror(WHO, MirrorMode.ON) == MirrorChanged(MirrorMode.ON, by="U1")
    watch = await store.get_watch(THREAD)
    assert watch is not None
    assert watch.mode is MirrorMode.ON
    await provider.aclose()


def test_answers() -> None:
    control = ControlText({}, aside_prefix="!aside")
    changed = control.mirror(MirrorChanged(MirrorMode.OFF, by="U1"))
    assert changed.public
    assert changed.text == text.mirror_changed("off", "U1")
    assert "turned mirroring on" in control.mirror(MirrorChanged(MirrorMode.ON, by="U1")).text
    assert "`final`" in control.mirror(MirrorChanged(MirrorMode.FINAL, by="U1")).text
    assert control.mirror(MirrorUnchanged(MirrorMode.ON)).text == "Mirroring is already `on` in this thread."
    assert "cannot be read" in control.mirror(MirrorUnavailable("Plain")).text
    assert control.mirror(NotLinked()).text == NOT_LINKED


def test_status_shows_the_mode_and_an_excerpt_of_the_last_agent_message() -> None:
    binding = Binding(key=THREAD, provider="gone", session_id="s", linked_by="U9", linked_at=1.0)
    long = "word " * 100 + "<!channel>"
    reply = ControlText({}, aside_prefix="!aside").status(
        StatusReport(binding, None, mirror=MirrorMode.FINAL, last_agent=long)
    )
    assert "Mirroring the agent's side here: `final`." in reply.text
    last = reply.text.splitlines()[-1]
    assert last.startswith("Last from gone: “word word")
    assert last.endswith("…”")
    assert len(last) < 260


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://github.test/o/r/pull/12", "<https://github.test/o/r/pull/12|PR #12>"),
        (
            "https://gitlab.test/o/r/-/merge_requests/3/diffs",
            "<https://gitlab.test/o/r/-/merge_requests/3/diffs|PR #3>",
        ),
        ("https://x.test/review", "<https://x.test/review|PR>"),
        ("javascript:alert(1)", None),
        ("https://x.test/a|b", None),
        (None, None),
    ],
)
def test_pull_request_links(url: str | None, shown: str | None) -> None:
    assert text.pr_link(url) == shown


def test_status_lines() -> None:
    line = text.status_line("Devin", SessionState.UNKNOWN, title="  A <b> title " + "x" * 100)
    assert line.startswith(":grey_question: Devin is in a state I don't know · “A &lt;b&gt; title")
    assert text.status_line("Devin", SessionState.EXPIRED) == ":zzz: Devin is expired"
    assert text.web_message("hi", None) == "_via the web:_ hi"
    assert (
        text.question_suffix("Agen", None) == ":raising_hand: Agen is asking. Reply in this thread to answer."
    )
    assert text.waiting_notice("Agen", None).startswith(":raising_hand: Agen is waiting")
