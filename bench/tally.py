"""Counting what the provider received against what was sent: delivered, duplicated, reordered, lost.

Only requests the fake provider answered 200 count as deliveries; answers it refused (503 during an
outage) are attempts. A message is identified by the ``t<thread>-m<seq>`` mark in its text; the
session it reached must be its thread's (else it is *misrouted*). Within a thread, a message that
arrives after one with a higher sequence number is *reordered*; a second arrival is *duplicated*; a
message the target acknowledged but the provider never answered 200 is *lost* (one the load
generator had no time to send is *unsent*; one the target did not acknowledge is a failed send).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import parse_mark, thread_of_session
from bench.load import Sent


@dataclass(slots=True)
class Tally:
    expected: int = 0
    delivered: int = 0  # distinct expected messages answered 200
    duplicated: int = 0
    reordered: int = 0
    lost: int = 0  # acknowledged by the target, never delivered
    unsent: int = 0  # never sent: the phase ran out of time first
    misrouted: int = 0
    unexpected: int = 0  # 200s carrying no mark of this phase
    refused_attempts: int = 0  # answered non-200 (an outage)
    first_sent: float | None = None
    last_received: float | None = None
    latencies: list[float] = field(default_factory=list)  # seconds, first delivery minus send
    acks: list[float] = field(default_factory=list)  # seconds
    failed_sends: int = 0  # the target did not answer 200

    @property
    def clean(self) -> bool:
        return not (
            self.duplicated
            or self.reordered
            or self.lost
            or self.misrouted
            or self.failed_sends
            or self.unsent
        )

    def problems(self) -> str:
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.lost, "lost"),
                (self.unsent, "not sent in time"),
                (self.duplicated, "duplicated"),
                (self.reordered, "reordered"),
                (self.misrouted, "misrouted"),
                (self.failed_sends, "not acknowledged"),
            )
            if n
        ]
        return ", ".join(parts) or "none"

    def rate(self, since: float | None = None) -> float | None:
        """Deliveries a second, from ``since`` (default: the first send) to the last delivery."""
        start = self.first_sent if since is None else since
        if start is None or self.last_received is None or self.last_received <= start:
            return None
        return self.delivered / (self.last_received - start)

    def summary(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "delivered": self.delivered,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "lost": self.lost,
            "unsent": self.unsent,
            "misrouted": self.misrouted,
            "unexpected": self.unexpected,
            "refused_attempts": self.refused_attempts,
            "failed_sends": self.failed_sends,
        }


def count(
    records: Sequence[Sequence[Any]],
    expected: Mapping[int, Sequence[int]],
    sent: Mapping[tuple[int, int], Sent],
) -> Tally:
    """``records``: the provider's ``[session, text, received_at, status]`` rows of this phase."""
    tally = Tally(expected=sum(len(s) for s in expected.values()))
    wanted = {(t, s) for t, seqs in expected.items() for s in seqs}
    first: dict[tuple[int, int], float] = {}
    arrivals: dict[int, list[int]] = {}
    for session, text, received_at, status in sorted(records, key=lambda r: float(r[2])):
        found = parse_mark(str(text))
        if int(status) != 200:
            tally.refused_attempts += 1
            continue
        if found is None or found not in wanted:
            tally.unexpected += 1
            continue
        if thread_of_session(str(session)) != found[0]:
            tally.misrouted += 1
        if found in first:
            tally.duplicated += 1
            continue
        first[found] = float(received_at)
        arrivals.setdefault(found[0], []).append(found[1])
    for seqs in arrivals.values():
        highest = -1
        for seq in seqs:
            if seq < highest:
                tally.reordered += 1
            highest = max(highest, seq)
    tally.delivered = len(first)
    acknowledged = {key for key, s in sent.items() if s.status == 200}
    tally.lost = len((wanted & acknowledged) - first.keys())
    tally.unsent = len(wanted - sent.keys())
    if first:
        tally.last_received = max(first.values())
    if sent:
        tally.first_sent = min(s.at for s in sent.values())
    tally.failed_sends = sum(1 for s in sent.values() if s.status != 200)
    tally.acks = [s.ack for s in sent.values() if s.status == 200]
    tally.latencies = [at - sent[key].at for key, at in first.items() if key in sent]
    return tally
