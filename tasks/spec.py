"""The run spec: every setting of a training run, typed and validated in one pydantic model.

`seqcast train` and `seqcast demo` build their options from these fields, the train and demo flows take it as
their `spec` parameter (the Prefect dashboard renders it as a form, one described field per setting) and the
deployments use its defaults, so a new setting is one new field here. Settings that depend on the data
(lookback, horizon, evaluation stride, seasons) may stay empty; `RunSpec.resolve` fills them from the data's
frequency and series lengths (models/frequency.py).

Only pydantic and the torch-free models/choices.py are imported at module level, so `seqcast --help` stays fast;
models/frequency.py (pandas), the windowing and training stages are imported where they are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.choices import Cell, ScalingChoice

if TYPE_CHECKING:
    import pandas as pd

    from tasks.train import TrainConfig
    from tasks.windowing import WindowConfig

# How windows are normalised inside the network (see models/choices.py); "auto" won the accuracy panel
# (docs/benchmarks.md).
DEFAULT_SCALING: ScalingChoice = "auto"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowSpec(_Part):
    """How every series is cut into windows and into train, validation and test parts."""

    lookback: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Input steps per window. Default: from the data's frequency (one week for sub-daily data: 336 "
        "half-hours, 168 hours; 56 days, 60 business days, 104 weeks, 36 months, 16 quarters, 10 years).",
    )
    horizon: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Steps forecast at once. Default: from the data's frequency (one day for sub-daily data: 48 "
        "half-hours, 24 hours; 14 days, 5 business days, 13 weeks, 12 months, 8 quarters, 3 years).",
    )
    test_fraction: float = Field(
        default=0.2,
        gt=0.0,
        le=0.5,
        description="Share of each series held out at its end as the test part (at least one horizon), where "
        "candidates, baselines and the champion are scored on the same windows.",
    )
    val_fraction: float = Field(
        default=0.1,
        gt=0.0,
        le=0.5,
        description="Share of each series just before the test part that early stopping watches (at least one "
        "horizon).",
    )
    eval_stride: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Steps between test origins. Default: about 75 origins per series, at a stride coprime with the "
        "data's daily and weekly cycles so they fall at every time of day.",
    )


class ModelSpec(_Part):
    """The networks trained as candidates."""

    cells: list[Cell] = Field(
        default=["lstm", "gru"],
        min_length=1,
        max_length=2,
        description="Recurrent cells trained as candidates, each in its own MLflow run; the better one on the "
        "test part is registered.",
    )
    hidden_size: int = Field(default=32, ge=1, le=4096, description="Units per recurrent layer.")
    num_layers: int = Field(default=1, ge=1, le=16, description="Stacked recurrent layers.")
    dropout: float = Field(
        default=0.0, ge=0.0, le=0.9, description="Dropout between recurrent layers and before the output layer."
    )
    head: Literal["auto", "last", "per_step"] = Field(
        default="auto",
        description="Output layer. last: the last hidden state gives all horizon steps; per_step: each of the "
        "last horizon hidden states gives one step; auto: per_step when lookback >= horizon, else last.",
    )
    scaling: ScalingChoice = Field(
        default=DEFAULT_SCALING,
        description="Window normalisation inside the network. series: the series' training mean and std; last: "
        "forecast the change from the window's last value (follows trends and level shifts); window: the window's "
        "own mean and std; last_level: last, plus the series-scaled level as a second input; auto: train with "
        "series and with last, keep the lower validation loss.",
    )

    @model_validator(mode="after")
    def _cells_once(self) -> ModelSpec:
        if len(set(self.cells)) != len(self.cells):
            raise ValueError(f"`cells` ({self.cells}) names a cell twice; list each cell once")
        return self


class TrainingSpec(_Part):
    """How each candidate is fitted."""

    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Windows per optimizer step. Default: each cell's fastest on CPU (32 for the LSTM, 64 for the "
        "GRU).",
    )
    max_epochs: int = Field(
        default=60,
        ge=1,
        le=100_000,
        description="Most passes over the training windows; early stopping may stop sooner.",
    )
    learning_rate: float = Field(default=5e-3, gt=0.0, le=10.0, description="AdamW's initial learning rate.")
    patience: int = Field(
        default=6,
        ge=1,
        le=100_000,
        description="Epochs without a better validation loss before training stops (the best epoch's weights "
        "are kept); the learning rate halves after half as many.",
    )
    loss: Literal["mse", "huber"] = Field(
        default="mse", description="Training loss: mse (squared error) or huber (less swayed by outliers)."
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seed of the initial weights and the shuffling of windows."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where to train. auto: CUDA when this machine has it, else CPU."
    )
    max_windows_per_epoch: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Training windows per epoch, drawn afresh each epoch from all of them (seeded), and the size "
        "of the fixed sample of validation windows that early stopping watches: a nightly budget that does not "
        "grow with the number of series. Default: every window, every epoch.",
    )
    warm_start: bool = Field(
        default=False,
        description="Also fine-tune the champion's network on this run's windows, as one more candidate beside the "
        "cells trained from scratch (same windows, same gate): warm_start_epochs at a fifth of the learning rate. "
        "Skipped, with the reason logged, when there is no champion or its window, frequency or partitions differ.",
    )
    warm_start_epochs: int = Field(
        default=10,
        ge=1,
        le=100_000,
        description="Most epochs of the warm-started candidate (early stopping may stop it sooner).",
    )


class EvaluationSpec(_Part):
    """How the candidates are compared with the baselines and the champion."""

    seasons: list[Annotated[int, Field(ge=1, le=100_000)]] | None = Field(
        default=None,
        max_length=8,
        description="Seasons (in steps) of the seasonal-naive baselines, beside naive and the frequency's own "
        "season. Default: from the data's frequency "
        "(a day and a week for sub-daily data, a week for daily data, a year for weekly, monthly and quarterly "
        "data), those that fit in the lookback.",
    )
    interval_level: float = Field(
        default=0.9,
        gt=0.0,
        lt=1.0,
        description="Coverage of the prediction intervals put on every forecast (0.9: 90% of actuals should fall "
        "inside), calibrated on the validation windows and checked on the test windows.",
    )
    register_rejected: bool = Field(
        default=False,
        description="Register the best candidate in the MLflow registry (as challenger, never champion) even when "
        "its network does not beat every baseline. Off: only a candidate that beats every baseline becomes a "
        "registered version, and a rejected one stays an MLflow run.",
    )


class DataSpec(_Part):
    """What to do with the observations before windowing."""

    gap_policy: Literal["fail", "fill"] = Field(
        default="fail",
        description="Refuse a series with missing steps or NaN values, or fill runs of up to max_gap_steps of them "
        "by linear interpolation.",
    )
    max_gap_steps: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Longest run of missing steps and NaN values that gap_policy fill may fill; needed with fill.",
    )
    outlier_policy: Literal["fail", "warn", "clip"] = Field(
        default="fail",
        description="Values more than 10 rolling median absolute deviations from their neighbourhood's median: "
        "refuse the series (fail), keep them and report them (warn), or clip them to the band's edge (clip).",
    )

    @model_validator(mode="after")
    def _fill_needs_a_limit(self) -> DataSpec:
        if self.gap_policy == "fill" and self.max_gap_steps is None:
            raise ValueError("`gap_policy` 'fill' needs `max_gap_steps`, the longest gap to fill")
        return self


class ExecutionSpec(_Part):
    """Where the candidates train: the flow's task runner (tasks/runners.py). Results do not depend on it."""

    task_runner: Literal["auto", "serial", "threads", "ray"] = Field(
        default="auto",
        description="How the candidates train. serial: one after the other, each on every core; threads: side by "
        "side on this machine, each on its share of the cores; ray: as tasks of the Ray cluster at ray_address (a "
        "temporary local one without it); auto: ray when a Ray address is set (ray_address or SEQCAST_RAY_ADDRESS), "
        "else threads.",
    )
    ray_address: str | None = Field(
        default=None,
        max_length=500,
        description="Address of the Ray cluster to train on: ray://<head>:10001 (Ray client), or <head>:6379 from "
        "a machine of the cluster. Default: SEQCAST_RAY_ADDRESS.",
    )


