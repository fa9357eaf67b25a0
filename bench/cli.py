"""``scripts/bench``: what one message costs and how fast agent-relay relays, against two references.

Usage (from a checkout, after ``scripts/test`` or ``scripts/run`` created ``.venv``)::

    scripts/bench --quick                       # seconds: delivered once each and in order? (CI)
    scripts/bench --threads 1,10,100 --reps 3   # the full comparison, tables on stdout
    scripts/bench --write-docs --json out.json  # ... and docs/benchmarks.md with SVG charts
    scripts/bench --bot-cmd before=../old/.venv/bin/agent-relay --bot-cmd after=.venv/bin/agent-relay

``--bot-cmd [LABEL=]COMMAND`` (repeatable) names an agent-relay to measure; ``run --mode http --host
127.0.0.1 --port N`` is appended. Relative paths are taken from the directory ``scripts/bench`` was
called in. Default: this checkout's ``.venv/bin/agent-relay``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from bench import procstat, report
from bench.scenarios import Context, Options, RunFailed, backlog_run, limits_run, threads_run
from bench.targets import ROOT, Fakes, Target, TargetUnavailable

DOCS = Path("docs") / "benchmarks.md"
_LABEL = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")
QUICK = {
    "threads": [1, 10],
    "messages": 60,
    "reps": 1,
    "rate_seconds": 1.0,
    "backlog": [(200, 20)],
    "backlog_hold": 1.0,
    "backlog_max_wait": 0.2,
}


def _csv_ints(text: str) -> list[int]:
    try:
        found = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not found or any(n < 1 for n in found):
        raise argparse.ArgumentTypeError("expected positive numbers")
    return found


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        found = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
        if not found or int(found[1]) < 1 or int(found[2]) < 1:
            raise argparse.ArgumentTypeError(f"expected MESSAGESxTHREADS, e.g. 10000x1000, got {part!r}")
        sizes.append((int(found[1]), int(found[2])))
    return sizes


def _csv_words(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if w not in choices]
        if bad or not words:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return words

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark agent-relay against a bare client (the ceiling) and a naive Bolt relay.",
    )
    p.add_argument("--quick", action="store_true", help="a few seconds: check delivery only (once, in order)")
    p.add_argument("--threads", type=_csv_ints, default=[1, 10, 100], help="thread counts (default 1,10,100)")
    p.add_argument(
        "--messages", type=int, default=1000, help="burst messages per configuration (default 1000)"
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions per configuration (default 3)")
    p.add_argument(
        "--rate", type=float, default=100.0, help="events a second of the paced phase (default 100)"
    )
    p.add_argument("--rate-seconds", type=float, default=5.0, help="length of the paced phase (0: none)")
    p.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight during a burst (default 32)"
    )
    p.add_argument("--order-window", type=float, default=0.25, help="RELAY_ORDER_WINDOW (default 0.25)")
    p.add_argument("--provider-latency", type=float, default=0.0, metavar="MS", help="fake provider delay")
    p.add_argument("--slack-limits", action="store_true", help="enforce Slack's rate limits in every run")
    p.add_argument(
        "--scenarios",
        type=_csv_words(["threads", "backlog", "limits"]),
        default=["threads", "backlog", "limits"],
        help="which scenarios (default threads,backlog,limits)",
    )
    p.add_argument(
        "--targets",
        type=_csv_words(["bot", "naive", "ceiling"]),
        default=["bot", "naive", "ceiling"],
        help="bot (every --bot-cmd), naive, ceiling (default all)",
    )
    p.add_argument(
        "--bot-cmd",
        action="append",
        default=[],
        metavar="[LABEL=]COMMAND",
        help="an agent-relay to measure, repeatable ('run --mode http ...' is appended; default .venv's)",
    )
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--database-url", help="for --backend postgres: a database the bot may fill")
    p.add_argument(
        "--backlog",
        type=_sizes,
        default=[(10_000, 1_000)],
        metavar="MESSAGESxTHREADS,...",
        help="backlog sizes (default 10000x1000)",
    )
    p.add_argument("--backlog-intake-timeout", type=float, default=300.0, help="seconds to queue the backlog")
    p.add_argument("--backlog-hold", type=float, default=5.0, help="seconds the full backlog waits")
    p.add_argument("--backlog-max-wait", type=float, default=1.0, help="RELAY_RETRY_MAX_WAIT for the backlog")
    p.add_argument("--limits-threads", type=int, default=100, help="threads of the Slack-limits burst")
    p.add_argument("--limits-messages", type=int, default=300, help="messages of the Slack-limits burst")
    p.add_argument("--extra-reps", type=int, default=1, help="repetitions of backlog and limits (default 1)")
    p.add_argument("--json", type=Path, help="write raw results here")
    p.add_argument(
        "--write-docs",
        nargs="?",
        const=DOCS,
        type=Path,
        metavar="PATH",
        help=f"write the report (default {DOCS})",
    )
    p.add_argument("--title", default="agent-relay benchmarks", help="the report's title")
    p.add_argument("--intro", default="", help="a paragraph under the title ({commit}: the commit measured)")
    p.add_argument(
        "--keep", action="store_true", help="keep the targets' logs and databases (path on stderr)"
    )
    p.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="run nothing: report the results of an earlier --json",
    )
    return p


def _caller_path(path: Path) -> Path:
    base = Path(os.environ.get("BENCH_CALLER_DIR") or os.getcwd())
    return path if path.is_absolute() else base / path


def bot_targets(specs: Sequence[str]) -> list[Target]:
    if not specs:
        return [Target("agent-relay", "bot", [str(ROOT / ".venv" / "bin" / "agent-relay")])]
    targets = []
    for n, spec in enumerate(specs, 1):
        found = _LABEL.match(spec)
        label, command = (
            (found[1], found[2]) if found else (f"agent-relay#{n}" if len(specs) > 1 else "agent-relay", spec)
        )
        words = shlex.split(command)
        if words and ("/" in words[0]) and not Path(words[0]).is_absolute():
            words[0] = str(_caller_path(Path(words[0])))
        targets.append(Target(label, "bot", words))
    return targets


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(  # noqa: S603 - fixed git arguments
            ["git", *args],  # noqa: S607
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# What is not agent-relay itself: changes there do not change what is measured.
_NOT_THE_BOT = [":(top)", ":(top,exclude)bench", ":(top,exclude)docs", ":(top,exclude)scripts/bench"]


def _commit(where: Path) -> str:
    """``HEAD`` of the checkout holding ``where``, the last commit that changed the bot's code if an
    earlier one, and whether the bot's code has uncommitted changes."""
    commit = _git(["rev-parse", "--short=12", "HEAD"], where)
    if commit is None:
        return "unknown"
    code = _git(["log", "-1", "--format=%h", "--abbrev=12", "--", *_NOT_THE_BOT], where)
    dirty = _git(["status", "--porcelain", "--untracked-files=no", "--", *_NOT_THE_BOT], where)
    shown = commit
    if code and code != commit:
        shown += f" (agent-relay's code as of {code})"
    return shown + (" with uncommitted changes to agent-relay's code" if dirty else "")


