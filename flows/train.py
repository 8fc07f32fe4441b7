"""Nightly retraining: read -> validate -> window -> train LSTM and GRU -> evaluate -> register, promote if better."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.client.schemas.objects import FlowRun, State

from tasks import evaluate, registry
from tasks.run_context import Trigger, resolve_run_context
from tasks.settings import get_settings
from tasks.store import read_observations_task
from tasks.train import TrainConfig, train_candidate_task
from tasks.validate import validate_observations_task
from tasks.windowing import WindowConfig, make_windows_task


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


def close_failed_runs(flow: Any, flow_run: FlowRun, state: State) -> None:
    """On failure or crash: the MLflow runs this flow run opened are marked FAILED instead of left RUNNING."""
    settings = get_settings()
    experiment = flow_run.parameters.get("experiment") or settings.experiment
    closed = registry.fail_open_runs(settings.tracking_uri, experiment, str(flow_run.id))
    if closed:
        logging.getLogger(__name__).warning("marked %d MLflow runs FAILED: %s", len(closed), ", ".join(closed))


@flow(name="seqcast-train", log_prints=True, on_failure=[close_failed_runs], on_crashed=[close_failed_runs])
def train_flow(
    series: list[str] | None = None,
    cells: list[Literal["lstm", "gru"]] | None = None,
    lookback: int = 336,
    horizon: int = 48,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    eval_stride: int | None = None,
    hidden_size: int = 32,
    num_layers: int = 1,
    dropout: float = 0.0,
    head: Literal["auto", "last", "per_step"] = "auto",
    batch_size: int | None = None,
    max_epochs: int = 60,
    learning_rate: float = 5e-3,
    patience: int = 6,
    loss: Literal["mse", "huber"] = "mse",
    seed: int = 0,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    season: int | None = None,
    gap_policy: Literal["fail", "fill"] = "fail",
    max_gap_steps: int | None = None,
    registered_model: str | None = None,
    experiment: str | None = None,
    as_of: dt.datetime | None = None,
    trigger: Trigger | None = None,
) -> TrainSummary:
    """Train LSTM and GRU candidates on observations up to `as_of`; register the best; promote only a better one.

    Evaluation origins are every `eval_stride` steps of the test part (default: one season, i.e. daily origins
    for sub-daily data); MASE uses the seasonal-naive scale with `season` (default: from the frequency).
    `batch_size` None trains each cell at its own default (32 for the LSTM, 64 for the GRU).
    """
    settings = get_settings()
    context = resolve_run_context(as_of, trigger)
    model_name = registered_model or settings.registered_model
    cells = cells or ["lstm", "gru"]

    frame = read_observations_task(settings.db_url, series, context.as_of)
    frame, report = validate_observations_task(
        frame,
        gap_policy=gap_policy,
        max_gap_steps=max_gap_steps,
        min_length={"lookback": lookback, "horizon": horizon, "validation": horizon, "test": horizon},
        source=f"observations as of {context.as_of.isoformat()}",
    )
    seasons = evaluate.seasons_task(frame, season)
    windows = WindowConfig(
        lookback=lookback,
        horizon=horizon,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        stride=eval_stride or seasons.season,
    )
    data = make_windows_task(frame, windows)

    experiment_id = registry.configure_mlflow_task(
        settings.tracking_uri, experiment or settings.experiment, settings.artifact_root
    )
    run_tags = context.mlflow_tags()
    parent_run_id = registry.start_run_task(experiment_id, f"train {context.as_of:%Y-%m-%d %H:%M}", run_tags)
    registry.log_training_data_task(parent_run_id, frame, data, {"seqcast.validation": str(report.json_path)})

    config = TrainConfig(
        hidden_size=hidden_size,
        num_layers=num_layers,
        dropout=dropout,
        head=head,
        batch_size=batch_size,
        max_epochs=max_epochs,
        learning_rate=learning_rate,
        patience=patience,
        loss=loss,
        seed=seed,
        device=device,
    )
    candidates = []
    for cell in cells:
        run_id = registry.start_run_task(experiment_id, cell, {**run_tags, "seqcast.cell": cell}, parent_run_id)
        fit = train_candidate_task(data, config.model_copy(update={"cell": cell}), registry.epoch_logger(run_id))
        predicted = evaluate.forecast_test_windows_task(fit, data)
        scores = evaluate.evaluate_task(
            data.panel,
            data.test_starts,
            predicted,
            lookback,
            horizon,
            seasons.season,
            data.splits.train_end,
            seasons.weekly,
            model_name=cell,
            artifact_key=f"test-evaluation-{cell}",
        )
        with tempfile.TemporaryDirectory(prefix="seqcast-plots-") as plots_dir:
            plots = evaluate.plot_forecasts_task(
                data.panel,
                data.test_starts,
                predicted,
                lookback,
                horizon,
                Path(plots_dir),
                baseline=scores.baseline_forecasts[evaluate.SEASONAL_NAIVE],
                scores=scores.model,
            )
            model_uri = registry.log_candidate_task(run_id, fit, scores, data, frame, plots)
        registry.end_run_task(run_id)
        candidates.append(CandidateSummary(cell, run_id, model_uri, scores.metrics()))

    best = min(candidates, key=lambda c: c.metrics["test_mase"])
    champion = evaluate.score_champion_task(model_name, data, seasons.season, seasons.weekly)
    version = registry.register_model_task(model_name, best.model_uri, best.run_id)
    decision = registry.decide_promotion(
        best.metrics["test_mase"], best.metrics["seasonal_naive_test_mase"], champion.mase
    )
    alias = registry.apply_decision_task(model_name, version, decision)
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
    )
    registry.finish_training_task(summary.parent_run_id, summary_markdown(summary))
    return summary


def summary_markdown(summary: TrainSummary) -> str:
    """Candidates vs baselines vs champion, as the Prefect artifact and MLflow note show it."""
    lines = [
        f"# seqcast training as of {summary.as_of}",
        "",
        f"**{summary.model_name} v{summary.version}** ({summary.best_cell}) -> `{summary.alias}`: {summary.reason}",
        "",
        "| candidate | test MAE | test MASE | naive MASE | seasonal naive MASE | weekly seasonal naive MASE |",
        "|---|---|---|---|---|---|",
    ]
    for c in summary.candidates:
        m = c.metrics
        lines.append(
            f"| {c.cell} | {m['test_mae']:.4g} | {m['test_mase']:.4f} | {m['naive_test_mase']:.4f} "
            f"| {m['seasonal_naive_test_mase']:.4f} | {m.get('weekly_seasonal_naive_test_mase', float('nan')):.4f} |"
        )
    champion = "none" if summary.champion_mase is None else f"{summary.champion_mase:.4f}"
    lines += ["", f"Previous champion MASE on the same windows: {champion}"]
    return "\n".join(lines)
