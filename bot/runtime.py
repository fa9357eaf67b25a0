"""Starting and stopping agent-relay: Socket Mode or HTTP, with a graceful shutdown.

Shutdown order (SIGTERM/SIGINT): stop taking events (close the socket / stop the HTTP site, which
waits for requests in progress, so every acknowledged event is stored), let in-flight provider
calls finish within ``SHUTDOWN_DEADLINE`` seconds, park the rest in the store (they resume at the
next start), then close the provider clients and the store.
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
from bot.settings import Settings
from bot.web import slack_guard
from storage import StoreError

log = structlog.get_logger(__name__)

STORE_CHECK_INTERVAL = 2.0  # seconds between looks at the store's health


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        mode: Literal["socket", "http"],
        host: str = "0.0.0.0",  # noqa: S104 - a container serves Slack on every interface
        port: int = 3000,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.host = host
        self.port = port
        self.deps: Deps | None = None
        self._runner: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._watch: asyncio.Task[None] | None = None
        self.store_lost: str | None = None  # why events are not acknowledged any more

    def not_ready(self) -> str | None:
        return self.store_lost

    async def start(self) -> None:
        self.deps = deps = await build_deps(self.settings)
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
                web_app.router.add_get("/healthz", self._healthz)
                self._runner = web.AppRunner(
                    web_app, access_log=None, shutdown_timeout=self.settings.shutdown_deadline
                )
                await self._runner.setup()
                site = web.TCPSite(self._runner, self.host, self.port)
                await site.start()
                if self.port == 0 and self._runner.addresses:
                    self.port = int(self._runner.addresses[0][1])
            else:
                assert self.settings.slack_app_token is not None
                self._socket = AsyncSocketModeHandler(app, self.settings.slack_app_token.get_secret_value())
                await self._socket.connect_async()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._close()
            raise
        self._watch = asyncio.create_task(self._watch_store(), name="store:watch")
        log.info(
            "agent_relay_started",
            mode=self.mode,
            port=self.port if self.mode == "http" else None,
            providers=list(deps.providers),
            resumed_messages=resumed,
        )

    async def _watch_store(self) -> None:
        """Notice a store that is gone for good (its file deleted or replaced): stop taking events, so
        that Slack delivers them again, and say why once."""
        assert self.deps is not None
        store = self.deps.store
        while self.store_lost is None:
            await asyncio.sleep(STORE_CHECK_INTERVAL)
            try:
                await store.check()
            except StoreError as exc:
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

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "busy": self.deps.delivery.busy if self.deps else 0})

    async def stop(self) -> None:
        """Graceful stop: no new events, in-flight sends finish or are parked, everything closed."""
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
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
