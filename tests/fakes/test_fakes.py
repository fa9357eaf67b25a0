"""The fakes themselves: they must behave like the real services and refuse to drift from the specs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.manifest import BOT_SCOPES
from tests.fakes import eventually
from tests.fakes.providers import Answer, FakeProvider
from tests.fakes.slack import BOT_ID, BOT_USER, TEAM, FakeSlack
from tests.fakes.specs import (
    PROVIDER_OPERATIONS,
    SPECS_ENV,
    ProviderName,
    SpecsNotFoundError,
    SpecValidator,
    specs_dir,
)

TOKEN = "xoxb-test-token"
KEY = "key-for-tests"
PROVIDERS: tuple[ProviderName, ...] = tuple(PROVIDER_OPERATIONS)
SESSIONS: dict[ProviderName, str] = {
    "devin": "devin-0123abcd",
    "feather": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "agen": "agen-session-1",
}
ROUTES: dict[ProviderName, str] = {
    "devin": "/v1/sessions/{}/message",
    "feather": "/v1/ask-feather/sessions/{}/messages",
    "agen": "/api/v1/sessions/{}/messages",
}


# -- Slack ---------------------------------------------------------------------------------------


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> AsyncWebClient:
    # Without a shared session, AsyncWebClient opens and closes one aiohttp session per call.
    return AsyncWebClient(token=TOKEN, base_url=slack.api_url)


async def test_auth_test(slack: FakeSlack, client: AsyncWebClient) -> None:
    response = await client.auth_test()
    assert response["ok"] is True
    assert (response["team_id"], response["user_id"], response["bot_id"]) == (TEAM, BOT_USER, BOT_ID)
    assert response["is_enterprise_install"] is False
    [call] = slack.calls_to("auth.test")
    assert call.token == TOKEN
    assert call.headers["authorization"] == f"Bearer {TOKEN}"


async def test_granted_scopes_come_with_every_answer_to_the_bot_token(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    response = await client.auth_test()
    assert response.headers["x-oauth-scopes"] == ",".join(BOT_SCOPES)
    slack.scopes = ["chat:write", "commands"]
    assert (await client.api_call("chat.postMessage", json={"channel": "C1", "text": "hi"})).headers[
        "x-oauth-scopes"
    ] == "chat:write,commands"
    slack.scopes = None
    assert "x-oauth-scopes" not in {k.lower() for k in (await client.auth_test()).headers}


async def test_wrong_or_missing_token_is_invalid_auth(slack: FakeSlack) -> None:
    for token in ("xoxb-wrong", None):
        with pytest.raises(SlackApiError) as caught:
            await AsyncWebClient(token=token, base_url=slack.api_url).auth_test()
        assert caught.value.response["error"] == "invalid_auth"
    assert [call.token for call in slack.calls] == ["xoxb-wrong", None]


async def test_token_may_come_as_a_form_field(slack: FakeSlack) -> None:
    response = await AsyncWebClient(base_url=slack.api_url).api_call("auth.test", data={"token": TOKEN})
    assert response["ok"] is True
    assert slack.calls[0].token == TOKEN
    assert "token" not in slack.calls[0].args


async def test_post_message_ts_increases_and_thread_is_recorded(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    first = await client.chat_postMessage(channel="C1", text="one")
    second = await client.chat_postMessage(channel="C1", thread_ts=first["ts"], text="two")
    third = await client.chat_postMessage(channel="C1", thread_ts=first["ts"], text="three")
    assert first["ts"] == "1700000000.000100"
    assert float(first["ts"]) < float(second["ts"]) < float(third["ts"])
    assert second["channel"] == "C1"
    assert second["message"]["user"] == BOT_USER
    assert second["message"]["bot_id"] == BOT_ID
    assert second["message"]["thread_ts"] == first["ts"]
    assert [m["text"] for m in slack.replies_in("C1", first["ts"])] == ["two", "three"]
    assert len(slack.calls_to("chat.postMessage")) == 3


async def test_form_fields_holding_json_are_decoded(slack: FakeSlack, client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="C1", text="before")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "after"}}]
    await client.api_call(
        "chat.update",
        data={"channel": "C1", "ts": posted["ts"], "text": "after", "blocks": json.dumps(blocks)},
    )
    [call] = slack.calls_to("chat.update")
    assert call.args["blocks"] == blocks
    assert slack.messages[0]["text"] == "after"
    assert slack.messages[0]["blocks"] == blocks
    await client.chat_delete(channel="C1", ts=posted["ts"])
    assert slack.messages == []
    assert slack.deleted[0]["ts"] == posted["ts"]


async def test_ephemeral_permalink_conversation_and_unknown_method(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    ephemeral = await client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert ephemeral["message_ts"]
    assert [m["text"] for m in slack.ephemerals(channel="C1", user="U1")] == ["only you"]
    assert slack.ephemerals(user="U2") == []
    link = await client.chat_getPermalink(channel="C1", message_ts="1700000000.000100")
    assert link["permalink"] == "https://fake.slack.test/archives/C1/p1700000000000100"
    info = await client.conversations_info(channel="CGENERAL")
    assert info["channel"] == {"id": "CGENERAL", "name": "cgeneral"}
    with pytest.raises(SlackApiError) as caught:
        await client.api_call("admin.everything.delete")
    assert caught.value.response["error"] == "unknown_method"
    assert slack.calls_to("admin.everything.delete")


async def test_reactions_state(slack: FakeSlack, client: AsyncWebClient) -> None:
    await client.reactions_add(channel="C1", timestamp="1.0", name="eyes")
    await client.reactions_add(channel="C1", timestamp="1.0", name="white_check_mark")
    assert slack.reactions[("C1", "1.0")] == ["eyes", "white_check_mark"]
    with pytest.raises(SlackApiError) as caught:
        await client.reactions_add(channel="C1", timestamp="1.0", name="eyes")
    assert caught.value.response["error"] == "already_reacted"
    await client.reactions_remove(channel="C1", timestamp="1.0", name="eyes")
    assert slack.reactions_on("C1", "1.0") == ["white_check_mark"]
    with pytest.raises(SlackApiError) as caught:
        await client.reactions_remove(channel="C1", timestamp="1.0", name="eyes")
    assert caught.value.response["error"] == "no_reaction"


async def test_users_and_usergroups(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.add_user("U1", "Ada", "Ada Lovelace", is_admin=True)
    response = await client.users_info(user="U1")
    user = response["user"]
    assert user["id"] == "U1"
    assert user["team_id"] == TEAM
    assert (user["is_admin"], user["is_owner"], user["is_bot"]) == (True, False, False)
    assert user["profile"] == {"display_name": "Ada", "real_name": "Ada Lovelace"}
    with pytest.raises(SlackApiError) as caught:
        await client.users_info(user="U404")
    assert caught.value.response["error"] == "user_not_found"

    slack.add_usergroup("S1", "relay-admins", ["U1", "U2"])
    group = await client.usergroups_users_list(usergroup="S1")
    assert group["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError) as caught:
        await client.usergroups_users_list(usergroup="S404")
    assert caught.value.response["error"] == "no_such_subteam"


async def test_usergroups_list_like_slack(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.add_usergroup("S1", "relay-admins", ["U1"])
    slack.add_usergroup("S2", "old-team", ["U2"], disabled=True)
    listed = (await client.usergroups_list())["usergroups"]
    assert [(g["id"], g["handle"], g["date_delete"]) for g in listed] == [("S1", "relay-admins", 0)]
    assert "users" not in listed[0]
    everything = (await client.usergroups_list(include_disabled=True, include_users=True))["usergroups"]
    assert [(g["id"], g["users"]) for g in everything] == [("S1", ["U1"]), ("S2", ["U2"])]
    assert everything[1]["date_delete"] > 0


async def test_rate_limit_is_retried_by_slack_sdk(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.fail_next("chat.postMessage", retry_after=0)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
    response = await client.chat_postMessage(channel="C1", text="eventually")
    assert response["ok"] is True
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert [m["text"] for m in slack.messages] == ["eventually"]


async def test_fail_next_without_retry_handler(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.fail_next("reactions.add", status=500, retry_after=None, error="internal_error", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as caught:
            await client.reactions_add(channel="C1", timestamp="1.0", name="eyes")
        assert caught.value.response.status_code == 500
        assert caught.value.response["error"] == "internal_error"
    await client.reactions_add(channel="C1", timestamp="1.0", name="eyes")
    assert slack.reactions_on("C1", "1.0") == ["eyes"]


async def test_response_url_records_webhook_posts(slack: FakeSlack) -> None:
    webhook = AsyncWebhookClient(slack.response_url("cmd-1"))
    response = await webhook.send(text="linked", response_type="ephemeral")
    assert (response.status_code, response.body) == (200, "ok")
    assert slack.responses == [("cmd-1", {"text": "linked", "response_type": "ephemeral"})]
    assert slack.responses_for("cmd-1")[0]["text"] == "linked"


async def test_wait_for_times_out_with_a_useful_message(slack: FakeSlack, client: AsyncWebClient) -> None:
    await client.auth_test()
    with pytest.raises(AssertionError, match=r"auth\.test"):
        await slack.wait_for(lambda: bool(slack.messages), timeout=0.05)


async def test_eventually_waits_for_a_later_change() -> None:
    flag: list[bool] = []
    asyncio.get_running_loop().call_later(0.05, flag.append, True)
    await eventually(lambda: bool(flag), timeout=2.0)
    with pytest.raises(AssertionError, match="still false"):
        await eventually(lambda: False, timeout=0.02, message="never")


# -- Providers -----------------------------------------------------------------------------------


def auth(name: ProviderName, key: str = KEY) -> dict[str, str]:
    # httpx refuses header values with trailing whitespace, so an empty Bearer key is plain "Bearer".
    return {"Authorization": f"Bearer {key}".strip()} if name == "devin" else {"x-api-key": key}


def body(name: ProviderName, text: str = "hello agent") -> dict[str, Any]:
    if name == "feather":
        return {"content": text, "workflow": None}
    if name == "agen":
        return {"message": text, "client_id": "relay-msg-1"}
    return {"message": text}


def route(name: ProviderName, session: str | None = None) -> str:
    return ROUTES[name].format(session or SESSIONS[name])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture(params=PROVIDERS)
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[FakeProvider]:
    async with FakeProvider(request.param, api_key=KEY) as fake:
        yield fake


async def send(
    http: httpx.AsyncClient,
    fake: FakeProvider,
    *,
    session: str | None = None,
    text: str = "hello agent",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await http.post(
        fake.url + route(fake.name, session),
        json=body(fake.name, text),
        headers=auth(fake.name) if headers is None else headers,
    )


async def test_valid_request_is_delivered_and_recorded(
    provider: FakeProvider, http: httpx.AsyncClient
) -> None:
    response = await send(http, provider, text="please rebase")
    assert response.status_code == 200
    expected: object = {"devin": None, "feather": {}}.get(provider.name, response.json())
    assert response.json() == expected
    assert provider.violations == []
    [received] = provider.requests
    assert received.session_id == SESSIONS[provider.name]
    assert received.text == "please rebase"
    assert received.json == body(provider.name, "please rebase")
    assert received.client_id == ("relay-msg-1" if provider.name == "agen" else None)
    assert received.headers["content-type"] == "application/json"
    assert (received.valid, received.authorized, received.status) == (True, True, 200)
    assert provider.messages() == ["please rebase"]
    assert provider.messages(SESSIONS[provider.name]) == ["please rebase"]
    assert provider.messages("other") == []
    assert provider.delivered_messages() == ["please rebase"]


@pytest.mark.parametrize("key", ["", None])
async def test_missing_or_empty_key_is_a_violation(
    provider: FakeProvider, http: httpx.AsyncClient, key: str | None
) -> None:
    headers = {} if key is None else auth(provider.name, key)
    response = await send(http, provider, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "header"
    assert len(provider.violations) == 1
    assert provider.messages() == []


async def test_wrong_key_is_401_not_a_violation(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    response = await send(http, provider, headers=auth(provider.name, "wrong"))
    assert (response.status_code, response.json()) == (401, {"detail": "Invalid API key"})
    assert provider.violations == []
    assert provider.requests[0].valid
    assert not provider.requests[0].authorized
    assert provider.messages() == []


async def test_unknown_path_and_wrong_method_are_violations(
    provider: FakeProvider, http: httpx.AsyncClient
) -> None:
    response = await http.post(provider.url + "/v2/elsewhere", json={}, headers=auth(provider.name))
    assert response.status_code == 404
    response = await http.get(provider.url + route(provider.name), headers=auth(provider.name))
    assert response.status_code == 405
    assert len(provider.violations) == 2


async def test_with_only_known_sessions_an_unknown_session_is_404(
    provider: FakeProvider, http: httpx.AsyncClient
) -> None:
    provider.only_known_sessions = True
    url = provider.url + READ_ROUTES[provider.name].format(SESSIONS[provider.name])

    unknown = await http.get(url, headers=auth(provider.name))
    refused = await http.get(url, headers=auth(provider.name, "wrong"))
    provider.session(SESSIONS[provider.name])  # now the fake knows it
    known = await http.get(url, headers=auth(provider.name))

    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"})
    assert (refused.status_code, refused.json()) == (401, {"detail": "Invalid API key"})
    assert known.status_code == 200
    assert [(r.status, r.authorized) for r in provider.reads] == [(404, True), (401, False), (200, True)]
    assert provider.violations == []
    assert provider.requests == []  # nothing was sent


async def test_feather_session_read_needs_a_uuid(http: httpx.AsyncClient) -> None:
    async with FakeProvider("feather", api_key=KEY) as feather:
        path = READ_ROUTES["feather"].format("not-a-uuid")
        response = await http.get(feather.url + path, headers=auth("feather"))
    assert response.status_code == 422
    assert "uuid" in feather.violations[0]


async def test_wrong_content_type_is_a_violation(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    response = await http.post(
        provider.url + route(provider.name),
        content=json.dumps(body(provider.name)),
        headers={**auth(provider.name), "Content-Type": "text/plain"},
    )
    assert response.status_code == 422
    assert "Content-Type" in provider.violations[0]


async def test_feather_session_id_must_be_a_uuid(http: httpx.AsyncClient) -> None:
    async with FakeProvider("feather", KEY) as feather:
        response = await send(http, feather, session="not-a-uuid")
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "session_id"]
        assert "uuid" in feather.violations[0]
        assert feather.requests[0].session_id == "not-a-uuid"


async def test_empty_message_is_a_violation(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    response = await send(http, provider, text="")
    if provider.name == "devin":  # Devin's PostMessageParams has no minLength
        assert response.status_code == 200
        assert provider.violations == []
    else:
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][0] == "body"
        assert len(provider.violations) == 1


async def test_agen_body_must_match_schema(http: httpx.AsyncClient) -> None:
    async with FakeProvider("agen", KEY) as agen:
        response = await http.post(
            agen.url + route("agen"), json={"message": "", "client_id": 7}, headers=auth("agen")
        )
        assert response.status_code == 422
        assert len(agen.violations) == 1
        assert "client_id" in agen.violations[0]
        assert "message" in agen.violations[0]


async def test_percent_encoded_session_id_is_decoded(http: httpx.AsyncClient) -> None:
    async with FakeProvider("devin", KEY) as devin:
        response = await send(http, devin, session="a%2Fb%20c")
        assert response.status_code == 200
        assert devin.requests[0].session_id == "a/b c"
        assert devin.requests[0].raw_path == "/v1/sessions/a%2Fb%20c/message"
        assert devin.violations == []


async def test_scripted_answers_in_order_then_default(
    provider: FakeProvider, http: httpx.AsyncClient
) -> None:
    provider.script(Answer.status(503), Answer.delivered())
    first = await send(http, provider, text="one")
    second = await send(http, provider, text="two")
    third = await send(http, provider, text="three")
    assert first.status_code == 503
    assert first.json() == {"detail": "Service Unavailable"}
    assert (second.status_code, third.status_code) == (200, 200)
    assert provider.messages() == ["one", "two", "three"]
    assert provider.delivered_messages() == ["two", "three"]
    assert provider.pending_answers() == 0
    assert provider.violations == []


async def test_rate_limit_answer_carries_retry_after(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    provider.set_default(Answer.status(429, headers={"Retry-After": "7"}))
    response = await send(http, provider)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


async def test_rejected_answer(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    errors = [{"loc": ["body", "message"], "msg": "too long", "type": "string_too_long"}]
    provider.script(Answer.rejected(errors))
    response = await send(http, provider)
    assert (response.status_code, response.json()) == (422, {"detail": errors})
    assert provider.violations == []  # the fake chose to reject; the request itself was fine


async def test_devin_not_running(http: httpx.AsyncClient) -> None:
    async with FakeProvider("devin", KEY) as devin:
        devin.script(Answer.not_running("Session is suspended"))
        response = await send(http, devin)
        assert (response.status_code, response.json()) == (200, {"detail": "Session is suspended"})
        assert devin.delivered_messages() == []
        with pytest.raises(ValueError, match="Devin-only"):
            FakeProvider("feather", KEY).script(Answer.not_running("x"))


async def test_answers_by_session(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    gone = "00000000-0000-4000-8000-000000000000"
    provider.answers_by_session[gone] = Answer.status(404)
    provider.script(Answer.status(500), session_id=SESSIONS[provider.name])
    assert (await send(http, provider, session=gone)).status_code == 404
    assert (await send(http, provider)).status_code == 500
    assert (await send(http, provider)).status_code == 200
    assert (await send(http, provider, session=gone)).status_code == 404


async def test_slow_answer(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    provider.script(Answer.slow(0.2, Answer.status(503)))
    started = time.monotonic()
    response = await send(http, provider)
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 503


async def test_drop_closes_the_connection(provider: FakeProvider, http: httpx.AsyncClient) -> None:
    provider.script(Answer.drop())
    with pytest.raises(httpx.RemoteProtocolError):
        await send(http, provider)
    assert provider.requests[0].status is None
    assert (await send(http, provider)).status_code == 200


async def test_hang_does_not_block_stop(http: httpx.AsyncClient) -> None:
    for name in PROVIDERS:
        fake = FakeProvider(name, KEY)
        await fake.start()
        fake.set_default(Answer.hang())
        pending = asyncio.create_task(send(http, fake))
        await fake.wait_for_requests(1)
        await fake.stop()
        with pytest.raises(httpx.TransportError):
            await pending


async def test_hung_request_times_out_client_side(http: httpx.AsyncClient) -> None:
    async with FakeProvider("agen", KEY) as agen:
        agen.script(Answer.hang())
        with pytest.raises(httpx.ReadTimeout):
            await http.post(agen.url + route("agen"), json=body("agen"), headers=auth("agen"), timeout=0.1)


async def test_agen_delivered_body_matches_spec(http: httpx.AsyncClient) -> None:
    async with FakeProvider("agen", KEY) as agen:
        response = await send(http, agen, text="ship it")
        event = response.json()
        assert SpecValidator.for_provider("agen").validate_response(200, event) == []
        assert event["type"] == "user_message"
        assert event["status"] == "completed"
        assert event["session_id"] == SESSIONS["agen"]
        assert event["client_id"] == "relay-msg-1"
        assert event["payload"] == {"type": "user_message", "message": "ship it"}
        assert event["created_at"].endswith("Z")
        no_client_id = await http.post(agen.url + route("agen"), json={"message": "x"}, headers=auth("agen"))
        assert no_client_id.json()["client_id"] is None
        assert no_client_id.json()["id"] != event["id"]


async def test_fake_refuses_answers_its_spec_forbids() -> None:
    agen = FakeProvider("agen", KEY)
    with pytest.raises(AssertionError, match="spec forbids"):
        agen.script(Answer.status(200, {"not": "a session event"}))
    devin = FakeProvider("devin", KEY)
    with pytest.raises(AssertionError, match="spec forbids"):
        devin.set_default(Answer.status(200, {"unexpected": True}))
    feather = FakeProvider("feather", KEY)
    with pytest.raises(AssertionError, match="spec forbids"):
        feather.script(Answer.slow(1, Answer.rejected([{"loc": "body"}])))


async def test_fake_misuse_surfaces_at_stop(http: httpx.AsyncClient) -> None:
    agen = FakeProvider("agen", KEY)
    await agen.start()
    agen.answers_by_session["bad"] = Answer.status(201, {"not": "an event"})  # bypasses script()
    response = await send(http, agen, session="bad")
    assert response.status_code == 500
    with pytest.raises(AssertionError, match="would have violated its spec"):
        await agen.stop()


# -- Specs ---------------------------------------------------------------------------------------


def test_specs_dir_missing_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SPECS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SpecsNotFoundError, match=SPECS_ENV):
        specs_dir()
    monkeypatch.setenv(SPECS_ENV, str(tmp_path))
    with pytest.raises(SpecsNotFoundError, match=r"devin-v1\.yaml"):
        SpecValidator.for_provider("devin")


def test_validator_reports_readable_problems() -> None:
    devin = SpecValidator.for_provider("devin")
    headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    assert devin.validate("POST", "/v1/sessions/s1/message", headers, b'{"message": "hi"}') == []
    problems = devin.validate("POST", "/v1/sessions/s1/message", headers, b'{"text": "hi"}')
    assert problems == ["body: 'message' is a required property"]
    assert devin.validate("POST", "/v1/sessions/s1/message", headers, b"{")[0].startswith("body: body is not")
    assert devin.validate_response(200, None) == []
    assert devin.validate_response(200, {"detail": "Session is suspended"}) == []
    assert devin.validate_response(422, {"detail": "nope"}) != []
    feather = SpecValidator.for_provider("feather")
    assert feather.validate_response(200, {"anything": 1}) == []  # body unspecified


def test_security_comes_from_the_spec() -> None:
    body_ok = b'{"message": "hi"}'
    agen = SpecValidator.for_provider("agen")
    json_type = {"Content-Type": "application/json"}
    assert (
        agen.validate("POST", "/api/v1/sessions/s/messages", {**json_type, "X-API-Key": "k"}, body_ok) == []
    )
    blank = agen.validate("POST", "/api/v1/sessions/s/messages", {**json_type, "x-api-key": "   "}, body_ok)
    assert blank == ["header.x-api-key: security scheme ApiKey: header 'x-api-key' missing or empty"]
    devin = SpecValidator.for_provider("devin")
    basic = devin.validate(
        "POST", "/v1/sessions/s/message", {**json_type, "Authorization": "Basic abc"}, body_ok
    )
    assert len(basic) == 1
    assert "Bearer" in basic[0]
    assert devin.credentials({"authorization": "bearer tok"}) == "tok"


# -- provider sessions (read-session) --------------------------------------------------------------

READ_ROUTES: dict[ProviderName, str] = {
    "devin": "/v1/sessions/{}",
    "feather": "/v1/ask-feather/sessions/{}",
    "agen": "/api/v1/sessions/{}/events",
}


@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_scripted_session_is_served_as_the_read_spec_says(name: ProviderName) -> None:
    async with FakeProvider(name, KEY) as fake, httpx.AsyncClient(base_url=fake.url) as http:
        session = fake.session(SESSIONS[name])
        session.say("hello")
        session.ask("which one?")
        session.user("from the web")
        session.odd({"something": "odd"}, off_spec=True)
        sent = await http.post(
            ROUTES[name].format(SESSIONS[name]), json=body(name, "ours"), headers=auth(name, KEY)
        )
        assert sent.status_code == 200
        answer = await http.get(READ_ROUTES[name].format(SESSIONS[name]), headers=auth(name, KEY))
        assert answer.status_code == 200
        served = answer.json()
        items = served if name == "agen" else served["messages"]
        assert len(items) == 5
        assert items[-1] != {"something": "odd"}  # ours came after the odd item
        assert {"something": "odd"} in items
        assert fake.fake_errors == []
        assert fake.violations == []
        assert [r.status for r in fake.reads] == [200]
        assert session.served == 1
        if name == "agen":
            assert items[-1]["client_id"] == "relay-msg-1"
            assert items[-1]["id"] == sent.json()["id"]  # the send's answer is the stored event


@pytest.mark.parametrize("name", PROVIDERS)
async def test_reads_check_the_key_and_follow_their_script(name: ProviderName) -> None:
    async with FakeProvider(name, KEY) as fake, httpx.AsyncClient(base_url=fake.url) as http:
        path = READ_ROUTES[name].format(SESSIONS[name])
        assert (await http.get(path, headers=auth(name, "wrong"))).status_code == 401
        fake.script_reads(Answer.status(429, headers={"Retry-After": "2"}), Answer.slow(0.01))
        limited = await http.get(path, headers=auth(name, KEY))
        assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
        assert (await http.get(path, headers=auth(name, KEY))).status_code == 200
        assert len(fake.reads_of(SESSIONS[name])) == 2
        with pytest.raises(ValueError, match="cannot be answered"):
            fake.script_reads(Answer.rejected())
        missing = await http.get(path)
        assert missing.status_code == 422
        assert fake.violations
        fake.violations.clear()


async def test_a_dropped_send_shows_in_the_session_only_when_taken() -> None:
    async with FakeProvider("devin", KEY) as fake, httpx.AsyncClient(base_url=fake.url) as http:
        fake.script(Answer.drop(), Answer.drop(taken=True))
        for _ in range(2):
            with pytest.raises(httpx.HTTPError):
                await http.post(
                    ROUTES["devin"].format(SESSIONS["devin"]),
                    json={"message": "hi"},
                    headers=auth("devin", KEY),
                )
        items = fake.session(SESSIONS["devin"]).items
        assert [item["message"] for item in items] == ["hi"]


async def test_session_state_words_and_events() -> None:
    devin = FakeProvider("devin", KEY).session("devin-x")
    devin.ask("q")
    assert devin.state == "blocked"
    devin.took("answer", None)
    assert devin.state == "working"
    devin.set_state("suspended")
    devin.finish(pr_url="https://x.test/pull/1")
    assert (devin.state, devin.pr_url) == ("finished", "https://x.test/pull/1")
    agen = FakeProvider("agen", KEY).session("s")
    key = agen.say("partial", done=False)
    agen.complete(key, "whole")
    agen.finish()
    assert [(e["type"], e["status"]) for e in agen.items] == [
        ("agent_message", "completed"),
        ("session_finished", "completed"),
    ]
    assert agen.items[0]["payload"]["message"] == "whole"
