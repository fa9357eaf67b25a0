"""Results -> Markdown tables and hand-written SVG charts (no plotting library needed).

Every figure of a configuration is shown as ``median (min-max)`` over its repetitions.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Run = dict[str, Any]
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


# -- numbers ------------------------------------------------------------------------------------


def _get(run: Run, path: str) -> Any:
    value: Any = run
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def values(runs: Iterable[Run], path: str) -> list[float]:
    return [float(v) for v in (_get(r, path) for r in runs) if isinstance(v, int | float)]


def median(runs: Iterable[Run], path: str) -> float | None:
    found = values(runs, path)
    return statistics.median(found) if found else None


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def spread(runs: Sequence[Run], path: str, digits: int = 1, scale: float = 1.0) -> str:
    found = [v * scale for v in values(runs, path)]
    if not found:
        return "n/a"
    mid = _num(statistics.median(found), digits)
    if len(found) == 1:
        return mid
    return f"{mid} ({_num(min(found), digits)}-{_num(max(found), digits)})"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def problems(runs: Sequence[Run], phase: str) -> str:
    said = [str(_get(r, f"{phase}.problems")) for r in runs if _get(r, f"{phase}.problems") is not None]
    bad = [p for p in said if p != "none"]
    if not said:
        return "n/a"
    if not bad:
        return "none"
    return "; ".join(sorted(set(bad)))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _by(runs: Iterable[Run], *keys: str) -> dict[tuple[Any, ...], list[Run]]:
    grouped: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        grouped.setdefault(tuple(run.get(k) for k in keys), []).append(run)
    return grouped


# -- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """The thread-count runs of one result set, grouped by (target, threads)."""

    results: dict[str, Any]
    labels: list[str]
    kinds: dict[str, str]
    counts: list[int]
    groups: dict[tuple[Any, ...], list[Run]]

    @classmethod
    def of(cls, results: dict[str, Any]) -> View | None:
        runs: list[Run] = results.get("threads", [])
        if not runs:
            return None
        return cls(
            results,
            list(results["meta"]["targets"]),
            dict(results["meta"]["kinds"]),
            sorted({int(r["threads"]) for r in runs}),
            _by(runs, "target", "threads"),
        )

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self.results["meta"]["options"]
        return options

    @property
    def bots(self) -> list[str]:
        return [t for t in self.labels if self.kinds[t] == "bot"]

    @property
    def refs(self) -> list[str]:
        return [t for t in self.labels if self.kinds[t] in ("naive", "ceiling")]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(agent-relay, compared with): each reference; and the first agent-relay, for the others."""
        return [(b, r) for b in self.bots for r in self.refs] + [(b, self.bots[0]) for b in self.bots[1:]]

    def runs(self, target: str, threads: int) -> list[Run]:
        return self.groups.get((target, threads), [])

    def each(self) -> Iterable[tuple[int, str, list[Run]]]:
        for n in self.counts:
            for t in self.labels:
                if g := self.runs(t, n):
                    yield n, t, g


def thread_tables(results: dict[str, Any]) -> list[str]:
    view = View.of(results)
    if view is None:
        return []
    return [
        *throughput_table(view),
        *latency_table(view),
        *cost_table(view),
        *ratio_table(view),
        *harness_table(view),
    ]


def throughput_table(v: View) -> list[str]:
    out = ["### Relays per second (burst)", ""]
    out += [
        "Every thread sends its share of the messages one after the other, threads side by side, at most "
        f"{v.options['concurrency']} requests in flight; relays a second = messages delivered / "
        "(last delivery - first send). *Problems* lists anything lost, duplicated, reordered or "
        "misrouted (counted at the provider, over all repetitions).",
        "",
    ]
    pairs = v.pairs
    header = ["threads", *v.labels, *(f"{b} / {r}" for b, r in pairs), "problems"]
    rows = []
    for n in v.counts:
        row = [str(n), *(spread(v.runs(t, n), "burst.rate", 0) for t in v.labels)]
        for b, r in pairs:
            row.append(ratio(median(v.runs(b, n), "burst.rate"), median(v.runs(r, n), "burst.rate")))
        said = [(t, problems(v.runs(t, n), "burst")) for t in v.labels]
        row.append("; ".join(f"{t}: {p}" for t, p in said if p not in ("none", "n/a")) or "none")
        rows.append(row)
    return [*out, *_table(header, rows), ""]


