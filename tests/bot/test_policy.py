"""Access policy decisions (bot/policy.py) against a real FakeSlack for users.info and user groups."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bot.events import Installation
from bot.policy import Policy
from bot.settings import Settings
from bot.slack import SlackGateway, make_web_client
from storage import Binding, ThreadKey
from tests.fakes.slack import TEAM, FakeSlack

TOKEN = "xoxb-policy-test-token"
ALICE, BOB, CAROL, ADMIN, OWNER, NOBODY = "U0ALICE", "U0BOB", "W0CAROL", "U0ADMIN", "U0OWNER", "U0NOBODY"
CHANNEL, OTHER = "C0CHANNEL", "C0OTHER"


@dataclass
class World:
    slack: FakeSlack
    gateway: SlackGateway

    def policy(self, **settings: Any) -> Policy:
        return Policy(Settings(_env_file=None, **settings), self.gateway)  # type: ignore[call-arg]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeSlack(bot_token=TOKEN) as slack:
        slack.add_user(ALICE, "alice")
        slack.add_user(BOB, "bob")
        slack.add_user(CAROL, "carol")
        slack.add_user(ADMIN, "admin", is_admin=True)
        slack.add_user(OWNER, "owner", is_owner=True)
        slack.add_usergroup("S0ONCALL", "oncall", [BOB, CAROL])
        slack.add_usergroup("S0EMPTY", "empty", [])
        yield World(slack, SlackGateway(make_web_client(TOKEN, base_url=slack.api_url)))


def binding(linked_by: str = ALICE) -> Binding:
    return Binding(
        key=ThreadKey(TEAM, CHANNEL, "1700000000.000100"),
        provider="devin",
        session_id="devin-abc",
        linked_by=linked_by,
        linked_at=1.0,
    )


async def may_link(policy: Policy, user: str, channel: str = CHANNEL, provider: str = "devin") -> bool:
    return (await policy.may_link(user, channel, provider, provider.capitalize())).allowed


# -- linking -----------------------------------------------------------------------------------


async def test_everyone_may_link_by_default_without_asking_slack(world: World) -> None:
    policy = world.policy()
    for user in (ALICE, BOB, NOBODY):
        assert await may_link(policy, user)
    assert world.slack.calls == []


async def test_listed_user_ids(world: World) -> None:
    policy = world.policy(allow_link=f"{ALICE}, {CAROL}")
    assert await may_link(policy, ALICE)
    assert await may_link(policy, CAROL)  # W… ids (Enterprise Grid) too
    refused = await policy.may_link(BOB, CHANNEL, "devin", "Devin")
    assert not refused.allowed
    assert (
        refused.reason == "Only people on this workspace's allow list can link a thread to an agent session."
    )


async def test_admins_and_owners(world: World) -> None:
    policy = world.policy(allow_link="admins")
    assert await may_link(policy, ADMIN)
    assert await may_link(policy, OWNER)
    refused = await policy.may_link(ALICE, CHANNEL, "devin", "Devin")
    assert not refused.allowed
    assert refused.reason == "Only a workspace admin can link a thread to an agent session."
    assert not await may_link(policy, NOBODY)  # users.info fails: refused, not allowed


async def test_admin_check_fails_closed_when_slack_fails(world: World) -> None:
    policy = world.policy(allow_link="admins")
    world.slack.fail_next("users.info", status=200, retry_after=None, error="fatal_error")
    assert not await may_link(policy, ADMIN)


async def test_user_group_members(world: World) -> None:
    policy = world.policy(allow_link="S0ONCALL")
    assert await may_link(policy, BOB)
    assert await may_link(policy, CAROL)
    assert not await may_link(policy, ALICE)
    assert not await may_link(policy, ADMIN)
    assert [c.args.get("usergroup") for c in world.slack.calls_to("usergroups.users.list")] == ["S0ONCALL"]


async def test_unknown_or_empty_user_group_allows_nobody(world: World) -> None:
    assert not await may_link(world.policy(allow_link="S0EMPTY"), BOB)
    assert not await may_link(world.policy(allow_link="S0MISSING"), BOB)


async def test_mixed_rules(world: World) -> None:
    policy = world.policy(allow_link=f"admins,S0ONCALL,{ALICE}")
    for user in (ALICE, BOB, CAROL, ADMIN, OWNER):
        assert await may_link(policy, user), user
    refused = await policy.may_link(NOBODY, CHANNEL, "devin", "Devin")
    assert refused.reason == (
        "Only a workspace admin or people on this workspace's allow list "
        "can link a thread to an agent session."
    )


async def test_empty_allow_link_allows_nobody(world: World) -> None:
    refused = await world.policy(allow_link="").may_link(ADMIN, CHANNEL, "devin", "Devin")
    assert not refused.allowed
    assert refused.reason == "Nobody is allowed to link a thread to an agent session here."


async def test_linker_token_does_not_apply_to_linking(world: World) -> None:
    assert not await may_link(world.policy(allow_link="linker"), ALICE)


# -- channels ----------------------------------------------------------------------------------


async def test_allowed_channels(world: World) -> None:
    policy = world.policy(allowed_channels=OTHER)
    assert policy.channel_allowed(OTHER).allowed
    decision = policy.channel_allowed(CHANNEL)
    assert not decision.allowed
    assert decision.reason == "agent-relay is not enabled in this channel."
    refused = await policy.may_link(ADMIN, CHANNEL, "devin", "Devin")
    assert refused == decision
    assert world.policy().channel_allowed(CHANNEL).allowed


async def test_provider_channels(world: World) -> None:
    policy = world.policy(devin_channels=f"{OTHER},C0THIRD", agen_channels=CHANNEL)
    refused = await policy.may_link(ALICE, CHANNEL, "devin", "Devin")
    assert not refused.allowed
    assert refused.reason == "Devin sessions cannot be linked in this channel."
    assert await may_link(policy, ALICE, OTHER, "devin")
    assert await may_link(policy, ALICE, "C0THIRD", "devin")
    assert await may_link(policy, ALICE, CHANNEL, "feather")  # no list: every channel
    assert await may_link(policy, ALICE, CHANNEL, "agen")
    assert not await may_link(policy, ALICE, OTHER, "agen")


async def test_channel_rules_come_before_people(world: World) -> None:
    policy = world.policy(allow_link=ALICE, allowed_channels=OTHER)
    refused = await policy.may_link(BOB, CHANNEL, "devin", "Devin")
    assert refused.reason == "agent-relay is not enabled in this channel."


# -- unlinking ---------------------------------------------------------------------------------


async def test_unlink_default_linker_and_admins(world: World) -> None:
    policy = world.policy()
    assert (await policy.may_unlink(ALICE, binding(linked_by=ALICE))).allowed
    assert (await policy.may_unlink(ADMIN, binding(linked_by=ALICE))).allowed
    assert (await policy.may_unlink(OWNER, binding(linked_by=ALICE))).allowed
    refused = await policy.may_unlink(BOB, binding(linked_by=ALICE))
    assert not refused.allowed
    assert refused.reason == "Only the person who linked this thread or a workspace admin can unlink it."


async def test_unlink_everyone_and_listed(world: World) -> None:
    assert (await world.policy(allow_unlink="everyone").may_unlink(BOB, binding())).allowed
    listed = world.policy(allow_unlink=f"linker,{BOB},S0EMPTY")
    assert (await listed.may_unlink(BOB, binding())).allowed
    assert (await listed.may_unlink(ALICE, binding())).allowed
    refused = await listed.may_unlink(ADMIN, binding())
    assert refused.reason == (
        "Only the person who linked this thread or people on this workspace's allow list can unlink it."
    )


async def test_unlink_without_linker_token(world: World) -> None:
    policy = world.policy(allow_unlink="admins")
    assert not (await policy.may_unlink(ALICE, binding(linked_by=ALICE))).allowed
    assert (await policy.may_unlink(ADMIN, binding(linked_by=ALICE))).allowed


# -- outsiders ---------------------------------------------------------------------------------


WORKSPACE = Installation(team_id=TEAM)
GRID = "E0ORG"
SISTER = "T0SISTER"  # another workspace of the same Enterprise Grid organisation
IN_GRID = Installation(team_id=TEAM, enterprise_id=GRID)
ORG_WIDE = Installation(team_id=None, enterprise_id=GRID, is_enterprise_install=True)


async def test_outsiders(world: World) -> None:
    policy = world.policy()
    assert not await policy.is_outsider(WORKSPACE, ALICE, None)
    assert not await policy.is_outsider(WORKSPACE, ALICE, "")
    assert not await policy.is_outsider(WORKSPACE, ALICE, TEAM)
    assert await policy.is_outsider(WORKSPACE, "U0STRANGER", "T0OTHER")
    allowing = world.policy(allowed_external_teams="T0PARTNER,T0OTHER")
    assert not await allowing.is_outsider(WORKSPACE, "U0STRANGER", "T0OTHER")
    assert not await allowing.is_outsider(WORKSPACE, "U0STRANGER", "T0PARTNER")
    assert await allowing.is_outsider(WORKSPACE, "U0STRANGER", "T0STRANGER")


async def test_grid_members_are_not_outsiders(world: World) -> None:
    world.slack.add_user("U0SISTER", "sister", team_id=SISTER, enterprise_id=GRID)
    world.slack.add_user("U0CONNECT", "connect", team_id="T0OTHER", enterprise_id="E0OTHERORG")
    world.slack.add_user("U0PLAIN", "plain", team_id="T0OTHER")
    policy = world.policy()
    for installation in (IN_GRID, ORG_WIDE):
        # user_team is the organisation itself: no lookup needed
        assert not await policy.is_outsider(installation, "U0NOBODYKNOWS", GRID)
        # another workspace of the organisation: users.info says which organisation
        assert not await policy.is_outsider(installation, "U0SISTER", SISTER)
        # Slack Connect from another organisation, or from a workspace outside any
        assert await policy.is_outsider(installation, "U0CONNECT", "T0OTHER")
        assert await policy.is_outsider(installation, "U0CONNECT", "E0OTHERORG")
        assert await policy.is_outsider(installation, "U0PLAIN", "T0OTHER")
        # Slack cannot say who it is: an outsider
        assert await policy.is_outsider(installation, "U0GHOST", SISTER)
    assert not await policy.is_outsider(IN_GRID, ALICE, TEAM)
    # A workspace outside Grid has no sister workspaces: another team is another organisation.
    assert await policy.is_outsider(WORKSPACE, "U0SISTER", SISTER)
    # Each person Slack knows is asked about once (cached); one it does not know, each time.
    asked = [call.args["user"] for call in world.slack.calls_to("users.info")]
    assert asked == ["U0SISTER", "U0CONNECT", "U0PLAIN", "U0GHOST", "U0GHOST"]


async def test_an_allowed_organisation_lets_its_workspaces_in(world: World) -> None:
    world.slack.add_user("U0CONNECT", "connect", team_id="T0OTHER", enterprise_id="E0OTHERORG")
    policy = world.policy(allowed_external_teams="E0OTHERORG")
    assert not await policy.is_outsider(IN_GRID, "U0CONNECT", "T0OTHER")
    assert not await policy.is_outsider(IN_GRID, "U0CONNECT", "E0OTHERORG")


async def test_outsider_users_without_a_user_team(world: World) -> None:
    """A slash command names only the user: users.info says where they belong."""
    world.slack.add_user("U0SISTER", "sister", team_id=SISTER, enterprise_id=GRID)
    world.slack.add_user("U0CONNECT", "connect", team_id="T0OTHER")
    policy = world.policy()
    assert not await policy.is_outsider_user(WORKSPACE, ALICE, payload_team=TEAM)
    assert not await policy.is_outsider_user(IN_GRID, "U0SISTER", payload_team=SISTER)
    assert await policy.is_outsider_user(WORKSPACE, "U0SISTER", payload_team=TEAM)
    assert await policy.is_outsider_user(IN_GRID, "U0CONNECT", payload_team=TEAM)
    # users.info cannot answer: the team the signed payload names decides
    assert not await policy.is_outsider_user(WORKSPACE, "U0GHOST", payload_team=TEAM)
    assert await policy.is_outsider_user(WORKSPACE, "U0GHOST", payload_team="T0OTHER")
    assert await policy.is_outsider_user(WORKSPACE, "U0GHOST")
    allowing = world.policy(allowed_external_teams="T0OTHER")
    assert not await allowing.is_outsider_user(IN_GRID, "U0CONNECT", payload_team=TEAM)
    assert not await allowing.is_outsider_user(WORKSPACE, "U0GHOST", payload_team="T0OTHER")


async def test_settings_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    monkeypatch.setenv("ALLOW_LINK", f" {ALICE} , S0ONCALL ,")
    monkeypatch.setenv("ALLOW_UNLINK", "everyone")
    monkeypatch.setenv("DEVIN_CHANNELS", OTHER)
    monkeypatch.setenv("ALLOWED_EXTERNAL_TEAMS", "T0OTHER")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.allow_link == (ALICE, "S0ONCALL")
    assert settings.allow_unlink == ("everyone",)
    assert settings.provider_channels("devin") == (OTHER,)
    assert settings.provider_channels("feather") == ()
    policy = Policy(settings, world.gateway)
    assert await may_link(policy, BOB, OTHER)
    assert not await may_link(policy, ADMIN, OTHER)
    assert not await policy.is_outsider(WORKSPACE, "U0STRANGER", "T0OTHER")


async def test_policy_keywords_in_any_case(world: World) -> None:
    policy = world.policy(allow_link=" Admins ", allow_unlink="LINKER")
    assert await may_link(policy, ADMIN)
    assert not await may_link(policy, ALICE)
    assert (await policy.may_unlink(ALICE, binding(linked_by=ALICE))).allowed
    assert (await world.policy(allow_link=["Everyone"]).may_link(BOB, CHANNEL, "devin", "Devin")).allowed