GroupName = Annotated[str, Field(min_length=1, max_length=200)]


class PartitionSpec(_Part):
    """How the series are split into partitions, each trained as its own global network (side by side on the task
    runner) and registered together as one model version that serves each series by its partition's network."""

    partitions: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Partitions of the series by a stable hash of the series id (sha256: the same on every machine, "
        "and a series keeps its partition as others come and go); one network each, trained side by side and "
        "registered as one model. 1: one network for every series. With partition_groups: leave it at 1, or give "
        "the number of groups.",
    )
    partition_groups: dict[GroupName, list[str]] | None = Field(
        default=None,
        description="Partitions named by the user instead of the hash: group name -> its series ids, one network "
        "per group. Every series of the run must be in one group, and every group must hold a series of the run. "
        "`seqcast train` reads it from a JSON file of that shape.",
    )

    @property
    def count(self) -> int:
        """The number of partitions: the groups' when given, else `partitions`."""
        return len(self.partition_groups) if self.partition_groups else self.partitions

    @model_validator(mode="after")
    def _groups_are_a_partition(self) -> PartitionSpec:
        groups = self.partition_groups
        if groups is None:
            return self
        if not groups:
            raise ValueError("`partition_groups` names no group; name at least one, or leave it out")
        if self.partitions not in (1, len(groups)):
            raise ValueError(
                f"`partitions` ({self.partitions}) differs from the {len(groups)} groups of `partition_groups`; "
                "with groups, leave `partitions` at 1 or give the number of groups"
            )
        empty = [name for name, ids in groups.items() if not ids]
        if empty:
            raise ValueError(f"groups {empty[:5]!r} of `partition_groups` list no series; drop them or add series")
        seen: dict[str, str] = {}
        for name, ids in groups.items():
            for sid in ids:
                if sid in seen:
                    raise ValueError(
                        f"series {sid!r} is listed twice in `partition_groups` (in groups {seen[sid]!r} and "
                        f"{name!r}); list each series in one group, once"
                    )
                seen[sid] = name
        return self


