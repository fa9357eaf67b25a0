"""How soon a session is read again. Pure: no I/O (the jitter's random source is passed in).

* While the session works, or right after something new was seen: every ``interval`` seconds.
* Idle (waiting for a person, suspended, or a state we do not know) with nothing new: the wait
  doubles at each read, up to ``idle_max``.
* Finished or expired: not again until something wakes it (a message relayed to the session).
* After a failed read: ``interval`` doubled per consecutive failure up to ``failure_max``, or the
  provider's ``Retry-After`` when that is longer.

Every wait is spread by ``jitter`` (a fraction, both ways), so that threads linked together do not
read together forever.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bot.providers.base import SessionState

__all__ = ["Pace"]


@dataclass(frozen=True, slots=True)
class Pace:
    interval: float = 5.0
    idle_max: float = 120.0
    failure_max: float = 300.0
    jitter: float = 0.1

    def after_read(self, state: SessionState, *, news: bool, idle_polls: int) -> tuple[float | None, int]:
        """The wait before the next read (None: until woken) and the idle count to store."""
        if state in (SessionState.FINISHED, SessionState.EXPIRED):
            return None, 0
        if news or state is SessionState.WORKING:
            return self.interval, 0
        idle = idle_polls + 1
        return min(self.idle_max, self.interval * 2.0 ** min(idle, 30)), idle

    def after_failure(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after the ``failures``-th failed read in a row."""
        wait = min(self.failure_max, self.interval * 2.0 ** min(max(failures, 1), 30))
        return max(wait, retry_after or 0.0)

    def jittered(self, seconds: float, rng: random.Random) -> float:
        return seconds * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