def latency_table(v: View) -> list[str]:
    rate = v.options["rate"]
    window_ms = v.options["order_window"] * 1000
    out = [f"### Latency at {rate:g} events a second", ""]
    out += [
        f"Open loop: event *k* leaves at *k*/{rate:g} s, threads in turn. Latency = provider request "
        f"received - event sent; for agent-relay minus its order window ({window_ms:g} ms), which every "
        "message waits by design. Acknowledgement = until the target answered Slack's request.",
        "",
    ]
    header = [
        "threads",
        "target",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "ack p99 ms",
        "ack max ms",
        "problems",
    ]
    rows = []
    for n, t, g in v.each():
        if _get(g[0], "paced") is None:
            continue
        acks = v.kinds[t] != "ceiling"
        rows.append(
            [
                str(n),
                t,
                *(spread(g, f"paced.latency_ms.{q}", 1) for q in ("p50", "p95", "p99", "max")),
                spread(g, "paced.ack_ms.p99", 1) if acks else "n/a",
                spread(g, "paced.ack_ms.max", 1) if acks else "n/a",
                problems(g, "paced"),
            ]
        )
    return [*out, *_table(header, rows), ""] if rows else []


def cost_table(v: View) -> list[str]:
    rate = v.options["rate"]
    out = ["### Cost", ""]
    out += [
        "CPU time (user + system, `/proc/<pid>/stat`) of the target's processes over a phase, divided by "
        "the messages delivered in it; for the ceiling, the load generator's own. Peak RSS is `VmHWM` at "
        "the end of the run. Ready = from spawning the process until a signed event is answered 200.",
        "",
    ]
    header = [
        "threads",
        "target",
        f"CPU ms/msg at {rate:g}/s",
        "CPU ms/msg (burst)",
        "peak RSS MB",
        "ready s",
    ]
    rows = []
    for n, t, g in v.each():
        process = v.kinds[t] != "ceiling"
        rows.append(
            [
                str(n),
                t,
                spread(g, "paced.cpu_ms_per_msg.target", 2),
                spread(g, "burst.cpu_ms_per_msg.target", 2),
                spread(g, "rss_peak_kib", 1, 1 / 1024) if process else "n/a",
                spread(g, "ready_s", 2) if process else "n/a",
            ]
        )
    return [*out, *_table(header, rows), ""]


def ratio_table(v: View) -> list[str]:
    """Each agent-relay against each reference: medians divided (above 1: agent-relay has more)."""
    if not v.pairs:
        return []
    rate = v.options["rate"]
    metrics = [
        ("relays/s", "burst.rate"),
        ("CPU ms/msg (burst)", "burst.cpu_ms_per_msg.target"),
        (f"CPU ms/msg at {rate:g}/s", "paced.cpu_ms_per_msg.target"),
        ("latency p99", "paced.latency_ms.p99"),
        ("peak RSS", "rss_peak_kib"),
    ]
    out = [
        "### Ratios",
        "",
        "Medians of agent-relay divided by the same medians of what it is compared with.",
        "",
    ]
    header = ["threads", "ratio", *(name for name, _ in metrics)]
    rows = []
    for n in v.counts:
        for bot, ref in v.pairs:
            row = [str(n), f"{bot} / {ref}"]
            for _name, path in metrics:
                if path == "rss_peak_kib" and v.kinds[ref] == "ceiling":
                    row.append("n/a")
                else:
                    row.append(ratio(median(v.runs(bot, n), path), median(v.runs(ref, n), path)))
            rows.append(row)
    return [*out, *_table(header, rows), ""]


def harness_table(v: View) -> list[str]:
    out = ["### Are the fakes the bottleneck?", ""]
    out += [
        "Share of one core used during the burst phase by each process (100 % = one core busy all along; "
        f"the machine has {v.results['meta']['machine']['nproc']}). A fake near 100 % would cap the figures "
        "above; the ceiling row shows how far the fakes go when nothing else is in the way.",
        "",
    ]
    header = ["threads", "target", "target %", "fake Slack %", "fake provider %", "load generator %"]
    rows = []
    for n, t, g in v.each():
        rows.append(
            [
                str(n),
                t,
                spread(g, "burst.cpu_util.target", 0, 100) if v.kinds[t] != "ceiling" else "(= load gen.)",
                spread(g, "burst.cpu_util.fake_slack", 0, 100),
                spread(g, "burst.cpu_util.fake_provider", 0, 100),
                spread(g, "burst.cpu_util.loadgen", 0, 100),
            ]
        )
    return [*out, *_table(header, rows), ""]


