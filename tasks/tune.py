"""The tuning stage: search the run spec's network and training settings with Optuna, one trial per Prefect task.

- The budget (`TuneBudget`): a number of trials and/or minutes; after the minutes no trial is started, and the
  running ones finish (or are pruned). A new study's first trials are the spec's own settings (`start_from_spec`).
- The search space (`SearchSpace`), relative to the data: the lookback as a factor of the spec's (the frequency's
  default, `models.frequency.default_window`, when the spec leaves it empty), kept to what the series can hold;
  hidden size, layers, learning rate, dropout, batch size, the concrete scalings (not "auto": the study compares
  "series" and "last" itself, at half the cost) and, when the spec lists two cells, the cell.
- The objective: the mean per-series MASE of the trial's network on the validation windows (never the test part:
  it stays for the gate), forecast through the serving path. MASE divides by each series' in-sample seasonal-naive
  MAE, so it compares across scalings, lookbacks and series.
- Pruning (median pruner): after every epoch a trial reports its best validation loss so far divided by the naive
  forecast's loss on the same windows (`relative_loss`). The network's loss is in series-scaled units whatever its
  scaling (models/forecaster.py de-normalises inside the network), and the validation windows' targets are the
  same for every lookback, so these values compare across trials at every epoch; validation MASE itself needs a
  forecast per epoch, which `fit_forecaster`'s epoch callback cannot make. The ratio to naive keeps it scale-free
  when a resumed study meets new data.
- Sampling (TPE with a constant liar, so parallel trials spread out) happens in the flow's process, with ask/tell
  on the study in the project's database (tasks/tune_study.py); each trial task reads the study from the database
  URL to report epochs and ask whether to stop, so it runs alike in a thread and in a Ray worker on another
  machine.

`run_trials` keeps as many trials running as the flow's task runner runs side by side; `run_trial` is one trial.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from models.errors import SeqcastError
from tasks import registry, runners
from tasks.run_context import run_logger

if TYPE_CHECKING:
    import optuna
    from prefect.futures import PrefectFuture

    from tasks.spec import RunSpec
    from tasks.train import FitResult
    from tasks.windowing import WindowedData

TrialState = Literal["COMPLETE", "PRUNED", "FAIL"]
DEFAULT_TRIALS = 20
START_POINT_ATTR = "start_point"  # user attribute of the trials that are the spec's own settings
WINDOW_MASE_ATTR = "val_window_mase"  # user attribute: a complete trial's MASE on each validation window
SWITCH_ALPHA = 0.05  # the one-sided sign test's level a trial must reach to replace the spec's own settings


class TuneError(SeqcastError, ValueError):
    """A tuning run cannot start or ended with nothing to show (bad budget, series too short, every trial failed)."""


class TuneBudget(BaseModel):
    """How much to tune: trials and/or minutes, how many side by side, and how trials are sampled and pruned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=f"Trials to run in this call (added to the study's earlier ones). Default: {DEFAULT_TRIALS} "
        "when minutes is not given either, else no limit.",
    )
    minutes: float | None = Field(
        default=None,
        gt=0.0,
        le=60 * 24 * 30,
        description="Start no trial after this many minutes; the running ones finish or are pruned. Default: no limit.",
    )
    parallel: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Trials running side by side. Default: what the flow's task runner runs at once (the cores "
        "with threads, the cluster's CPUs on Ray, 1 serial).",
    )
    trial_epochs: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Most epochs of each trial (early stopping may stop sooner). Default: the spec's max_epochs. "
        "The saved best spec keeps the spec's max_epochs.",
    )
    startup_trials: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Complete trials before pruning starts and before TPE models the search (random until then).",
    )
    warmup_epochs: int = Field(
        default=3, ge=0, le=100_000, description="Epochs each trial trains before it may be pruned."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Seed of the sampler. Default: the spec's training seed. Parallel trials finish in an order "
        "that varies, so only a serial study repeats exactly.",
    )

    @property
    def trial_limit(self) -> int | None:
        """The trials this call may start: `trials`, else DEFAULT_TRIALS without `minutes`, else no limit."""
        if self.trials is None and self.minutes is None:
            return DEFAULT_TRIALS
        return self.trials


# ---------------------------------------------------------------------------------------------------------------
# the search space


