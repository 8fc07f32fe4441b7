"""A trained forecaster as a folder, loadable on any device, and its MLflow pyfunc wrapper.

The folder holds JSON and a state_dict only (no pickles):
  - config.json   ForecasterConfig, the series frequency, the series ids, the per-series baseline fallback,
                  free-form metadata; for a partitioned model (models/partitions.py) also each network's config
                  and the routing of every series to its partition's network
  - weights.pt    the state_dict, saved from CPU tensors (loads on CPU-only machines); a partitioned model's holds
                  every network's, as `networks.<k>.<name>`
  - scalers.json  per-series mean/std fit on the training part (`Scalers.to_dict`)
  - manifest.json sha256 and size of the three files above, checked on every load

`forecast_frame` and `forecast_origins` are the serving core; `SeqcastForecaster` only adapts them to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from models.baselines import baseline_forecasts, serve_with_fallback
from models.errors import SeqcastError
from models.forecaster import ForecasterConfig, RecurrentForecaster, predict_windows, resolve_device
from models.frequency import to_offset
from models.intervals import IntervalCalibration, interval_bounds
from models.partitions import PartitionedForecaster
from models.reference import ModelReference
from models.windows import Scalers, SeriesPanel, origin_starts, panel_from_frame

# The newest folder format this seqcast reads. A folder records the oldest format that reads it, so older seqcasts
# keep loading what they can: 1 for one network, 2 for a partitioned model (several networks and their routing).
FORMAT_VERSION = 2
PARTITIONED_FORMAT = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
SCALERS_FILE = "scalers.json"
MANIFEST_FILE = "manifest.json"
CHECKED_FILES = (CONFIG_FILE, WEIGHTS_FILE, SCALERS_FILE)
INPUT_COLUMNS = ["series_id", "ts", "value"]
OUTPUT_COLUMNS = ["series_id", "origin_ts", "target_ts", "step", "point", "lower", "upper", "level", "method"]


class ArtifactIntegrityError(SeqcastError, ValueError):
    """A forecaster folder whose files are missing or do not match their recorded sha256 (tampered or truncated)."""


@dataclass(frozen=True)
class LoadedForecaster:
    """A forecaster ready to predict: network in eval mode on `device`, its config, scalers and frequency.

    `fallback` maps the series on which the network lost to a baseline at evaluation to that baseline's method
    ("naive", "seasonal_naive_48", ...): those series are served by the baseline, never by the network.
    `model` may be a `PartitionedForecaster` (one network per partition of the series): `forecast_origins` then
    sends each series' windows to its partition's network, and everything else is the same.
    """

    model: RecurrentForecaster
    config: ForecasterConfig
    scalers: Scalers
    freq: str
    device: torch.device
    metadata: dict[str, Any] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)
    intervals: IntervalCalibration | None = None  # None: saved before intervals existed; bounds are then NaN
    reference: ModelReference | None = None  # test figures to monitor it against (None: saved before they existed)

    @property
    def lookback(self) -> int:
        return self.config.lookback

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def series_ids(self) -> list[str]:
        return list(self.scalers.series_ids)

    def methods(self, series_ids: list[str]) -> np.ndarray:
        """The method serving each of `series_ids` `[S]`: its fallback baseline, else the network's cell."""
        return np.array([self.fallback.get(sid, self.config.cell) for sid in series_ids], dtype=object)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


HASH_TAG_PREFIX = "seqcast.sha256."


def hash_tag(name: str) -> str:
    """The MLflow tag (on a run and on a registered version) that records the sha256 of checked file `name`."""
    return f"{HASH_TAG_PREFIX}{name}"


def forecaster_hashes(path: str | Path) -> dict[str, str]:
    """sha256 of each checked file of a forecaster folder, by file name (what MLflow records beside the manifest)."""
    path = Path(path)
    return {name: _sha256(path / name) for name in CHECKED_FILES}


