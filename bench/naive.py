"""A naive relay: what someone writes in an afternoon with Bolt, as the benchmark's second reference.

A stateless ``AsyncApp`` in HTTP mode: ``@bot link devin <session>`` in a thread keeps the session in a
dict (memory only) and says so in the thread; every ``message`` event in a linked thread is posted to
Devin and gets a reaction. No store, no ordering, no retries, no feedback on failure: Bolt acknowledges
each event at once and runs the listener afterwards.

``python -m bench.naive --port N`` with ``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET``,
``SLACK_API_URL``, ``DEVIN_API_KEY`` and ``DEVIN_API_URL`` in the environment.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import httpx
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

LINK = re.compile(r"link\s+devin\s+(devin-[A-Za-z0-9_-]+)")


def build(env: dict[str, str]) -> AsyncApp:
    client = AsyncWebClient(token=env["SLACK_BOT_TOKEN"], base_url=env["SLACK_API_URL"])
    app = AsyncApp(client=client, signing_secret=env["SLACK_SIGNING_SECRET"])
    devin = httpx.AsyncClient(
        base_url=env["DEVIN_API_URL"], headers={"authorization": f"Bearer {env['DEVIN_API_KEY']}"}
    )
    sessions: dict[tuple[str, str], str] = {}

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        found = LINK.search(event.get("text", ""))
        thread = event.get("thread_ts") or event["ts"]
        if found:
            sessions[(event["channel"], thread)] = found[1]
            await say(text=f"<@{event.get('user')}> linked this thread to {found[1]}.", thread_ts=thread)

    @app.event("message")
    async def on_message(event: dict[str, Any], client: AsyncWebClient) -> None:
        thread = event.get("thread_ts")
        session = sessions.get((event["channel"], thread)) if thread else None
        if session is None or event.get("bot_id") or event.get("subtype"):
            return
        text = f"{event.get('user')} (via Slack): {event.get('text', '')}"
        await devin.post(f"/v1/sessions/{session}/message", json={"message": text})
        await client.reactions_add(channel=event["channel"], timestamp=event["ts"], name="white_check_mark")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="A naive stateless Bolt relay (benchmark reference).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    build(dict(os.environ)).start(port=args.port, host=args.host)


if __name__ == "__main__":
    main()
