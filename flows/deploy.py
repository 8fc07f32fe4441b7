"""Register seqcast's three deployments with a Prefect API, on a process work pool that runs the local code.

- `seqcast-train/nightly`: retrains every night (02:00 by default), one run at a time (later ones wait).
- `seqcast-forecast/nightly`: writes the champion's forecasts after training (03:00 by default).
- `seqcast-backfill/on-demand`: no schedule; started from the dashboard with a date range.

The deployments point at the project folder (a pull step sets the working directory to it), so a worker on
this machine, or in the image built from docker/Dockerfile where the project lives at SEQCAST_PROJECT_DIR,
runs the code as it is: nothing is built or uploaded. deployments/prefect.yaml describes the same set for
`prefect deploy`; tests/test_deploy.py keeps the two equal.

`deploy_command` is what `seqcast deploy` calls; `python -m flows.deploy` does the same (compose's `deploy`
service). Prefect is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import Flow

WORK_POOL = "seqcast"
CRON_TRAIN = "0 2 * * *"
CRON_FORECAST = "0 3 * * *"
TIMEZONE = "UTC"

# Environment variables that override the defaults above (compose's deploy service sets them from docker/.env).
ENV_WORK_POOL = "SEQCAST_WORK_POOL"
ENV_TRAIN_CRON = "SEQCAST_TRAIN_CRON"
ENV_FORECAST_CRON = "SEQCAST_FORECAST_CRON"
ENV_TIMEZONE = "SEQCAST_TIMEZONE"
ENV_PROJECT_DIR = "SEQCAST_PROJECT_DIR"
# Set in every flow run's process: a worker may run flows side by side, and OpenMP threads that spin while they
# wait cut RNN training 3-10x on shared cores (docs/benchmarks.md). It must be set before torch loads.
FLOW_RUN_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


class DeployError(RuntimeError):
    """The deployments cannot be registered as asked (bad option, unreachable API, wrong pool or flow)."""


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, under what name, with which default parameters and which schedule."""

    flow_name: str
    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None  # "train", "forecast" or None (no schedule)
    schedule_parameters: dict[str, Any] = field(default_factory=dict)  # given to the runs the schedule starts
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    @property
    def schedule_slug(self) -> str | None:
        """A stable name for the schedule, so that deploying again updates it instead of adding a second one."""
        return None if self.schedule is None else f"{self.flow_name}-{self.name}"


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        flow_name="seqcast-train",
        name="nightly",
        entrypoint="flows/train.py:train_flow",
        # No `spec`: the flow's default run spec applies (tasks/spec.py), whose window, stride and seasons follow
        # the data's frequency; the dashboard form shows every setting of it with its description.
        parameters={"series": None},
        schedule="train",
        # scheduled runs say so in MLflow (trigger tag); runs started by hand default to "manual"
        schedule_parameters={"trigger": "schedule"},
        concurrency_limit=1,
        tags=("seqcast", "train"),
    ),
    DeploymentSpec(
        flow_name="seqcast-forecast",
        name="nightly",
        entrypoint="flows/forecast.py:forecast_flow",
        parameters={"model_alias": "champion", "model_version": None, "series": None},
        schedule="forecast",
        tags=("seqcast", "forecast"),
    ),
    DeploymentSpec(
        flow_name="seqcast-backfill",
        name="on-demand",
        entrypoint="flows/backfill.py:backfill_flow",
        parameters={"every": None, "model_alias": "champion", "model_version": None, "series": None},
        schedule=None,
        tags=("seqcast", "backfill"),
    ),
)


def default_project_dir() -> Path:
    """SEQCAST_PROJECT_DIR when set, else the checkout this module was imported from."""
    configured = os.environ.get(ENV_PROJECT_DIR)
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(__file__).resolve().parent.parent


