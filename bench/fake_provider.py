"""A lean fake Devin v1 provider for the benchmark, in its own process (its CPU is not the bot's).

``python -m bench.fake_provider`` listens on 127.0.0.1 (a free port, printed as ``READY <port>``) and
answers ``POST /v1/sessions/{session_id}/message`` with JSON ``null`` (Devin's "delivered"), after
``--latency-ms`` milliseconds, or with the status set by ``POST /_bench/mode {"status": 503}`` (an
outage). Every request is recorded as (session id, raw body, receive time, status answered); bodies are
decoded only when the records are fetched, so a request costs the fake as little as possible.

Control (for the load generator only): ``GET /_bench/count`` (requests, delivered, distinct delivered
bodies), ``GET /_bench/records?since=N``, ``POST /_bench/mode {"status": 200|503, "latency_ms": ...}``,
``POST /_bench/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

from bench.common import serve_until_stopped

NULL = b"null"


class ProviderState:
    def __init__(self, *, latency: float) -> None:
        self.latency = latency
        self.status = 200
        self.records: list[tuple[str, bytes, float, int]] = []
        self.delivered = 0
        self.distinct: set[bytes] = set()

    def reset(self) -> None:
        self.records.clear()
        self.delivered = 0
        self.distinct.clear()
        self.status = 200


def _text(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def build_app(state: ProviderState) -> web.Application:
    async def send(request: web.Request) -> web.Response:
        received = time.monotonic()
        raw = await request.read()
        if state.latency > 0:
            await asyncio.sleep(state.latency)
        status = state.status
        state.records.append((request.match_info["session_id"], raw, received, status))
        if status == 200:
            state.delivered += 1
            state.distinct.add(raw)
            return web.Response(body=NULL, content_type="application/json")
        return web.json_response({"detail": "Service Unavailable"}, status=status)

    async def count(_request: web.Request) -> web.Response:
        return web.json_response(
            {"requests": len(state.records), "delivered": state.delivered, "distinct": len(state.distinct)}
        )

    async def records(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        rows: list[list[Any]] = [
            [session, _text(raw), at, status] for session, raw, at, status in state.records[since:]
        ]
        return web.json_response({"next": len(state.records), "records": rows})

    async def mode(request: web.Request) -> web.Response:
        body = await request.json()
        if "status" in body:
            state.status = int(body["status"])
        if "latency_ms" in body:
            state.latency = float(body["latency_ms"]) / 1000.0
        return web.json_response({"status": state.status, "latency_ms": state.latency * 1000.0})

    async def reset(_request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/v1/sessions/{session_id}/message", send)
    app.router.add_get("/_bench/count", count)
    app.router.add_get("/_bench/records", records)
    app.router.add_post("/_bench/mode", mode)
    app.router.add_post("/_bench/reset", reset)
    return app


async def serve(port: int, *, latency: float) -> None:
    await serve_until_stopped(build_app(ProviderState(latency=latency)), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, latency=args.latency_ms / 1000.0))


if __name__ == "__main__":
    main()
