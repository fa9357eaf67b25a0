"""manifest.yml is valid for Slack's manifest schema as far as we use it, and matches the generator."""

from __future__ import annotations

from pathlib import Path

import yaml

from bot.manifest import build_manifest, render_manifest

ROOT = Path(__file__).resolve().parents[1]


def test_committed_manifest_is_what_the_generator_prints() -> None:
    assert (ROOT / "manifest.yml").read_text() == render_manifest()


def test_manifest_declares_command_events_scopes_and_socket_mode() -> None:
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/agent"]
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert events == {"app_mention", "message.channels", "message.groups", "message.im", "message.mpim"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    needed_for_events = {
        "app_mentions:read",
        "channels:history",
        "groups:history",
        "im:history",
        "mpim:history",
    }
    assert needed_for_events | {"commands", "chat:write", "reactions:write", "users:read"} <= scopes
    # names for relayed text: user groups (usergroups.list), channels (conversations.info)
    assert {"usergroups:read", "channels:read", "groups:read"} <= scopes
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True  # message.im needs it
    assert "request_url" not in manifest["settings"]["event_subscriptions"]


def test_http_manifest_points_every_url_at_slack_events() -> None:
    manifest = build_manifest(http_url="https://relay.example.com/")
    url = "https://relay.example.com/slack/events"
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert manifest["settings"]["event_subscriptions"]["request_url"] == url
    assert manifest["settings"]["interactivity"]["request_url"] == url
    assert manifest["features"]["slash_commands"][0]["url"] == url