def _describe_bot(target: Target) -> str:
    assert target.command is not None
    found = shutil.which(target.command[0])
    exe = Path(found).absolute() if found else Path(target.command[0])
    where = exe.parent if exe.is_absolute() else ROOT
    try:
        program = str(exe.relative_to(ROOT))
    except ValueError:
        program = exe.name  # no path of this machine in the report
    return f"{' '.join([program, *target.command[1:]])} at commit {_commit(where)}"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count() or 0
    return {"nproc": nproc, "cpu": cpu, "kernel": platform.release(), "python": platform.python_version()}


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _line(result: dict[str, Any]) -> str:
    parts = [f"[{result['target']}] threads={result['threads']} rep={result['rep'] + 1}:"]
    burst = result.get("burst") or {}
    paced = result.get("paced") or {}
    if burst.get("rate") is not None:
        parts.append(f"{burst['rate']:.0f} relays/s")
    if paced.get("latency_ms", {}).get("p99") is not None:
        parts.append(f"p99 {paced['latency_ms']['p99']:.1f} ms")
    if burst.get("cpu_ms_per_msg", {}).get("target") is not None:
        parts.append(f"{burst['cpu_ms_per_msg']['target']:.2f} CPU ms/msg")
    if result.get("rss_peak_kib"):
        parts.append(f"{result['rss_peak_kib'] / 1024:.0f} MB")
    problems = [str(p["problems"]) for p in (paced, burst, result.get("drain") or {}) if p.get("problems")]
    parts.append("problems: " + ("; ".join(x for x in problems if x != "none") or "none"))
    return " ".join(parts)


