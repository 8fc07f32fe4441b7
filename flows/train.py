"""Nightly retraining: read -> validate -> window -> train LSTM and GRU -> evaluate -> register, promote if better.

Every network trains as one task on the flow's task runner, side by side: one per cell, per scaling try ("auto"
tries two) and per partition of the series (tasks/partitions.py); then one task per candidate keeps its cell's
networks and evaluates and logs them (tasks/candidate.py). The runner is this machine's cores by default, a Ray
cluster when one is configured. Callers choose the runner from the spec at call time,
`train_flow.with_options(task_runner=tasks.runners.task_runner_for(spec))`; the decorator's is the environment's
default (SEQCAST_RAY_ADDRESS), which is what a deployment's flow run gets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.client.schemas.objects import FlowRun, State

from flows.console import quiet_worker_console
from models.frequency import season_length
from tasks import gate, partitions, registry, runners, warm_start
from tasks.candidate import CandidateJob, candidate_task
from tasks.run_context import Trigger, resolve_run_context
from tasks.settings import get_settings
from tasks.spec import RunSpec
from tasks.store import read_observations_task
from tasks.train import TrainConfig
from tasks.validate import validate_observations_task
from tasks.windowing import make_windows_task, resolve_spec_task

if TYPE_CHECKING:
    import pandas as pd

    from tasks.validate import ValidationReport


@dataclass
class CandidateSummary:
    cell: str  # the candidate's name: its cell, or "<cell>-warm" for the champion continued (tasks/warm_start.py)
    run_id: str
    model_uri: str
    metrics: dict[str, float]


@dataclass
class TrainSummary:
    """What a training run did; the CLI prints it and the flow publishes it as a Prefect artifact."""

    parent_run_id: str
    experiment_id: str
    model_name: str
    version: str | None  # None: the best candidate did not beat every baseline, so it was not registered
    alias: str  # champion, challenger, or "not registered"
    reason: str
    best_cell: str
    champion_mase: float | None
    as_of: str
    candidates: list[CandidateSummary] = field(default_factory=list)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> test mae, mase, ...
    served: dict[str, float] = field(default_factory=dict)  # the best candidate with its per-series fallback
    series: list[dict[str, Any]] = field(default_factory=list)  # the gate's per-series table
    champion_version: str | None = None  # the champion when the run started (it keeps serving unless replaced)
    flow_run_id: str | None = None  # the Prefect flow run
    run_url: str | None = None  # the parent run in the MLflow UI, when the tracking server has a URL
    flow_run_url: str | None = None  # the flow run in the Prefect UI, when Prefect's UI URL is known

    def outcome(self) -> str:
        """One line: what was registered (or why nothing was) and what serves now."""
        if self.version is None:
            return f"not registered: {self.reason}{self.serving_note()}"
        registered = f"registered {self.model_name} v{self.version} ({self.best_cell}) as '{self.alias}'"
        return f"{registered}: {self.reason}{self.serving_note()}"

    def serving_note(self) -> str:
        """What serves after this run when it did not promote: the previous champion, or nothing yet."""
        if self.alias == registry.CHAMPION:
            return ""
        if self.champion_version is not None:
            return f"; the previous champion v{self.champion_version} keeps serving"
        return (
            "; there is no champion yet: nothing is served until a candidate's network beats every baseline "
            "(more --epochs or a longer --lookback may; --register-rejected registers the best as challenger anyway)"
        )


def close_failed_runs(flow: Any, flow_run: FlowRun, state: State) -> None:
    """On failure or crash: the MLflow runs this flow run opened are marked FAILED instead of left RUNNING."""
    mark_runs_failed(flow_run.parameters.get("experiment") or get_settings().experiment, flow_run)


def mark_runs_failed(experiment: str, flow_run: FlowRun) -> None:
    """Mark the MLflow runs `flow_run` opened in `experiment` FAILED (the failure hooks of the train and tune flows).

    Never fails itself: when MLflow is what failed the run (unreachable, hung), one warning says the runs stay
    RUNNING, and the flow's own error is the one reported."""
    settings = get_settings()
    try:
        closed = registry.fail_open_runs(settings.tracking_uri, experiment, str(flow_run.id))
    except registry.TrackingUnavailableError as exc:
        logging.getLogger(__name__).warning("could not mark this run's MLflow runs FAILED (they stay RUNNING): %s", exc)
        return
    if closed:
        logging.getLogger(__name__).warning("marked %d MLflow runs FAILED: %s", len(closed), ", ".join(closed))


