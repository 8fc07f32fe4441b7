"""docker/: what can be checked without a Docker engine.

The compose file is parsed and held to the rules of the production set: every service waits on health, data lives
in named volumes, every setting a service needs is in docker/.env.example, and each service runs the command line
of deployments/commands.py, the one the integration tests run for real (tests/servers.py). The image installs the
project with the Makefile's `install` target, the same one CI runs.
"""

from __future__ import annotations

import inspect
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from servers import ROOT, commands

DOCKER = ROOT / "docker"
COMPOSE_PATH = DOCKER / "compose.yaml"
ENV_EXAMPLE_PATH = DOCKER / ".env.example"
DOCKERFILE_PATH = DOCKER / "Dockerfile"
INIT_SQL_PATH = DOCKER / "postgres" / "init-databases.sql"
APP_SERVICES = ("prefect-server", "mlflow", "deploy", "worker")  # built from docker/Dockerfile


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, $$ for a literal $."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default or "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", one, value).replace("$$", "$")


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in _dockerfile_instructions(path):
        if instruction == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _make_recipe(target: str) -> list[str]:
    """The recipe lines of `target` in the Makefile, as written."""
    recipe: list[str] = []
    inside = False
    for line in (ROOT / "Makefile").read_text().splitlines():
        if re.match(rf"^{re.escape(target)}\s*:", line):
            inside = True
            continue
        if inside:
            if line.startswith("\t"):
                recipe.append(line.strip())
            elif line.strip():
                break
    return recipe


def _match_command(template: Callable[..., list[str]], actual: Any) -> dict[str, str]:
    """Compare `actual` with `template` rendered with a marker per argument; return what fills each marker.

    Every word that is not an argument must be equal, so an added, dropped or changed flag fails.
    """
    markers = {name: f"<{name}>" for name in inspect.signature(template).parameters}
    rendered = template(**markers)
    assert isinstance(actual, list), f"command must be a list (exec form), got {actual!r}"
    assert len(actual) == len(rendered), f"compose runs {actual}\ncommands.py says {rendered}"
    filled: dict[str, str] = {}
    for word, used in zip(rendered, actual, strict=True):
        for name, marker in markers.items():
            if word == marker:
                filled[name] = str(used)
    expected = [filled.get(word[1:-1], word) if word in markers.values() else word for word in rendered]
    assert [str(word) for word in actual] == expected
    return filled


def _health_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    found = re.search(r"https?://[^'\"\s]+", " ".join(test) if isinstance(test, list) else test)
    assert found, f"health check {test!r} polls no URL"
    return found.group(0)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_PATH.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return _read_env_file(ENV_EXAMPLE_PATH)


# ------------------------------------------------------------------------------------------ compose structure


def test_the_production_set(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"postgres", "prefect-server", "mlflow", "worker", "deploy"}
    for name in APP_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        assert services[name]["image"] == services["worker"]["image"], f"{name} runs another image"
    assert services["deploy"]["restart"] == "no", "deploy is a one-shot job"


