"""One candidate from start to end, as one task the train flow submits per cell: start its MLflow child run ->
keep its networks -> calibrate intervals -> forecast the test windows -> evaluate -> plots -> log -> end the run.

Everything it needs travels in its arguments (the tracking URI too), so it runs alike in a thread of the flow's
process and in a Ray worker on another machine (tasks/runners.py). Its child run ends FINISHED, or FAILED when a
step fails (the error is raised again).

The cell's networks were trained beforehand, one task per (partition, scaling try) (tasks/partitions.py): the
candidate keeps them (`cell_fit`: the better scaling, the partitions combined into one model when there are
several), logs their epochs (`<metric>_<scaling>`, and `<metric>_p<k>` with a `partitions.csv` for partitions)
and goes on as above on every series' windows together. A warm start (tasks/warm_start.py) is the one candidate
that trains here, on its `cpu_budget` share of the cores, from the champion's weights.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import evaluate, intervals, partitions, plots, registry, runners
from tasks.train import FitResult, TrainConfig, cpu_budget, train_candidate_task

if TYPE_CHECKING:
    from tasks.windowing import WindowedData


@dataclass(frozen=True)
class CandidateJob:
    """What one candidate needs besides the data: its training config, where to log, how to evaluate."""

    config: TrainConfig
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_name: str
    tags: dict[str, str]
    level: float  # the intervals' coverage
    season: int  # MASE's season
    baseline_seasons: list[int] = field(default_factory=list)
    cores: int | None = None  # its share of the cores; None (on Ray): what Ray gave it (`runners.worker_cores`)
    name: str | None = None  # the candidate's name when it is not its cell's ("gru-warm")
    initial_state: dict[str, Any] | None = None  # weights to start from (a warm start, tasks/warm_start.py)

    @property
    def candidate(self) -> str:
        """The candidate's name in the run: its cell, or `name`."""
        return self.name or self.config.cell


@dataclass
class CandidateResult:
    """A logged candidate: its run, model and test evaluation, and where and when it trained."""

    name: str  # its cell, or "<cell>-warm" (`CandidateJob.candidate`)
    run_id: str
    model_uri: str
    evaluation: evaluate.Evaluation
    worker: dict[str, str]  # `runners.worker_identity()`
    started: float  # wall clock (time.time()) when the task began and ended
    finished: float


def run_candidate(
    job: CandidateJob,
    data: WindowedData,
    frame: pd.DataFrame,
    trained: partitions.CellPartitions | Exception | None = None,
) -> CandidateResult:
    """Keep its `trained` networks (or train them: a warm start), evaluate and log one candidate in its own MLflow
    child run (see the module's docstring). `trained` an error: a network of the cell failed, and so does the run."""
    import mlflow

    started = time.time()
    mlflow.set_tracking_uri(job.tracking_uri)  # a Ray worker is a fresh process
    mlflow.set_registry_uri(job.tracking_uri)
    worker = runners.worker_identity(on_ray=job.cores is None)
    run_id = registry.start_run_task(job.experiment_id, job.run_name, {**job.tags, **worker}, job.parent_run_id)
    try:
        with cpu_budget(job.cores or runners.worker_cores()):
            model_uri, scores = _train_and_log(job, run_id, data, frame, trained)
    except BaseException:
        registry.end_run_task(run_id, failed=True)
        raise
    registry.end_run_task(run_id)
    return CandidateResult(job.candidate, run_id, model_uri, scores, worker, started, time.time())


def _train_and_log(
    job: CandidateJob,
    run_id: str,
    data: WindowedData,
    frame: pd.DataFrame,
    trained: partitions.CellPartitions | Exception | None,
) -> tuple[str, evaluate.Evaluation]:
    cell = job.config.cell
    fit = _fit(job, run_id, data, trained)
    calibration = intervals.calibrate_intervals_task(fit, data, job.level, job.season, job.baseline_seasons)
    predicted = evaluate.forecast_test_windows_task(fit, data)
    scores = evaluate.evaluate_task(
        data,
        predicted,
        job.season,
        job.baseline_seasons,
        model_name=cell,
        artifact_key=f"test-evaluation-{cell}",
        calibration=calibration,
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
            bounds=scores.bounds.get(cell),
            level=job.level,
        )
        figures.append(plots.plot_mae_by_step_task(scores, Path(plots_dir)))
        if isinstance(trained, partitions.CellPartitions) and trained.plan.count > 1:
            table = Path(plots_dir) / "partitions.csv"
            partitions.partition_table(trained, scores).to_csv(table, index=False)
            registry.log_artifacts(run_id, [table])
            registry.log_params(run_id, {"partitions": trained.plan.count, "partition_by": trained.plan.by})
        model_uri = registry.log_candidate_task(run_id, fit, scores, data, frame, figures)
    return model_uri, scores


def _fit(
    job: CandidateJob, run_id: str, data: WindowedData, trained: partitions.CellPartitions | Exception | None
) -> FitResult:
    """The candidate's network: trained here on every series, or its partitions' networks combined (their epochs
    logged to the run, step = epoch)."""
    if isinstance(trained, Exception):
        raise trained
    if trained is None:
        return train_candidate_task(data, job.config, registry.epoch_logger(run_id), job.initial_state)
    fit = partitions.cell_fit(trained, job.config)
    for epoch, metrics in sorted(partitions.epoch_metrics(trained, fit).items()):
        registry.log_metrics(run_id, metrics, step=epoch)
    return fit


@task(name="make-candidate", task_run_name="make-candidate-{job.candidate}", cache_policy=NO_CACHE)
def candidate_task(
    job: CandidateJob,
    data: WindowedData,
    frame: pd.DataFrame,
    trained: partitions.CellPartitions | Exception | None = None,
) -> CandidateResult:
    """Prefect wrapper of `run_candidate`; not retried as a whole (its MLflow steps retry on their own)."""
    return run_candidate(job, data, frame, trained)
