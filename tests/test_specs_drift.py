"""Drift test: the provider specs kept in ``tests/specs/`` are the upstream files, byte for byte.

Upstream is ``../shared/specs`` beside the repository root. If it exists, every file there must have
an identical copy in ``tests/specs/`` and every file in ``tests/specs/`` must exist there; any
difference fails with a list of what differs. If it does not exist (a clone with nothing beside it),
the comparison is skipped with that reason. To take a new upstream version, copy the files over and
commit them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Final

import pytest

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
UPSTREAM: Final = REPO_ROOT.parent / "shared" / "specs"
IN_REPO: Final = REPO_ROOT / "tests" / "specs"

MAX_DIFF_LINES: Final = 20


def _files(directory: Path) -> dict[str, Path]:
    """Every regular file under ``directory``, by its path relative to it (``/``-separated)."""
    if not directory.is_dir():
        return {}
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}


def _describe(name: str, upstream: bytes, copy: bytes) -> str:
    head = f"{name}: bytes differ (upstream {len(upstream)} bytes, in-repo copy {len(copy)} bytes)"
    try:
        old, new = upstream.decode("utf-8"), copy.decode("utf-8")
    except UnicodeDecodeError:
        return head
    diff = list(
        difflib.unified_diff(
            old.splitlines(),
            new.splitlines(),
            fromfile=f"upstream/{name}",
            tofile=f"tests/specs/{name}",
            n=1,
            lineterm="",
        )
    )
    if not diff:
        return f"{head}; the lines are equal, so line endings or the final newline differ"
    more = [f"... {len(diff) - MAX_DIFF_LINES} more diff lines"] if len(diff) > MAX_DIFF_LINES else []
    return "\n".join([f"{head}:", *diff[:MAX_DIFF_LINES], *more])


def drift(upstream: Path, copy: Path) -> list[str]:
    """Every difference between the upstream directory and the in-repo copy, in words, by file name."""
    theirs, ours = _files(upstream), _files(copy)
    found: dict[str, str] = {}
    for name in theirs.keys() - ours.keys():
        found[name] = f"{name}: upstream has it, the in-repo copy does not"
    for name in ours.keys() - theirs.keys():
        found[name] = f"{name}: the in-repo copy has it, upstream does not"
    for name in theirs.keys() & ours.keys():
        old, new = theirs[name].read_bytes(), ours[name].read_bytes()
        if old != new:
            found[name] = _describe(name, old, new)
    missing = [] if copy.is_dir() else [f"the in-repo copy {copy} does not exist"]
    return missing + [found[name] for name in sorted(found)]


def test_in_repo_specs_match_upstream() -> None:
    if not UPSTREAM.is_dir():
        pytest.skip(f"no upstream specs to compare with: {UPSTREAM} does not exist")
    problems = drift(UPSTREAM, IN_REPO)
    if problems:
        pytest.fail(
            f"tests/specs/ has drifted from {UPSTREAM} ({len(problems)} difference(s)); copy the upstream"
            " files into tests/specs/ and commit them:\n" + "\n".join(f"- {p}" for p in problems),
            pytrace=False,
        )


def test_drift_reports_every_kind_of_difference(tmp_path: Path) -> None:
    upstream, copy = tmp_path / "upstream", tmp_path / "copy"
    for directory in (upstream, copy):
        directory.mkdir()
        (directory / "same.yaml").write_bytes(b"openapi: 3.1.0\n")
    assert drift(upstream, copy) == []

    (upstream / "only-upstream.yaml").write_bytes(b"a: 1\n")
    (copy / "only-copy.yaml").write_bytes(b"b: 2\n")
    (upstream / "changed.yaml").write_bytes(b"title: one\nversion: 1\n")
    (copy / "changed.yaml").write_bytes(b"title: one\nversion: 2\n")
    (upstream / "endings.yaml").write_bytes(b"x: 1\n")
    (copy / "endings.yaml").write_bytes(b"x: 1\r\n")
    problems = drift(upstream, copy)
    assert len(problems) == 4, problems
    changed, endings, only_copy, only_upstream = problems  # by file name
    assert changed.startswith("changed.yaml: bytes differ (upstream 22 bytes, in-repo copy 22 bytes):")
    assert "-version: 1" in changed
    assert "+version: 2" in changed
    assert endings.startswith("endings.yaml: bytes differ")
    assert "line endings" in endings
    assert only_copy == "only-copy.yaml: the in-repo copy has it, upstream does not"
    assert only_upstream == "only-upstream.yaml: upstream has it, the in-repo copy does not"

    gone = tmp_path / "gone"
    assert drift(upstream, gone) == [
        f"the in-repo copy {gone} does not exist",
        "changed.yaml: upstream has it, the in-repo copy does not",
        "endings.yaml: upstream has it, the in-repo copy does not",
        "only-upstream.yaml: upstream has it, the in-repo copy does not",
        "same.yaml: upstream has it, the in-repo copy does not",
    ]
