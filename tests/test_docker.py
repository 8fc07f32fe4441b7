"""docker/: what can be checked without a Docker engine.

The compose file is parsed and held to the rules of the production set: every service waits on health, data lives
in named volumes, every service is given the settings it needs (deployments/commands.py SERVICE_ENV) and no
password but its own (SERVICE_SECRETS), and each service runs the command line of deployments/commands.py, the one
the integration tests run for real (tests/servers.py). The image installs the project with the Makefile's
`install` target, the same one CI runs.
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
INIT_SCRIPT_PATH = DOCKER / "postgres" / "init-databases.sh"
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
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} (unset or empty fails), $$ for a literal $."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, operand = match.group(1), match.group(2), match.group(3)
        if operator == ":?":
            assert env.get(name), f"compose would stop: {operand}"
        return env.get(name) or (operand if operator == ":-" else "")

    return re.sub(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


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


@pytest.fixture(scope="module")
def environments(services: dict[str, dict[str, Any]], env_example: dict[str, str]) -> dict[str, dict[str, str]]:
    """{service: the environment compose gives it}, with docker/.env.example as docker/.env."""
    found = {}
    for name, service in services.items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: write `environment:` as a mapping"
        found[name] = {key: _interpolate(str(value), env_example) for key, value in environment.items()}
    return found


# ------------------------------------------------------------------------------------------ compose structure


def test_the_production_set(services: dict[str, dict[str, Any]]) -> None:
    production = {name for name, service in services.items() if "profiles" not in service}
    assert production == {"postgres", "prefect-server", "mlflow", "worker", "deploy"}
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


def test_each_service_is_given_what_it_needs_from_docker_env(
    compose: dict[str, Any],
    services: dict[str, dict[str, Any]],
    env_example: dict[str, str],
    environments: dict[str, dict[str, str]],
) -> None:
    image_env = _dockerfile_env(DOCKERFILE_PATH)
    assert set(commands.SERVICE_ENV) == set(services) == set(commands.SERVICE_SECRETS)
    for name, service in services.items():
        # an env_file hands a service every line of docker/.env, every password included
        assert "env_file" not in service, f"{name}: give it its own `environment:` instead of an env_file"
        available = set(environments[name]) | (set(image_env) if name in APP_SERVICES else set())
        missing = set(commands.SERVICE_ENV[name]) - available
        assert not missing, f"{name} needs {sorted(missing)}: add them to its `environment:` in compose.yaml"
        assert all(environments[name].values()), f"{name}: a variable would be empty"
    assert "env_file" not in compose.get("x-seqcast", {})
    text = COMPOSE_PATH.read_text()
    used = set()
    for variable, operator in re.findall(r"(?<!\$)\$\{(\w+)(:-|:\?)?", text):
        used.add(variable)
        assert variable in env_example or operator == ":-", f"compose.yaml uses ${{{variable}}}, not in .env.example"
    assert set(env_example) <= used, f".env.example sets what no service reads: {sorted(set(env_example) - used)}"
    for key, value in env_example.items():
        assert value, f".env.example leaves {key} empty"


def _secrets(env_example: dict[str, str]) -> dict[str, str]:
    """{variable: its value in .env.example} of every password a service may hold."""
    names = {name for names in commands.SERVICE_SECRETS.values() for name in names}
    values = {name: env_example[name] for name in names}
    assert len(set(values.values())) == len(values), ".env.example must give each password its own value"
    return values


def test_no_service_holds_another_services_secret(
    services: dict[str, dict[str, Any]], env_example: dict[str, str], environments: dict[str, dict[str, str]]
) -> None:
    secrets = _secrets(env_example)
    for name, environment in environments.items():
        held = {secret for secret, value in secrets.items() if any(value in v for v in environment.values())}
        assert held == set(commands.SERVICE_SECRETS[name]), (
            f"{name} holds {sorted(held)}; it may hold {sorted(commands.SERVICE_SECRETS[name])} only"
        )
        # nowhere else either: a command line or a health check shows in `ps` and `docker inspect`
        outside = {key: value for key, value in services[name].items() if key != "environment"}
        for secret in secrets:
            assert secret not in yaml.safe_dump(outside), f"{name} uses {secret} outside its environment"


def test_passwords_are_url_safe_and_their_rules_written_down(env_example: dict[str, str]) -> None:
    """compose builds the database URLs from the passwords unencoded: the example's must be URL-safe, the file must
    say so, and the init script must refuse one that is not."""
    from urllib.parse import quote

    for name, value in _secrets(env_example).items():
        assert quote(value, safe="") == value, f"{name}: {value!r} is not URL-safe"
    text = ENV_EXAMPLE_PATH.read_text()
    assert "URL" in text and "- _ . ~" in text and "token_urlsafe" in text
    for name in ("PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "SEQCAST_DB_PASSWORD"):
        assert f"{name}=" in text and "Given to:" in text.split(f"{name}=")[0].rsplit("\n\n", 1)[-1], name
    script = INIT_SCRIPT_PATH.read_text()
    assert "*[!A-Za-z0-9._~-]*" in script and "exit 1" in script


def _init_script() -> tuple[dict[str, str], dict[str, str]]:
    """({role: the variable holding its password}, {database: its owner}) as init-databases.sh creates them."""
    script = INIT_SCRIPT_PATH.read_text()
    variables = dict(re.findall(r'-v (\w+)="\$(\w+)"', script))
    roles = {role: variables[var] for role, var in re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'(\w+)';", script)}
    owners = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", script))
    return roles, owners


def test_database_urls_agree_with_the_init_script(
    env_example: dict[str, str], environments: dict[str, dict[str, str]]
) -> None:
    roles, owners = _init_script()
    urls = {
        ("prefect-server", "PREFECT_API_DATABASE_CONNECTION_URL"): "postgresql+asyncpg",
        ("mlflow", "MLFLOW_BACKEND_STORE_URI"): "postgresql+psycopg",
        ("worker", "SEQCAST_DATABASE_URL"): "postgresql+psycopg",
    }
    databases = set()
    for (service, key), driver in urls.items():
        url = urlsplit(environments[service][key])
        assert url.scheme == driver, f"{key} should use {driver}, not {url.scheme}"
        assert url.hostname == "postgres" and url.port == 5432, key
        database = url.path.lstrip("/")
        assert url.username == owners[database], f"{key} logs in as {url.username}, not {database}'s owner"
        assert url.password == env_example[roles[url.username]], f"{key}: not the password of role {url.username}"
        assert [roles[url.username]] == list(commands.SERVICE_SECRETS[service]), key
        databases.add(database)
    assert databases == set(owners) == {"seqcast", "prefect", "mlflow"}
    assert "REVOKE ALL ON DATABASE prefect, mlflow, seqcast FROM PUBLIC" in INIT_SCRIPT_PATH.read_text()


def test_postgres_is_healthy_only_once_it_accepts_tcp(services: dict[str, dict[str, Any]]) -> None:
    """The image runs its init scripts on a server listening on the Unix socket alone; a bare `pg_isready` reports
    healthy then, before the databases exist. Over TCP it answers only once the real server is up."""
    postgres = services["postgres"]
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "pg_isready" in test[1]
    assert re.search(r"-h (127\.0\.0\.1|localhost)\b", test[1]), test
    mounts = [m for m in postgres["volumes"] if "/docker-entrypoint-initdb.d/" in m]
    assert [m.split(":")[0] for m in mounts] == ["./postgres/init-databases.sh"]


# ------------------------------------------------------------------------------------------ same commands as tests


def test_prefect_server_runs_the_tested_command(
    services: dict[str, dict[str, Any]], environments: dict[str, dict[str, str]]
) -> None:
    service = services["prefect-server"]
    args = _match_command(commands.prefect_server, service["command"])
    assert args["host"] == "0.0.0.0"
    port = args["port"]
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    assert _health_url(service) == f"http://127.0.0.1:{port}{commands.PREFECT_HEALTH_PATH}"
    for client in ("worker", "deploy"):
        assert environments[client]["PREFECT_API_URL"] == f"http://prefect-server:{port}/api", client


def test_mlflow_runs_the_tested_command(
    services: dict[str, dict[str, Any]], environments: dict[str, dict[str, str]]
) -> None:
    service = services["mlflow"]
    args = _match_command(commands.mlflow_server, service["command"])
    assert args["host"] == "0.0.0.0"
    port = args["port"]
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    assert _health_url(service) == f"http://127.0.0.1:{port}{commands.MLFLOW_HEALTH_PATH}"
    assert environments["worker"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    # clients inside the network send Host: mlflow:<port>; MLflow refuses hosts not on its list
    assert f"mlflow:{port}" in args["allowed_hosts"].split(",")
    # the artifacts live in the named volume
    mounts = dict(m.split(":")[1::-1] for m in service["volumes"])
    assert mounts.get(args["artifacts_destination"]) == "mlflow-artifacts"
    assert int(args["workers"]) >= 1


def test_worker_runs_the_tested_command(
    services: dict[str, dict[str, Any]], env_example: dict[str, str], environments: dict[str, dict[str, str]]
) -> None:
    from flows.deploy import WORK_POOL

    service = services["worker"]
    args = _match_command(commands.prefect_worker, service["command"])
    # the pool the worker polls is the pool the deploy job registers to
    assert _interpolate(args["pool"], env_example) == env_example["SEQCAST_WORK_POOL"]
    assert environments["deploy"]["SEQCAST_WORK_POOL"] == env_example["SEQCAST_WORK_POOL"]
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


# ------------------------------------------------------------------------------------------ the Ray profile

RAY_SERVICES = ("ray-head", "ray-worker")
COMPOSE_RAY_PATH = DOCKER / "compose.ray.yaml"


def test_the_ray_profile_is_a_head_and_a_worker_of_the_workers_image(services: dict[str, dict[str, Any]]) -> None:
    optional = {name for name, service in services.items() if "profiles" in service}
    assert optional == set(RAY_SERVICES)
    for name in RAY_SERVICES:
        service = services[name]
        assert service["profiles"] == ["ray"], name
        assert service["build"] == services["worker"]["build"] and service["image"] == services["worker"]["image"]
        assert service["shm_size"], f"{name}: Ray's object store needs /dev/shm"
        assert not service.get("environment") and not commands.SERVICE_SECRETS[name], f"{name} holds settings"
    assert services["ray-worker"]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}


def test_the_ray_nodes_run_the_tested_commands(services: dict[str, dict[str, Any]]) -> None:
    """The command lines tests/test_ray_cluster.py starts for real, in the foreground as a container's must be."""
    head = _match_command(commands.ray_head, services["ray-head"]["command"])
    worker = _match_command(commands.ray_worker, services["ray-worker"]["command"])
    assert services["ray-head"]["command"][-1] == services["ray-worker"]["command"][-1] == "--block"
    assert worker["address"] == f"ray-head:{head['port']}"
    health = services["ray-head"]["healthcheck"]["test"]
    assert health[:3] == ["CMD", "ray", "health-check"] and f"127.0.0.1:{head['port']}" in health
    assert int(_interpolate(worker["num_cpus"], {})) >= 1


def test_the_ray_override_points_the_workers_flow_runs_at_the_head(services: dict[str, dict[str, Any]]) -> None:
    from tasks.runners import RAY_ADDRESS_ENV

    override = yaml.safe_load(COMPOSE_RAY_PATH.read_text())
    assert set(override["services"]) == {"worker"}, "the override only points the worker at the cluster"
    worker = override["services"]["worker"]
    head = _match_command(commands.ray_head, services["ray-head"]["command"])
    assert worker["environment"] == {RAY_ADDRESS_ENV: f"ray-head:{head['port']}"}
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