def backlog_table(results: dict[str, Any]) -> list[str]:
    runs: list[Run] = results.get("backlog", [])
    if not runs:
        return []
    out = ["### Backlog: the provider down, then back", ""]
    opts = results["meta"]["options"]
    wait = f"`RELAY_RETRY_MAX_WAIT={opts['backlog_max_wait']:g}`"
    out += [
        "The messages are sent (every thread in order, threads side by side, "
        f"{opts['concurrency']} requests in flight) while the provider answers 503 "
        f"(`RELAY_RETRY_BUDGET=3600`, {wait}), for at most {opts.get('backlog_intake_timeout', 300):g} s; "
        f"{opts['backlog_hold']:g} s after the last is acknowledged the provider answers 200 again. "
        "*Waiting* figures are taken over those seconds (CPU as a share of one core; provider attempts are "
        "the retries the outage costs). Drain rate = messages delivered / (last delivery - recovery).",
        "",
    ]
    header = [
        "messages x threads",
        "target",
        "acknowledged",
        "intake msg/s",
        "ack p99 ms",
        "RSS waiting MB",
        "CPU % waiting",
        "attempts/s waiting",
        "drain msg/s",
        "drain s",
        "peak RSS MB",
        "problems",
    ]
    rows = []
    for (messages, threads, label), g in _by(runs, "messages", "threads", "target").items():
        rows.append(
            [
                f"{messages:,} x {threads:,}",
                str(label),
                spread(g, "intake.acknowledged", 0),
                spread(g, "intake.rate", 0),
                spread(g, "intake.ack_ms.p99", 0),
                spread(g, "waiting.rss_max_kib", 1, 1 / 1024),
                spread(g, "waiting.cpu_util.target", 0, 100),
                spread(g, "waiting.provider_attempts_per_s", 0),
                spread(g, "drain.rate", 0),
                spread(g, "drain.seconds", 1),
                spread(g, "rss_peak_kib", 1, 1 / 1024),
                problems(g, "drain"),
            ]
        )
    return [*out, *_table(header, rows), ""]


def limits_table(results: dict[str, Any]) -> list[str]:
    runs: list[Run] = results.get("limits", [])
    if not runs:
        return []
    first = runs[0]
    out = ["### Slack's rate limits enforced vs not", ""]
    out += [
        f"A burst of {first['messages']:,} messages over {first['threads']:,} threads, with the fake Slack "
        "enforcing `reactions.add` 50 a minute per workspace and `chat.postMessage` 1 a second per channel "
        "(token buckets, HTTP 429 with `Retry-After`), or not. Relays a second as above.",
        "",
    ]
    header = [
        "target",
        "relays/s, no limits",
        "relays/s, limits",
        "ratio",
        "reactions.add 429s",
        "problems (limits)",
    ]
    rows = []
    for (label,), g in _by(runs, "target").items():
        off = [r for r in g if not r["limited"]]
        on = [r for r in g if r["limited"]]
        rows.append(
            [
                str(label),
                spread(off, "burst.rate", 0),
                spread(on, "burst.rate", 1),
                ratio(median(on, "burst.rate"), median(off, "burst.rate")),
                _throttled(on, "reactions.add"),
                problems(on, "burst"),
            ]
        )
    return [*out, *_table(header, rows), ""]


def _throttled(runs: Sequence[Run], method: str) -> str:
    found = [float(r.get("slack", {}).get("throttled", {}).get(method, 0)) for r in runs]
    return _num(statistics.median(found), 0) if found else "n/a"


# -- charts -------------------------------------------------------------------------------------


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
            f"<title>{html.escape(title)}</title>",
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
            *body,
            "</svg>",
            "",
        ]
    )


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def _axes(left: int, top: int, w: int, h: int, *, ymax: float, ylabel: str, ticks: int = 5) -> list[str]:
    body = [
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="black"/>',
        f'<text x="14" y="{top + h / 2}" transform="rotate(-90 14 {top + h / 2})" text-anchor="middle">'
        f"{html.escape(ylabel)}</text>",
    ]
    for i in range(ticks + 1):
        v = ymax * i / ticks
        y = top + h - h * i / ticks
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#ddd"/>')
        body.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(v, 0 if ymax >= 10 else 1)}</text>'
        )
    return body