def check_schedule(cron: str, timezone: str, option: str) -> None:
    """Refuse a cron string or time zone that Prefect would refuse, naming the option and the fix."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        fields = {str(err["loc"][0]) for err in exc.errors() if err.get("loc")}
        if "timezone" in fields:
            raise DeployError(
                f"`timezone` ({timezone!r}) is not an IANA time zone; use a name such as 'UTC' or 'Europe/London'"
            ) from None
        raise DeployError(
            f"`{option}` ({cron!r}) is not a cron string; use five fields, e.g. '0 2 * * *' for 02:00 every day"
        ) from None


def _check_project(project_dir: Path) -> None:
    files = [spec.entrypoint.split(":")[0] for spec in DEPLOYMENTS]
    missing = [name for name in files if not (project_dir / name).is_file()]
    if missing:
        raise DeployError(
            f"`project_dir` ({str(project_dir)!r}) has no {', '.join(missing)}; point it (or {ENV_PROJECT_DIR}) "
            "at the seqcast checkout that the worker runs"
        )


def _check_api() -> str:
    """The API URL in use, after checking that it answers."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or "(ephemeral local API)"
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise DeployError(
            f"cannot reach the Prefect API at {url}: {error.__class__.__name__}: {error}; "
            "start it (`prefect server start`) or set PREFECT_API_URL"
        )
    return str(url)


