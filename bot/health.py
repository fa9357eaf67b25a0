"""Health and metrics endpoints: ``/livez``, ``/readyz`` (and its old name ``/healthz``), ``/metrics``.

* ``/livez``: the process is alive and its event loop is not stuck. A heartbeat task wakes every
  second and notes the time; when the last beat is older than ``stale_after`` seconds, ``/livez``
  answers 503 (and a loop that is blocked outright does not answer at all: a probe times out).
* ``/readyz``: this replica can take events: Slack's ``auth.test`` succeeded at start, the store
  answered its last check (reachable, writable) and has every migration this code knows, and the
  process is not stopping. 503 with the reasons in a few fixed words otherwise.
* ``/metrics``: the app's registry in the Prometheus text format.

None of them needs a signature, and none shows a binding, a message, a secret, a host or an error
text: the details are in the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from bot.background import Background
from bot.metrics import CONTENT_TYPE, Metrics

HEARTBEAT_INTERVAL = 1.0  # seconds between two beats
HEARTBEAT_STALE = 30.0  # seconds without a beat after which the process is not alive
PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


class Heartbeat(Background):
    """A task that notes, every ``interval`` seconds, that the event loop still runs tasks."""

    task_name = "health:heartbeat"

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval: float = HEARTBEAT_INTERVAL,
        stale_after: float = HEARTBEAT_STALE,
    ) -> None:
        self._metrics = metrics
        self.interval = interval
        self.stale_after = stale_after
        self.beat_at = time.monotonic()

    def start(self) -> None:
        self.beat_at = time.monotonic()
        super().start()

    @property
    def age(self) -> float:
        """Seconds since the last beat."""
        return max(time.monotonic() - self.beat_at, 0.0)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self.age <= self.stale_after

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self._metrics.loop_lag.set(max(now - before - self.interval, 0.0))
            self.beat_at = now


def add_health_routes(
    app: web.Application,
    *,
    heartbeat: Heartbeat,
    not_ready: Callable[[], list[str]],
    metrics: Metrics,
) -> None:
    """Serve the health and metrics endpoints on ``app``. ``not_ready`` lists why the replica is not
    ready, in fixed words (empty: ready)."""

    async def livez(_request: web.Request) -> web.Response:
        body = {"ok": heartbeat.alive, "heartbeat_age": round(heartbeat.age, 3)}
        return web.json_response(body, status=200 if heartbeat.alive else 503)

    async def readyz(_request: web.Request) -> web.Response:
        reasons = not_ready()
        if reasons:
            return web.json_response({"ok": False, "not_ready": reasons}, status=503)
        return web.json_response({"ok": True})

    async def metrics_text(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)  # the name of readiness before /readyz existed
    app.router.add_get("/metrics", metrics_text)