@dataclass(frozen=True)
class SearchSpace:
    """What each trial samples, and the window limits of this data (`plan_search`)."""

    base_lookback: int  # the spec's lookback, or the frequency's default
    min_lookback: int
    max_lookback: int  # the longest lookback every series holds with its validation and test parts
    horizon: int
    freq: str
    cells: tuple[str, ...]
    lookback_factors: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
    hidden_sizes: tuple[int, ...] = (16, 32, 64, 128)
    layers: tuple[int, int] = (1, 3)
    learning_rates: tuple[float, float] = (3e-4, 3e-2)
    dropout: tuple[float, float, float] = (0.0, 0.5, 0.1)  # low, high, step
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    scalings: tuple[str, ...] = ("series", "last", "window", "last_level")

    def lookback(self, factor: float) -> int:
        """The lookback of a factor: the base times it, kept within what the data allows."""
        return int(min(max(round(factor * self.base_lookback), self.min_lookback), self.max_lookback))

    def describe(self) -> dict[str, str]:
        """The space as MLflow params of the tuning run."""
        lookbacks = sorted({self.lookback(f) for f in self.lookback_factors})
        factors = "/".join(f"{f:g}" for f in self.lookback_factors)
        return {
            "space.lookback": f"{lookbacks} (x{factors} of {self.base_lookback})",
            "space.hidden_size": str(list(self.hidden_sizes)),
            "space.num_layers": f"{self.layers[0]}..{self.layers[1]}",
            "space.learning_rate": f"{self.learning_rates[0]:g}..{self.learning_rates[1]:g} (log)",
            "space.dropout": f"{self.dropout[0]:g}..{self.dropout[1]:g} step {self.dropout[2]:g}",
            "space.batch_size": str(list(self.batch_sizes)),
            "space.scaling": str(list(self.scalings)),
            "space.cell": str(list(self.cells)),
        }


def plan_search(spec: RunSpec, resolved: RunSpec, frame: pd.DataFrame) -> SearchSpace:
    """The search space for `spec` on `frame` (validated rows), `resolved` being `spec` resolved on them.

    The lookback may range from half to twice the resolved one, but no longer than every series holds (a training
    window plus validation and test parts) and no shorter than the seasons the spec names, or the horizon with
    head "per_step". TuneError when not even the shortest fits.
    """
    from models.frequency import infer_freq

    w = resolved.window
    assert w.lookback is not None and w.horizon is not None
    lengths = frame.groupby("series_id", sort=False).size().to_numpy(dtype=np.int64)
    horizon = w.horizon
    val = np.maximum(horizon, np.ceil(w.val_fraction * lengths)).astype(np.int64)
    test = np.maximum(horizon, np.ceil(w.test_fraction * lengths)).astype(np.int64)
    max_lookback = int((lengths - horizon - val - test).min())
    floor = [1]
    if spec.evaluation.seasons:
        floor.append(max(spec.evaluation.seasons))
    if spec.model.head == "per_step":
        floor.append(horizon)
    min_lookback = max(floor)
    if max_lookback < min_lookback:
        raise TuneError(
            f"the shortest series holds a lookback of at most {max_lookback} beside its validation and test parts, "
            f"and the spec needs at least {min_lookback}; ingest longer series or leave the short ones out with "
            "--series"
        )
    longest = frame.groupby("series_id", sort=False).size().idxmax()
    freq = infer_freq(pd.DatetimeIndex(frame.loc[frame["series_id"] == longest, "ts"]).sort_values())
    return SearchSpace(
        base_lookback=w.lookback,
        min_lookback=min_lookback,
        max_lookback=max_lookback,
        horizon=horizon,
        freq=freq,
        cells=tuple(sorted(spec.model.cells)),
    )


def suggest_spec(trial: optuna.Trial, spec: RunSpec, space: SearchSpace) -> RunSpec:
    """The spec of one trial: `spec` with the settings the trial samples (one cell: the sampled one)."""
    factor = trial.suggest_categorical("lookback_factor", list(space.lookback_factors))
    cell = trial.suggest_categorical("cell", list(space.cells)) if len(space.cells) > 1 else space.cells[0]
    low, high, step = space.dropout
    model = {
        "cells": [cell],
        "hidden_size": trial.suggest_categorical("hidden_size", list(space.hidden_sizes)),
        "num_layers": trial.suggest_int("num_layers", *space.layers),
        "dropout": trial.suggest_float("dropout", low, high, step=step),
        "scaling": trial.suggest_categorical("scaling", list(space.scalings)),
    }
    training = {
        "learning_rate": trial.suggest_float("learning_rate", *space.learning_rates, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_sizes)),
    }
    return with_settings(spec, window={"lookback": space.lookback(float(factor))}, model=model, training=training)


