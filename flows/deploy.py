"""Register seqcast's four deployments and its retraining automation with a Prefect API, on a process work pool that
runs the local code.

- `seqcast-train/nightly-retrain`: retrains every night (02:00 by default), one run at a time (later ones wait); with
  the best run spec `seqcast tune` saved for the registered model as its `spec`, when there is one
  (`with_tuned_spec`; `seqcast tune` also updates this parameter of a deployed one, `update_nightly_spec`).
- `seqcast-forecast/nightly-forecast`: writes the champion's forecasts after training (03:00 by default).
- `seqcast-backfill/on-demand`: no schedule; started from the dashboard with a date range.
- `seqcast-monitor/nightly-monitor`: scores the forecasts whose actuals arrived and compares them with the model's
  test figures (01:00 by default: after the day's observations, before training), raising
  `seqcast.forecast.degraded`.
- The automation `seqcast-retrain-on-degradation`: on `seqcast.forecast.degraded`, runs
  `seqcast-train/nightly-retrain`; at most once per cool-down (72 h by default) per registered model
  (`ensure_retrain_automation`).

Every schedule carries its time zone (SEQCAST_TIMEZONE, UTC by default), and each deployment's description says
when it runs, in that zone, since the dashboard's schedule badge shows the time alone. Deployments seqcast
registered under former names (`seqcast-train/nightly`, ...) are deleted once their successors are registered,
so an upgrade never leaves two schedules running the same flow.

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

from models.errors import SeqcastError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import Flow

WORK_POOL = "seqcast"
CRON_TRAIN = "0 2 * * *"
CRON_FORECAST = "0 3 * * *"
CRON_MONITOR = "0 1 * * *"  # an hour before training: the day's actuals are in, and a degradation can retrain at 02:00
# The retraining automation fires on the first degradation event of a registered model, then ignores that model's
# events for this long: a model trained meanwhile needs `degraded_nights` (3) scored nights before it can be called
# degraded, so retraining sooner would act on evidence about the model it replaced.
RETRAIN_COOLDOWN_HOURS = 72.0
RETRAIN_AUTOMATION = "seqcast-retrain-on-degradation"
TIMEZONE = "UTC"

# Environment variables that override the defaults above (compose's deploy service sets them from docker/.env).
ENV_WORK_POOL = "SEQCAST_WORK_POOL"
ENV_TRAIN_CRON = "SEQCAST_TRAIN_CRON"
ENV_FORECAST_CRON = "SEQCAST_FORECAST_CRON"
ENV_MONITOR_CRON = "SEQCAST_MONITOR_CRON"
ENV_RETRAIN_COOLDOWN = "SEQCAST_RETRAIN_COOLDOWN_HOURS"
ENV_TIMEZONE = "SEQCAST_TIMEZONE"
ENV_PROJECT_DIR = "SEQCAST_PROJECT_DIR"
# Set in every flow run's process: a worker may run flows side by side, and OpenMP threads that spin while they
# wait cut RNN training 3-10x on shared cores (docs/benchmarks.md). It must be set before torch loads.
FLOW_RUN_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


class DeployError(SeqcastError, RuntimeError):
    """The deployments cannot be registered as asked (bad option, unreachable API, wrong pool or flow)."""


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, under what name, with which default parameters and which schedule."""

    flow_name: str
    name: str
    entrypoint: str
    summary: str  # what it does, the start of its description in the dashboard
    parameters: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None  # "train", "forecast", "monitor" or None (no schedule)
    schedule_parameters: dict[str, Any] = field(default_factory=dict)  # given to the runs the schedule starts
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = ()
    former_names: tuple[str, ...] = ()  # names seqcast registered it under before; deleted on deploy

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    def description(self, cron: str | None, timezone: str) -> str:
        """The deployment's description in the dashboard: what it does, and when it runs in which time zone."""
        if cron is None:
            return self.summary
        return f"{self.summary} Schedule: `{cron}` ({timezone})."

    @property
    def schedule_slug(self) -> str | None:
        """A stable name for the schedule, so that deploying again updates it instead of adding a second one."""
        return None if self.schedule is None else f"{self.flow_name}-{self.name}"


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        flow_name="seqcast-train",
        name="nightly-retrain",
        entrypoint="flows/train.py:train_flow",
        summary=(
            "Retrains the LSTM and GRU candidates every night on the observations up to the scheduled time, and "
            "promotes one only if it beats every baseline and the champion. One run at a time."
        ),
        # No `spec`: the flow's default run spec applies (tasks/spec.py), whose window, stride and seasons follow
        # the data's frequency; the dashboard form shows every setting of it with its description.
        parameters={"series": None},
        schedule="train",
        # scheduled runs say so in MLflow (trigger tag); runs started by hand default to "manual"
        schedule_parameters={"trigger": "schedule"},
        concurrency_limit=1,
        tags=("seqcast", "train"),
        former_names=("nightly",),
    ),
    DeploymentSpec(
        flow_name="seqcast-forecast",
        name="nightly-forecast",
        entrypoint="flows/forecast.py:forecast_flow",
        summary="Writes the champion's forecasts from each series' last observation to the forecasts table.",
        # Empty values, not None: the dashboard's form opens on them (a text box, a list) instead of "None".
        parameters={"model_alias": "champion", "model_version": "", "series": []},
        schedule="forecast",
        tags=("seqcast", "forecast"),
        former_names=("nightly",),
    ),
    DeploymentSpec(
        flow_name="seqcast-backfill",
        name="on-demand",
        entrypoint="flows/backfill.py:backfill_flow",
        summary=(
            "Forecasts every past origin from `start` to `end`, one a day by default, each from the data known then. "
            "Run -> Custom run, fill `start` and `end`."
        ),
        parameters={"every": "1D", "model_alias": "champion", "model_version": "", "series": []},
        schedule=None,
        tags=("seqcast", "backfill"),
    ),
    DeploymentSpec(
        flow_name="seqcast-monitor",
        name="nightly-monitor",
        entrypoint="flows/monitor.py:monitor_flow",
        summary=(
            "Scores the forecasts whose actuals arrived against each model's test figures, and raises "
            "seqcast.forecast.degraded when a serving model degraded."
        ),
        # No `config`: the flow's default MonitorConfig applies (the dashboard form shows each setting, described).
        parameters={"model_version": None, "series": []},
        schedule="monitor",
        tags=("seqcast", "monitor"),
        former_names=("nightly",),
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

    if not timezone.strip():  # Prefect takes "" and registers a schedule with no time zone
        raise DeployError("`timezone` is empty; use an IANA time zone such as 'UTC' or 'Europe/London'")
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
        description=spec.description(cron, timezone),
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
    cron_monitor: str = CRON_MONITOR,
    retrain_cooldown_hours: float = RETRAIN_COOLDOWN_HOURS,
) -> dict[str, str]:
    """Create the work pool if missing, register (or update) the four deployments and the retraining automation;
    returns {deployment full name: id}.

    `api_url` overrides PREFECT_API_URL for this call. Deploying again updates the deployments in place:
    same names, same schedule slugs, so no schedule is duplicated; the automation is found by its name and updated
    (or left alone when unchanged), never duplicated.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = Path(project_dir).expanduser().resolve() if project_dir is not None else default_project_dir()
    crons = {"train": cron_train, "forecast": cron_forecast, "monitor": cron_monitor}
    check_schedule(cron_train, timezone, "cron_train")
    check_schedule(cron_forecast, timezone, "cron_forecast")
    check_schedule(cron_monitor, timezone, "cron_monitor")
    check_cooldown(retrain_cooldown_hours)
    if not work_pool.strip():
        raise DeployError("`work_pool` is empty; give the name of a process work pool, e.g. 'seqcast'")
    _check_project(project)

    settings = temporary_settings(updates={PREFECT_API_URL: api_url}) if api_url else nullcontext()
    with settings:
        _check_api()
        # Build every deployment before registering anything, so a broken entrypoint leaves the server as it was.
        specs = [with_tuned_spec(spec) if spec.full_name == TRAIN_DEPLOYMENT else spec for spec in DEPLOYMENTS]
        built = [
            (
                spec,
                build_deployment(spec, project, work_pool, crons[spec.schedule] if spec.schedule else None, timezone),
            )
            for spec in specs
        ]
        ensure_work_pool(work_pool)
        ids = {
            spec.full_name: str(deployment.apply(work_pool_name=work_pool, _sync=True))  # type: ignore[call-arg]
            for spec, deployment in built
        }
        ensure_retrain_automation(ids[TRAIN_DEPLOYMENT], retrain_cooldown_hours)
        for old, new in retire_former_deployments():
            print(f"deleted {old}: seqcast registers it as {new} now")
        return ids


TRAIN_DEPLOYMENT = DEPLOYMENTS[0].full_name  # what the retraining automation runs: seqcast-train/nightly-retrain


def tuned_spec() -> tuple[dict[str, Any], str] | None:
    """The best run spec `seqcast tune` saved for the registered model (SEQCAST_REGISTERED_MODEL) in the seqcast
    database (SEQCAST_DATABASE_URL), as the train flow's `spec` parameter, with a line saying where it came from;
    None when nothing was tuned. A database that cannot be read is a DeployError: deploying would drop the spec."""
    from tasks.settings import get_settings
    from tasks.tune_study import StudyUnavailableError, load_best_spec, study_name

    settings = get_settings()
    # the database URL without creating SEQCAST_HOME (`settings.db_url` would): nothing tuned, nothing to create
    url = (
        settings.database_url.get_secret_value()
        if settings.database_url is not None
        else f"sqlite:///{settings.home.expanduser().resolve() / 'seqcast.db'}"
    )
    try:
        found = load_best_spec(url, settings.registered_model)
    except StudyUnavailableError as exc:
        raise DeployError(f"{exc}; the nightly training would lose its tuned spec") from None
    if found is None:
        return None
    spec, trial, value = found
    origin = f"spec of trial {trial} of study {study_name(settings.registered_model)} (validation MASE {value:.4f})"
    return spec.model_dump(mode="json"), origin


def with_tuned_spec(spec: DeploymentSpec) -> DeploymentSpec:
    """The nightly training deployment with the tuned spec as its `spec` parameter, when `seqcast tune` saved one
    (the run spec's defaults otherwise)."""
    import dataclasses

    found = tuned_spec()
    if found is None:
        return spec
    parameters, origin = found
    print(f"{spec.full_name}: {origin}")
    return dataclasses.replace(spec, parameters={**spec.parameters, "spec": parameters})


def update_nightly_spec(spec: dict[str, Any]) -> str | None:
    """Set the `spec` parameter of the nightly training deployment on the Prefect API in use, keeping its other
    parameters; returns its id, or None when it is not deployed there."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
        except ObjectNotFound:
            return None
        client.update_deployment(found.id, DeploymentUpdate(parameters={**(found.parameters or {}), "spec": spec}))
        return str(found.id)


def retire_former_deployments() -> list[tuple[str, str]]:
    """Delete the deployments seqcast registered under a former name (`seqcast-train/nightly`, ...), so that an
    upgrade does not leave the old schedule running beside the new one; returns (old, new) full names.

    Only deployments tagged `seqcast` are deleted; one a user made under such a name by hand is left alone. Their
    flow runs stay in the database.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    retired: list[tuple[str, str]] = []
    with get_client(sync_client=True) as client:
        for spec in DEPLOYMENTS:
            for former in spec.former_names:
                old = f"{spec.flow_name}/{former}"
                try:
                    found = client.read_deployment_by_name(old)
                except ObjectNotFound:
                    continue
                if "seqcast" in found.tags:
                    client.delete_deployment(found.id)
                    retired.append((old, spec.full_name))
    return retired


def check_cooldown(hours: float) -> None:
    """Refuse a cool-down that would let the automation retrain on every event (or never)."""
    if not (0 < hours <= 24 * 365):
        raise DeployError(
            f"`retrain_cooldown_hours` ({hours:g}) must be more than 0 and at most a year (8760); e.g. 72 retrains "
            "at most once every three days per model"
        )


def retrain_automation(train_deployment_id: str, cooldown_hours: float) -> Any:
    """The automation: on `seqcast.forecast.degraded`, run the training deployment with its default parameters.

    The cool-down is the trigger's window: a Reactive trigger with threshold 1 fires on the first event of a
    registered model (`for_each` its `seqcast.model.name` label), then ignores that model's events until
    `cooldown_hours` after it, so a model that stays degraded is retrained at most once per cool-down, however
    often the monitor runs.
    """
    import datetime as dt
    from uuid import UUID

    from prefect.automations import AutomationCore, EventTrigger, Posture, RunDeployment

    from tasks.monitor_publish import DEGRADED_EVENT

    return AutomationCore(
        name=RETRAIN_AUTOMATION,
        description=(
            f"seqcast: retrain ({TRAIN_DEPLOYMENT}) when the monitor finds a model degraded; at most once per "
            f"{cooldown_hours:g} h per registered model. Managed by `seqcast deploy`."
        ),
        enabled=True,
        tags=["seqcast"],
        trigger=EventTrigger(
            expect={DEGRADED_EVENT},
            match={"prefect.resource.id": "seqcast.model.*"},
            for_each={"seqcast.model.name"},
            posture=Posture.Reactive,
            threshold=1,
            within=dt.timedelta(hours=cooldown_hours),
        ),
        actions=[
            RunDeployment(
                source="selected", deployment_id=UUID(train_deployment_id), parameters=None, job_variables=None
            )
        ],
    )


def _automation_fields(automation: Any) -> dict[str, Any]:
    """What an automation does, for comparing the one on the server with the one wanted."""
    fields = {"name", "description", "enabled", "tags", "trigger", "actions"}
    fields |= {"actions_on_trigger", "actions_on_resolve"}
    return dict(automation.model_dump(mode="json", include=fields))


def ensure_retrain_automation(train_deployment_id: str, cooldown_hours: float = RETRAIN_COOLDOWN_HOURS) -> str:
    """Create the retraining automation, or bring the one of that name up to date; returns its id.

    Idempotent: an unchanged automation is left as it is (so its cool-down state survives a redeploy), a changed one
    is updated in place (same id), and copies left by a concurrent first deploy are deleted.
    """
    from prefect.client.orchestration import get_client

    wanted = retrain_automation(train_deployment_id, cooldown_hours)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(RETRAIN_AUTOMATION)
        if not existing:
            return str(client.create_automation(wanted))
        created = {
            a.id: str(client.request("GET", "/automations/{id}", path_params={"id": a.id}).json().get("created"))
            for a in existing
        }
        keep, *extra = sorted(existing, key=lambda a: (created[a.id], str(a.id)))  # the oldest holds the cool-down
        for duplicate in extra:
            client.delete_automation(duplicate.id)
        if _automation_fields(keep) != _automation_fields(wanted):
            client.update_automation(keep.id, wanted)
        return str(keep.id)


def deploy_command(
    work_pool: str | None = None,
    train_cron: str | None = None,
    forecast_cron: str | None = None,
    timezone: str | None = None,
    api_url: str | None = None,
    project_dir: str | Path | None = None,
    monitor_cron: str | None = None,
    retrain_cooldown_hours: float | None = None,
) -> dict[str, str]:
    """`seqcast deploy`: options left as None come from SEQCAST_WORK_POOL, SEQCAST_TRAIN_CRON,
    SEQCAST_FORECAST_CRON, SEQCAST_MONITOR_CRON, SEQCAST_RETRAIN_COOLDOWN_HOURS and SEQCAST_TIMEZONE, then from the
    defaults. Prints what was registered.

    Raises DeployError with a message meant for the user (the CLI prints it and exits non-zero).
    """
    work_pool = work_pool or os.environ.get(ENV_WORK_POOL) or WORK_POOL
    train_cron = train_cron or os.environ.get(ENV_TRAIN_CRON) or CRON_TRAIN
    forecast_cron = forecast_cron or os.environ.get(ENV_FORECAST_CRON) or CRON_FORECAST
    monitor_cron = monitor_cron or os.environ.get(ENV_MONITOR_CRON) or CRON_MONITOR
    timezone = timezone or os.environ.get(ENV_TIMEZONE) or TIMEZONE
    cooldown = retrain_cooldown_hours if retrain_cooldown_hours is not None else _env_hours(ENV_RETRAIN_COOLDOWN)
    ids = deploy_all(
        api_url=api_url,
        work_pool=work_pool,
        cron_train=train_cron,
        cron_forecast=forecast_cron,
        timezone=timezone,
        project_dir=project_dir,
        cron_monitor=monitor_cron,
        retrain_cooldown_hours=cooldown,
    )
    when = {
        "train": f"{train_cron} ({timezone})",
        "forecast": f"{forecast_cron} ({timezone})",
        "monitor": f"{monitor_cron} ({timezone})",
    }
    for spec in DEPLOYMENTS:
        schedule = when[spec.schedule] if spec.schedule else "no schedule (run it from the dashboard)"
        print(f"{spec.full_name:<34} {schedule:<40} pool {work_pool}  id {ids[spec.full_name]}")
    print(
        f"{RETRAIN_AUTOMATION}: on seqcast.forecast.degraded runs {TRAIN_DEPLOYMENT}, at most once per "
        f"{cooldown:g} h per registered model"
    )
    print(f"Start a worker to run them: prefect worker start --pool {work_pool}")
    return ids


def _env_hours(name: str) -> float:
    """A number of hours from the environment variable `name` (RETRAIN_COOLDOWN_HOURS when unset)."""
    raw = os.environ.get(name)
    if not raw:
        return RETRAIN_COOLDOWN_HOURS
    try:
        return float(raw)
    except ValueError:
        raise DeployError(f"{name} ({raw!r}) is not a number of hours; e.g. {name}=72") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.deploy [--work-pool ...]`, what compose's `deploy` service runs."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--work-pool", help=f"process work pool (${ENV_WORK_POOL}, default {WORK_POOL!r})")
    parser.add_argument("--train-cron", help=f"training schedule (${ENV_TRAIN_CRON}, default {CRON_TRAIN!r})")
    parser.add_argument(
        "--forecast-cron", help=f"forecasting schedule (${ENV_FORECAST_CRON}, default {CRON_FORECAST!r})"
    )
    parser.add_argument("--monitor-cron", help=f"monitoring schedule (${ENV_MONITOR_CRON}, default {CRON_MONITOR!r})")
    parser.add_argument(
        "--retrain-cooldown-hours",
        type=float,
        help=f"least hours between two retrainings on degradation (${ENV_RETRAIN_COOLDOWN}, default "
        f"{RETRAIN_COOLDOWN_HOURS:g})",
    )
    parser.add_argument("--timezone", help=f"IANA time zone of the schedules (${ENV_TIMEZONE}, default {TIMEZONE!r})")
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
            monitor_cron=args.monitor_cron,
            retrain_cooldown_hours=args.retrain_cooldown_hours,
        )
    except DeployError as exc:
        print(f"seqcast deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