async def _guarded(results: dict[str, Any], scenario: str, what: str, run: Any) -> dict[str, Any] | None:
    """Run one run; a :class:`RunFailed` is recorded (and fails the exit code) instead of ending it all."""
    try:
        result: dict[str, Any] = await run
    except RunFailed as exc:
        results["errors"].append(f"{scenario} {what}: {exc}")
        _progress(f"[{what}] {scenario}: FAILED: {exc}")
        return None
    results[scenario].append(result)
    return result


async def _thread_runs(
    ctx: Context, args: argparse.Namespace, targets: list[Target], results: dict[str, Any]
) -> None:
    for threads in args.threads:
        for rep in range(args.reps):
            for target in targets:  # interleaved, so drift in the machine's load hits every target alike
                what = f"{target.label} threads={threads} rep={rep + 1}"
                result = await _guarded(results, "threads", what, threads_run(ctx, target, threads, rep))
                if result is not None:
                    _progress(_line(result))


async def _backlog_runs(
    ctx: Context, args: argparse.Namespace, bots: list[Target], results: dict[str, Any]
) -> None:
    for messages, threads in args.backlog:
        for rep in range(args.extra_reps):
            for target in bots:
                run = backlog_run(ctx, target, threads, messages, rep)
                result = await _guarded(results, "backlog", target.label, run)
                if result is not None:
                    drain = result["drain"]["rate"] or 0
                    _progress(_line(result) + f" (backlog of {messages}, drain {drain:.0f}/s)")


async def _limits_runs(
    ctx: Context, args: argparse.Namespace, targets: list[Target], results: dict[str, Any]
) -> None:
    for rep in range(args.extra_reps):
        for target in targets:
            for limited in (False, True):
                run = limits_run(ctx, target, args.limits_threads, args.limits_messages, rep, limited=limited)
                result = await _guarded(results, "limits", target.label, run)
                if result is not None:
                    _progress(_line(result) + f" (slack limits {'on' if limited else 'off'})")


