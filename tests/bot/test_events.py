"""Raw events -> SlackMessage (bot/events.py): the installation's key team, what a message says."""

from __future__ import annotations

from typing import Any

from bot.events import Installation, message_from_event

WORKSPACE = Installation(team_id="T0TEAM")
ORG_WIDE = Installation(enterprise_id="E0ORG", is_enterprise_install=True)


def event(**fields: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "channel": "C1",
        "user": "U1",
        "text": "hi",
        "ts": "1800000000.000200",
        "thread_ts": "1800000000.000100",
        "team": "T0SISTER",
        **fields,
    }


def rich(words: str) -> list[dict[str, Any]]:
    section = {"type": "rich_text_section", "elements": [{"type": "text", "text": words}]}
    return [{"type": "rich_text", "elements": [section]}]


def test_the_key_team_is_the_installing_team_or_for_org_wide_installs_the_enterprise() -> None:
    assert WORKSPACE.key_team == "T0TEAM"
    assert Installation(team_id="T0TEAM", enterprise_id="E0ORG").key_team == "T0TEAM"
    assert ORG_WIDE.key_team == "E0ORG"
    assert (
        Installation(team_id="T0TEAM", enterprise_id="E0ORG", is_enterprise_install=True).key_team == "E0ORG"
    )
    assert Installation().key_team == ""
    for installation, team in ((WORKSPACE, "T0TEAM"), (ORG_WIDE, "E0ORG")):
        message = message_from_event(event(), installation)
        assert message is not None
        assert message.team == team  # never the author's workspace ("team": "T0SISTER")
    unknown = message_from_event(event(), Installation())
    assert unknown is not None
    assert unknown.team == "T0SISTER"


def test_auth_test_says_first_the_event_fills_in() -> None:
    identity = Installation(team_id="T0TEAM", enterprise_id=None)
    assert identity.filled_from("T0OTHER", "E0ORG", None) == Installation("T0TEAM", "E0ORG", False)
    assert Installation().filled_from(None, "E0ORG", True) == ORG_WIDE
    assert Installation().filled_from("", "", None) == Installation()
    assert Installation("T0TEAM", "E0ORG").own_teams == {"T0TEAM", "E0ORG"}
    assert ORG_WIDE.own_teams == {"E0ORG"}


def test_blocks_win_the_fallback_text_and_shares_follow() -> None:
    share = {
        "is_share": True,
        "author_name": "Bob",
        "from_url": "https://x.slack.test/archives/C2/p1",
        "text": "shared words",
    }
    message = message_from_event(
        event(text="New message", blocks=rich("what it shows"), attachments=[share]), WORKSPACE
    )
    assert message is not None
    assert message.text == "what it shows"
    assert (
        message.forwarded
        == "Forwarded message from Bob (<https://x.slack.test/archives/C2/p1>):\n&gt; shared words"
    )
    assert message.relay_text == f"what it shows\n\n{message.forwarded}"
    only_shared = message_from_event(event(text="", attachments=[share]), WORKSPACE)
    assert only_shared is not None
    assert only_shared.relay_text == only_shared.forwarded


def test_an_edit_compares_the_writers_words_as_shown() -> None:
    changed = {
        "type": "message",
        "subtype": "message_changed",
        "channel": "C1",
        "ts": "1800000000.000900",
        "message": event(
            text="fallback", blocks=rich("new words"), edited={"user": "U1", "ts": "1800000000.000900"}
        ),
        "previous_message": event(text="fallback", blocks=rich("old words")),
    }
    message = message_from_event(changed, WORKSPACE)
    assert message is not None
    assert (message.previous_text, message.text, message.edited_ts) == (
        "old words",
        "new words",
        "1800000000.000900",
    )


def test_me_message_keeps_its_subtype_and_text() -> None:
    message = message_from_event(event(subtype="me_message", text="waves"), WORKSPACE)
    assert message is not None
    assert (message.subtype, message.text, message.relay_text) == ("me_message", "waves", "waves")
