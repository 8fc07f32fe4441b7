"""The networks of a run, one task each, trained side by side before the candidates: per cell, per partition of
the series, per scaling try.

The train flow plans the partitions from the run spec (`plan_partitions_task`; models/partitions.py says how series
are assigned; one partition holds every series), submits one `fit_network_task` per (cell, partition, scaling try:
"series" and "last" for scaling "auto") to its task runner, and hands each cell's fits to that cell's candidate
task (tasks/candidate.py). Per partition the try with the lower validation loss is kept (`fits_by_cell`, as
`tasks.train.fit_auto_scaling` does in one call); with several partitions the candidate combines them
(`combine_fits`) into one model, evaluated on every series' windows together, logged to the cell's MLflow child run
and registered as one model.

So the serial runner trains one network at a time, the threads runner as many as it has workers, and a Ray cluster
one per task it can place (a GPU each when it has them). Each fit sees only its partition's windows
(`partition_windows`) and trains from seed + its partition number with its own generator, so its results are the
same on every runner; with one partition they are those of `fit_forecaster` on every series.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.partitions import PartitionedForecaster, PartitionPlan, plan_partitions
from tasks import runners
from tasks.train import (
    FitResult,
    TrainConfig,
    announce_tries,
    choose_scaling,
    cpu_budget,
    fit_forecaster,
    scaling_tries,
    tag_record,
)

if TYPE_CHECKING:
    from tasks.evaluate import Evaluation
    from tasks.spec import PartitionSpec, RunSpec
    from tasks.windowing import WindowedData


@dataclass(frozen=True)
class PartitionJob:
    """One network to train: a cell with one concrete scaling on one partition's series (seed + partition number)."""

    config: TrainConfig
    partition: int
    name: str  # the partition's name
    label: str  # the task run's name: "<cell>-<scaling>", then "-<partition name>" when there are several
    tries: tuple[str, ...] = ()  # every scaling its cell and partition try, when more than one


@dataclass
class PartitionFit:
    """A partition's trained network with every epoch record its fit reported (per scaling when it had several
    tries), and where and when it trained."""

    partition: int
    name: str
    fit: FitResult
    epochs: list[dict[str, float]]  # the fit's epoch records, in order
    series: int  # series in the partition
    train_windows: int
    val_windows: int
    worker: dict[str, str]  # `runners.worker_identity()`
    started: float  # wall clock (time.time()) when the task began and ended
    finished: float


@dataclass(frozen=True)
class CellPartitions:
    """One cell's partition fits, in partition order, with the plan that routes every series to one of them."""

    plan: PartitionPlan
    fits: list[PartitionFit]


def partition_windows(data: WindowedData, members: np.ndarray) -> WindowedData:
    """`data` with only the windows of the series where `members [S]` is True, in every part; the panel, scaled
    values and scalers are shared, not copied (a window is its flat start, `WindowedData.window_index`)."""

    def kept(starts: np.ndarray) -> np.ndarray:
        series, _ = data.window_index(starts)
        return starts[members[series]]

    return dataclasses.replace(
        data,
        train_starts=kept(data.train_starts),
        val_starts=kept(data.val_starts),
        test_starts=kept(data.test_starts),
    )


def fit_jobs(spec: RunSpec, plan: PartitionPlan) -> list[PartitionJob]:
    """One job per (cell, partition, scaling try) of the run, cells outermost, then partitions."""
    jobs = []
    for cell in spec.model.cells:
        for k, name in enumerate(plan.names):
            config = spec.train_config(cell).model_copy(update={"seed": spec.training.seed + k})
            tries = scaling_tries(config)
            for scaling in tries:
                label = f"{cell}-{scaling}" + (f"-{name}" if plan.count > 1 else "")
                several = tries if len(tries) > 1 else ()
                jobs.append(PartitionJob(config.model_copy(update={"scaling": scaling}), k, name, label, several))
    return jobs


def fit_network(job: PartitionJob, data: WindowedData, plan: PartitionPlan, cores: int | None) -> PartitionFit:
    """Train the job's network on its partition's windows alone, on `cores` (None, on Ray: what Ray gave it)."""
    started = time.time()
    worker = runners.worker_identity(on_ray=cores is None)
    members = plan.members(job.partition)
    subset = data if plan.count == 1 else partition_windows(data, members)
    epochs: list[dict[str, float]] = []
    if job.tries and job.config.scaling == job.tries[0]:  # one INFO line per network, its tries' at DEBUG
        announce_tries(subset, job.config, job.tries, "as tasks of their own")
    with cpu_budget(cores or runners.worker_cores()):
        level = logging.DEBUG if job.tries else logging.INFO
        fit = fit_forecaster(subset, job.config, epochs.append, level=level)
    return PartitionFit(
        partition=job.partition,
        name=job.name,
        fit=fit,
        epochs=epochs,
        series=int(members.sum()),
        train_windows=len(subset.train_starts),
        val_windows=len(subset.val_starts),
        worker=worker,
        started=started,
        finished=time.time(),
    )


