"""Starting and stopping agent-relay: Socket Mode or HTTP, with a graceful shutdown.

Health and metrics (:mod:`bot.health`): in HTTP mode ``/livez``, ``/readyz`` (also ``/healthz``) and
``/metrics`` are served on the app's port beside ``/slack/events``; with ``METRICS_PORT`` set they are
also (in Socket Mode: only) served on that port.

Shutdown order (SIGTERM/SIGINT): readiness fails at once; stop taking events (close the socket /
stop the HTTP site, which waits for requests in progress, so every acknowledged event is stored),
let in-flight provider calls finish within ``SHUTDOWN_DEADLINE`` seconds, park the rest in the store
(they resume at the next start), then close the provider clients and the store.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Literal

import structlog
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from bot.app import create_app
from bot.deps import Deps, StartupError, build_deps, close_deps
from bot.health import Heartbeat, add_health_routes
from bot.metrics import StoreGauges
from bot.retention import Retention
from bot.settings import Settings
from bot.web import slack_guard
from storage import StoreError

log = structlog.get_logger(__name__)

STORE_CHECK_INTERVAL = 2.0  # seconds between looks at the store's health
STORE_METRICS_INTERVAL = 5.0  # seconds between two reads of the store's gauges


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        mode: Literal["socket", "http"],
        host: str = "0.0.0.0",  # noqa: S104 - a container serves Slack on every interface
        port: int = 3000,
        metrics_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.host = host
        self.port = port
        #: The side port of /livez, /readyz, /metrics (0: any free one); None: METRICS_PORT or off.
        self.metrics_port = metrics_port if metrics_port is not None else settings.metrics_port
        self.deps: Deps | None = None
        self.heartbeat: Heartbeat | None = None
        self._runner: web.AppRunner | None = None
        self._side: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._watch: asyncio.Task[None] | None = None
        self._gauges: StoreGauges | None = None
        self._retention: Retention | None = None
        self._stopping = False
        self.store_lost: str | None = None  # why events are not acknowledged any more
        self.store_error: str | None = None  # the last store check failed (maybe for a moment)
        self.migrations_missing = 0

    def not_ready(self) -> str | None:
        """Why Slack's events must not be acknowledged here (they get 503), or None."""
        return self.store_lost

    def readiness(self) -> list[str]:
        """Why this replica is not ready, in fixed words (no error text, no host); empty: ready."""
        deps = self.deps
        if self._stopping:
            return ["stopping"]
        if deps is None:  # deps exist only once Slack's auth.test has succeeded
            return ["starting"]
        reasons = []
        if self.store_lost is not None:
            reasons.append("store lost")
        elif self.store_error is not None:
            reasons.append("store unavailable")
        if self.migrations_missing > 0:
            reasons.append("database migrations missing")
        return reasons

    def _health_app(self, app: web.Application, deps: Deps, heartbeat: Heartbeat) -> None:
        add_health_routes(app, heartbeat=heartbeat, not_ready=self.readiness, metrics=deps.metrics)

    async def start(self) -> None:
        self._stopping = False
        self.deps = deps = await build_deps(self.settings)
        self.heartbeat = heartbeat = Heartbeat(deps.metrics)
        heartbeat.start()
        try:
            app = create_app(deps)
            deps.feedback.start()
            resumed = await deps.delivery.start()
            deps.mirror.start()
            if self.mode == "http":
                web_app = app.web_app(path="/slack/events", port=self.port)
                secret = self.settings.slack_signing_secret
                web_app.middlewares.append(
                    slack_guard(
                        secret.get_secret_value() if secret else "",
                        path="/slack/events",
                        not_ready=self.not_ready,
                    )
                )
                self._health_app(web_app, deps, heartbeat)
                self._runner = web.AppRunner(
                    web_app, access_log=None, shutdown_timeout=self.settings.shutdown_deadline
                )
                await self._runner.setup()
                site = web.TCPSite(self._runner, self.host, self.port)
                await site.start()
                if self.port == 0 and self._runner.addresses:
                    self.port = int(self._runner.addresses[0][1])
            if self.metrics_port is not None and not (self.mode == "http" and self.metrics_port == self.port):
                await self._start_side(deps, heartbeat)
            if self.mode == "socket":
                assert self.settings.slack_app_token is not None
                self._socket = AsyncSocketModeHandler(app, self.settings.slack_app_token.get_secret_value())
                await self._socket.connect_async()  # type: ignore[no-untyped-call]
        except BaseException:  # nothing keeps running: the engine and the sender stop first
            deps.intake.closing = True
            await deps.delivery.shutdown(0)
            await deps.feedback.stop(0)
            await self._close()
            raise
        self._watch = asyncio.create_task(self._watch_store(), name="store:watch")
        self._gauges = StoreGauges(deps.metrics, deps.store, interval=STORE_METRICS_INTERVAL)
        self._gauges.start()
        if self.settings.retention_days is not None:
            self._retention = Retention(
                deps.store, days=self.settings.retention_days, owner=deps.delivery.owner, metrics=deps.metrics
            )
            self._retention.start()
        log.info(
            "agent_relay_started",
            mode=self.mode,
            port=self.port if self.mode == "http" else None,
            metrics_port=self.metrics_port,
            providers=list(deps.providers),
            resumed_messages=resumed,
            retention_days=self.settings.retention_days,
        )

    async def _start_side(self, deps: Deps, heartbeat: Heartbeat) -> None:
        """/livez, /readyz and /metrics on a port of their own (Socket Mode has no other)."""
        side = web.Application()
        self._health_app(side, deps, heartbeat)
        self._side = web.AppRunner(side, access_log=None, shutdown_timeout=1.0)
        await self._side.setup()
        await web.TCPSite(self._side, self.host, self.metrics_port).start()
        if self.metrics_port == 0 and self._side.addresses:
            self.metrics_port = int(self._side.addresses[0][1])

    async def _watch_store(self) -> None:
        """Notice a store that is gone for good (its file deleted or replaced): stop taking events, so
        that Slack delivers them again, and say why once."""
        assert self.deps is not None
        store = self.deps.store
        while self.store_lost is None:
            await asyncio.sleep(STORE_CHECK_INTERVAL)
            try:
                await store.check()
                missing = await store.migrations_missing()
            except StoreError as exc:
                self.store_error = str(exc)
                if not store.lost:
                    log.warning("store_check_failed", error=str(exc))
                    continue
                self.store_lost = str(exc)
                log.error(  # noqa: TRY400 - the reason is the message; no traceback helps here
                    "store_lost",
                    error=self.store_lost,
                    action="events are no longer acknowledged (Slack will retry them); restart agent-relay",
                )
                if self._socket is not None:  # Slack sends the events to the other connections
                    await self._socket.close_async()  # type: ignore[no-untyped-call]
                    self._socket = None
            else:
                if self.store_error is not None:
                    log.info("store_check_recovered")
                    self.store_error = None
                if missing > 0 and missing != self.migrations_missing:
                    log.error(
                        "database_migrations_missing",
                        missing=missing,
                        action="not ready until `agent-relay migrate` (or a restart) applies them",
                    )
                self.migrations_missing = missing

    async def stop(self) -> None:
        """Graceful stop: no new events, in-flight sends finish or are parked, everything closed."""
        self._stopping = True
        for job in (self._retention, self._gauges):
            if job is not None:
                await job.stop()
        self._retention = self._gauges = None
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        parked = 0
        if self.deps is not None:
            self.deps.intake.closing = True
            await self.deps.mirror.stop(min(2.0, self.settings.shutdown_deadline))
            parked = await self.deps.delivery.shutdown(self.settings.shutdown_deadline)
            await self.deps.feedback.stop(min(2.0, self.settings.shutdown_deadline))
        await self._close()
        log.info("agent_relay_stopped", parked_messages=parked)

    async def _close(self) -> None:
        for runner in (self._runner, self._side):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._side = None
        if self.heartbeat is not None:
            await self.heartbeat.stop()
            self.heartbeat = None
        if self.deps is not None:
            await close_deps(self.deps)
            self.deps = None


async def serve(settings: Settings, *, mode: Literal["socket", "http"], host: str, port: int) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    runtime = Runtime(settings, mode=mode, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    await stop.wait()
    log.info("agent_relay_stopping")
    await runtime.stop()


__all__ = ["Runtime", "StartupError", "serve"]