@flow(
    name="seqcast-train",
    log_prints=True,
    task_runner=runners.task_runner_for(),  # the environment's default; callers pass the spec's (with_options)
    on_running=[quiet_worker_console],
    on_failure=[close_failed_runs],
    on_crashed=[close_failed_runs],
)
def train_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen, so one shared default is safe; the dashboard form shows it
    series: list[str] | None = None,
    registered_model: str | None = "",
    experiment: str | None = "",
    as_of: dt.datetime | None = None,
    trigger: Trigger | None = "manual",
) -> TrainSummary:
    """Train the spec's candidate cells on observations up to `as_of`, register the best, promote only a better one.

    Settings the spec leaves empty (lookback, horizon, evaluation stride, seasons) follow the data's frequency and
    series lengths; the parent MLflow run gets the resolved spec as its params.

    Args:
        spec: Every setting of the run: window, model, training, evaluation, data, partitions of the series (one
            network each, registered as one model), and where the candidates train (`execution`; the flow's task
            runner is chosen from it by its caller: `tasks.runners.task_runner_for`).
        series: Train on these series ids only; None (default): every stored series.
        registered_model: MLflow registered model to register in; empty (default): SEQCAST_REGISTERED_MODEL
            ("seqcast").
        experiment: MLflow experiment of the runs; empty (default): SEQCAST_EXPERIMENT ("seqcast").
        as_of: Use observations up to this date and time (UTC unless it carries an offset); None (default): the
            run's scheduled start, else now.
        trigger: What started the run, tagged on the MLflow runs: "schedule", "backfill" or "manual" (default).
    """
    settings = get_settings()
    context = resolve_run_context(as_of, trigger)
    model_name = registered_model or settings.registered_model

    frame, report, spec = validated_observations(spec, series, context.as_of)
    data = make_windows_task(frame, spec.window_config())
    plan = partitions.plan_partitions_task(spec.partition, data.panel.series_ids)  # bad settings stop the run here
    season = season_length(data.freq)  # MASE's scale: the frequency's natural cycle

    experiment_id = registry.configure_mlflow_task(
        settings.tracking_uri, experiment or settings.experiment, settings.artifact_root
    )
    run_tags = context.mlflow_tags()
    parent_run_id = registry.start_run_task(experiment_id, f"train {context.as_of:%Y-%m-%d %H:%M}", run_tags)
    runner = {"seqcast.task_runner": runners.current_runner_name()}
    registry.log_training_data_task(parent_run_id, frame, data, runner, validation=[report.json_path, report.html_path])
    registry.log_params_task(parent_run_id, spec.mlflow_params())

    # one task per candidate (train -> evaluate -> log to its child run), side by side on the flow's task runner:
    # each cell from scratch, and with `warm_start` the champion's network continued
    baseline_seasons = spec.evaluation.seasons or []
    warm = warm_start.champion_start_task(model_name, data, spec) if spec.training.warm_start else None
    starts: list[tuple[str, TrainConfig, warm_start.WarmStart | None]]
    starts = [(cell, spec.train_config(cell), None) for cell in spec.model.cells]
    if warm is not None:
        starts.append((warm.name, warm.config, warm))
    jobs = [
        CandidateJob(
            config=config,
            tracking_uri=settings.tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            run_name=f"{name} {context.as_of:%Y-%m-%d %H:%M}",  # name and night: charts across nights read well
            tags={**run_tags, "seqcast.cell": config.cell}
            | ({} if start is None else {"seqcast.warm_start_from": f"v{start.version}"}),
            level=spec.evaluation.interval_level,
            season=season,
            baseline_seasons=baseline_seasons,
            cores=runners.cores_per_task(len(starts)),
            name=name,
            initial_state=None if start is None else start.state,
        )
        for name, config, start in starts
    ]
    # every (cell, partition, scaling try) network trains first, one task each, side by side; each candidate
    # then keeps its cell's better scaling per partition and combines the partitions
    fit_jobs = partitions.fit_jobs(spec, plan)
    cores = runners.cores_per_task(len(fit_jobs))
    with runners.training_resources():
        fit_futures = [partitions.fit_network_task.submit(fit_job, data, plan, cores) for fit_job in fit_jobs]
    outcomes = runners.outcomes_in_order(fit_futures)  # a failed network fails its candidate, not the others
    trained = partitions.fits_by_cell(plan, fit_jobs, outcomes)
    futures = []
    for job in jobs:  # a warm start trains in its candidate's task (it asks for a GPU); the others only evaluate
        with runners.training_resources() if job.initial_state is not None else contextlib.nullcontext():
            futures.append(candidate_task.submit(job, data, frame, trained.get(job.candidate)))
    results = runners.results_in_order(futures)  # all finished, in the cells' order
    evaluations = {r.name: r.evaluation for r in results}
    candidates = [CandidateSummary(r.name, r.run_id, r.model_uri, r.evaluation.metrics()) for r in results]

    best = candidates[list(evaluations).index(gate.best_candidate(evaluations))]
    champion = gate.score_champion_task(model_name, data, season, baseline_seasons)
    decision = gate.decide_promotion(evaluations[best.cell], champion)
    links = registry.run_links(settings.tracking_uri, experiment_id, parent_run_id, context.flow_run_id)
    version: str | None = None
    alias = registry.NOT_REGISTERED
    # only a candidate that beats every baseline becomes a version (challenger when it loses to the champion)
    if decision.beats_baselines or spec.evaluation.register_rejected:
        version = registry.register_model_task(model_name, best.model_uri, best.run_id)
        description = gate.version_description(decision, evaluations[best.cell], links)
        alias = registry.apply_decision_task(model_name, version, decision.promote, decision.reason, description)
    markdown = gate.publish_decision_task(decision)
    registry.log_decision_task(parent_run_id, decision, markdown, version, best.metrics)
    summary = TrainSummary(
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        model_name=model_name,
        version=version,
        alias=alias,
        reason=decision.reason,
        best_cell=best.cell,
        champion_mase=champion.mase,
        as_of=context.as_of.isoformat(),
        candidates=candidates,
        baselines={name: scores.overall for name, scores in evaluations[best.cell].baselines.items()},
        served=evaluations[best.cell].served.overall,
        series=[{str(k): v for k, v in row.items()} for row in decision.series.to_dict("records")],
        champion_version=champion.version,
        flow_run_id=context.flow_run_id,
        run_url=registry.run_url(settings.tracking_uri, experiment_id, parent_run_id),
        flow_run_url=registry.flow_run_url(context.flow_run_id),
    )
    registry.finish_training_task(summary.parent_run_id, summary_markdown(summary))
    return summary