def check_recorded_hashes(path: str | Path, recorded: dict[str, str], source: str) -> None:
    """Refuse a folder whose files differ from the sha256 `recorded` outside it (in MLflow); `source` names the
    model in the message. Raises ArtifactIntegrityError; an empty `recorded` is the caller's decision."""
    path = Path(path)
    for name in CHECKED_FILES:
        expected = recorded.get(name)
        if expected is None:
            raise ArtifactIntegrityError(
                f"{source}: MLflow records no sha256 for {name} (only for {sorted(recorded)}); refusing to load it"
            )
        file = path / name
        actual = _sha256(file) if file.is_file() else "(file missing)"
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{source}: {name} has sha256 {actual}, but MLflow recorded {expected} when it was logged and "
                "registered; the artifact was modified after registration, refusing to load it (re-train or "
                "re-register the model)"
            )


def save_forecaster(
    path: str | Path,
    model: RecurrentForecaster,
    scalers: Scalers,
    freq: str,
    metadata: dict[str, Any] | None = None,
    fallback: dict[str, str] | None = None,
    intervals: IntervalCalibration | None = None,
    reference: ModelReference | None = None,
) -> Path:
    """Write the forecaster folder at `path` and return it; an existing folder there is replaced whole.

    Files are written to a temporary sibling folder first and swapped in, so a crash never leaves a
    half-written model where a good one was. `metadata` must be JSON-able (e.g. run ids, split timestamps);
    `fallback` maps series served by a baseline to its method (see `LoadedForecaster`); `intervals` is the
    calibration that puts bounds on every forecast; `reference` the test figures monitoring compares with.
    A `PartitionedForecaster` is saved with every network and its routing, which must cover the scalers' series.
    """
    to_offset(freq)  # refuse an unknown frequency now, not at serving time
    fallback = dict(sorted((fallback or {}).items()))
    _check_fallback(fallback, model.config.lookback, scalers.series_ids)
    partitioned = model if isinstance(model, PartitionedForecaster) else None
    if partitioned is not None and set(partitioned.routing) != set(scalers.series_ids):
        unrouted = sorted(set(scalers.series_ids) - set(partitioned.routing))
        raise ValueError(
            f"the partitioned model routes {len(partitioned.routing)} series and the scalers hold "
            f"{len(scalers.series_ids)} (series without a partition: {unrouted[:5]!r}); route exactly the series it "
            "was trained on"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        config = {
            "format_version": 1 if partitioned is None else PARTITIONED_FORMAT,
            "forecaster": model.config.model_dump(),
            "freq": freq,
            "series_ids": list(scalers.series_ids),
            "fallback": fallback,
            "intervals": None if intervals is None else intervals.to_dict(),
            "reference": None if reference is None else reference.to_dict(),
            "torch_version": torch.__version__,
            "metadata": metadata or {},
        }
        if partitioned is not None:
            config["partitions"] = partitioned.describe()
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / SCALERS_FILE).write_text(json.dumps(scalers.to_dict()))
        state = {name: tensor.detach().to("cpu").clone() for name, tensor in model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        manifest = {
            "format_version": config["format_version"],
            "files": {
                name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in CHECKED_FILES
            },
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_fallback(fallback: dict[str, str], lookback: int, series_ids: list[str]) -> None:
    """Every fallback names a known series and a baseline that reads no more than the window's `lookback`."""
    known = set(series_ids)
    for sid, method in fallback.items():
        if sid not in known:
            raise ValueError(f"fallback for series {sid!r}, which is not in the model's training data")
        try:  # a known baseline whose season fits in the window
            baseline_forecasts(method, np.zeros(lookback), np.zeros(1, dtype=np.int64), lookback, 1)
        except ValueError as exc:
            raise ValueError(f"fallback of series {sid!r}: {exc}") from exc


def _swap_in(new: Path, path: Path) -> None:
    """Put folder `new` at `path`; an old folder there is moved aside first and removed only afterwards."""
    if not path.exists():
        os.replace(new, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(path, old)
    try:
        os.replace(new, path)
    except OSError:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def verify_forecaster(path: str | Path, source: str | None = None) -> dict[str, Any]:
    """Check every file against manifest.json; returns the manifest or raises ArtifactIntegrityError.

    `source` names the forecaster in messages (e.g. a registered version) instead of `path`, which may be a
    temporary download folder gone by the time the message is read.
    """
    path = Path(path)
    where = source or str(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactIntegrityError(f"{where} is not a seqcast forecaster folder: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        shown = f"{MANIFEST_FILE} of {source}" if source else str(manifest_path)
        raise ArtifactIntegrityError(f"{shown} is unreadable ({exc}); the artifact is damaged") from exc
    for name in CHECKED_FILES:
        file = path / name
        if name not in files or not file.is_file():
            raise ArtifactIntegrityError(f"forecaster folder {where} lacks {name} or its manifest entry; refusing it")
        actual = _sha256(file)
        expected = files[name].get("sha256")
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{name} in {where} has sha256 {actual}, but the manifest records {expected}: the artifact was "
                "modified or truncated after saving; refusing to load it (re-download or re-train the model)"
            )
    return dict(manifest)


def load_forecaster(
    path: str | Path, device: str | torch.device = "cpu", source: str | None = None
) -> LoadedForecaster:
    """Load a forecaster folder onto `device` ("cpu", "cuda", "cuda:1", "auto") after checking its sha256 sums;
    `source` names it in integrity errors (see `verify_forecaster`)."""
    path = Path(path)
    verify_forecaster(path, source)
    target = resolve_device(device)
    config_data = json.loads((path / CONFIG_FILE).read_text())
    if int(config_data.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactIntegrityError(
            f"forecaster format {config_data['format_version']} is newer than this seqcast ({FORMAT_VERSION}); "
            "upgrade seqcast"
        )
    config = ForecasterConfig.model_validate(config_data["forecaster"])
    intervals, reference = config_data.get("intervals"), config_data.get("reference")
    scalers = Scalers.from_dict(json.loads((path / SCALERS_FILE).read_text()))
    state = torch.load(path / WEIGHTS_FILE, weights_only=True, map_location=target)
    partitions = config_data.get("partitions")
    network = RecurrentForecaster(config) if partitions is None else PartitionedForecaster.from_description(partitions)
    model = network.to(target)
    model.load_state_dict(state)
    model.eval()
    return LoadedForecaster(
        model=model,
        config=config,
        scalers=scalers,
        freq=str(config_data["freq"]),
        device=target,
        metadata=dict(config_data.get("metadata", {})),
        fallback={str(k): str(v) for k, v in config_data.get("fallback", {}).items()},
        intervals=None if intervals is None else IntervalCalibration.from_dict(intervals),
        reference=None if reference is None else ModelReference.from_dict(reference),
    )


def _scaler_indices(loaded: LoadedForecaster, series_ids: list[str]) -> np.ndarray:
    known = set(loaded.scalers.series_ids)
    unknown = [sid for sid in series_ids if sid not in known]
    if unknown:
        raise ValueError(
            f"series {unknown[:5]!r} ({len(unknown)} in all) were not in this model's training data, so it has no "
            "scaler for them; forecast only trained series or retrain with them"
        )
    return loaded.scalers.indices(series_ids)


def forecast_origins(
    loaded: LoadedForecaster, panel: SeriesPanel, series_index: np.ndarray, origin_positions: np.ndarray
) -> np.ndarray:
    """Forecasts `[N, H]` in original units at origins `origin_positions [N]` (position within series
    `series_index [N]` of `panel`, original units), as served: series in `loaded.fallback` get their baseline's
    forecasts. Each reads only the `lookback` values up to its origin, so a backfill never sees the future."""
    if panel.freq != loaded.freq:
        raise ValueError(f"the panel's frequency {panel.freq!r} differs from the model's {loaded.freq!r}")
    scaler_index = _scaler_indices(loaded, panel.series_ids)  # [S]
    series_index = np.asarray(series_index, dtype=np.int64)
    starts = origin_starts(panel, series_index, np.asarray(origin_positions, dtype=np.int64), loaded.lookback)
    scaled = loaded.scalers.transform(panel).values  # [total] scaled units
    values = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))
    if isinstance(loaded.model, PartitionedForecaster):  # each window by its series' network
        partition = loaded.model.partition_of(panel.series_ids)[series_index]  # [S] -> [N]
        predicted = loaded.model.predict(values, starts, partition)  # [N, H]
    else:
        predicted = predict_windows(loaded.model, values, starts, loaded.lookback, loaded.horizon)  # [N, H]
    points = loaded.scalers.inverse(predicted.astype(np.float64), scaler_index[series_index])
    if not loaded.fallback:
        return points
    present = set(panel.series_ids)
    fallback = {sid: method for sid, method in loaded.fallback.items() if sid in present}
    baseline = {
        method: baseline_forecasts(method, panel.values, starts, loaded.lookback, loaded.horizon)
        for method in sorted(set(fallback.values()))
    }
    return serve_with_fallback(points, baseline, panel.series_ids, series_index, fallback)


def forecast_bounds(
    loaded: LoadedForecaster,
    panel: SeriesPanel,
    series_index: np.ndarray,
    origin_positions: np.ndarray,
    points: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """`(lower, upper)` `[N, H]` around `points` (from `forecast_origins` at the same origins) at the model's
    interval level, each row by the quantiles of the method that serves its series; NaN without a calibration."""
    if loaded.intervals is None:
        nan = np.full(np.shape(points), np.nan)
        return nan, nan.copy()
    series_index = np.asarray(series_index, dtype=np.int64)
    starts = origin_starts(panel, series_index, np.asarray(origin_positions, dtype=np.int64), loaded.lookback)
    methods = loaded.methods(panel.series_ids)[series_index]
    floors = loaded.intervals.floors(panel.series_ids)[series_index]
    quantiles = loaded.intervals.row_quantiles(methods)
    return interval_bounds(points, panel.values, starts, loaded.lookback, floors, quantiles, loaded.intervals.lag)


def target_timestamps(origins: pd.DatetimeIndex, freq: str, horizon: int) -> np.ndarray:
    """`[N, H]` UTC datetime64 target times: origin + step * freq for step 1..H (calendar-aware for "B", and
    on the exchange's trading days for "B-NYSE" and the like)."""
    offset = to_offset(freq)
    origins = pd.DatetimeIndex(origins)
    origins = origins.tz_localize("UTC") if origins.tz is None else origins.tz_convert("UTC")
    with warnings.catch_warnings():  # a trading calendar is applied element by element; that is expected
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        columns = [(origins + offset * step).tz_convert(None).to_numpy() for step in range(1, horizon + 1)]
    return np.stack(columns, axis=1)


def _check_input(frame: pd.DataFrame, loaded: LoadedForecaster) -> pd.DataFrame:
    """The last `lookback` rows of every series, sorted, UTC; refuses what the model cannot forecast from."""
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"input needs columns {INPUT_COLUMNS}; missing {missing} (got {list(frame.columns)})")
    if len(frame) == 0:
        raise ValueError("input has no observations; send the last `lookback` rows of each series to forecast")
    frame = frame[INPUT_COLUMNS].copy()
    frame["series_id"] = frame["series_id"].astype(str)
    try:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"input column `ts` has unparsable timestamps: {exc}") from exc
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(np.float64)
    bad = frame.loc[~np.isfinite(frame["value"].to_numpy()), "series_id"].unique().tolist()
    if bad:
        raise ValueError(f"series {bad[:5]!r} have NaN, infinite or non-numeric values; clean them before forecasting")
    if frame.duplicated(["series_id", "ts"]).any():
        dup = frame.loc[frame.duplicated(["series_id", "ts"]), "series_id"].unique().tolist()
        raise ValueError(f"series {dup[:5]!r} repeat a timestamp; send one value per (series_id, ts)")
    _scaler_indices(loaded, sorted(frame["series_id"].unique().tolist()))
    counts = frame.groupby("series_id", sort=True).size()
    short = counts[counts < loaded.lookback]
    if len(short):
        described = ", ".join(f"{sid!r} has {n}" for sid, n in short.head(5).items())
        raise ValueError(
            f"`lookback` ({loaded.lookback}) needs {loaded.lookback} recent observations per series; "
            f"series {described}{' ...' if len(short) > 5 else ''}"
        )
    tail = frame.sort_values(["series_id", "ts"], kind="stable").groupby("series_id", sort=True).tail(loaded.lookback)
    offset = to_offset(loaded.freq)
    for sid, ts in tail.groupby("series_id", sort=True)["ts"]:
        seen = pd.DatetimeIndex(ts).as_unit("ns").asi8
        expected = pd.date_range(end=ts.iloc[-1], periods=loaded.lookback, freq=offset).as_unit("ns").asi8
        if not np.array_equal(seen, expected):
            raise ValueError(
                f"series {sid!r}: its last {loaded.lookback} observations are not every {loaded.freq!r} up to "
                f"{ts.iloc[-1]} (gap or wrong frequency); fill gaps before forecasting"
            )
    return tail.reset_index(drop=True)


def forecast_frame(loaded: LoadedForecaster, frame: pd.DataFrame) -> pd.DataFrame:
    """Forecast every series of `frame` (series_id, ts, value) from its last observation.

    Returns `series_id, origin_ts, target_ts, step, point, lower, upper, level, method` (H rows per series,
    original units, UTC), with origin_ts the series' last ts, target_ts = origin_ts + step * freq, the interval's
    bounds at `level` (NaN for a model saved without intervals), and the method that made the point.
    """
    tail = _check_input(frame, loaded)
    panel = panel_from_frame(tail, freq=loaded.freq)
    lengths = panel.lengths
    series_index = np.arange(len(panel.series_ids))
    points = forecast_origins(loaded, panel, series_index, lengths - 1)  # [S, H]
    lower, upper = forecast_bounds(loaded, panel, series_index, lengths - 1, points)
    origins = pd.DatetimeIndex([ts[-1] for ts in panel.timestamps])
    targets = target_timestamps(origins, loaded.freq, loaded.horizon)  # [S, H]
    h = loaded.horizon
    return pd.DataFrame(
        {
            "series_id": np.repeat(np.asarray(panel.series_ids, dtype=object), h),
            "origin_ts": pd.DatetimeIndex(np.repeat(origins.tz_convert(None).to_numpy(), h)).tz_localize("UTC"),
            "target_ts": pd.DatetimeIndex(targets.ravel()).tz_localize("UTC"),
            "step": np.tile(np.arange(1, h + 1, dtype=np.int64), len(series_index)),
            "point": points.ravel(),
            "lower": lower.ravel(),
            "upper": upper.ravel(),
            "level": np.full(points.size, np.nan if loaded.intervals is None else loaded.intervals.level),
            "method": np.repeat(loaded.methods(panel.series_ids), h),
        },
        columns=OUTPUT_COLUMNS,
    )


def pyfunc_input(frame: pd.DataFrame) -> pd.DataFrame:
    """`series_id, ts, value` with `ts` as naive UTC: MLflow's schema enforcement refuses timezone-aware
    datetimes, so input examples and requests to the pyfunc model use this form (naive is read as UTC)."""
    out = frame[INPUT_COLUMNS].copy()
    out["ts"] = pd.to_datetime(out["ts"], utc=True).dt.tz_localize(None)
    return out


class SeqcastForecaster(PythonModel):
    """MLflow pyfunc model: a frame of recent observations in, forecasts in original units out.

    Logged with `artifacts={"forecaster": <folder written by save_forecaster>}`; loads on CUDA when present.
    """

    def __init__(self) -> None:
        self._loaded: LoadedForecaster | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the weights travel as the "forecaster" artifact, never inside the pickled wrapper
        return {**self.__dict__, "_loaded": None}

    def load_context(self, context: Any) -> None:
        self._loaded = load_forecaster(context.artifacts["forecaster"], device="auto")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self._loaded is None:
            raise RuntimeError("SeqcastForecaster has no weights loaded; load it with mlflow.pyfunc.load_model")
        return forecast_frame(self._loaded, pd.DataFrame(model_input))