def fits_by_cell(
    plan: PartitionPlan, jobs: Sequence[PartitionJob], outcomes: Sequence[PartitionFit | Exception]
) -> dict[str, CellPartitions | Exception]:
    """Each cell's partition fits (the jobs' `outcomes`), in partition order, each partition's scaling tries reduced
    to the one kept; or the cell's first failed fit's error, which its candidate raises, so the other cells'
    candidates still finish."""
    tries: dict[str, dict[int, list[PartitionFit]]] = {}
    failed: dict[str, Exception] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, Exception):
            failed.setdefault(job.config.cell, outcome)
        else:
            tries.setdefault(job.config.cell, {}).setdefault(job.partition, []).append(outcome)
    kept: dict[str, CellPartitions | Exception] = {
        cell: CellPartitions(plan, [_kept_try(by_partition[k]) for k in sorted(by_partition)])
        for cell, by_partition in tries.items()
        if cell not in failed
    }
    return kept | failed


def _kept_try(tries: list[PartitionFit]) -> PartitionFit:
    """One partition's fits with different scalings as one: the lower validation loss kept (`choose_scaling`),
    every try's epochs under its scaling's suffix, then the kept one's under the plain names."""
    if len(tries) == 1:
        return tries[0]
    epochs = [tag_record(r, t.fit.train_config.scaling) for t in tries for r in t.epochs]
    fit = choose_scaling({t.fit.train_config.scaling: t.fit for t in tries}, epochs.append)
    fit.seconds = sum(t.fit.seconds for t in tries)
    kept = next(t for t in tries if t.fit is fit)
    started, finished = min(t.started for t in tries), max(t.finished for t in tries)
    return dataclasses.replace(kept, epochs=epochs, started=started, finished=finished)


def cell_fit(partitions: CellPartitions, config: TrainConfig) -> FitResult:
    """The cell's candidate network: its one partition's fit, or every partition's combined (`combine_fits`)."""
    return partitions.fits[0].fit if partitions.plan.count == 1 else combine_fits(partitions, config)


def combine_fits(partitions: CellPartitions, config: TrainConfig) -> FitResult:
    """One candidate of a cell's partition networks (a `PartitionedForecaster` routing by the plan) with how
    training went over all of them: `best_val_loss` is the combined model's validation loss (each partition's
    weighted by its validation windows), `history` per epoch the same weighting over the partitions still training,
    `seconds` their sum; `config` is the cell's (the run's seed), and the scaling "auto" kept is each network's."""
    fits, plan = partitions.fits, partitions.plan
    model = PartitionedForecaster([f.fit.model for f in fits], plan.routing(), plan.names, plan.by)
    val = np.array([f.val_windows for f in fits], dtype=np.float64)
    train = np.array([f.train_windows for f in fits], dtype=np.float64)
    best = np.array([f.fit.best_val_loss for f in fits])
    losses = [f.fit.extra.get("scaling_val_loss", {}) for f in fits]
    extra: dict[str, object] = {"partitions": len(fits)}
    if all(losses) and len({tuple(loss) for loss in losses}) == 1:  # "auto": each scaling's loss over all partitions
        extra["scaling_val_loss"] = {s: float(np.average([loss[s] for loss in losses], weights=val)) for s in losses[0]}
    seconds = sum(f.fit.seconds for f in fits)
    budget = config.max_windows_per_epoch  # each partition's fit draws at most this many windows an epoch
    per_epoch = [f.train_windows if budget is None else min(f.train_windows, budget) for f in fits]
    seen = np.array([n * len(f.fit.history) for n, f in zip(per_epoch, fits, strict=True)], dtype=np.float64)
    loop_seconds = seen / np.maximum([f.fit.windows_per_second for f in fits], 1e-9)  # training loops alone
    return FitResult(
        model=model,
        config=model.config,
        train_config=config,
        history=_combined_history(fits, train, val),
        best_epoch=max(f.fit.best_epoch for f in fits),
        best_val_loss=float(np.average(best, weights=val)),
        device=fits[0].fit.device,
        windows_per_second=float(seen.sum() / max(loop_seconds.sum(), 1e-9)),
        seconds=seconds,
        stopped_early=all(f.fit.stopped_early for f in fits),
        bf16=any(f.fit.bf16 for f in fits),
        extra=extra,
    )


