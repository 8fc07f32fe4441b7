"""Nightly retraining: read -> validate -> window -> train LSTM and GRU -> evaluate -> register, promote if better."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.client.schemas.objects import FlowRun, State

from models.frequency import season_length
from tasks import evaluate, gate, plots, registry
from tasks.run_context import Trigger, resolve_run_context
from tasks.settings import get_settings
from tasks.spec import RunSpec
from tasks.store import read_observations_task
from tasks.train import train_candidate_task
from tasks.validate import validate_observations_task
from tasks.windowing import make_windows_task, resolve_spec_task

if TYPE_CHECKING:
    pass


@dataclass
class CandidateSummary:
    cell: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]


@dataclass
class TrainSummary:
    """What a training run did; the CLI prints it and the flow publishes it as a Prefect artifact."""

    parent_run_id: str
    experiment_id: str
    model_name: str
    version: str
    alias: str
    reason: str
    best_cell: str
    champion_mase: float | None
    as_of: str
    candidates: list[CandidateSummary] = field(default_factory=list)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> test mae, mase, ...
    served: dict[str, float] = field(default_factory=dict)  # the best candidate with its per-series fallback
    series: list[dict[str, Any]] = field(default_factory=list)  # the gate's per-series table


def close_failed_runs(flow: Any, flow_run: FlowRun, state: State) -> None:
    """On failure or crash: the MLflow runs this flow run opened are marked FAILED instead of left RUNNING."""
    settings = get_settings()
    experiment = flow_run.parameters.get("experiment") or settings.experiment
    closed = registry.fail_open_runs(settings.tracking_uri, experiment, str(flow_run.id))
    if closed:
        logging.getLogger(__name__).warning("marked %d MLflow runs FAILED: %s", len(closed), ", ".join(closed))


@flow(name="seqcast-train", log_prints=True, on_failure=[close_failed_runs], on_crashed=[close_failed_runs])
def train_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen, so one shared default is safe; the dashboard form shows it
    series: list[str] | None = None,
    registered_model: str | None = None,
    experiment: str | None = None,
    as_of: dt.datetime | None = None,
    trigger: Trigger | None = None,
) -> TrainSummary:
    """Train the spec's candidate cells on observations up to `as_of`, register the best, promote only a better one.

    Settings the spec leaves empty (lookback, horizon, evaluation stride, seasons) follow the data's frequency and
    series lengths; the parent MLflow run gets the resolved spec as its params.

    Args:
        spec: Every setting of the run: window, model, training, evaluation, data.
        series: Train on these series only (default: every stored series).
        registered_model: MLflow registered model to register in (default: SEQCAST_REGISTERED_MODEL).
        experiment: MLflow experiment of the runs (default: SEQCAST_EXPERIMENT).
        as_of: Use observations up to this time (default: the run's scheduled start, else now).
        trigger: What started the run (schedule, backfill or manual; default manual), tagged on the MLflow runs.
    """
    settings = get_settings()
    context = resolve_run_context(as_of, trigger)
    model_name = registered_model or settings.registered_model

    frame = read_observations_task(settings.db_url, series, context.as_of)
    # the window follows the stored rows' frequency, so validation checks the lengths it needs
    window = resolve_spec_task(spec, frame)
    frame, report = validate_observations_task(
        frame,
        gap_policy=spec.data.gap_policy,
        outlier_policy=spec.data.outlier_policy,
        max_gap_steps=spec.data.max_gap_steps,
        min_length=window.min_length(),
        source=f"observations as of {context.as_of.isoformat()}",
    )
    spec = resolve_spec_task(spec, frame)  # again on the validated rows: filling gaps may have lengthened series
    data = make_windows_task(frame, spec.window_config())
    season = season_length(data.freq)  # MASE's scale: the frequency's natural cycle

    experiment_id = registry.configure_mlflow_task(
        settings.tracking_uri, experiment or settings.experiment, settings.artifact_root
    )
    run_tags = context.mlflow_tags()
    parent_run_id = registry.start_run_task(experiment_id, f"train {context.as_of:%Y-%m-%d %H:%M}", run_tags)
    registry.log_training_data_task(parent_run_id, frame, data, {"seqcast.validation": str(report.json_path)})
    registry.log_params_task(parent_run_id, spec.mlflow_params())

    baseline_seasons = spec.evaluation.seasons or []
    candidates: list[CandidateSummary] = []
    evaluations: dict[str, evaluate.Evaluation] = {}
    for cell in spec.model.cells:
        run_id = registry.start_run_task(experiment_id, cell, {**run_tags, "seqcast.cell": cell}, parent_run_id)
        fit = train_candidate_task(data, spec.train_config(cell), registry.epoch_logger(run_id))
        predicted = evaluate.forecast_test_windows_task(fit, data)
        scores = evaluate.evaluate_task(
            data, predicted, season, baseline_seasons, model_name=cell, artifact_key=f"test-evaluation-{cell}"
        )
        with tempfile.TemporaryDirectory(prefix="seqcast-plots-") as plots_dir:
            best_baseline = scores.best_baseline()
            figures = plots.plot_forecasts_task(
                data.panel,
                data.test_starts,
                predicted,
                data.lookback,
                data.horizon,
                Path(plots_dir),
                baseline=scores.baseline_forecasts[best_baseline],
                scores=scores.model,
                baseline_label=best_baseline.replace("_", " "),
            )
            model_uri = registry.log_candidate_task(run_id, fit, scores, data, frame, figures)
        registry.end_run_task(run_id)
        evaluations[cell] = scores
        candidates.append(CandidateSummary(cell, run_id, model_uri, scores.metrics()))

    best = candidates[list(evaluations).index(gate.best_candidate(evaluations))]
    champion = gate.score_champion_task(model_name, data, season, baseline_seasons)
    decision = gate.decide_promotion(evaluations[best.cell], champion)
    version = registry.register_model_task(model_name, best.model_uri, best.run_id)
    alias = registry.apply_decision_task(model_name, version, decision.promote, decision.reason)
    registry.log_decision_task(parent_run_id, decision, gate.publish_decision_task(decision))
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
    )
    registry.finish_training_task(summary.parent_run_id, summary_markdown(summary))
    return summary


def summary_markdown(summary: TrainSummary) -> str:
    """Candidates, what would be served, baselines and the champion on the same test windows, as the Prefect
    artifact and the MLflow note show it."""
    lines = [
        f"# seqcast training as of {summary.as_of}",
        "",
        f"**{summary.model_name} v{summary.version}** ({summary.best_cell}) -> `{summary.alias}`: {summary.reason}",
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
