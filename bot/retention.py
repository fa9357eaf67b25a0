"""Retention (``RETENTION_DAYS``): the stored text of old messages is blanked, old feedback removed.

A periodic job, run by one replica at a time (the store's singleton lease ``"retention"``), blanks
the text and files of final messages that finished more than ``RETENTION_DAYS`` days ago and removes
done or failed feedback items as old (see :meth:`storage.base.Store.purge_before`). It works in
small batches (``batch`` rows per statement) with a pause between them, so that claims and intake
never wait long behind it. Rows, states and outcomes stay, so ``status`` and the counts are
unchanged; bindings are never touched.
"""

from __future__ import annotations

import asyncio

import structlog

from bot.background import Background
from bot.metrics import Metrics
from storage import Purged, Store, StoreError

log = structlog.get_logger(__name__)

LEASE = "retention"
DAY = 86_400.0
INTERVAL = 3600.0  # seconds between two passes (and how long a pass's lease lasts)
FIRST_DELAY = 60.0  # seconds after start before the first pass
BATCH = 500  # rows per statement
PAUSE = 0.2  # seconds between two batches


class Retention(Background):
    task_name = "retention"

    def __init__(
        self,
        store: Store,
        *,
        days: float,
        owner: str,
        metrics: Metrics | None = None,
        interval: float | None = None,
        first_delay: float | None = None,
        batch: int | None = None,
        pause: float | None = None,
    ) -> None:
        self._store = store
        self.days = days
        self._owner = owner
        self._metrics = metrics or Metrics()
        self._interval = INTERVAL if interval is None else interval
        self._first_delay = FIRST_DELAY if first_delay is None else first_delay
        self._batch = BATCH if batch is None else batch
        self._pause = PAUSE if pause is None else pause

    async def _run(self) -> None:
        await asyncio.sleep(self._first_delay)
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                log.warning("retention_failed", error=str(exc))
            await asyncio.sleep(self._interval)

    async def run_once(self) -> Purged:
        """One pass, if this replica holds the lease: batches until nothing older is left. The
        lease is kept for ``interval`` seconds, so other replicas skip their pass meanwhile."""
        if not await self._store.acquire_lease(LEASE, self._owner, self._interval):
            log.debug("retention_skipped", reason="another replica holds the lease")
            return Purged()
        cutoff = await self._store.now() - self.days * DAY
        messages = feedback = 0
        while True:
            purged = await self._store.purge_before(cutoff, batch=self._batch)
            messages += purged.messages
            feedback += purged.feedback
            self._metrics.purged.labels(table="messages").inc(purged.messages)
            self._metrics.purged.labels(table="feedback").inc(purged.feedback)
            if purged.total == 0:
                break
            await asyncio.sleep(self._pause)
            if not await self._store.acquire_lease(LEASE, self._owner, self._interval):
                log.warning("retention_lease_lost")
                break
        if messages or feedback:
            log.info("retention_purged", messages=messages, feedback=feedback, older_than_days=self.days)
        return Purged(messages=messages, feedback=feedback)
