"""The repository itself: no merge left half-done in any tracked text file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<{7}|>{7}) ", re.MULTILINE)


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return [ROOT / name for name in out.split("\0") if name]


def test_no_tracked_file_carries_merge_markers() -> None:
    files = tracked_files()
    assert len(files) > 50, "git ls-files found too little: is this a checkout?"
    marked = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        if MARKER.search(text):
            marked.append(str(path.relative_to(ROOT)))
    assert marked == []


def test_the_marker_pattern_finds_a_conflict() -> None:
    assert MARKER.search("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> other\n")