def _combined_history(fits: Sequence[PartitionFit], train: np.ndarray, val: np.ndarray) -> list[dict[str, float]]:
    """Per epoch: the train and validation losses of the partitions still training at that epoch, weighted by their
    windows; seconds summed; the learning rate averaged."""
    history = []
    for epoch in range(1, max(len(f.fit.history) for f in fits) + 1):
        running = [k for k, f in enumerate(fits) if len(f.fit.history) >= epoch]
        records = [fits[k].fit.history[epoch - 1] for k in running]
        history.append(
            {
                "epoch": float(epoch),
                "train_loss": float(np.average([r["train_loss"] for r in records], weights=train[running])),
                "val_loss": float(np.average([r["val_loss"] for r in records], weights=val[running])),
                "seconds": float(sum(r["seconds"] for r in records)),
                "learning_rate": float(np.mean([r["learning_rate"] for r in records])),
            }
        )
    return history


def epoch_metrics(partitions: CellPartitions, combined: FitResult) -> dict[int, dict[str, float]]:
    """MLflow metrics by epoch: the combined history under the plain names (`train_loss`, `val_loss`, ...), and
    every partition's own records with `_p<k>` appended (`val_loss_last_p1` is partition 1's "last" try); with one
    partition its network's records as they are."""
    steps: dict[int, dict[str, float]] = {}
    if partitions.plan.count == 1:
        for record in partitions.fits[0].epochs:
            steps.setdefault(int(record["epoch"]), {}).update({k: v for k, v in record.items() if k != "epoch"})
        return steps
    for record in combined.history:
        steps.setdefault(int(record["epoch"]), {}).update({k: v for k, v in record.items() if k != "epoch"})
    for fit in partitions.fits:
        for record in fit.epochs:
            named = {f"{k}_p{fit.partition}": v for k, v in record.items() if k != "epoch"}
            steps.setdefault(int(record["epoch"]), {}).update(named)
    return steps


def partition_table(partitions: CellPartitions, evaluation: Evaluation) -> pd.DataFrame:
    """One row per partition: its name, series and windows, how its network trained (scaling, best epoch and
    validation loss, seconds, where and when), and its series' mean test MASE of the network alone and as served."""
    fits, plan = partitions.fits, partitions.plan
    model = evaluation.model.per_series.set_index("series_id")["mase"]
    served = evaluation.served.per_series.set_index("series_id")["mase"]
    partition = pd.Series(plan.index, index=plan.series_ids)
    return pd.DataFrame(
        {
            "partition": [f.partition for f in fits],
            "name": [f.name for f in fits],
            "series": [f.series for f in fits],
            "train_windows": [f.train_windows for f in fits],
            "val_windows": [f.val_windows for f in fits],
            "scaling": [f.fit.config.scaling for f in fits],
            "best_epoch": [f.fit.best_epoch for f in fits],
            "epochs": [len(f.fit.history) for f in fits],
            "best_val_loss": [f.fit.best_val_loss for f in fits],
            "train_seconds": [f.fit.seconds for f in fits],
            "test_mase": [model[partition.reindex(model.index) == f.partition].mean() for f in fits],
            "served_test_mase": [served[partition.reindex(served.index) == f.partition].mean() for f in fits],
            "worker": [f.worker.get("seqcast.worker", "") for f in fits],
            "started": pd.to_datetime([f.started for f in fits], unit="s", utc=True),
            "finished": pd.to_datetime([f.finished for f in fits], unit="s", utc=True),
        }
    )


@task(name="plan-partitions", cache_policy=NO_CACHE)
def plan_partitions_task(spec: PartitionSpec, series_ids: list[str]) -> PartitionPlan:
    """The partition of every series of the run (`models.partitions.plan_partitions`); not retried: bad settings
    fail the same way again."""
    return plan_partitions(series_ids, spec.partitions, spec.partition_groups)


@task(name="train-network", task_run_name="train-{job.label}", cache_policy=NO_CACHE)
def fit_network_task(job: PartitionJob, data: WindowedData, plan: PartitionPlan, cores: int | None) -> PartitionFit:
    """Prefect wrapper of `fit_network`; not retried (a diverged fit fails the same way again)."""
    return fit_network(job, data, plan, cores)
