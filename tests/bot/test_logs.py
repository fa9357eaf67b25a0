"""Secret redaction in logs (bot/logs.py): the Redactor alone, and every line through configure_logging."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from bot.logs import REDACTED, Redactor, configure_logging
from tests.logcapture import captured_logs, log_records

BOT_TOKEN = "xoxb-111111111111-222222222222-SECRETbottoken0123"
APP_TOKEN = "xapp-1-A0APP-333333333333-SECRETapptoken4567"
SIGNING = "signing-secret-9f8e7d6c5b4a"
DEVIN_KEY = "apk_user_SECRETdevin0123456789"
AGEN_KEY = "SECRETagen-0123456789"
SECRETS = [BOT_TOKEN, APP_TOKEN, SIGNING, DEVIN_KEY, AGEN_KEY]
# Slack-token-shaped strings that are not configured anywhere: redacted by their shape.
SHAPED = [
    "xoxp-444444444444-555555555555-666666666666-abcdefabcdef",
    "xoxb-777777777777-888888888888-UNCONFIGUREDtoken",
    "xapp-1-A0OTHER-999999999999-unconfiguredapptoken",
    "xoxa-2-unconfigured-workspace-token",
    "xoxe-1-My0xLTEyMzQtcmVmcmVzaHRva2Vu",  # token rotation: refresh token
    "xoxe.xoxp-1-Mi0yLTEyMzQtcm90YXRlZHRva2Vu",  # token rotation: rotated access token
]
ALL = SECRETS + SHAPED


def leaks(text: str) -> list[str]:
    return [s for s in ALL if s in text]


# -- the Redactor on its own -------------------------------------------------------------------


@pytest.mark.parametrize("secret", ALL)
def test_scrub_removes_each_secret_and_token_shape(secret: str) -> None:
    text = Redactor(SECRETS).scrub(f"before {secret} after, again:{secret}")
    assert secret not in text
    assert text.startswith("before ")
    assert text.endswith(REDACTED)
    assert text.count(REDACTED) == 2


def test_scrub_leaves_other_text_alone() -> None:
    text = "POST /v1/sessions/devin-abc/message 200 in 12ms; xoxo- is not a token; apk_user_ alone"
    assert Redactor(SECRETS).scrub(text) == text


def test_longer_secret_containing_a_shorter_one_is_removed_whole() -> None:
    short, long = "SECRETpart-0123", "prefix-SECRETpart-0123-suffix"
    assert Redactor([short, long]).scrub(f"a {long} b {short} c") == f"a {REDACTED} b {REDACTED} c"


def test_event_dicts_nested_values_and_exceptions() -> None:
    redactor = Redactor(SECRETS)
    error = RuntimeError(f"refused key {DEVIN_KEY}")
    event: dict[str, Any] = {
        "event": f"calling with {BOT_TOKEN}",
        "headers": {"authorization": f"Bearer {DEVIN_KEY}", "x-api-key": AGEN_KEY},
        "nested": [{"deep": [f"sig={SIGNING}", (APP_TOKEN, 3)]}],
        "tuple": (SHAPED[0], "ok"),
        "error": error,
        "count": 3,
        "flag": None,
    }
    cleaned = redactor(None, "info", event)
    assert leaks(repr(cleaned)) == []
    assert cleaned["headers"] == {"authorization": f"Bearer {REDACTED}", "x-api-key": REDACTED}
    assert cleaned["nested"] == [{"deep": [f"sig={REDACTED}", (REDACTED, 3)]}]
    assert cleaned["tuple"] == (REDACTED, "ok")
    assert cleaned["error"] == f"RuntimeError('refused key {REDACTED}')"
    assert cleaned["count"] == 3
    assert cleaned["flag"] is None


# -- through configure_logging ------------------------------------------------------------------


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    with captured_logs(SECRETS) as stream:
        yield stream


def test_stdlib_records_with_args_and_tracebacks(capture: io.StringIO) -> None:
    library = logging.getLogger("slack_sdk.web.async_base_client")
    library.debug("Sending a request - headers: %s", {"Authorization": f"Bearer {BOT_TOKEN}"})
    library.info("token %s and app token %s", SHAPED[1], APP_TOKEN)
    try:
        raise ValueError(f"bad key {AGEN_KEY} / {SHAPED[4]}")
    except ValueError:
        logging.getLogger("httpx").exception("request failed for %s", DEVIN_KEY)
    text = capture.getvalue()
    assert leaks(text) == []
    records = log_records(capture)
    assert [r["logger"] for r in records] == ["slack_sdk.web.async_base_client"] * 2 + ["httpx"]
    assert records[0]["event"] == f"Sending a request - headers: {{'Authorization': 'Bearer {REDACTED}'}}"
    assert records[2]["level"] == "error"
    assert "ValueError: bad key" in text
    assert "Traceback" in text


def test_structlog_events_nested_and_exceptions(capture: io.StringIO) -> None:
    log = structlog.get_logger("bot.test")
    log.info("provider_call", headers={"x-api-key": AGEN_KEY}, tokens=[BOT_TOKEN, (SIGNING,)])
    log.warning("odd_values", raw=f"{DEVIN_KEY}".encode(), error=RuntimeError(SHAPED[2]))
    log.info("keyed", by_key={BOT_TOKEN: "value"})  # a secret as a dict key
    try:
        raise KeyError(SIGNING)
    except KeyError:
        log.exception("crashed", detail=f"with {SHAPED[3]}")
    text = capture.getvalue()
    assert leaks(text) == []
    records = log_records(capture)
    assert [r["event"] for r in records] == ["provider_call", "odd_values", "keyed", "crashed"]
    assert records[0]["headers"] == {"x-api-key": REDACTED}
    assert records[0]["tokens"] == [REDACTED, [REDACTED]]
    assert "KeyError" in records[3]["exception"]


def test_console_format_is_scrubbed_too() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    old_structlog = structlog.get_config()
    handler = configure_logging(level="INFO", fmt="console", secrets=SECRETS, stream=stream)
    try:
        structlog.get_logger("bot.test").info("hello", key=DEVIN_KEY, token=SHAPED[0])
        logging.getLogger("aiohttp.access").info("GET /?t=%s", BOT_TOKEN)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        structlog.configure(**old_structlog)
    text = stream.getvalue()
    assert "hello" in text
    assert "GET /?t=" in text
    assert leaks(text) == []


def test_configure_logging_replaces_its_own_handler(capture: io.StringIO) -> None:
    second = io.StringIO()
    handler = configure_logging(level="INFO", fmt="json", secrets=SECRETS, stream=second)
    try:
        logging.getLogger("bot.test").info("once %s", AGEN_KEY)
    finally:
        logging.getLogger().removeHandler(handler)
    assert capture.getvalue() == ""
    assert [r["event"] for r in log_records(second)] == [f"once {REDACTED}"]
