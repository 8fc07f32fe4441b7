"""The command lines of the production services, written once.

docker/compose.yaml runs these commands in containers; tests/servers.py runs the very same lines as
subprocesses against the local PostgreSQL; tests/test_docker.py fails when compose and this module drift
apart. Only addresses and sizes are arguments. Secrets (database URLs with passwords) never go on a command
line, where `ps` would show them: each program reads its URL from its own environment variable, and
`SERVICE_ENV` lists what every service must be given. Each service is given its own variables only (compose's
`environment:` per service, no shared env file), and `SERVICE_SECRETS` lists the passwords each may hold: one
database role each, so no service holds another's.

This module imports nothing beyond the standard library, so reading it costs nothing.
"""

from __future__ import annotations

# Health endpoints, polled by compose's health checks and by the test fixtures alike.
PREFECT_HEALTH_PATH = "/api/health"
MLFLOW_HEALTH_PATH = "/health"
WORKER_HEALTH_PATH = "/health"

# Environment each service needs (names only; values come from docker/.env or from the fixtures).
SERVICE_ENV: dict[str, tuple[str, ...]] = {
    # The role passwords are read once, on the first start, by docker/postgres/init-databases.sh.
    "postgres": (
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "PREFECT_DB_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "SEQCAST_DB_PASSWORD",
    ),
    # Prefect reads its database from PREFECT_API_DATABASE_CONNECTION_URL (postgresql+asyncpg://...).
    "prefect-server": ("PREFECT_API_DATABASE_CONNECTION_URL",),
    # `mlflow server --backend-store-uri` falls back to MLFLOW_BACKEND_STORE_URI (postgresql+psycopg://...).
    "mlflow": ("MLFLOW_BACKEND_STORE_URI",),
    # The worker hands its environment to every flow run it starts: the flows' settings live here.
    "worker": ("PREFECT_API_URL", "SEQCAST_DATABASE_URL", "MLFLOW_TRACKING_URI", "SEQCAST_HOME", "SEQCAST_PROJECT_DIR"),
    "deploy": (
        "PREFECT_API_URL",
        "SEQCAST_WORK_POOL",
        "SEQCAST_TRAIN_CRON",
        "SEQCAST_FORECAST_CRON",
        "SEQCAST_MONITOR_CRON",
        "SEQCAST_RETRAIN_COOLDOWN_HOURS",
        "SEQCAST_TIMEZONE",
        "SEQCAST_PROJECT_DIR",
    ),
    # The optional Ray cluster (compose profile `ray`): its tasks get every address they need with their arguments
    # and Prefect settings, so its nodes need no settings and hold no password.
    "ray-head": (),
    "ray-worker": (),
}

# The passwords (docker/.env) each service may hold, alone or inside a database URL: the role it logs in as. The
# PostgreSQL server holds every one (it creates the roles); no other service holds another service's.
SERVICE_SECRETS: dict[str, tuple[str, ...]] = {
    "postgres": ("POSTGRES_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "SEQCAST_DB_PASSWORD"),
    "prefect-server": ("PREFECT_DB_PASSWORD",),
    "mlflow": ("MLFLOW_DB_PASSWORD",),
    "worker": ("SEQCAST_DB_PASSWORD",),
    "deploy": (),
    "ray-head": (),
    "ray-worker": (),
}


def prefect_server(host: str, port: int) -> list[str]:
    """The Prefect API and UI, with its services (scheduler, late runs, ...); database from the environment."""
    return ["prefect", "server", "start", "--host", host, "--port", str(port)]


def mlflow_server(host: str, port: int, artifacts_destination: str, allowed_hosts: str, workers: int) -> list[str]:
    """The MLflow tracking server and registry, proxying artifact uploads and downloads to `artifacts_destination`.

    `allowed_hosts` is the Host-header allow list of MLflow's DNS-rebinding guard: it must name every address
    clients use (in compose, `mlflow:5000`), since setting it replaces MLflow's localhost-only default.
    """
    return [
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--allowed-hosts",
        allowed_hosts,
    ]


def prefect_worker(pool: str, name: str) -> list[str]:
    """A process worker for `pool`; its health server answers on PREFECT_WORKER_WEBSERVER_PORT (default 8080)."""
    return [
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name,
        "--with-healthcheck",
        "--install-policy",
        "never",
    ]


def deploy() -> list[str]:
    """Register the four deployments and the retraining automation (options from SEQCAST_WORK_POOL,
    SEQCAST_*_CRON, SEQCAST_RETRAIN_COOLDOWN_HOURS, SEQCAST_TIMEZONE)."""
    return ["python", "-m", "flows.deploy"]


def ray_head(port: int, num_cpus: int, block: bool = True) -> list[str]:
    """The head of a Ray cluster (the `ray` compose profile): the driver (a flow run) connects to `<head>:port`.
    `block`: stay in the foreground, as a container's command must; tests start it in the background."""
    command = ["ray", "start", "--head", "--port", str(port), "--num-cpus", str(num_cpus)]
    command += ["--include-dashboard", "false", "--disable-usage-stats"]
    return [*command, "--block"] if block else command


def ray_worker(address: str, num_cpus: int, block: bool = True) -> list[str]:
    """A Ray worker node joining the head at `address` (host:port); its CPUs run the candidates' tasks."""
    command = ["ray", "start", "--address", address, "--num-cpus", str(num_cpus), "--disable-usage-stats"]
    return [*command, "--block"] if block else command
