"""One long-running task owned by a component (heartbeat, store gauges, retention)."""

from __future__ import annotations

import asyncio
from typing import ClassVar


class Background:
    """:meth:`start` runs :meth:`_run` as a named task; :meth:`stop` cancels it and waits for it."""

    task_name: ClassVar[str]
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        raise NotImplementedError