class RunSpec(BaseModel):
    """Every setting of a training run: window, model, training, evaluation, data, partitions and where it runs.

    Settings left empty follow the data: lookback, horizon, evaluation stride and seasons come from its frequency
    and series lengths (`resolve`), and the parent MLflow run records the values used as its params.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: WindowSpec = Field(default_factory=WindowSpec, description=WindowSpec.__doc__)
    model: ModelSpec = Field(default_factory=ModelSpec, description=ModelSpec.__doc__)
    training: TrainingSpec = Field(default_factory=TrainingSpec, description=TrainingSpec.__doc__)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description=EvaluationSpec.__doc__)
    data: DataSpec = Field(default_factory=DataSpec, description=DataSpec.__doc__)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description=ExecutionSpec.__doc__)
    partition: PartitionSpec = Field(default_factory=PartitionSpec, description=PartitionSpec.__doc__)

    @model_validator(mode="after")
    def _settings_agree(self) -> RunSpec:
        w = self.window
        if w.test_fraction + w.val_fraction > 0.8:
            raise ValueError(
                f"`test_fraction` ({w.test_fraction}) + `val_fraction` ({w.val_fraction}) leave under a fifth of "
                "each series to train on; keep their sum at most 0.8"
            )
        if w.lookback is not None:  # the rest is checked by `resolve` once the lookback is known
            self._check_window(w.lookback, w.horizon, self.evaluation.seasons)
        return self

    def _check_window(self, lookback: int, horizon: int | None, seasons: list[int] | None) -> None:
        """Refuse seasons longer than the lookback and a per-step head wider than it."""
        if seasons and max(seasons) > lookback:
            raise ValueError(
                f"`seasons` ({seasons}) has a season longer than `lookback` ({lookback}): seasonal naive reads one "
                "season back within the window; raise `lookback` or drop that season"
            )
        if horizon is not None and self.model.head == "per_step" and lookback < horizon:
            raise ValueError(
                f"`head` 'per_step' reads the last `horizon` ({horizon}) hidden states, so `lookback` ({lookback}) "
                "must be at least `horizon`; use head 'last' or 'auto', or a longer lookback"
            )

    # ------------------------------------------------------------------------------------------- resolution

    @property
    def is_resolved(self) -> bool:
        """Whether every data-dependent setting has a value (what `resolve` guarantees)."""
        w = self.window
        return None not in (w.lookback, w.horizon, w.eval_stride, self.evaluation.seasons)

    def resolve(self, freq: str, lengths: Iterable[int]) -> RunSpec:
        """A copy with the data-dependent defaults filled in for data of `freq` whose series have `lengths`.

        Lookback and horizon come from `default_window(freq)`, the evaluation stride from
        `default_eval_stride` on the median test part, the seasons from `seasons(freq, lookback)`. Settings
        given stay as they are. ValueError, naming the setting, when a given season exceeds the lookback or
        head "per_step" meets a lookback shorter than the horizon.
        """
        import numpy as np

        from models.frequency import default_eval_stride, default_window, seasons

        lookback, horizon = self.window.lookback, self.window.horizon
        if lookback is None or horizon is None:
            default_lookback, default_horizon = default_window(freq)
            lookback = lookback or default_lookback
            horizon = horizon or default_horizon
        stride = self.window.eval_stride
        if stride is None:
            test_sizes, _ = self._window_config(lookback, horizon, 1).part_sizes(np.fromiter(lengths, dtype=np.int64))
            test_length = int(np.median(test_sizes)) if len(test_sizes) else horizon
            stride = default_eval_stride(freq, test_length, horizon)
        found = self.evaluation.seasons
        if found is None:
            found = seasons(freq, lookback)
        self._check_window(lookback, horizon, found)
        return self._with(
            window={"lookback": lookback, "horizon": horizon, "eval_stride": stride},
            evaluation={"seasons": list(found)},
        )

    def resolved_window(self, freq: str, lengths: Iterable[int]) -> WindowConfig:
        """The windowing stage's config for data of `freq` with series of `lengths`."""
        return self.resolve(freq, lengths).window_config()

    def window_config(self) -> WindowConfig:
        """The windowing stage's config of a resolved spec."""
        w = self._require_resolved().window
        assert w.lookback is not None and w.horizon is not None and w.eval_stride is not None
        return self._window_config(w.lookback, w.horizon, w.eval_stride)

    def min_length(self) -> dict[str, int] | None:
        """Observations each series needs, by part, for validation's `min_length`: a window for training, one
        horizon for validation and one for test. None while lookback or horizon is unknown."""
        lookback, horizon = self.window.lookback, self.window.horizon
        if lookback is None or horizon is None:
            return None
        return {"lookback": lookback, "horizon": horizon, "validation": horizon, "test": horizon}

    def too_short(self, lengths: Mapping[str, int]) -> str | None:
        """Why some series are too short for `min_length` (naming them and the options to change), or None."""
        lookback, horizon = self.window.lookback, self.window.horizon
        if lookback is None or horizon is None:
            return None
        short = [(sid, n, self.needed(n)) for sid, n in lengths.items() if n < self.needed(n)]
        if not short:
            return None
        named = "; ".join(f"series {sid!r} has {n} observations, needs {need}" for sid, n, need in short[:5])
        more = f" (and {len(short) - 5} more series)" if len(short) > 5 else ""
        return (
            f"{named}{more}: lookback ({lookback}) + horizon ({horizon}) + a validation part of "
            f"{self.window.val_fraction:g} and a test part of {self.window.test_fraction:g} of the series (each at "
            "least one horizon). Pass a shorter --lookback (and --horizon), i.e. the run spec's window.lookback and "
            "window.horizon, or leave those series out with --series"
        )

    def needed(self, length: int) -> int:
        """Observations a series of `length` needs for the resolved window: the split's own rule
        (`tasks.windowing.split_panel`), a training window plus validation and test parts of at least a horizon."""
        import math

        lookback, horizon = self.window.lookback or 0, self.window.horizon or 0
        val = max(horizon, math.ceil(self.window.val_fraction * length))
        test = max(horizon, math.ceil(self.window.test_fraction * length))
        return lookback + horizon + val + test

    def train_config(self, cell: Cell) -> TrainConfig:
        """The training stage's config for one candidate cell."""
        from tasks.train import TrainConfig

        m, t = self.model, self.training
        return TrainConfig(
            cell=cell,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            dropout=m.dropout,
            head=m.head,
            scaling=m.scaling,
            batch_size=t.batch_size,
            max_epochs=t.max_epochs,
            learning_rate=t.learning_rate,
            patience=t.patience,
            loss=t.loss,
            seed=t.seed,
            device=t.device,
            max_windows_per_epoch=t.max_windows_per_epoch,
        )

    def mlflow_params(self) -> dict[str, Any]:
        """The resolved spec as flat MLflow params ("window.lookback": 336, ...), with the values a run uses
        where the spec leaves a choice to the code: each cell's batch size, the head, the gap filled (0)."""
        spec = self._require_resolved()
        params: dict[str, Any] = {
            f"{part}.{name}": value for part, fields in spec.model_dump().items() for name, value in fields.items()
        }
        w = spec.window
        assert w.lookback is not None and w.horizon is not None
        configs = {cell: spec.train_config(cell) for cell in spec.model.cells}
        params["training.batch_size"] = {cell: c.effective_batch_size for cell, c in configs.items()}
        params["model.head"] = next(iter(configs.values())).resolved_head(w.lookback, w.horizon)
        if spec.data.max_gap_steps is None:
            params["data.max_gap_steps"] = 0
        if spec.training.max_windows_per_epoch is None:  # no budget: every window, every epoch
            params["training.max_windows_per_epoch"] = "all"
        if spec.execution.ray_address is None:  # where the run trained, when it was a Ray cluster
            del params["execution.ray_address"]
        # the partitions' count and how series were assigned; the routing itself is in each candidate's
        # partitions.csv and in the model (a group list of many series would pass MLflow's limit on a param)
        params["partition.partitions"] = spec.partition.count
        params["partition.partition_groups"] = "by hash" if spec.partition.partition_groups is None else "by groups"
        return params

    # --------------------------------------------------------------------------------------------- helpers

    def _require_resolved(self) -> RunSpec:
        if not self.is_resolved:
            raise ValueError("the run spec has empty data-dependent settings; call `resolve(freq, lengths)` first")
        return self

    def _window_config(self, lookback: int, horizon: int, stride: int) -> WindowConfig:
        from tasks.windowing import WindowConfig

        w = self.window
        return WindowConfig(
            lookback=lookback,
            horizon=horizon,
            test_fraction=w.test_fraction,
            val_fraction=w.val_fraction,
            stride=stride,
        )

    def _with(self, **parts: dict[str, Any]) -> RunSpec:
        """A validated copy with some fields of some parts replaced."""
        data = self.model_dump()
        for part, fields in parts.items():
            data[part].update(fields)
        return RunSpec.model_validate(data)