def starting_points(spec: RunSpec, space: SearchSpace) -> list[dict[str, Any]]:
    """The spec's own settings as trial parameters: one point per cell and per scaling "auto" would try (or the
    spec's scaling), with the spec's lookback, network and training settings where the space holds them (a setting
    outside it is left to the sampler)."""
    from tasks.train import DEFAULT_BATCH_SIZE

    m, t = spec.model, spec.training
    low, high, _ = space.dropout
    scalings = ["series", "last"] if m.scaling == "auto" else [m.scaling]
    points = []
    for cell in space.cells:
        for scaling in scalings:
            point: dict[str, Any] = {
                "lookback_factor": 1.0,
                "hidden_size": m.hidden_size,
                "num_layers": m.num_layers,
                "dropout": m.dropout,
                "scaling": scaling,
                "learning_rate": t.learning_rate,
                "batch_size": t.batch_size or DEFAULT_BATCH_SIZE[cell],
            }
            if len(space.cells) > 1:
                point["cell"] = cell
            inside = {
                "hidden_size": m.hidden_size in space.hidden_sizes,
                "num_layers": space.layers[0] <= m.num_layers <= space.layers[1],
                "dropout": low <= m.dropout <= high,
                "scaling": scaling in space.scalings,
                "learning_rate": space.learning_rates[0] <= t.learning_rate <= space.learning_rates[1],
                "batch_size": point["batch_size"] in space.batch_sizes,
            }
            points.append({k: v for k, v in point.items() if inside.get(k, True)})
    return points


def is_start_point(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial is one of the spec's own settings (`start_from_spec`)."""
    return bool(trial.user_attrs.get(START_POINT_ATTR))


def start_from_spec(study: optuna.Study, spec: RunSpec, space: SearchSpace) -> int:
    """On a study with no trials yet, queue the spec's own settings (`starting_points`) as its first trials: the
    search starts from what trains now, so its best is at least as good on validation as those settings trained
    for the trials' epochs. Returns the trials queued."""
    if study.get_trials(deepcopy=False):
        return 0
    from tasks.spec import ExecutionSpec
    from tasks.tune_study import START_SPEC_ATTR

    points = starting_points(spec, space)
    for point in points:
        study.enqueue_trial(point, user_attrs={START_POINT_ATTR: True}, skip_if_exists=True)
    study.set_user_attr(
        START_SPEC_ATTR, with_settings(spec, execution=ExecutionSpec().model_dump()).model_dump(mode="json")
    )
    return len(points)


def with_settings(spec: RunSpec, **parts: dict[str, Any]) -> RunSpec:
    """A validated copy of `spec` with some settings of some parts replaced."""
    from tasks.spec import RunSpec

    data = spec.model_dump()
    for part, values in parts.items():
        data[part].update(values)
    return RunSpec.model_validate(data)


TUNED_SETTINGS = (
    ("window", "lookback"),
    ("model", "cells"),
    ("model", "hidden_size"),
    ("model", "num_layers"),
    ("model", "dropout"),
    ("model", "scaling"),
    ("training", "learning_rate"),
    ("training", "batch_size"),
)


def tuned_settings(spec: RunSpec) -> dict[str, Any]:
    """The settings tuning chooses, as `part.name` -> value."""
    return {f"{part}.{name}": getattr(getattr(spec, part), name) for part, name in TUNED_SETTINGS}


# ---------------------------------------------------------------------------------------------------------------
# one trial


@dataclass(frozen=True)
class TrialJob:
    """What one trial task needs besides the observations: its spec, the study, where to log."""

    number: int
    trial_id: int
    spec: RunSpec  # the trial's spec as it trains (its max_epochs: the budget's trial_epochs)
    freq: str
    storage_url: str
    study_name: str
    startup_trials: int
    warmup_epochs: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    cores: int | None = None  # its share of the cores; None (on Ray): what Ray gave it


@dataclass
class TrialOutcome:
    """How a trial ended: its state, validation MASE (complete trials), last reported value and its MLflow run."""

    number: int
    state: TrialState
    value: float | None  # mean per-series validation MASE; None unless complete
    relative_loss: float | None  # the last value reported to the pruner
    epochs: int
    seconds: float
    run_id: str | None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    interrupted: bool = False
    window_mase: list[float] | None = None  # complete trials: MASE of each validation window (`validation_scores`)


def make_pruner(startup_trials: int, warmup_epochs: int) -> optuna.pruners.BasePruner:
    """The median pruner: stop a trial whose best relative validation loss so far is worse than the median of the
    complete trials' at the same epoch, once `startup_trials` have completed and after `warmup_epochs`."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)


def make_sampler(seed: int, study: optuna.Study, startup_trials: int) -> optuna.samplers.BaseSampler:
    """TPE, random until `startup_trials` trials have completed; a constant liar gives the running trials a bad value
    while sampling, so trials started side by side spread out. Seeded with `seed` plus the trials the study holds, so
    a resumed study does not draw its first trials' settings again."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed + len(study.get_trials(deepcopy=False)), n_startup_trials=startup_trials, constant_liar=True
        )


