"""Reading a session: request shape per read spec, answers -> snapshots or typed failures, odd items."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from bot.outcomes import NotFound, RateLimited, Unauthorized, Unavailable
from bot.providers import PROVIDERS
from bot.providers.base import AgentItem, ItemKind, Provider, SessionSnapshot, SessionState, parse_time

KEY = "sk-test-0123456789"
FEATHER_ID = "123e4567-e89b-12d3-a456-426614174000"
SESSION = {"devin": "devin-abc", "feather": FEATHER_ID, "agen": "sess_1"}


def client(name: str, handler: Callable[[httpx.Request], httpx.Response]) -> Provider:
    return PROVIDERS[name](
        api_key=SecretStr(KEY), base_url="https://api.example.test/", transport=httpx.MockTransport(handler)
    )


async def read(name: str, response: httpx.Response | Exception) -> tuple[Any, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(response, Exception):
            raise response
        return response

    provider = client(name, handler)
    try:
        result = await provider.read_session(SESSION[name])
    finally:
        await provider.aclose()
    return result, seen


@pytest.mark.parametrize(
    ("name", "path", "header"),
    [
        ("devin", "/v1/sessions/devin-abc", ("authorization", f"Bearer {KEY}")),
        ("feather", f"/v1/ask-feather/sessions/{FEATHER_ID}", ("x-api-key", KEY)),
        ("agen", "/api/v1/sessions/sess_1/events", ("x-api-key", KEY)),
    ],
)
async def test_read_request_matches_spec(name: str, path: str, header: tuple[str, str]) -> None:
    _, [request] = await read(name, httpx.Response(200, json={} if name != "agen" else []))
    assert request.method == "GET"
    assert request.url.path == path
    assert request.headers[header[0]] == header[1]
    assert request.content == b""


DEVIN = {
    "session_id": "devin-abc",
    "status": "running",
    "status_enum": "blocked",
    "title": "Fix the build",
    "created_at": "2026-11-23T00:00:00Z",
    "updated_at": "2026-11-23T00:05:00Z",
    "pull_request": {"url": "https://github.test/o/r/pull/7"},
    "messages": [
        {
            "event_id": "e1",
            "type": "initial_user_message",
            "message": "start",
            "timestamp": "2026-11-23T00:00:00Z",
        },
        {"event_id": "e2", "type": "devin_message", "message": "On it", "timestamp": "2026-11-23T00:01:00Z"},
        {"event_id": "e3", "type": "user_message", "message": "Bob: hi", "origin": "web", "username": "bob"},
        {"event_id": "e4", "type": "new_kind_of_event", "message": "?", "extra": {"x": 1}},
        {"type": "devin_message", "message": "no id"},
        {"event_id": "e5", "type": "devin_message"},
        "not an object",
        {"event_id": "e6", "type": "devin_message", "message": "Which branch?", "timestamp": "yesterday"},
    ],
}


async def test_devin_snapshot() -> None:
    snapshot, _ = await read("devin", httpx.Response(200, json=DEVIN))
    assert isinstance(snapshot, SessionSnapshot)
    assert (snapshot.state, snapshot.title, snapshot.pr_url, snapshot.status) == (
        SessionState.WAITING,
        "Fix the build",
        "https://github.test/o/r/pull/7",
        "blocked",
    )
    assert [(i.key, i.kind, i.text) for i in snapshot.items] == [
        ("e1", ItemKind.USER, "start"),
        ("e2", ItemKind.AGENT, "On it"),
        ("e3", ItemKind.USER, "Bob: hi"),
        ("e4", ItemKind.OTHER, "?"),
        ("e6", ItemKind.AGENT, "Which branch?"),
    ]
    assert snapshot.items[1].created == parse_time("2026-11-23T00:01:00Z")
    assert (snapshot.items[2].origin, snapshot.items[2].author) == ("web", "bob")
    assert snapshot.items[4].created is None


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"status_enum": "working"}, SessionState.WORKING),
        ({"status_enum": "finished"}, SessionState.FINISHED),
        ({"status_enum": "expired"}, SessionState.EXPIRED),
        ({"status_enum": "suspend_requested_frontend"}, SessionState.SUSPENDED),
        ({"status_enum": "resumed"}, SessionState.WORKING),
        ({"status_enum": None, "status": "Stopped"}, SessionState.FINISHED),
        ({"status_enum": "something_new", "status": "whatever"}, SessionState.UNKNOWN),
    ],
)
async def test_devin_states(fields: dict[str, Any], state: SessionState) -> None:
    body = {"session_id": "devin-abc", "status": "running", "created_at": "x", "updated_at": "x", **fields}
    snapshot, _ = await read("devin", httpx.Response(200, json=body))
    assert isinstance(snapshot, SessionSnapshot)
    assert snapshot.state is state
    assert snapshot.items == ()


FEATHER = {
    "id": FEATHER_ID,
    "status": "Completed",
    "usage": {"input_tokens": 10, "output_tokens": 20, "cost_usd": 0.4212},
    "messages": [
        {"id": "m3", "seq": 3, "role": "assistant", "content": [{"type": "text", "text": "Done."}]},
        {"id": "m1", "seq": 1, "role": "user", "content": [{"type": "text", "text": "Ann (via Slack): go"}]},
        {
            "id": "m2",
            "seq": 2,
            "role": "tool",
            "content": [
                {"type": "text", "text": "Step"},
                {"type": "image", "url": "x"},
                5,
                {"type": "bad type!"},
            ],
        },
        {"id": "m9", "role": "assistant", "content": []},
        {"seq": 4, "role": "assistant", "content": "plain string content"},
        {"id": "m5", "seq": True, "role": "assistant", "content": []},
    ],
}


async def test_feather_snapshot() -> None:
    snapshot, _ = await read("feather", httpx.Response(200, json=FEATHER))
    assert isinstance(snapshot, SessionSnapshot)
    assert (snapshot.state, snapshot.cost_usd) == (SessionState.FINISHED, 0.4212)
    assert [(i.key, i.seq, i.kind) for i in snapshot.items] == [
        ("m1", 1, ItemKind.USER),
        ("m2", 2, ItemKind.AGENT),
        ("m3", 3, ItemKind.AGENT),
        ("seq:4", 4, ItemKind.AGENT),
    ]
    assert snapshot.items[1].text == (
        "Step\n\n_(a image item, not shown here)_\n\n_(a other item, not shown here)_"
    )
    assert snapshot.items[3].text == "plain string content"


@pytest.mark.parametrize(
    ("status", "usage", "state", "cost"),
    [
        ("running", None, SessionState.WORKING, None),
        ("awaiting_input", {"cost_usd": "1"}, SessionState.WAITING, None),
        ("paused", {"cost_usd": True}, SessionState.SUSPENDED, None),
        ("expired", {"cost_usd": 2}, SessionState.EXPIRED, 2.0),
        ("brand-new", [], SessionState.UNKNOWN, None),
    ],
)
async def test_feather_states_and_cost(
    status: str, usage: object, state: SessionState, cost: float | None
) -> None:
    body = {"id": FEATHER_ID, "status": status, "usage": usage, "messages": []}
    snapshot, _ = await read("feather", httpx.Response(200, json=body))
    assert isinstance(snapshot, SessionSnapshot)
    assert (snapshot.state, snapshot.cost_usd) == (state, cost)


def event(key: str, kind: str, status: str = "completed", **payload: object) -> dict[str, Any]:
    return {
        "id": key,
        "session_id": "sess_1",
        "type": kind,
        "payload": payload,
        "status": status,
        "client_id": None,
        "session_goal_id": None,
        "session_task_id": None,
        "created_at": "2026-11-23T00:00:00.000Z",
        "updated_at": "2026-11-23T00:00:00.000Z",
    }


async def test_agen_snapshot() -> None:
    ours = {**event("u1", "user_message", message="Ann (via Slack): go"), "client_id": "slack:T:C:1.0"}
    body = [
        ours,
        event("a1", "agent_message", message="Looking"),
        event("t1", "agent_file_read", path="x.py"),
        event("a2", "agent_message", "processing", text="Half a tho"),
        event("a3", "agent_message", "canceled", message="never mind"),
        event("a4", "agent_message"),
        event("q1", "agent_ask_user", question="Which one?"),
        {"id": "x1", "type": "from_the_future", "status": "weird"},
        {"type": "agent_message"},
    ]
    snapshot, _ = await read("agen", httpx.Response(200, json=body))
    assert isinstance(snapshot, SessionSnapshot)
    assert snapshot.state is SessionState.WORKING  # a2 is still processing
    got = [(i.key, i.kind, i.text, i.done) for i in snapshot.items]
    assert got == [
        ("u1", ItemKind.USER, "Ann (via Slack): go", True),
        ("a1", ItemKind.AGENT, "Looking", True),
        ("t1", ItemKind.OTHER, "agent_file_read", True),
        ("a2", ItemKind.AGENT, "Half a tho", False),
        ("a3", ItemKind.OTHER, "agent_message", True),
        ("a4", ItemKind.OTHER, "agent_message", True),
        ("q1", ItemKind.QUESTION, "Which one?", True),
        ("x1", ItemKind.OTHER, "from_the_future", True),
    ]
    assert snapshot.items[0].client_id == "slack:T:C:1.0"


@pytest.mark.parametrize(
    ("kinds", "state"),
    [
        (["agent_message", "agent_ask_user"], SessionState.WAITING),
        (["agent_ask_user", "user_ask_user_response"], SessionState.WORKING),
        (["agent_message", "session_finished", "agent_file_read"], SessionState.FINISHED),
        (["session_closed", "user_message"], SessionState.WORKING),
        (["agent_message"], SessionState.UNKNOWN),
        ([], SessionState.UNKNOWN),
    ],
)
async def test_agen_state_comes_from_the_events(kinds: list[str], state: SessionState) -> None:
    body = [event(f"e{n}", kind, message="m") for n, kind in enumerate(kinds)]
    snapshot, _ = await read("agen", httpx.Response(200, json=body))
    assert isinstance(snapshot, SessionSnapshot)
    assert snapshot.state is state


@pytest.mark.parametrize("name", list(PROVIDERS))
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(401), Unauthorized(status=401)),
        (httpx.Response(403), Unauthorized(status=403)),
        (httpx.Response(404), NotFound()),
        (httpx.Response(429, headers={"retry-after": "7"}), RateLimited(retry_after=7.0)),
        (httpx.Response(429), RateLimited(retry_after=None)),
    ],
)
async def test_read_failures_are_typed(name: str, response: httpx.Response, expected: object) -> None:
    result, _ = await read(name, response)
    assert result == expected


@pytest.mark.parametrize("name", list(PROVIDERS))
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500),
        httpx.Response(503),
        httpx.Response(422, json={"detail": []}),
        httpx.Response(200, content=b"<html>"),
        httpx.Response(200, json="a string"),
        httpx.TimeoutException("slow"),
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("dropped"),
    ],
)
async def test_reads_that_fail_otherwise_are_unavailable(
    name: str, response: httpx.Response | Exception
) -> None:
    result, _ = await read(name, response)
    assert isinstance(result, Unavailable)
    assert KEY not in result.reason


async def test_secrets_are_removed_from_what_was_read() -> None:
    body = {
        **DEVIN,
        "title": f"key {KEY}",
        "messages": [{"event_id": "e", "type": "devin_message", "message": KEY}],
    }
    snapshot, _ = await read("devin", httpx.Response(200, json=body))
    assert isinstance(snapshot, SessionSnapshot)
    assert snapshot.title == "key [redacted]"
    assert snapshot.items == (AgentItem(key="e", kind=ItemKind.AGENT, text="[redacted]"),)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2026-11-23T00:00:00Z", 1795392000.0),
        ("2026-11-23T01:00:00+01:00", 1795392000.0),
        ("2026-11-23T00:00:00", 1795392000.0),
        ("not a date", None),
        ("", None),
        (12, None),
        ("9" * 100, None),
    ],
)
def test_parse_time(value: object, seconds: float | None) -> None:
    assert parse_time(value) == seconds
