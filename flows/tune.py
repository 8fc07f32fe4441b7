"""Hyperparameter tuning: read -> validate -> plan the search -> trials side by side -> save the best spec.

Each trial (tasks/tune.py) is a task submitted to the flow's task runner: threads on this machine by default, a
Ray cluster when configured; callers pass the spec's runner at call time,
`tune_flow.with_options(task_runner=tasks.runners.task_runner_for(spec))`. The trials share one Optuna study in
the seqcast database (tasks/tune_study.py), named after the registered model, so a later run adds trials to it.
The best trial's spec is saved in the study; `seqcast deploy` gives it to the nightly training, and this flow
updates the nightly training deployment's `spec` when it is deployed on the Prefect API in use.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun, State

from flows.console import quiet_worker_console
from flows.train import mark_runs_failed, validated_observations
from tasks import registry, runners
from tasks.run_context import Trigger, resolve_run_context
from tasks.settings import get_settings, redact_url
from tasks.spec import RunSpec
from tasks.tune import (
    TrialPlan,
    TuneBudget,
    plan_search,
    prepare_study,
    run_trials,
    side_by_side,
    trial_task,
    tuned_settings,
)
from tasks.tune_report import TuneSummary, finish_tuning_task, parent_params, trial_rows
from tasks.tune_study import save_best_spec, study_name

TUNE_EXPERIMENT_SUFFIX = "-tune"  # the tuning runs' experiment: `<SEQCAST_EXPERIMENT>-tune`


def tune_experiment(experiment: str | None) -> str:
    """The MLflow experiment of the tuning runs, beside the training runs' one."""
    return (experiment or get_settings().experiment) + TUNE_EXPERIMENT_SUFFIX


def close_failed_runs(flow: Any, flow_run: FlowRun, state: State) -> None:
    """On failure or crash: the MLflow runs this flow run opened are marked FAILED instead of left RUNNING."""
    mark_runs_failed(tune_experiment(flow_run.parameters.get("experiment")), flow_run)


@task(name="update-nightly-spec", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def update_nightly_spec_task(spec: dict[str, Any]) -> str:
    """Give the nightly training deployment the best spec, when it is deployed; says what it did."""
    from flows.deploy import TRAIN_DEPLOYMENT, update_nightly_spec

    deployment_id = update_nightly_spec(spec)
    if deployment_id is None:
        return f"{TRAIN_DEPLOYMENT} is not deployed on this Prefect API: `seqcast deploy` will give it the spec"
    return f"{TRAIN_DEPLOYMENT} now trains with it"


@flow(
    name="seqcast-tune",
    log_prints=True,
    task_runner=runners.task_runner_for(),  # the environment's default; callers pass the spec's (with_options)
    on_running=[quiet_worker_console],
    on_failure=[close_failed_runs],
    on_crashed=[close_failed_runs],
)
def tune_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen, so one shared default is safe; the dashboard form shows it
    budget: TuneBudget = TuneBudget(),  # noqa: B008 - frozen as well
    series: list[str] | None = None,
    registered_model: str | None = "",
    experiment: str | None = "",
    as_of: dt.datetime | None = None,
    trigger: Trigger | None = "manual",
) -> TuneSummary:
    """Tune the spec's network and training settings on the validation windows; save the best spec for the nightly
    training.

    Args:
        spec: The settings every trial starts from (the search replaces lookback, cell, hidden size, layers,
            dropout, scaling, learning rate and batch size); its `execution` says where the trials run.
        budget: Trials and/or minutes, trials side by side, epochs per trial, the sampler's and pruner's start.
        series: Tune on these series ids only; None (default): every stored series.
        registered_model: The model whose study this is (`seqcast-tune-<name>`); empty (default):
            SEQCAST_REGISTERED_MODEL ("seqcast").
        experiment: MLflow experiment of the training runs; the tuning runs go to `<experiment>-tune`. Empty
            (default): SEQCAST_EXPERIMENT ("seqcast").
        as_of: Use observations up to this date and time (UTC unless it carries an offset); None (default): the
            run's scheduled start, else now.
        trigger: What started the run, tagged on the MLflow runs: "schedule", "backfill" or "manual" (default).
    """
    started = time.perf_counter()
    settings = get_settings()
    context = resolve_run_context(as_of, trigger)
    model_name = registered_model or settings.registered_model

    frame, _, resolved = validated_observations(spec, series, context.as_of)
    space = plan_search(spec, resolved, frame)

    name = study_name(model_name)
    storage = redact_url(settings.db_url)
    experiment_id = registry.configure_mlflow_task(
        settings.tracking_uri, tune_experiment(experiment), settings.artifact_root
    )
    run_tags = {**context.mlflow_tags(), "seqcast.study": name}
    parent_run_id = registry.start_run_task(experiment_id, f"tune {context.as_of:%Y-%m-%d %H:%M}", run_tags)
    registry.log_params_task(parent_run_id, parent_params(resolved, budget, name, storage, space.describe()))

    study = prepare_study(settings.db_url, name, spec, space, budget)
    plan = TrialPlan(
        spec=spec,
        space=space,
        storage_url=settings.db_url,
        study_name=name,
        budget=budget,
        tracking_uri=settings.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        tags=run_tags,
    )
    parallel = budget.parallel or side_by_side()
    with runners.training_resources():
        outcomes = run_trials(study, plan, lambda job: trial_task.submit(job, frame), parallel)

    best = save_best_spec(study)
    nightly = "no spec to deploy yet"
    if best is not None:
        nightly = update_nightly_spec_task(best.spec.model_dump(mode="json"))
    summary = TuneSummary(
        study_name=name,
        storage=storage,
        model_name=model_name,
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        as_of=context.as_of.isoformat(),
        trials=trial_rows(study),
        this_run={state: sum(o.state == state for o in outcomes) for state in ("COMPLETE", "PRUNED", "FAIL")},
        best_spec=None if best is None else best.spec.model_dump(mode="json"),
        best_trial=None if best is None else best.trial,
        best_value=None if best is None else best.value,
        best_settings={} if best is None else tuned_settings(best.spec),
        kept_defaults=best is not None and best.kept_defaults,
        decision="" if best is None else best.decision,
        nightly=nightly,
        run_url=registry.run_url(settings.tracking_uri, experiment_id, parent_run_id),
        seconds=time.perf_counter() - started,
    )
    finish_tuning_task(summary, outcomes)
    return summary
