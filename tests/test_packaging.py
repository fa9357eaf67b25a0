"""The wheel a platform team would install: built from this tree, installed into a fresh venv.

One module-scoped build and install (a few seconds, pip's cache is reused; build dependencies and
the locked runtime dependencies may come from the package index), then checks of what the wheel
holds and of what the fresh environment sees: the ``agent-relay`` command, the three top-level
packages and nothing else, each owned by the ``agent-relay`` distribution, the version defined once
in ``pyproject.toml``, and the license.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
TOP_LEVEL: Final = {"bot", "handlers", "storage"}
PIP: Final = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path  # the fresh venv's interpreter
    bin: Path


def _run(
    args: list[str | Path], *, timeout: float = 90, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def _project() -> dict[str, object]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        project: dict[str, object] = tomllib.load(fh)["project"]
    return project


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    dist = base / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO_ROOT])
    [wheel] = dist.glob("*.whl")
    env = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env)  # this test's own pip installs into it
    python = env / "bin" / "python"
    _run([*PIP, "--python", python, "install", "-c", REPO_ROOT / "requirements.lock", wheel])
    return Installed(wheel=wheel, python=python, bin=env / "bin")


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_installs_exactly_the_three_packages(installed: Installed) -> None:
    names = _wheel_names(installed.wheel)
    dist_info = f"agent_relay-{_project()['version']}.dist-info"
    with zipfile.ZipFile(installed.wheel) as archive:
        record = archive.read(f"{dist_info}/RECORD").decode()
    recorded = [line.split(",", 1)[0] for line in record.splitlines() if line]
    assert sorted(recorded) == sorted(names)  # RECORD lists every file in the wheel
    tops = {name.split("/", 1)[0] for name in recorded}
    assert tops == {*TOP_LEVEL, dist_info}
    for package in TOP_LEVEL:
        assert f"{package}/__init__.py" in names
    assert not any(name.startswith("tests/") or "/tests/" in name for name in names)


def test_fresh_environment_maps_the_packages_to_agent_relay(installed: Installed) -> None:
    script = (
        "import json, importlib.metadata as m, bot;"
        "owners = m.packages_distributions();"
        "print(json.dumps({"
        "'owners': {p: owners.get(p) for p in ('bot', 'handlers', 'storage')},"
        "'version': m.version('agent-relay'), '__version__': bot.__version__,"
        "'license': m.metadata('agent-relay').get('License-Expression'),"
        "'bot': bot.__file__}))"
    )
    found = json.loads(_run([installed.python, "-I", "-c", script]).stdout)
    assert found["owners"] == {package: ["agent-relay"] for package in TOP_LEVEL}
    assert found["version"] == found["__version__"] == _project()["version"]
    assert found["license"] == _project()["license"] == "MIT"
    assert Path(found["bot"]).is_relative_to(installed.python.parent.parent)  # not this checkout


def test_wheel_carries_the_license(installed: Installed) -> None:
    dist_info = f"agent_relay-{_project()['version']}.dist-info"
    with zipfile.ZipFile(installed.wheel) as archive:
        assert archive.read(f"{dist_info}/licenses/LICENSE") == (REPO_ROOT / "LICENSE").read_bytes()


def test_agent_relay_command_runs(installed: Installed) -> None:
    # From the venv's own folder, so that nothing of this checkout is importable from the cwd.
    result = _run([installed.bin / "agent-relay", "--help"], timeout=30, cwd=installed.bin)
    assert result.stdout.startswith("usage: agent-relay")
    assert re.search(r"^\s+run\s+run the bot$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^\s+manifest\s", result.stdout, re.MULTILINE), result.stdout