def prepare_study(url: str, name: str, spec: RunSpec, space: SearchSpace, budget: TuneBudget) -> optuna.Study:
    """The study `name` at `url` with this run's pruner and sampler (seeded with the budget's seed, else the spec's);
    a new one starts from the spec's own settings (`start_from_spec`)."""
    from tasks.tune_study import open_study

    study = open_study(url, name, make_pruner(budget.startup_trials, budget.warmup_epochs))
    study.sampler = make_sampler(
        budget.seed if budget.seed is not None else spec.training.seed, study, budget.startup_trials
    )
    start_from_spec(study, spec, space)
    return study


def naive_validation_loss(data: WindowedData, loss: str, huber_delta: float = 1.0) -> float:
    """The training loss of the naive forecast (the last input repeated) on the validation windows, in the same
    series-scaled units as the network's validation loss; the denominator of `relative_loss`."""
    starts = np.asarray(data.val_starts, dtype=np.int64)
    targets = data.scaled[starts[:, None] + data.lookback + np.arange(data.horizon)].astype(np.float64)  # [N, H]
    last = data.scaled[starts + data.lookback - 1].astype(np.float64)[:, None]  # [N, 1]
    error = np.abs(targets - last)  # [N, H]
    if loss == "huber":
        per_point = np.where(error < huber_delta, 0.5 * error**2, huber_delta * (error - 0.5 * huber_delta))
    else:
        per_point = error**2
    value = float(per_point.mean()) if per_point.size else math.nan
    return value if value > 0 else 1.0  # a flat validation part: the loss itself


def validation_mase(fit: FitResult, data: WindowedData, season: int) -> float:
    """Mean per-series MASE of a fitted network on the validation windows, forecast as serving would."""
    return validation_scores(fit, data, season)[0]


def validation_scores(fit: FitResult, data: WindowedData, season: int) -> tuple[float, list[float]]:
    """Mean per-series MASE of a fitted network on the validation windows, forecast as serving would, and each
    window's own MASE (its MAE / its series' scale), in the order of `data.val_starts`: the same targets for every
    lookback, so two trials on the same data pair window by window (`clearly_better`)."""
    from models.packaging import forecast_origins
    from tasks.evaluate import candidate_forecaster

    forecasts = forecast_origins(candidate_forecaster(fit, data), data.panel, *data.window_index(data.val_starts))
    return window_scores(data, season, forecasts)


def window_scores(data: WindowedData, season: int, forecasts: np.ndarray) -> tuple[float, list[float]]:
    """`validation_scores` of forecasts `[N_val, H]` of the validation windows."""
    from tasks.evaluate import mase_scales, score_forecasts, target_values

    starts = np.asarray(data.val_starts, dtype=np.int64)
    train_end = data.splits.train_end
    scores = score_forecasts(data.panel, starts, forecasts, data.lookback, data.horizon, season, train_end)
    actual = target_values(data.panel.values, starts, data.lookback, data.horizon)
    scale = mase_scales(data.panel, train_end, season)[data.panel.series_of(starts)]
    per_window = np.abs(actual - np.asarray(forecasts, dtype=np.float64)).mean(axis=1) / scale
    return float(scores.overall["mase"]), [float(v) for v in per_window]