def _legend(labels: Sequence[str], x: int, y: int) -> list[str]:
    body = []
    for i, label in enumerate(labels):
        colour = COLOURS[i % len(COLOURS)]
        body.append(f'<rect x="{x}" y="{y + i * 18}" width="12" height="12" fill="{colour}"/>')
        body.append(f'<text x="{x + 18}" y="{y + i * 18 + 10}">{html.escape(label)}</text>')
    return body


def throughput_svg(results: dict[str, Any]) -> str | None:
    runs: list[Run] = results.get("threads", [])
    if not runs:
        return None
    labels: list[str] = results["meta"]["targets"]
    counts = sorted({int(r["threads"]) for r in runs})
    groups = _by(runs, "target", "threads")
    stats = {(t, n): values(groups.get((t, n), []), "burst.rate") for t in labels for n in counts}
    top = max((max(v) for v in stats.values() if v), default=1.0)
    ymax = _nice_max(top * 1.1)
    width, height, left, top_px, plot_h = 720, 380, 70, 40, 280
    plot_w = width - left - 150
    body = _axes(left, top_px, plot_w, plot_h, ymax=ymax, ylabel="relays per second (median, min-max)")
    slot = plot_w / len(counts)
    bar = slot * 0.8 / len(labels)
    for ci, n in enumerate(counts):
        x0 = left + ci * slot + slot * 0.1
        body.append(
            f'<text x="{left + ci * slot + slot / 2:.1f}" y="{top_px + plot_h + 18}" text-anchor="middle">'
            f"{n} thread{'s' if n != 1 else ''}</text>"
        )
        for ti, t in enumerate(labels):
            found = stats[(t, n)]
            if not found:
                continue
            mid = statistics.median(found)
            x = x0 + ti * bar
            y = top_px + plot_h - plot_h * mid / ymax
            colour = COLOURS[ti % len(COLOURS)]
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.9:.1f}" height="{top_px + plot_h - y:.1f}" '
                f'fill="{colour}"><title>{html.escape(t)}: {mid:.0f}/s</title></rect>'
            )
            lo = top_px + plot_h - plot_h * min(found) / ymax
            hi = top_px + plot_h - plot_h * max(found) / ymax
            cx = x + bar * 0.45
            body.append(f'<line x1="{cx:.1f}" y1="{lo:.1f}" x2="{cx:.1f}" y2="{hi:.1f}" stroke="black"/>')
            label_y = min(y, hi) - 4
            body.append(
                f'<text x="{cx:.1f}" y="{label_y:.1f}" text-anchor="middle" font-size="10">{mid:.0f}</text>'
            )
    body += _legend(labels, left + plot_w + 20, top_px + 10)
    return _svg(width, height, body, "Relays per second by number of threads (burst)")