def validated_observations(
    spec: RunSpec, series: list[str] | None, as_of: dt.datetime
) -> tuple[pd.DataFrame, ValidationReport, RunSpec]:
    """The stored observations up to `as_of`, validated under the spec's data policies, and the spec resolved on
    them (the train and tune flows' first stages)."""
    frame = read_observations_task(get_settings().db_url, series, as_of)
    # the window follows the stored rows' frequency, so validation checks the lengths it needs
    window = resolve_spec_task(spec, frame)
    frame, report = validate_observations_task(
        frame,
        gap_policy=spec.data.gap_policy,
        outlier_policy=spec.data.outlier_policy,
        max_gap_steps=spec.data.max_gap_steps,
        min_length=window.min_length(),
        source=f"observations as of {as_of.isoformat()}",
    )
    # again on the validated rows: filling gaps may have lengthened series
    return frame, report, resolve_spec_task(spec, frame)


def summary_markdown(summary: TrainSummary) -> str:
    """Candidates, what would be served, baselines and the champion on the same test windows, as the Prefect
    artifact and the MLflow note show it."""
    if summary.version is None:
        verdict = f"**{summary.model_name}: {summary.best_cell} not registered**: "
    else:
        verdict = f"**{summary.model_name} v{summary.version}** ({summary.best_cell}) -> `{summary.alias}`: "
    verdict += summary.reason + summary.serving_note()
    run = registry.markdown_link(summary.parent_run_id, summary.run_url)
    lines = [
        f"# seqcast training as of {summary.as_of}",
        "",
        verdict,
        "",
        f"MLflow run: {run} (experiment `{summary.experiment_id}`)",
    ]
    if summary.flow_run_id:
        lines.append(f"Prefect flow run: {registry.markdown_link(summary.flow_run_id, summary.flow_run_url)}")
    lines += [
        "",
        "| method | test MAE | test MASE (mean per series) |",
        "|---|---|---|",
    ]
    for name, scores in method_scores(summary):
        lines.append(f"| {name} | {scores['mae']:.4g} | {scores['mase']:.4f} |")
    champion = "none" if summary.champion_mase is None else f"{summary.champion_mase:.4f}"
    lines += ["", f"Previous champion, as it serves, on the same windows: MASE {champion}"]
    return "\n".join(lines)


def method_scores(summary: TrainSummary) -> list[tuple[str, dict[str, float]]]:
    """(name, test scores) of every candidate, of what the best one would serve, and of every baseline."""
    rows = [(c.cell, {k.removeprefix("test_"): v for k, v in c.metrics.items()}) for c in summary.candidates]
    if summary.served:
        rows.append((f"served ({summary.best_cell} + fallback)", summary.served))
    rows += [(name.replace("_", " "), scores) for name, scores in summary.baselines.items()]
    return rows