@dataclass(frozen=True)
class SwitchTest:
    """Whether a trial is clearly better than the spec's own settings on the validation windows (`clearly_better`)."""

    switch: bool
    wins: int  # windows where the trial's error is lower
    losses: int  # windows where it is higher
    p_value: float  # one-sided sign test: P(at least `wins` of wins + losses | no difference)
    reason: str


def clearly_better(
    candidate: list[float], reference: list[float], alpha: float = SWITCH_ALPHA, compared: int = 1
) -> SwitchTest:
    """A paired, one-sided sign test over the validation windows: does `candidate` (a trial's MASE per window) beat
    `reference` (the spec's own settings') on more windows than chance would give? It switches only when its mean is
    lower too and P(at least that many wins | each window a coin flip) <= `alpha` / `compared`, `compared` being the
    sampled trials the candidate was chosen from as the best (Bonferroni: the best of many is better than the
    reference on the same windows by chance more often than one trial is). With few windows this cannot happen (4
    windows: at best p = 1/16), which is the point: a small validation part cannot tell close settings apart, so
    the defaults stay. Windows of unequal count (the data grew between trials) are not compared: no switch."""
    if len(candidate) != len(reference) or not candidate:
        return SwitchTest(False, 0, 0, 1.0, "the trials were scored on different validation windows")
    diff = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    if not np.isfinite(diff).all():
        return SwitchTest(False, 0, 0, 1.0, "a validation window has no finite error")
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    n = wins + losses
    p_value = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0
    level = alpha / max(compared, 1)
    switch = bool(diff.mean() > 0 and p_value <= level)
    verdict = "clearly better" if switch else "not clearly better"
    reason = (
        f"{verdict} than the spec's own settings: lower error on {wins} of {len(diff)} validation windows, higher "
        f"on {losses} (sign test p = {p_value:.3g}; switching at p <= {alpha:g} / {max(compared, 1)} trials "
        f"= {level:.3g})"
    )
    return SwitchTest(switch, wins, losses, p_value, reason)