def latency_svg(results: dict[str, Any], threads: int | None = None) -> str | None:
    """Cumulative distribution of the paced phase's latencies (pooled over repetitions), log x axis."""
    runs: list[Run] = [r for r in results.get("threads", []) if _get(r, "paced.latencies_ms")]
    if not runs:
        return None
    counts = sorted({int(r["threads"]) for r in runs})
    if threads is None:
        below = [n for n in counts if n <= 100]
        threads = below[-1] if below else counts[-1]
    labels: list[str] = results["meta"]["targets"]
    samples: dict[str, list[float]] = {}
    for t in labels:
        pooled = [
            max(v, 0.01)
            for r in runs
            if r["target"] == t and r["threads"] == threads
            for v in r["paced"]["latencies_ms"]
        ]
        if pooled:
            samples[t] = sorted(pooled)
    if not samples:
        return None
    lo_exp = math.floor(math.log10(min(v[0] for v in samples.values())))
    hi_exp = max(lo_exp + 1, math.ceil(math.log10(max(v[-1] for v in samples.values()))))
    width, height, left, top_px, plot_h = 720, 390, 70, 40, 280
    plot_w = width - left - 150

    def x_of(ms: float) -> float:
        return left + plot_w * (math.log10(ms) - lo_exp) / (hi_exp - lo_exp)

    body = _axes(left, top_px, plot_w, plot_h, ymax=100.0, ylabel="% of messages delivered within", ticks=4)
    for e in range(lo_exp, hi_exp + 1):
        x = x_of(10.0**e)
        label = f"{10.0**e:g}"
        body.append(f'<line x1="{x:.1f}" y1="{top_px}" x2="{x:.1f}" y2="{top_px + plot_h}" stroke="#ddd"/>')
        body.append(f'<text x="{x:.1f}" y="{top_px + plot_h + 16}" text-anchor="middle">{label}</text>')
    rate = results["meta"]["options"]["rate"]
    body.append(
        f'<text x="{left + plot_w / 2}" y="{top_px + plot_h + 34}" text-anchor="middle">'
        "ms from event sent to provider request (log scale)</text>"
    )
    body.append(
        f'<text x="{left + plot_w / 2}" y="{top_px + plot_h + 50}" text-anchor="middle" font-size="11">'
        f"{rate:g} events/s over {threads} thread{'s' if threads != 1 else ''}; agent-relay: beyond its "
        "order window</text>"
    )
    shown = [t for t in labels if t in samples]
    for ti, t in enumerate(labels):
        if t not in samples:
            continue
        v = samples[t]
        step = max(1, len(v) // 400)
        points = [f"{x_of(v[0]):.1f},{top_px + plot_h:.1f}"]
        for k in range(0, len(v), step):
            points.append(f"{x_of(v[k]):.1f},{top_px + plot_h - plot_h * (k + 1) / len(v):.1f}")
        points.append(f"{x_of(v[-1]):.1f},{top_px:.1f}")
        colour = COLOURS[ti % len(COLOURS)]
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>')
    body += _legend(shown, left + plot_w + 20, top_px + 10)
    return _svg(width, height, body, "Latency distribution (cumulative)")


# -- the report ---------------------------------------------------------------------------------


METHOD = """\
## How to run

```sh
scripts/bench --quick        # ~10-20 s: every message delivered once and in order? Exit 1 if not (CI)
scripts/bench                # the full comparison; tables on stdout
scripts/bench --threads 1,10,100 --reps 3 --write-docs --json results.json
scripts/bench --bot-cmd before=../old/.venv/bin/agent-relay --bot-cmd after=.venv/bin/agent-relay
```

`scripts/bench --help` lists the options: thread counts (`--threads`), burst size (`--messages`),
repetitions (`--reps`, and `--extra-reps` for the backlog and the limits), the paced rate
(`--rate`, `--rate-seconds`), backlog sizes (`--backlog 2000x200,10000x1000`), which scenarios and
targets to run, `--slack-limits` (Slack's limits in every run), `--provider-latency MS`,
`--order-window`, and `--backend postgres --database-url URL`. `--quick` runs agent-relay alone on
1 and 10 threads and a small backlog, and passes no judgement on timings.

## What runs

Everything on 127.0.0.1, each in its own process, so that one's CPU time is not another's:

- **agent-relay**: `agent-relay run --mode http --host 127.0.0.1 --port N` (by default this
  checkout's `.venv/bin/agent-relay`; `--bot-cmd` names others), started afresh for every run on a
  fresh SQLite file, with `LOG_LEVEL=WARNING`, `RELAY_ORDER_WINDOW` (0.25 s), `SHUTDOWN_DEADLINE=2`
  and every other setting at its default (`RELAY_CONCURRENCY=32`).
- **naive**: [`bench/naive.py`](../bench/naive.py), what one writes in an afternoon: a Bolt
  `AsyncApp` whose `message` listener posts to the provider and adds a reaction. The session of a
  thread is kept in a dict; no store, no ordering, no retries; Bolt acknowledges before the listener runs.
- **ceiling**: the load generator itself makes the same two loopback calls per message (the provider
  POST, then `reactions.add`) with aiohttp, at the same concurrency and per-thread order, without any
  Slack event: what those two calls cost with nothing in between.
- **fake Slack** ([`bench/fake_slack.py`](../bench/fake_slack.py)) and **fake provider**
  ([`bench/fake_provider.py`](../bench/fake_provider.py), Devin v1: `POST /v1/sessions/{id}/message`
  answered JSON `null`): lean aiohttp servers that count and record and do nothing else.
- **load generator** (the `scripts/bench` process): links the threads with an `app_mention`
  `<@bot> link devin devin-<run>-<n>` inside each thread and waits for the reply in every one; then sends
  signed `message` events (`x-slack-signature` as Slack computes it) whose text carries `t<thread>-m<seq>`.

Targets take turns within each repetition, so a change in the machine's load hits them alike.

## What is measured, and how

- **Counting** (never assumed): the fake provider records session, text and receive time of every
  request; per thread, a message received twice is *duplicated*, one received after a later one is
  *reordered*, one acknowledged but never received is *lost*, one in another thread's session is
  *misrouted*. A rate is reported with the problems seen next to it.
- **Relays per second**: a burst, every thread sending its messages one after the other (each
  request waits for the previous acknowledgement), threads side by side, at most 32 requests in flight;
  messages delivered / (last delivery - first send).
- **Latency**: a paced phase before the burst, open loop at a fixed rate (100 events/s by default),
  threads in turn: provider receive time - send time (`time.monotonic()`, one clock system-wide on
  Linux), for agent-relay minus its order window. **Acknowledgement**: how long the target took to
  answer the event's HTTP request.
- **CPU ms per message**: `utime + stime` of the target's process tree from `/proc/<pid>/stat` over a
  phase, divided by the messages delivered (10 ms ticks, so phases burn seconds of CPU). The same for
  each fake and the load generator shows whether they could be the bottleneck.
- **Peak RSS**: `VmHWM` of `/proc/<pid>/status` at the end of the run. **Ready**: from spawning the
  process until a signed event (a channel message that every target ignores) is answered 200.
- **Backlog**: the provider answers 503 while the messages queue; RSS, CPU and the provider attempts
  (retries) are sampled while they wait; then the provider answers 200 again: drain rate, and
  every message must arrive once and in order.
- **Slack's limits**: the fake Slack enforces `reactions.add` 50 a minute per workspace (a burst of 10)
  and `chat.postMessage` 1 a second per channel (a burst of 3) with token buckets, answering 429 with
  `Retry-After` in whole seconds; the same burst runs with the limits on and off.

## Caveats

- Loopback, no TLS, no real network latency (`--provider-latency` adds some at the provider).
- All processes share the machine's cores; on a machine with 2 cores the bot competes with the fakes
  and the load generator. The "bottleneck" table shows each one's share. Absolute figures move with
  the machine's load; ratios from one run are steadier.
- Slack's own retries of events not acknowledged within 3 s are not emulated: acknowledgement times
  beyond 3 s would make Slack send those events again.
"""


def markdown(results: dict[str, Any], *, charts: dict[str, str], title: str, intro: str) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    opts = meta["options"]
    out = [f"# {title}", ""]
    if intro:
        out += [intro.replace("{commit}", str(meta["commit"])), ""]
    out += [
        "| | |",
        "|---|---|",
        f"| command | `{meta['command']}` |",
        f"| commit | `{meta['commit']}` |",
        *(f"| {label} | `{desc}` |" for label, desc in meta["bots"].items()),
        f"| machine | {machine['nproc']} CPUs ({machine['cpu']}), Linux {machine['kernel']}, "
        f"Python {machine['python']} |",
        f"| settings | burst of {opts['messages']:,} messages per configuration, {opts['reps']} repetitions, "
        f"paced {opts['rate']:g}/s for {opts['rate_seconds']:g} s, order window {opts['order_window']:g} s, "
        f"provider latency {opts['provider_latency_ms']:g} ms, Slack limits "
        f"{'on' if opts['slack_limits'] else 'off'} (except in the limits scenario) |",
        f"| date | {meta['date']} |",
        f"| runtime | {meta['runtime_s']:.0f} s |",
        "",
        "## Results",
        "",
        "Figures are `median (min-max)` over the repetitions.",
        "",
    ]
    if results.get("errors"):
        out += ["**Runs that failed:**", "", *(f"- {e}" for e in results["errors"]), ""]
    out += thread_tables(results)
    for name, path in charts.items():
        out += [f"![{name}]({path})", ""]
    out += backlog_table(results)
    out += limits_table(results)
    out += [METHOD]
    return "\n".join(out).rstrip() + "\n"


def text_tables(results: dict[str, Any]) -> str:
    """The same tables, for stdout."""
    return "\n".join([*thread_tables(results), *backlog_table(results), *limits_table(results)])
