"""CPU time and memory of a process (and its descendants) from ``/proc`` (Linux; no psutil needed).

CPU time is ``utime + stime`` of ``/proc/<pid>/stat`` in clock ticks (usually 10 ms each), so a phase
should burn at least a second of CPU for a figure to mean much. Memory is ``VmRSS`` (now) and
``VmHWM`` (the peak since the process started) of ``/proc/<pid>/status``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def available() -> bool:
    return (PROC / "self" / "stat").exists()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ")".
    return raw[raw.rfind(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (a ``--bot-cmd`` may be a wrapper that starts the bot)."""
    children = _children_map()
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 1000:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0.0 if it is gone)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 13:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True, slots=True)
class Sample:
    cpu: float  # seconds, summed over the tree
    rss_kib: int  # VmRSS summed over the tree
    hwm_kib: int  # VmHWM summed over the tree


def sample(pids: list[int]) -> Sample:
    return Sample(
        cpu=sum(cpu_seconds(p) for p in pids),
        rss_kib=sum(_status_kib(p, "VmRSS") for p in pids),
        hwm_kib=sum(_status_kib(p, "VmHWM") for p in pids),
    )