def run_trial(job: TrialJob, frame: pd.DataFrame) -> TrialOutcome:
    """Train one trial in its own MLflow child run and report each epoch to the study; pruned when the pruner says.

    Never raises for the trial's own failure (a diverged fit, a lookback the data refuses): the outcome says FAIL
    and why, and the child run ends FAILED."""
    import mlflow
    import optuna

    from models.frequency import season_length
    from tasks.spec import resolve_for_frame
    from tasks.train import TrainingInterruptedError, cpu_budget, fit_forecaster
    from tasks.tune_study import open_study
    from tasks.windowing import prepare_windows

    started = time.perf_counter()
    mlflow.set_tracking_uri(job.tracking_uri)  # a Ray worker is a fresh process
    mlflow.set_registry_uri(job.tracking_uri)
    cell = job.spec.model.cells[0]
    worker = runners.worker_identity(on_ray=job.cores is None)
    tags = {**job.tags, **worker, "seqcast.trial": str(job.number), "seqcast.cell": cell}
    run_id = registry.start_run(job.experiment_id, f"trial {job.number} {cell}", tags, job.parent_run_id)
    reported: list[float] = []
    try:
        pruner = make_pruner(job.startup_trials, job.warmup_epochs)
        study = open_study(job.storage_url, job.study_name, pruner=pruner, sampler=optuna.samplers.RandomSampler())
        trial = optuna.trial.Trial(study, job.trial_id)  # the trial the flow asked for, to report epochs to
        spec = resolve_for_frame(job.spec, frame, job.freq)
        data = prepare_windows(frame, spec.window_config(), freq=job.freq)
        config = spec.train_config(cell)
        registry.log_params(run_id, {**trial.params, **tuned_settings(spec), "training.max_epochs": config.max_epochs})
        naive = naive_validation_loss(data, config.loss, config.huber_delta)
        log_epoch = registry.epoch_logger(run_id)

        def on_epoch(record: dict[str, float]) -> None:
            value = min([record["val_loss"] / naive, *reported[-1:]])  # the best so far: early stopping keeps it
            reported.append(value)
            log_epoch({**record, "val_relative_loss": value})
            trial.report(value, int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {int(record['epoch'])}: relative loss {value:.4f}")

        with cpu_budget(job.cores or runners.worker_cores()):
            fit = fit_forecaster(data, config, on_epoch)
            value, per_window = validation_scores(fit, data, season_length(data.freq))
        registry.log_metrics(run_id, {"val_mase": value, "best_epoch": fit.best_epoch, "train_seconds": fit.seconds})
        state: TrialState = "COMPLETE"
        error: str | None = None
    except optuna.TrialPruned as exc:
        state, value, error, per_window = "PRUNED", math.nan, str(exc), []
    except TrainingInterruptedError as exc:
        registry.end_run(run_id, failed=True)
        return _outcome(job, "FAIL", None, reported, started, run_id, str(exc), interrupted=True)
    except Exception as exc:
        run_logger(__name__).warning("trial %d failed: %s: %s", job.number, type(exc).__name__, exc)
        registry.end_run(run_id, failed=True)
        return _outcome(job, "FAIL", None, reported, started, run_id, f"{type(exc).__name__}: {exc}")
    registry.get_client().set_tag(run_id, "seqcast.trial_state", state)
    registry.end_run(run_id)
    outcome = _outcome(job, state, None if state != "COMPLETE" else value, reported, started, run_id, error)
    outcome.window_mase = per_window if state == "COMPLETE" else None
    return outcome


def _outcome(
    job: TrialJob,
    state: TrialState,
    value: float | None,
    reported: list[float],
    started: float,
    run_id: str | None,
    error: str | None,
    interrupted: bool = False,
) -> TrialOutcome:
    return TrialOutcome(
        number=job.number,
        state=state,
        value=value,
        relative_loss=reported[-1] if reported else None,
        epochs=len(reported),
        seconds=time.perf_counter() - started,
        run_id=run_id,
        params=tuned_settings(job.spec),
        error=error,
        interrupted=interrupted,
    )


@task(name="train-trial", task_run_name="train-trial-{job.number}", cache_policy=NO_CACHE)
def trial_task(job: TrialJob, frame: pd.DataFrame) -> TrialOutcome:
    """Prefect wrapper of `run_trial`; not retried (a trial that failed is told to the study as failed)."""
    return run_trial(job, frame)


# ---------------------------------------------------------------------------------------------------------------
# the loop: ask, submit, tell


def side_by_side() -> int:
    """How many trials run at once: one per worker of the serial runner, one per core on threads (at most its
    workers), or the Ray cluster's CPUs."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = None if context is None else context.task_runner
    if type(runner).__name__ == "RayTaskRunner":
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = getattr(runner, "_max_workers", None)
    return max(1, min(int(workers), runners.machine_cores())) if workers else runners.machine_cores()


@dataclass(frozen=True)
class TrialPlan:
    """Everything a trial job shares with the others in one tuning run."""

    spec: RunSpec  # the user's spec (settings left empty follow the data)
    space: SearchSpace
    storage_url: str
    study_name: str
    budget: TuneBudget
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]

    def job(self, trial: optuna.Trial, cores: int | None) -> TrialJob:
        """Sample the trial's settings and make its job; the spec to deploy if it wins is saved on the trial
        (`spec`), with the `execution` part at its defaults: where tuning ran is not where the nightly training
        runs (a deployment's runs take the worker's runner)."""
        from tasks.spec import ExecutionSpec

        spec = suggest_spec(trial, self.spec, self.space)
        trial.set_user_attr("spec", with_settings(spec, execution=ExecutionSpec().model_dump()).model_dump(mode="json"))
        # the spec's own settings train as the nightly training would (its max_epochs), so the reference that a
        # sampled trial must clearly beat (`clearly_better`) is not handicapped by the trials' shorter budget
        start_point = bool(trial.user_attrs.get(START_POINT_ATTR))
        epochs = spec.training.max_epochs if start_point else self.budget.trial_epochs or spec.training.max_epochs
        return TrialJob(
            number=trial.number,
            trial_id=trial._trial_id,  # Optuna has no public accessor; the worker reopens the trial by it
            spec=with_settings(spec, training={"max_epochs": epochs}),
            freq=self.space.freq,
            storage_url=self.storage_url,
            study_name=self.study_name,
            startup_trials=self.budget.startup_trials,
            warmup_epochs=self.budget.warmup_epochs,
            tracking_uri=self.tracking_uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id,
            tags=self.tags,
            cores=cores,
        )


def run_trials(
    study: optuna.Study,
    plan: TrialPlan,
    submit: Callable[[TrialJob], PrefectFuture[TrialOutcome]],
    parallel: int,
) -> list[TrialOutcome]:
    """Run the budget's trials, `parallel` at a time: ask the study for a trial, submit its job, tell the study how
    each ended as it finishes, until the trials are spent or the minutes are up (then the running ones finish).
    Returns the outcomes in the order they finished. A Ctrl-C stops submitting and raises once all have ended;
    TuneError when every trial failed (the first one's error names why)."""
    import optuna
    from prefect.futures import as_completed

    from tasks.train import TrainingInterruptedError

    budget = plan.budget
    deadline = None if budget.minutes is None else time.monotonic() + 60.0 * budget.minutes
    cores = runners.cores_per_task(parallel)
    log = run_logger(__name__)
    running: dict[PrefectFuture[TrialOutcome], tuple[optuna.Trial, TrialJob]] = {}
    outcomes: list[TrialOutcome] = []
    submitted = 0
    stop = False
    while True:
        while not stop and len(running) < parallel and _within(budget, submitted, deadline):
            trial = study.ask()
            try:
                job = plan.job(trial, cores)
            except Exception as exc:  # a spec the search cannot build: every trial would fail the same way
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise TuneError(f"cannot build the spec of trial {trial.number}: {exc}") from exc
            running[submit(job)] = (trial, job)
            submitted += 1
        if not running:
            break
        future = next(as_completed(list(running)))
        trial, job = running.pop(future)
        outcome = _result(future, job)
        tell(study, trial, outcome)
        outcomes.append(outcome)
        log.info("%s", describe_outcome(outcome))
        stop = stop or outcome.interrupted
    if stop:
        raise TrainingInterruptedError("tuning stopped: interrupted")
    if outcomes and all(o.state == "FAIL" for o in outcomes):
        raise TuneError(f"every trial of this run failed; the first: trial {outcomes[0].number}: {outcomes[0].error}")
    return outcomes


def _within(budget: TuneBudget, submitted: int, deadline: float | None) -> bool:
    if budget.trial_limit is not None and submitted >= budget.trial_limit:
        return False
    return deadline is None or time.monotonic() < deadline


def _result(future: PrefectFuture[TrialOutcome], job: TrialJob) -> TrialOutcome:
    """The trial's outcome, or a failed one when its task crashed (a Ray worker lost, ...)."""
    try:
        return future.result()
    except Exception as exc:
        return TrialOutcome(
            job.number, "FAIL", None, None, 0, 0.0, None, tuned_settings(job.spec), f"{type(exc).__name__}: {exc}"
        )


def tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """Finish the trial in the study: its validation MASE, pruned (at its last reported value) or failed."""
    import optuna

    if outcome.run_id:
        trial.set_user_attr("mlflow_run_id", outcome.run_id)
    trial.set_user_attr("epochs", outcome.epochs)
    trial.set_user_attr("seconds", round(outcome.seconds, 2))
    if outcome.error:
        trial.set_user_attr("error", outcome.error[:2000])
    if outcome.window_mase is not None:
        trial.set_user_attr(WINDOW_MASE_ATTR, [round(v, 6) for v in outcome.window_mase])
    if outcome.state == "COMPLETE":
        study.tell(trial, outcome.value)
    elif outcome.state == "PRUNED":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def describe_outcome(outcome: TrialOutcome) -> str:
    """One log line per finished trial."""
    settings = ", ".join(f"{k.split('.')[1]} {_short(v)}" for k, v in outcome.params.items())
    if outcome.state == "COMPLETE":
        result = f"validation MASE {outcome.value:.4f}"
    elif outcome.state == "PRUNED":
        result = f"pruned after {outcome.epochs} epochs (relative loss {outcome.relative_loss or math.nan:.4f})"
    else:
        result = f"failed: {outcome.error}"
    return f"trial {outcome.number}: {result} in {outcome.seconds:.1f} s ({settings})"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    return str(value)
