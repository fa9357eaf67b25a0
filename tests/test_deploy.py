"""The deployment recipes (``Dockerfile``, ``deploy/compose.yaml``, ``deploy/kubernetes/*.yaml``) name
only what the code really has: settings, commands, ports, probe paths. There is no Docker engine or
cluster here, so the files are parsed, the image's own commands are run, and the probes are sent to
the running app."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import _parser
from bot.health import PATHS
from bot.settings import Settings
from storage import open_store
from tests.harness import Harness

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {name.upper() for name in Settings.model_fields}
NOT_SETTINGS = {"PATH", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_CACHE_DIR"}


def valid_settings(environment: dict[str, str]) -> Settings:
    """``environment`` read as Settings (raises for a value a setting refuses)."""
    values: dict[str, Any] = {name.lower(): value for name, value in environment.items() if name in SETTINGS}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# -- the Dockerfile --------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
    return lines


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            found.append([])
        found[-1].append((word, rest))
    return found


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def healthcheck_command() -> list[str]:
    [(_, rest)] = [(w, r) for w, r in stages()[-1] if w == "HEALTHCHECK"]
    command: list[str] = json.loads(rest[rest.index("CMD") + 3 :].strip())
    return command


def test_the_image_is_built_in_two_stages_with_the_locked_dependencies_first() -> None:
    build, final = stages()
    assert build[0][1].endswith(" AS build")
    words = [f"{w} {r}" for w, r in build]
    lock = next(i for i, w in enumerate(words) if w.startswith("COPY requirements.lock"))
    install = next(i for i, w in enumerate(words) if w.startswith("RUN") and "-c requirements.lock" in w)
    code = next(i for i, w in enumerate(words) if w.startswith("COPY bot "))
    assert lock < install < code  # a code change does not reinstall the dependencies
    assert any(w.startswith("COPY") and "LICENSE" in w.split() for w in words[: code + 1])
    assert any(w == "COPY --from=build /venv /venv" for w in (f"{a} {b}" for a, b in final))


def test_the_dependency_layer_installs_the_runtime_dependencies_and_postgres(tmp_path: Path) -> None:
    [(_, rest)] = [(w, r) for w, r in stages()[0] if w == "RUN" and "tomllib" in r]
    program = shlex.split(rest.split(">", 1)[0])
    assert program[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    out = subprocess.run(
        [sys.executable, "-c", program[2]], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    names = {re.split(r"[<>=\[ ]", line, maxsplit=1)[0].lower() for line in out.splitlines() if line}
    assert {"slack-bolt", "prometheus-client", "asyncpg"} <= names


def test_the_image_runs_as_a_user_in_exec_form_with_real_settings() -> None:
    final = stages()[-1]
    [user] = [r for w, r in final if w == "USER"]
    assert user not in ("root", "0")
    [cmd] = [r for w, r in final if w == "CMD"]
    command = json.loads(cmd)
    assert command[0] == "agent-relay"
    _parser().parse_args(command[1:])  # a real command line
    env = env_of(final)
    assert set(env) <= SETTINGS | NOT_SETTINGS, set(env) - SETTINGS - NOT_SETTINGS
    assert set(env) & SETTINGS == {"DATABASE_URL", "PORT"}
    valid_settings(env)
    [exposed] = [r for w, r in final if w == "EXPOSE"]
    assert exposed == env["PORT"] == str(Settings.model_fields["port"].default)
    [volume] = [r for w, r in final if w == "VOLUME"]
    assert env["DATABASE_URL"].removeprefix("sqlite:///").startswith(json.loads(volume)[0])


async def run_healthcheck(env: dict[str, str]) -> int:
    """The image's HEALTHCHECK command, run by this Python against the app on loopback."""
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    clean = {k: v for k, v in os.environ.items() if k not in ("PORT", "METRICS_PORT")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", command[2], env={**clean, **env}, stderr=asyncio.subprocess.DEVNULL
    )
    return await process.wait()


async def test_the_healthcheck_calls_livez_on_the_port_in_use(relay: Harness) -> None:
    port = str(relay.runtime.port)
    assert "/livez" in healthcheck_command()[2]
    assert await run_healthcheck({"PORT": port}) == 0
    assert await run_healthcheck({"METRICS_PORT": port, "PORT": "9"}) == 0  # METRICS_PORT first
    assert await run_healthcheck({"PORT": "9"}) != 0  # nothing listens there

    heartbeat = relay.runtime.heartbeat
    assert heartbeat is not None
    await heartbeat.stop()
    heartbeat.beat_at -= 600
    assert await run_healthcheck({"PORT": port}) != 0  # 503: the loop looks stuck
    heartbeat.start()