@contextlib.contextmanager
def _workdir(*, keep: bool) -> Iterator[Path]:
    """Where the runs' databases and logs go; removed at the end unless ``keep``."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix="agent-relay-bench-"))
        _progress(f"logs and databases kept in {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="agent-relay-bench-") as tmp:
        yield Path(tmp)


async def run_all(args: argparse.Namespace, options: Options, targets: list[Target]) -> dict[str, Any]:
    results: dict[str, Any] = {"threads": [], "backlog": [], "limits": [], "errors": []}
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        fakes = await Fakes.start(http, provider_latency_ms=options.provider_latency_ms, slack_limits=False)
        try:
            with _workdir(keep=args.keep) as tmp:
                ctx = Context(http, fakes, tmp, options)
                if "threads" in args.scenarios:
                    await _thread_runs(ctx, args, targets, results)
                if "backlog" in args.scenarios:
                    await _backlog_runs(ctx, args, [t for t in targets if t.kind == "bot"], results)
                if "limits" in args.scenarios:
                    await _limits_runs(ctx, args, [t for t in targets if t.kind != "ceiling"], results)
        finally:
            await fakes.stop()
    return results


_REPORT_ONLY = ("--title", "--intro")
_PATHS = ("--json", "--write-docs")


def _shown(argv: list[str]) -> list[str]:
    """The command line as the report shows it: no report wording, and no path outside the checkout."""
    shown: list[str] = []
    words = iter(argv)
    for word in words:
        name, eq, value = word.partition("=")
        if name in _REPORT_ONLY:
            if not eq:
                next(words, None)
        elif name in _PATHS and eq:
            shown.append(f"{name}={_shown_path(value)}")
        elif shown and shown[-1] in _PATHS and not word.startswith("-"):
            shown.append(_shown_path(word))
        else:
            shown.append(word)
    return shown


def _shown_path(raw: str) -> str:
    path = _caller_path(Path(raw)).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return f"<somewhere>/{path.name}"


def _bad_bot_runs(results: dict[str, Any], kinds: Mapping[str, str]) -> list[str]:
    bad = []
    for scenario in ("threads", "backlog", "limits"):
        for run in results[scenario]:
            if kinds.get(run["target"]) != "bot":
                continue
            for phase in ("paced", "burst", "drain"):
                summary = run.get(phase)
                if summary is not None and not summary["clean"]:
                    bad.append(
                        f"{scenario} {run['target']} threads={run['threads']} {phase}: {summary['problems']}"
                    )
    return bad


def _options(args: argparse.Namespace) -> Options:
    options = Options(
        order_window=args.order_window,
        concurrency=args.concurrency,
        rate=args.rate,
        rate_seconds=args.rate_seconds,
        messages=args.messages,
        provider_latency_ms=args.provider_latency,
        slack_limits=args.slack_limits,
        database_url=args.database_url if args.backend == "postgres" else None,
        backlog_max_wait=args.backlog_max_wait,
        backlog_hold=args.backlog_hold,
        backlog_intake_timeout=args.backlog_intake_timeout,
    )
    if args.quick:
        options = replace(options, settle=0.3, stall=10.0, phase_timeout=60.0, backlog_timeout=60.0)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report_from:
        results = json.loads(_caller_path(args.report_from).read_text())
        print(report.text_tables(results))
        if args.write_docs:
            write_docs(results, _caller_path(args.write_docs), title=args.title, intro=args.intro)
        return 0
    if not procstat.available():
        print("scripts/bench: needs Linux /proc", file=sys.stderr)
        return 2
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.scenarios = [s for s in args.scenarios if s != "limits"]
        args.targets = ["bot"]
    if args.backend == "postgres" and not args.database_url:
        print("scripts/bench: --backend postgres needs --database-url", file=sys.stderr)
        return 2
    options = _options(args)
    targets = bot_targets(args.bot_cmd) if "bot" in args.targets else []
    if "naive" in args.targets:
        targets.append(Target("naive", "naive", [sys.executable, "-m", "bench.naive"]))
    if "ceiling" in args.targets:
        targets.append(Target("ceiling", "ceiling"))
    kinds = {t.label: t.kind for t in targets}
    started = time.monotonic()
    measured = {
        "commit": _commit(ROOT),
        "bots": {t.label: _describe_bot(t) for t in targets if t.kind == "bot"},
    }
    try:
        results = asyncio.run(run_all(args, options, targets))
    except TargetUnavailable as exc:
        text = str(exc)
        if args.backend == "postgres" and "postgres" in text.lower():
            print(
                f"scripts/bench: the postgres backend is not available yet in this bot: {text}",
                file=sys.stderr,
            )
        else:
            print(f"scripts/bench: {text}", file=sys.stderr)
        return 2
    shown_argv = _shown(list(sys.argv[1:] if argv is None else argv))
    results["meta"] = {
        "command": " ".join(["scripts/bench", *(shlex.quote(a) for a in shown_argv)]),
        **measured,
        "targets": [t.label for t in targets],
        "kinds": kinds,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "runtime_s": time.monotonic() - started,
        "options": {
            **vars(options),
            "threads": args.threads,
            "reps": args.reps,
            "backend": args.backend,
            "quick": args.quick,
        },
    }
    results["meta"]["options"].pop("database_url", None)  # may hold a password
    bad = [*results["errors"], *_bad_bot_runs(results, kinds)]
    if args.quick:
        total = sum(
            (run.get(p) or {}).get("tally", {}).get("delivered", 0)
            for s in ("threads", "backlog")
            for run in results[s]
            for p in ("paced", "burst", "drain")
        )
        verdict = "FAILED: " + "; ".join(bad) if bad else "ok"
        took = results["meta"]["runtime_s"]
        print(f"scripts/bench --quick: {total} messages delivered, {verdict} ({took:.1f} s)")
    else:
        print(report.text_tables(results))
        print(f"runtime {results['meta']['runtime_s']:.0f} s")
    if args.json:
        path = _caller_path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    if args.write_docs:
        write_docs(results, _caller_path(args.write_docs), title=args.title, intro=args.intro)
    return 1 if bad else 0


def write_docs(results: dict[str, Any], path: Path, *, title: str, intro: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    charts: dict[str, str] = {}
    stem = path.stem
    for name, svg in (
        ("Relays per second by threads", report.throughput_svg(results)),
        ("Latency distribution", report.latency_svg(results)),
    ):
        if svg is None:
            continue
        file = path.with_name(f"{stem}-{'throughput' if 'Relays' in name else 'latency'}.svg")
        file.write_text(svg)
        charts[name] = file.name
    path.write_text(report.markdown(results, charts=charts, title=title, intro=intro))
    print(f"wrote {path} and {', '.join(charts.values()) or 'no charts'}", file=sys.stderr)