def test_every_service_has_a_health_check_or_waits_on_a_condition(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition for each service"
        assert "healthcheck" in service or depends, f"{name} has neither a health check nor a depends_on"
        for dependency, spec in depends.items():
            expected = "service_healthy" if "healthcheck" in services[dependency] else "service_completed_successfully"
            assert spec.get("condition") == expected, f"{name} -> {dependency}: condition {spec.get('condition')}"
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_the_worker_starts_after_everything_it_uses(services: dict[str, dict[str, Any]]) -> None:
    assert set(services["worker"]["depends_on"]) == {"postgres", "prefect-server", "mlflow", "deploy"}
    assert set(services["deploy"]["depends_on"]) == {"prefect-server"}
    for name in ("prefect-server", "mlflow"):
        assert set(services[name]["depends_on"]) == {"postgres"}


def test_data_lives_in_named_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for mount in service.get("volumes", []):
            assert isinstance(mount, str), f"{name}: use the short 'source:target[:mode]' form"
            source, _target, *mode = mount.split(":")
            if source.startswith((".", "/")):
                # only read-only configuration files from this folder may be bound in
                assert (DOCKER / source).resolve().is_file(), f"{name}: bind mount {source} is not a file in docker/"
                assert mode == ["ro"], f"{name}: bind mount {source} must be read-only"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared under top-level volumes"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"
    assert "postgres-data" in declared and "mlflow-artifacts" in declared


def test_every_setting_a_service_needs_is_in_the_env_example(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    image_env = _dockerfile_env(DOCKERFILE_PATH)
    assert set(commands.SERVICE_ENV) == set(services)
    for name, service in services.items():
        assert service.get("env_file") == [{"path": ".env", "required": True}], f"{name} must read docker/.env"
        available = set(env_example) | set(service.get("environment") or {})
        if name in APP_SERVICES:
            available |= set(image_env)
        missing = set(commands.SERVICE_ENV[name]) - available
        assert not missing, f"{name} needs {sorted(missing)}: add them to docker/.env.example"
    text = COMPOSE_PATH.read_text()
    for variable, default in re.findall(r"\$\{(\w+)(:-[^}]*)?\}", text):
        assert variable in env_example or default, f"compose.yaml uses ${{{variable}}}, not in .env.example"
    for key, value in env_example.items():
        assert value, f".env.example leaves {key} empty"


def test_database_urls_agree_with_the_init_script(env_example: dict[str, str]) -> None:
    created = set(re.findall(r"CREATE DATABASE (\w+);", INIT_SQL_PATH.read_text()))
    drivers = {
        "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg",
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg",
        "SEQCAST_DATABASE_URL": "postgresql+psycopg",
    }
    databases = set()
    for key, driver in drivers.items():
        url = urlsplit(env_example[key])
        assert url.scheme == driver, f"{key} should use {driver}, not {url.scheme}"
        assert url.hostname == "postgres" and url.port == 5432, key
        assert url.username == env_example["POSTGRES_USER"], f"{key} logs in as another user"
        assert url.password == env_example["POSTGRES_PASSWORD"], f"{key} has another password than POSTGRES_PASSWORD"
        databases.add(url.path.lstrip("/"))
    assert databases == created == {"seqcast", "prefect", "mlflow"}


# ------------------------------------------------------------------------------------------ same commands as tests


def test_prefect_server_runs_the_tested_command(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    service = services["prefect-server"]
    args = _match_command(commands.prefect_server, service["command"])
    assert args["host"] == "0.0.0.0"
    port = args["port"]
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    assert _health_url(service) == f"http://127.0.0.1:{port}{commands.PREFECT_HEALTH_PATH}"
    assert env_example["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"


def test_mlflow_runs_the_tested_command(services: dict[str, dict[str, Any]], env_example: dict[str, str]) -> None:
    service = services["mlflow"]
    args = _match_command(commands.mlflow_server, service["command"])
    assert args["host"] == "0.0.0.0"
    port = args["port"]
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    assert _health_url(service) == f"http://127.0.0.1:{port}{commands.MLFLOW_HEALTH_PATH}"
    assert env_example["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    # clients inside the network send Host: mlflow:<port>; MLflow refuses hosts not on its list
    assert f"mlflow:{port}" in args["allowed_hosts"].split(",")
    # the artifacts live in the named volume
    mounts = dict(m.split(":")[1::-1] for m in service["volumes"])
    assert mounts.get(args["artifacts_destination"]) == "mlflow-artifacts"
    assert int(args["workers"]) >= 1


def test_worker_runs_the_tested_command(services: dict[str, dict[str, Any]], env_example: dict[str, str]) -> None:
    from flows.deploy import WORK_POOL

    service = services["worker"]
    args = _match_command(commands.prefect_worker, service["command"])
    # the pool the worker polls is the pool the deploy job registers to
    assert _interpolate(args["pool"], env_example) == env_example["SEQCAST_WORK_POOL"]
    assert _interpolate(args["pool"], {}) == WORK_POOL
    assert _health_url(service) == f"http://127.0.0.1:8080{commands.WORKER_HEALTH_PATH}"
    assert "seqcast-home:/var/lib/seqcast" in service["volumes"]
    assert _dockerfile_env(DOCKERFILE_PATH)["SEQCAST_HOME"] == "/var/lib/seqcast"


def test_deploy_job_runs_the_deploy_module(services: dict[str, dict[str, Any]]) -> None:
    _match_command(commands.deploy, services["deploy"]["command"])
    assert commands.deploy()[-1] == "flows.deploy" and (ROOT / "flows" / "deploy.py").is_file()


# ------------------------------------------------------------------------------------------ the image


def test_image_installs_the_project_the_way_ci_does() -> None:
    instructions = _dockerfile_instructions(DOCKERFILE_PATH)
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    install_runs = [args for args in runs if "make install" in args]
    assert install_runs, "the Dockerfile must install with `make install`, the target CI uses"
    assert not any("pip install" in args for args in runs), "pip lines in the Dockerfile would drift from the Makefile"
    # the last install runs on the complete project
    copies = [i for i, (instruction, _) in enumerate(instructions) if instruction == "COPY"]
    last_install = max(i for i, (instruction, args) in enumerate(instructions) if "make install" in args)
    assert max(copies) < last_install, "code is copied after the last `make install`"
    copied = " ".join(args for instruction, args in instructions if instruction == "COPY")
    for needed in ("pyproject.toml", "Makefile", "flows", "tasks", "models"):
        assert needed in copied, f"the image needs {needed}"

    # what `make install` does: the CPU torch wheel first, then the project
    recipe = _make_recipe("install")
    assert len(recipe) == 2, recipe
    assert '"$(TORCH_CPU)"' in recipe[0] and "download.pytorch.org/whl/cpu" in recipe[0]
    assert recipe[1].endswith("pip install --quiet -e .")
    # the pinned torch resolves to the CPU wheel in the image (ARG: build time only, not in the runtime env)
    args = [a for instruction, a in instructions if instruction == "ARG"]
    assert "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in args
    assert "PIP_EXTRA_INDEX_URL" not in _dockerfile_env(DOCKERFILE_PATH)
    # and CI reaches it: .ci/run -> make test -> dev -> install
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^test:.*\bdev\b", (ROOT / "Makefile").read_text(), re.M)
    assert re.search(r"^dev:.*\binstall\b", (ROOT / "Makefile").read_text(), re.M)


def test_image_layout_matches_the_deployments() -> None:
    from flows.deploy import ENV_PROJECT_DIR

    env = _dockerfile_env(DOCKERFILE_PATH)
    workdir = [args for instruction, args in _dockerfile_instructions(DOCKERFILE_PATH) if instruction == "WORKDIR"]
    assert env[ENV_PROJECT_DIR] == workdir[-1], "deployments point flow runs at SEQCAST_PROJECT_DIR"
    # `make install` builds $(VENV) = .venv inside the project; PATH must reach its scripts (prefect, mlflow)
    assert env["VIRTUAL_ENV"] == f"{workdir[-1]}/.venv"
    assert env["PATH"].startswith(f"{workdir[-1]}/.venv/bin:")


def test_build_context_keeps_what_the_image_copies() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for instruction, args in _dockerfile_instructions(DOCKERFILE_PATH):
        if instruction == "COPY":
            sources = [word for word in shlex.split(args) if not word.startswith("--")][:-1]
            for source in sources:
                assert source in kept, f"COPY {source}: excluded from the build context"
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert "**" in ignore, "the context starts empty (no .venv, .git or stores sent to the daemon)"