def ensure_work_pool(name: str) -> None:
    """Create the process work pool `name` if it does not exist; refuse a pool of another type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            create = WorkPoolCreate(
                name=name,
                type=ProcessWorker.type,
                base_job_template=ProcessWorker.get_default_base_job_template(),
                description="seqcast: flow runs as local processes, in the worker's environment",
            )
            # a worker started with `--type process` may have created it meanwhile
            with suppress(ObjectAlreadyExists):
                client.create_work_pool(create)
            return
    if pool.type != ProcessWorker.type:
        raise DeployError(
            f"work pool {name!r} exists with type {pool.type!r}; seqcast deploys to a 'process' pool. "
            "Choose another `work_pool` name or delete that pool"
        )


def build_deployment(
    spec: DeploymentSpec, project_dir: Path, work_pool: str, cron: str | None, timezone: str
) -> RunnerDeployment:
    """The Prefect deployment for `spec`, with the flow's parameter schema read from its entrypoint.

    The flow module is imported (torch and all), as the worker will import it.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import load_flow_from_entrypoint
    from prefect.runner.storage import LocalStorage
    from prefect.schedules import Cron

    schedules = (
        None
        if cron is None
        else [Cron(cron, timezone=timezone, slug=spec.schedule_slug, parameters=dict(spec.schedule_parameters))]
    )
    concurrency = (
        None
        if spec.concurrency_limit is None
        else ConcurrencyLimitConfig(limit=spec.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    )
    # Prefect falls back to a placeholder flow read from the source when the module fails to import, which would
    # register a deployment that fails at 02:00. Import it for real first, so a broken flow stops the deploy.
    path, function = spec.entrypoint.split(":")
    try:
        flow: Flow[..., Any] = load_flow_from_entrypoint(f"{project_dir / path}:{function}", use_placeholder_flow=False)
    except Exception as exc:
        cause = getattr(exc, "user_exc", None) or exc
        raise DeployError(
            f"cannot load {spec.entrypoint} from {project_dir}: {cause.__class__.__name__}: {cause}"
        ) from exc
    if flow.name != spec.flow_name:
        raise DeployError(
            f"{spec.entrypoint} defines a flow named {flow.name!r}; seqcast expects {spec.flow_name!r} "
            f"(the deployment is addressed as {spec.full_name!r})"
        )
    deployment: RunnerDeployment = RunnerDeployment.from_storage(  # type: ignore[call-arg,assignment]
        storage=LocalStorage(str(project_dir)),
        entrypoint=spec.entrypoint,
        name=spec.name,
        schedules=schedules,
        concurrency_limit=concurrency,
        parameters=dict(spec.parameters),
        tags=list(spec.tags),
        work_pool_name=work_pool,
        job_variables={"env": dict(FLOW_RUN_ENV)},
        enforce_parameter_schema=True,
        _sync=True,
    )
    return deployment


def deploy_all(
    api_url: str | None = None,
    work_pool: str = WORK_POOL,
    cron_train: str = CRON_TRAIN,
    cron_forecast: str = CRON_FORECAST,
    timezone: str = TIMEZONE,
    project_dir: str | Path | None = None,
) -> dict[str, str]:
    """Create the work pool if missing and register (or update) the three deployments; returns {full name: id}.

    `api_url` overrides PREFECT_API_URL for this call. Deploying again updates the deployments in place:
    same names, same schedule slugs, so no schedule is duplicated.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = Path(project_dir).expanduser().resolve() if project_dir is not None else default_project_dir()
    crons = {"train": cron_train, "forecast": cron_forecast}
    check_schedule(cron_train, timezone, "cron_train")
    check_schedule(cron_forecast, timezone, "cron_forecast")
    if not work_pool.strip():
        raise DeployError("`work_pool` is empty; give the name of a process work pool, e.g. 'seqcast'")
    _check_project(project)

    settings = temporary_settings(updates={PREFECT_API_URL: api_url}) if api_url else nullcontext()
    with settings:
        _check_api()
        # Build every deployment before registering anything, so a broken entrypoint leaves the server as it was.
        built = [
            (
                spec,
                build_deployment(spec, project, work_pool, crons[spec.schedule] if spec.schedule else None, timezone),
            )
            for spec in DEPLOYMENTS
        ]
        ensure_work_pool(work_pool)
        return {
            spec.full_name: str(deployment.apply(work_pool_name=work_pool, _sync=True))  # type: ignore[call-arg]
            for spec, deployment in built
        }


def deploy_command(
    work_pool: str | None = None,
    train_cron: str | None = None,
    forecast_cron: str | None = None,
    timezone: str | None = None,
    api_url: str | None = None,
    project_dir: str | Path | None = None,
) -> dict[str, str]:
    """`seqcast deploy`: options left as None come from SEQCAST_WORK_POOL, SEQCAST_TRAIN_CRON,
    SEQCAST_FORECAST_CRON and SEQCAST_TIMEZONE, then from the defaults. Prints what was registered.

    Raises DeployError with a message meant for the user (the CLI prints it and exits non-zero).
    """
    work_pool = work_pool or os.environ.get(ENV_WORK_POOL) or WORK_POOL
    train_cron = train_cron or os.environ.get(ENV_TRAIN_CRON) or CRON_TRAIN
    forecast_cron = forecast_cron or os.environ.get(ENV_FORECAST_CRON) or CRON_FORECAST
    timezone = timezone or os.environ.get(ENV_TIMEZONE) or TIMEZONE
    ids = deploy_all(
        api_url=api_url,
        work_pool=work_pool,
        cron_train=train_cron,
        cron_forecast=forecast_cron,
        timezone=timezone,
        project_dir=project_dir,
    )
    when = {"train": f"{train_cron} ({timezone})", "forecast": f"{forecast_cron} ({timezone})"}
    for spec in DEPLOYMENTS:
        schedule = when[spec.schedule] if spec.schedule else "no schedule (run it from the dashboard)"
        print(f"{spec.full_name:<28} {schedule:<40} pool {work_pool}  id {ids[spec.full_name]}")
    print(f"Start a worker to run them: prefect worker start --pool {work_pool}")
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.deploy [--work-pool ...]`, what compose's `deploy` service runs."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--work-pool", help=f"process work pool (${ENV_WORK_POOL}, default {WORK_POOL!r})")
    parser.add_argument("--train-cron", help=f"training schedule (${ENV_TRAIN_CRON}, default {CRON_TRAIN!r})")
    parser.add_argument(
        "--forecast-cron", help=f"forecasting schedule (${ENV_FORECAST_CRON}, default {CRON_FORECAST!r})"
    )
    parser.add_argument("--timezone", help=f"IANA time zone of both schedules (${ENV_TIMEZONE}, default {TIMEZONE!r})")
    parser.add_argument("--api-url", help="Prefect API URL (default: PREFECT_API_URL)")
    parser.add_argument("--project-dir", help=f"the seqcast checkout the worker runs (${ENV_PROJECT_DIR})")
    args = parser.parse_args(argv)
    try:
        deploy_command(
            work_pool=args.work_pool,
            train_cron=args.train_cron,
            forecast_cron=args.forecast_cron,
            timezone=args.timezone,
            api_url=args.api_url,
            project_dir=args.project_dir,
        )
    except DeployError as exc:
        print(f"seqcast deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