def resolve_for_frame(spec: RunSpec, frame: pd.DataFrame, freq: str | None = None) -> RunSpec:
    """`spec` resolved for a long frame `series_id, ts, value`: its lengths per series, and `freq` or else the
    frequency of its longest series. Raises `DataValidationError` naming the series too short for the window.

    Before validation the frame is the stored rows (typed, sorted, unique keys, as ingest validated them), so
    the window is known when validation checks the lengths. An empty frame is left to validation to refuse:
    the spec comes back unresolved.
    """
    import pandas as pd

    from models.frequency import infer_freq
    from tasks.validate import DataValidationError

    if len(frame) == 0:
        return spec
    lengths = frame.groupby("series_id", sort=False).size()
    if freq is None:
        longest = lengths.idxmax()
        if lengths.max() < 2:
            raise DataValidationError(
                "every series has fewer than two observations, so their frequency is unknown; ingest more data"
            )
        freq = infer_freq(pd.DatetimeIndex(frame.loc[frame["series_id"] == longest, "ts"]).sort_values())
    resolved = spec.resolve(freq, lengths.tolist())
    # With gap filling the stored rows may be fewer than the validated ones; validation's min_length decides then.
    problem = (
        resolved.too_short({str(k): int(v) for k, v in lengths.items()}) if spec.data.gap_policy == "fail" else None
    )
    if problem is not None:
        raise DataValidationError(f"series too short for the window ({freq} data): {problem}")
    return resolved