# -- Docker Compose --------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return document


def substituted(value: str) -> str:
    """``${NAME:?message}`` and ``${NAME}`` replaced by a sample value, as Compose would."""
    return re.sub(r"\$\{[A-Z_]+(?::\?[^}]*)?\}", "sample", value)


def test_compose_runs_two_socket_mode_replicas_on_postgres_after_migrating() -> None:
    services = compose()["services"]
    relay, migrate, postgres = services["relay"], services["migrate"], services["postgres"]

    assert relay["deploy"]["replicas"] == 2
    run = _parser().parse_args(relay["command"][1:])
    assert (relay["command"][0], run.command, run.mode) == ("agent-relay", "run", "socket")
    assert migrate["command"] == ["agent-relay", "migrate"]
    assert relay["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "healthcheck" in postgres
    assert relay["image"] == migrate["image"]
    assert migrate["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / "deploy" / migrate["build"]["context"] / "Dockerfile").is_file()
    assert relay["env_file"] == ["../.env"]
    for service in (relay, migrate):
        environment = {k: substituted(str(v)) for k, v in service["environment"].items()}
        assert set(environment) <= SETTINGS, set(environment) - SETTINGS
        valid_settings(environment)
        url = environment["DATABASE_URL"]
        assert url.startswith("postgresql://")
        assert type(open_store(url)).__name__ == "PostgresStore"
    # The image's HEALTHCHECK needs a port in Socket Mode: METRICS_PORT.
    assert int(relay["environment"]["METRICS_PORT"]) > 0
    assert "METRICS_PORT" in healthcheck_command()[2]


# -- Kubernetes ------------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[document["kind"]] = document
    return found


def probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        kind: container[kind]
        for kind in ("readinessProbe", "livenessProbe", "startupProbe")
        if kind in container
    }


def test_the_kubernetes_deployment_has_two_replicas_probes_and_a_secret() -> None:
    found = manifests()
    deployment, secret, service = found["Deployment"], found["Secret"], found["Service"]
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    [container] = spec["containers"]
    [init] = spec["initContainers"]

    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert init["args"] == ["agent-relay", "migrate"]
    run = _parser().parse_args(container["args"][1:])
    assert (container["args"][0], run.command, run.mode) == ("agent-relay", "run", "http")

    # Secrets come from the Secret; its keys and the plain values are real settings.
    for c in (container, init):
        assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert set(secret["stringData"]) <= SETTINGS
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "DATABASE_URL"} <= set(secret["stringData"])
    assert secret["stringData"]["DATABASE_URL"].startswith("postgresql://")
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    valid_settings(env)

    # Ports: the container port is PORT and the --port the command passes; probes use it by name.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(env["PORT"])} == {"http": run.port}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    annotations = pod["metadata"]["annotations"]
    assert (int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"]) == (
        ports["http"],
        "/metrics",
    )
    checks = probes(container)
    assert checks["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert checks["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert spec["terminationGracePeriodSeconds"] > float(env["SHUTDOWN_DEADLINE"])
    assert spec["securityContext"]["runAsUser"] == int(next(r for w, r in stages()[-1] if w == "USER"))


async def test_every_probe_path_of_the_recipes_answers_on_the_running_app(relay: Harness) -> None:
    paths = {
        probe["httpGet"]["path"]
        for document in manifests().values()
        if document["kind"] == "Deployment"
        for container in document["spec"]["template"]["spec"]["containers"]
        for probe in probes(container).values()
    }
    paths |= set(re.findall(r"/[a-z]+z\b", healthcheck_command()[2]))
    paths.add(manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    assert paths == {"/readyz", "/livez", "/metrics"}
    assert paths <= set(PATHS)
    for path in sorted(paths):
        response = await relay.sender.client.get(f"{relay.sender.url}{path}")
        assert response.status_code == 200, path


@pytest.mark.parametrize("path", ["docs/deploy.md", "README.md"])
def test_the_docs_name_the_recipes(path: str) -> None:
    text = (ROOT / path).read_text()
    for recipe in ("deploy/compose.yaml", "deploy/kubernetes/"):
        assert recipe in text, (path, recipe)
