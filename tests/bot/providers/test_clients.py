"""Provider clients against httpx.MockTransport: request shape per spec, and answer -> outcome."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from bot.outcomes import (
    Delivered,
    NotFound,
    NotRunning,
    Outcome,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
    ValidationIssue,
)
from bot.providers import PROVIDERS
from bot.providers.base import Provider, parse_retry_after

KEY = "sk-test-0123456789"
AGEN_EVENT = {
    "id": "evt_1",
    "session_id": "s1",
    "type": "user_message",
    "payload": {"type": "user_message", "message": "hi"},
    "status": "queued",
    "client_id": "slack:T:C:1.0",
    "session_goal_id": None,
    "session_task_id": None,
    "created_at": "2026-11-23T00:00:00Z",
    "updated_at": "2026-11-23T00:00:00Z",
}


def client(name: str, handler: Callable[[httpx.Request], httpx.Response]) -> Provider:
    return PROVIDERS[name](
        api_key=SecretStr(KEY),
        base_url="https://api.example.test/",
        web_url="https://app.example.test",
        transport=httpx.MockTransport(handler),
    )


async def send(
    name: str, response: httpx.Response | Exception, session: str = "s1"
) -> tuple[Outcome, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(response, Exception):
            raise response
        return response

    provider = client(name, handler)
    try:
        outcome = await provider.send_message(session, "Alice (via Slack): hi", client_id="slack:T:C:1.0")
    finally:
        await provider.aclose()
    return outcome, seen


async def test_devin_request_matches_spec() -> None:
    _, [request] = await send("devin", httpx.Response(200, json=None), session="devin-abc")
    assert request.method == "POST"
    assert request.url.path == "/v1/sessions/devin-abc/message"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "x-api-key" not in request.headers
    assert json.loads(request.content) == {"message": "Alice (via Slack): hi"}


async def test_feather_request_matches_spec() -> None:
    session = "123e4567-e89b-12d3-a456-426614174000"
    _, [request] = await send("feather", httpx.Response(200), session=session)
    assert request.url.path == f"/v1/ask-feather/sessions/{session}/messages"
    assert request.headers["x-api-key"] == KEY
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {"content": "Alice (via Slack): hi"}


async def test_agen_request_carries_client_id() -> None:
    _, [request] = await send("agen", httpx.Response(200, json=AGEN_EVENT), session="sess_1")
    assert request.url.path == "/api/v1/sessions/sess_1/messages"
    assert request.headers["x-api-key"] == KEY
    assert json.loads(request.content) == {"message": "Alice (via Slack): hi", "client_id": "slack:T:C:1.0"}


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize(
    ("session", "segment_sent"),
    [
        ("../../x", "..%2F..%2Fx"),
        ("a/b?c#d", "a%2Fb%3Fc%23d"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("%2e%2e", "%252e%252e"),
        ("x y", "x%20y"),
        ("naïve", "na%C3%AFve"),
    ],
)
async def test_a_crafted_session_id_stays_one_path_segment(
    name: str, session: str, segment_sent: str
) -> None:
    _, [request] = await send(name, httpx.Response(200, json=None), session=session)
    assert request.url.host == "api.example.test"
    raw = request.url.raw_path.decode()
    prefix = {"devin": "/v1/sessions/", "feather": "/v1/ask-feather/sessions/", "agen": "/api/v1/sessions/"}[
        name
    ]
    assert raw.startswith(prefix)
    segment = raw[len(prefix) :].split("/")[0]
    assert segment == segment_sent
    assert "?" not in raw
    assert "#" not in raw
    assert raw.count("/") == prefix.count("/") + 1


async def test_devin_null_is_delivered_and_detail_is_not_running() -> None:
    assert (await send("devin", httpx.Response(200, json=None)))[0] == Delivered()
    detail = "Devin is suspended. Wake it up & try again <soon>."
    outcome, _ = await send("devin", httpx.Response(200, json={"detail": detail}))
    assert outcome == NotRunning(detail=detail)


async def test_agen_delivered_carries_event_id_and_status() -> None:
    outcome, _ = await send("agen", httpx.Response(200, json=AGEN_EVENT))
    assert outcome == Delivered(provider_message_id="evt_1", status="queued")


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(401, json={"detail": "bad key"}), Unauthorized(status=401)),
        (httpx.Response(403), Unauthorized(status=403)),
        (httpx.Response(404, json={"detail": "Not Found"}), NotFound()),
        (httpx.Response(429, headers={"Retry-After": "7"}), RateLimited(retry_after=7.0)),
        (httpx.Response(429), RateLimited(retry_after=None)),
        (httpx.Response(503, text="<html>oops</html>"), "unavailable:503"),
        (httpx.Response(500), "unavailable:500"),
    ],
)
async def test_status_codes_map_to_outcomes(name: str, response: httpx.Response, expected: object) -> None:
    outcome, _ = await send(name, response)
    if isinstance(expected, str):
        assert isinstance(outcome, Unavailable)
        assert outcome.reason.endswith(f" answered HTTP {expected.split(':')[1]}")
    else:
        assert outcome == expected


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_422_lists_each_error(name: str) -> None:
    body = {
        "detail": [
            {"loc": ["body", "message"], "msg": "Field required", "type": "missing"},
            {"loc": ["path", "session_id", 0], "msg": "Input should be a valid UUID", "type": "uuid_parsing"},
        ]
    }
    outcome, _ = await send(name, httpx.Response(422, json=body))
    assert outcome == Rejected(
        errors=(
            ValidationIssue(loc=("body", "message"), msg="Field required", type="missing"),
            ValidationIssue(
                loc=("path", "session_id", 0), msg="Input should be a valid UUID", type="uuid_parsing"
            ),
        ),
        status=422,
    )
    assert isinstance(outcome, Rejected)
    assert outcome.errors[1].where == "path.session_id.0"


async def test_unparseable_422_is_still_rejected() -> None:
    outcome, _ = await send("feather", httpx.Response(422, text="nope"))
    assert outcome == Rejected(errors=(), status=422)


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "could not connect"),
        (httpx.ReadTimeout("timed out"), "did not answer in time"),
        (httpx.RemoteProtocolError("peer closed connection"), "connection"),
    ],
)
async def test_transport_failures_are_unavailable_in_plain_words(error: Exception, words: str) -> None:
    outcome, _ = await send("devin", error)
    assert isinstance(outcome, Unavailable)
    assert words in outcome.reason
    assert "Errno" not in outcome.reason
    assert "httpx" not in outcome.reason


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == pytest.approx(30.0)


async def test_devin_session_url_drops_the_prefix() -> None:
    provider = client("devin", lambda r: httpx.Response(200))
    try:
        assert provider.session_url("devin-abc123") == "https://app.example.test/sessions/abc123"
    finally:
        await provider.aclose()
