"""Monitoring: realised errors of a registered model's forecasts against what the model promised at evaluation.

The scores (`forecast_scores`, written by tasks/scores.py) of a trailing window of nights are aggregated per model
version, per series and per horizon step, and compared with each version's reference (`models.reference`: test MASE
per series, test MAE and coverage per step, the interval's level, each series' recent level and spread):

- **Window.** A *night* is the UTC date of a forecast's origin. The window is the last `days` nights up to `as_of`
  (the nights' origins, scored with the observations that arrived up to `as_of`); everything is computed from the
  table alone, so a rerun gives the same verdict.
- **Realised figures.** MAE is the mean absolute error; MASE the mean of the scaled errors (absolute error over the
  series' MASE scale from the reference: the gate's definition, the mean over windows of MAE / scale); a version's
  MASE is the mean of its series' MASEs, as the gate computes it. Coverage is the share of actuals inside
  [lower, upper]; rows without bounds do not count (no interval: no coverage).
- **Degradation, MASE.** A series is degraded when on each of its last `degraded_nights` scored nights its realised
  MASE exceeds `mase_factor` x the MASE expected for those rows. The expected MASE is the series' test MASE, scaled
  by the test MAE profile over the steps scored so far (a night whose actuals have only partly arrived holds the
  early, easier steps; comparing those with the all-step test MASE would hide a degradation until every step is
  in). Nights are scored nights, not calendar days: a night without forecasts neither breaks nor extends a run.
- **Degradation, coverage.** A series is degraded when its window coverage, over at least `coverage_min_points`
  bounded forecasts, is below the interval's level minus `coverage_tolerance`.
- **Drift.** The observations of each series after the reference's `data_end` (inside the window) against the
  level and spread the model last saw: the mean moved by more than `drift_k` recent standard deviations, or the
  standard deviation changed by more than a factor `drift_ratio`. Drift is listed; it does not by itself degrade.
- **Events.** A degraded version that is still forecasting (its latest scored night is the model's latest) raises
  `seqcast.forecast.degraded`; a version replaced since (say by the retraining it asked for) is shown, but asks for
  nothing more.

A version saved before references existed (`reference=None`) is scored (MAE, coverage) but has no scaled errors and
is not compared; one log line says so.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.errors import SeqcastError
from tasks import store
from tasks.run_context import run_logger, to_utc

if TYPE_CHECKING:
    from models.reference import ModelReference


class MonitorError(SeqcastError, ValueError):
    """A monitoring request that cannot be answered as asked (an inconsistent configuration)."""


class MonitorConfig(BaseModel):
    """How realised errors are watched: the trailing window, and when a model counts as degraded or its inputs as
    drifted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: int = Field(
        default=7,
        ge=1,
        le=3660,
        description="Trailing window in nights: forecasts whose origin falls on the last N UTC dates up to as_of "
        "are scored and aggregated.",
    )
    mase_factor: float = Field(
        default=1.5,
        ge=1.0,
        description="A night is bad for a series when its realised MASE exceeds this factor times the MASE the model "
        "scored on its test windows (for the same horizon steps).",
    )
    degraded_nights: int = Field(
        default=3,
        ge=1,
        description="Consecutive scored nights a series must be bad before the model counts as degraded; one bad "
        "night is noise, three in a row is a pattern. At most `days`.",
    )
    coverage_tolerance: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="A series is degraded when the share of actuals inside its intervals falls below the interval's "
        "level minus this tolerance (0.05: a 90% interval covering under 85%).",
    )
    coverage_min_points: int = Field(
        default=30,
        ge=1,
        description="Bounded forecasts a series needs in the window before its coverage is judged (fewer: too "
        "noisy to call; 30 points give a 90% interval's coverage a standard error of about 0.05).",
    )
    drift_k: float = Field(
        default=3.0,
        gt=0.0,
        description="Input drift: the mean of a series' new observations moved by more than this many standard "
        "deviations of the observations the model last saw.",
    )
    drift_ratio: float = Field(
        default=3.0,
        gt=1.0,
        description="Input drift: the standard deviation of a series' new observations is more than this factor "
        "above or below that of the observations the model last saw.",
    )
    drift_min_points: int = Field(
        default=5,
        ge=2,
        description="New observations a series needs in the window before drift is judged.",
    )

    @model_validator(mode="after")
    def _window_holds_the_nights(self) -> MonitorConfig:
        if self.degraded_nights > self.days:
            raise ValueError(
                f"`degraded_nights` ({self.degraded_nights}) needs a window of at least that many nights; `days` is "
                f"{self.days}: raise `days` or lower `degraded_nights`"
            )
        return self


def make_config(**values: Any) -> MonitorConfig:
    """A MonitorConfig from keyword values, with a validation error as one MonitorError message."""
    from pydantic import ValidationError

    try:
        return MonitorConfig(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err.get("loc", ()))
            message = str(err.get("msg", "")).removeprefix("Value error, ")
            given = err.get("input")
            shown = f" ({given!r})" if where and not isinstance(given, dict) else ""
            problems.append(f"`{where}`{shown}: {message}" if where else message)
        raise MonitorError("monitor settings refused: " + "; ".join(problems)) from None


# --- the window ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorWindow:
    """The nights watched: origins from `start` (midnight UTC of the first night) to `end` (= as_of)."""

    start: pd.Timestamp
    end: pd.Timestamp
    nights: list[str]  # ISO dates, oldest first

    @property
    def night(self) -> str:
        """The night this run reports on: as_of's UTC date."""
        return self.nights[-1]


def monitor_window(as_of: pd.Timestamp | dt.datetime, days: int) -> MonitorWindow:
    end = to_utc(as_of)
    last = end.normalize()
    start = last - pd.Timedelta(days=days - 1)
    nights = [d.date().isoformat() for d in pd.date_range(start, last, freq="D")]
    return MonitorWindow(start=start, end=end, nights=nights)


# --- references ---------------------------------------------------------------------------------------------------


def load_references(tracking_uri: str, model_name: str, versions: list[str]) -> dict[str, ModelReference | None]:
    """Each version's reference from the registry (its sha256-checked config); None for a version saved without
    one or no longer in the registry, with one log line each."""
    from tasks import registry
    from tasks.forecast import use_registry

    use_registry(tracking_uri)
    log = run_logger(__name__)
    out: dict[str, ModelReference | None] = {}
    for version in versions:
        try:
            loaded = registry.load_version(model_name, version, device="cpu")
        except registry.RegistryError as exc:
            if isinstance(exc, registry.TrackingUnavailableError):
                raise
            log.warning("%s v%s: not compared with a reference (%s)", model_name, version, exc)
            out[version] = None
            continue
        if loaded.reference is None:
            log.warning(
                "%s v%s was saved without a reference (before monitoring existed): its scores get no scaled errors "
                "and it is not compared with test figures; retrain to monitor it fully",
                model_name,
                version,
            )
        out[version] = loaded.reference
    return out


def mase_scales(references: dict[str, ModelReference | None]) -> dict[str, dict[str, float]]:
    """{version: {series: MASE scale}} of the versions that have a reference."""
    return {
        version: {sid: float(ref.mase_scale) for sid, ref in reference.series.items()}
        for version, reference in references.items()
        if reference is not None
    }


def _series_references(references: dict[str, ModelReference | None]) -> pd.DataFrame:
    """One row per (version, series) of every reference: test MASE, scale, method, recent level and spread."""
    rows = [
        {
            "model_version": version,
            "series_id": sid,
            "test_mase": np.nan if ref.test_mase is None else float(ref.test_mase),
            "mase_scale": float(ref.mase_scale),
            "test_method": ref.method,
            "recent_mean": float(ref.recent_mean),
            "recent_std": float(ref.recent_std),
            "data_end": to_utc(ref.data_end),
        }
        for version, reference in references.items()
        if reference is not None
        for sid, ref in reference.series.items()
    ]
    columns = [
        "model_version",
        "series_id",
        "test_mase",
        "mase_scale",
        "test_method",
        "recent_mean",
        "recent_std",
        "data_end",
    ]
    return pd.DataFrame(rows, columns=columns)


def _step_references(references: dict[str, ModelReference | None]) -> pd.DataFrame:
    """One row per (version, step) of every reference: test MAE and coverage, and the step's weight in the MAE
    profile (its test MAE over the mean test MAE; 1 where unknown)."""
    parts = []
    for version, reference in references.items():
        if reference is None or not reference.mae_by_step:
            continue
        mae = np.array([np.nan if v is None else float(v) for v in reference.mae_by_step], dtype=np.float64)
        coverage = np.full(len(mae), np.nan)
        if reference.coverage_by_step is not None:
            given = [np.nan if v is None else float(v) for v in reference.coverage_by_step][: len(mae)]
            coverage[: len(given)] = given
        mean = np.nanmean(mae) if np.isfinite(mae).any() else np.nan
        weight = mae / mean if np.isfinite(mean) and mean > 0 else np.ones(len(mae))
        parts.append(
            pd.DataFrame(
                {
                    "model_version": version,
                    "step": np.arange(1, len(mae) + 1, dtype=np.int64),
                    "test_mae": mae,
                    "test_coverage": coverage,
                    "weight": np.where(np.isfinite(weight), weight, 1.0),
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            {
                "model_version": pd.Series(dtype=object),
                "step": pd.Series(dtype=np.int64),
                "test_mae": pd.Series(dtype=np.float64),
                "test_coverage": pd.Series(dtype=np.float64),
                "weight": pd.Series(dtype=np.float64),
            }
        )
    return pd.concat(parts, ignore_index=True)


# --- aggregation --------------------------------------------------------------------------------------------------


@dataclass
class Aggregates:
    """Realised figures of the window: per version, per (version, series), per (version, step), per (version,
    series, step) and per (version, series, night)."""

    versions: pd.DataFrame
    series: pd.DataFrame
    steps: pd.DataFrame
    series_steps: pd.DataFrame
    nights: pd.DataFrame


def _figures(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """rows, MAE, MASE (NaN without scaled errors), coverage over bounded rows and their count, mean level."""
    grouped = frame.groupby(by, sort=True)
    out = grouped.agg(
        rows=("abs_error", "size"),
        mae=("abs_error", "mean"),
        mase=("scaled_error", "mean"),
        bounded=("_inside", "count"),
        coverage=("_inside", "mean"),
        level=("level", "mean"),
    )
    return out.reset_index()


def aggregate_scores(scores: pd.DataFrame, references: dict[str, ModelReference | None]) -> Aggregates:
    """Realised MAE, MASE and coverage per version, series, step and night, with the reference figures beside them
    (`test_mase`, `expected_mase`, `test_mae`, `test_coverage`)."""
    frame = scores.copy()
    frame["_inside"] = frame["inside"].map({True: 1.0, False: 0.0}).astype(np.float64)
    frame["night"] = frame["origin_ts"].dt.strftime("%Y-%m-%d")
    steps_ref = _step_references(references)
    series_ref = _series_references(references)
    frame = frame.merge(steps_ref[["model_version", "step", "weight"]], on=["model_version", "step"], how="left")
    frame["weight"] = frame["weight"].fillna(1.0)

    series = _figures(frame, ["model_version", "series_id"])
    last_method = frame.sort_values("origin_ts").groupby(["model_version", "series_id"])["method"].last()
    series = series.merge(last_method.rename("method").reset_index(), on=["model_version", "series_id"])
    series = series.merge(
        series_ref[["model_version", "series_id", "test_mase"]], on=["model_version", "series_id"], how="left"
    )
    series["mase_ratio"] = series["mase"] / series["test_mase"]

    versions = _figures(frame, ["model_version"]).drop(columns=["mase"])
    version_mase = series.groupby("model_version")["mase"].mean().rename("mase")  # mean of per-series MASE
    last_night = frame.groupby("model_version")["night"].max().rename("last_night")
    versions = versions.merge(version_mase.reset_index(), on="model_version").merge(
        last_night.reset_index(), on="model_version"
    )
    test = pd.DataFrame(
        [
            {
                "model_version": version,
                "test_mase": np.nan if ref is None or ref.test_mase is None else float(ref.test_mase),
                "test_level": np.nan if ref is None or ref.level is None else float(ref.level),
                "test_coverage": np.nan if ref is None or ref.coverage is None else float(ref.coverage),
                "has_reference": ref is not None,
            }
            for version, ref in references.items()
        ],
        columns=["model_version", "test_mase", "test_level", "test_coverage", "has_reference"],
    )
    test_mae = steps_ref.groupby("model_version")["test_mae"].mean().rename("test_mae").reset_index()
    versions = versions.merge(test, on="model_version", how="left").merge(test_mae, on="model_version", how="left")
    versions["has_reference"] = versions["has_reference"].fillna(False).astype(bool)
    latest = versions["last_night"].max() if len(versions) else None
    versions["current"] = versions["last_night"] == latest

    steps = _figures(frame, ["model_version", "step"]).merge(
        steps_ref[["model_version", "step", "test_mae", "test_coverage"]], on=["model_version", "step"], how="left"
    )
    series_steps = _figures(frame, ["model_version", "series_id", "step"]).merge(
        steps_ref[["model_version", "step", "test_mae", "test_coverage"]], on=["model_version", "step"], how="left"
    )

    nights = _figures(frame, ["model_version", "series_id", "night"])
    weights = frame.groupby(["model_version", "series_id", "night"])["weight"].mean().rename("weight").reset_index()
    nights = nights.merge(weights, on=["model_version", "series_id", "night"]).merge(
        series_ref[["model_version", "series_id", "test_mase"]], on=["model_version", "series_id"], how="left"
    )
    nights["expected_mase"] = nights["test_mase"] * nights["weight"]
    return Aggregates(versions=versions, series=series, steps=steps, series_steps=series_steps, nights=nights)


# --- comparison with the references -------------------------------------------------------------------------------


def detect_drift(
    observations: pd.DataFrame,
    references: dict[str, ModelReference | None],
    window: MonitorWindow,
    config: MonitorConfig,
    series_ids: list[str] | None = None,
) -> pd.DataFrame:
    """Per (version, series) of the references: the new observations' count, mean and spread (inside the window,
    after the reference's `data_end`), the shift of the mean in recent standard deviations, the spread ratio, and
    `drifted` with its `reasons`."""
    ref = _series_references(references)
    if series_ids is not None:
        ref = ref[ref["series_id"].isin(series_ids)]
    obs = observations[(observations["ts"] >= window.start) & (observations["ts"] <= window.end)]
    joined = ref.merge(obs, on="series_id", how="inner")
    joined = joined[joined["ts"] > joined["data_end"]]
    values = joined.groupby(["model_version", "series_id"], sort=True)["value"]
    stats = pd.DataFrame(
        {"points": values.size(), "new_mean": values.mean(), "new_std": values.std(ddof=0)}  # as the reference's
    ).reset_index()
    out = ref.merge(stats, on=["model_version", "series_id"], how="left")
    out["points"] = out["points"].fillna(0).astype(np.int64)
    diff = (out["new_mean"] - out["recent_mean"]).abs().to_numpy(dtype=np.float64)
    recent_std = out["recent_std"].to_numpy(dtype=np.float64)
    new_std = out["new_std"].to_numpy(dtype=np.float64)
    tiny = 1e-9 * np.maximum(np.abs(out["recent_mean"].to_numpy(dtype=np.float64)), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(recent_std > tiny, diff / recent_std, np.where(diff > tiny, np.inf, 0.0))
        ratio = np.where(recent_std > tiny, new_std / recent_std, np.where(new_std > tiny, np.inf, 1.0))
    judged = out["points"].to_numpy() >= config.drift_min_points
    moved = judged & (shift > config.drift_k)
    spread = judged & ((ratio > config.drift_ratio) | (ratio < 1.0 / config.drift_ratio))
    out["shift_std"] = np.where(out["points"] > 0, shift, np.nan)
    out["spread_ratio"] = np.where(out["points"] > 0, ratio, np.nan)
    reasons = [
        [
            *([f"level moved {s:.1f} std ({m:.4g} vs {rm:.4g}; more than {config.drift_k:g})"] if mv else []),
            *(
                [f"spread x{r:.2f} ({ns:.4g} vs {rs:.4g}; outside 1/{config.drift_ratio:g}..x{config.drift_ratio:g})"]
                if sp
                else []
            ),
        ]
        for s, m, rm, mv, r, ns, rs, sp in zip(
            shift, out["new_mean"], out["recent_mean"], moved, ratio, new_std, recent_std, spread, strict=True
        )
    ]
    out["drifted"] = moved | spread
    out["reasons"] = reasons
    return out.drop(columns=["data_end", "mase_scale", "test_mase", "test_method"])


@dataclass(frozen=True)
class SeriesFinding:
    """A series that is degraded or drifted, and why."""

    series_id: str
    reasons: list[str]


@dataclass
class VersionVerdict:
    """One model version over the window, against its reference."""

    version: str
    status: str  # "degraded", "ok", "no reference", "no scores"
    current: bool  # still forecasting: its latest scored night is the model's latest
    rows: int
    mae: float | None
    test_mae: float | None
    mase: float | None
    test_mase: float | None
    coverage: float | None
    level: float | None
    degraded: list[SeriesFinding] = field(default_factory=list)
    drifted: list[SeriesFinding] = field(default_factory=list)
    last_night: str | None = None

    @property
    def emits(self) -> bool:
        """Whether this verdict raises the degradation event."""
        return self.status == "degraded" and self.current


@dataclass
class MonitorReport:
    """What a monitor run found: a verdict per version, and its tables (series, steps, nights, drift)."""

    model_name: str
    as_of: str
    window: MonitorWindow
    config: MonitorConfig
    versions: list[VersionVerdict]
    series: pd.DataFrame  # one row per (version, series): realised vs test, status, reasons
    steps: pd.DataFrame  # one row per (version, step): realised vs test MAE and coverage
    series_steps: pd.DataFrame  # one row per (version, series, step): the same per series
    nights: pd.DataFrame  # one row per (version, series, night): realised vs expected MASE, bad
    drift: pd.DataFrame  # one row per (version, series) of the references: new level and spread, drifted

    @property
    def degraded(self) -> bool:
        return any(v.emits for v in self.versions)


def finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def compare_with_references(
    aggregates: Aggregates,
    drift: pd.DataFrame,
    references: dict[str, ModelReference | None],
    config: MonitorConfig,
    model_name: str,
    window: MonitorWindow,
) -> MonitorReport:
    """Degradation (MASE over `mase_factor` x expected on the last `degraded_nights` scored nights, coverage below
    level - tolerance) and drift per series; a verdict per version."""
    nights = aggregates.nights.copy()
    with np.errstate(invalid="ignore"):  # NaN (no reference) compares as not bad
        nights["bad"] = (nights["mase"] > config.mase_factor * nights["expected_mase"]).fillna(False).astype(bool)
    keys = ["model_version", "series_id"]
    latest_first = nights.sort_values([*keys, "night"], ascending=[True, True, False], kind="stable")
    # the run of bad nights ending at each series' latest scored night
    run = latest_first.groupby(keys, sort=False)["bad"].cumprod().astype(np.int64)
    streak = run.groupby([latest_first[k] for k in keys]).sum().rename("nights_bad").reset_index()
    scored = nights.groupby(keys)["night"].nunique().rename("nights").reset_index()

    series = aggregates.series.merge(scored, on=keys, how="left").merge(streak, on=keys, how="left")
    mase_bad = series["nights_bad"] >= config.degraded_nights
    coverage_bad = (
        (series["bounded"] >= config.coverage_min_points)
        & series["coverage"].notna()
        & series["level"].notna()
        & (series["coverage"] < series["level"] - config.coverage_tolerance)
    )
    recent = latest_first[run.to_numpy() == 1]  # the nights of each series' run of bad nights, for the reasons
    recent_text = (
        recent.assign(
            text=[
                f"{n}: {m:.3g} vs {e:.3g}"
                for n, m, e in zip(recent["night"], recent["mase"], recent["expected_mase"], strict=True)
            ]
        )
        .groupby(keys)["text"]
        .agg(lambda t: ", ".join(reversed(list(t))))
        .rename("recent")
        .reset_index()
    )
    series = series.merge(recent_text, on=keys, how="left")
    drift_cols = drift[[*keys, "drifted", "reasons"]].rename(columns={"reasons": "drift_reasons"})
    series = series.merge(drift_cols, on=keys, how="left")
    series["drifted"] = series["drifted"].fillna(False).astype(bool)
    reasons: list[list[str]] = []
    for mb, cb, nb, rec, cov, lvl, n in zip(
        mase_bad,
        coverage_bad,
        series["nights_bad"],
        series["recent"],
        series["coverage"],
        series["level"],
        series["bounded"],
        strict=True,
    ):
        found = []
        if mb:
            found.append(f"realised MASE above {config.mase_factor:g} x expected on the last {int(nb)} nights ({rec})")
        if cb:
            found.append(
                f"coverage {cov:.2f} below level {lvl:.2f} - {config.coverage_tolerance:g} over {int(n)} forecasts"
            )
        reasons.append(found)
    series["reasons"] = reasons
    series["status"] = np.select(
        [mase_bad | coverage_bad, series["test_mase"].isna() | series["mase"].isna()],
        ["degraded", "no reference"],
        default="ok",
    )

    verdicts = []
    for row in aggregates.versions.to_dict("records"):
        version = str(row["model_version"])
        mine = series[series["model_version"] == version]
        degraded = [
            SeriesFinding(str(s), list(r))
            for s, r, st in zip(mine["series_id"], mine["reasons"], mine["status"], strict=True)
            if st == "degraded"
        ]
        flagged = drift[(drift["model_version"] == version) & drift["drifted"]]
        drifted = [
            SeriesFinding(str(s), list(r)) for s, r in zip(flagged["series_id"], flagged["reasons"], strict=True)
        ]
        status = "degraded" if degraded else ("ok" if row["has_reference"] else "no reference")
        verdicts.append(
            VersionVerdict(
                version=version,
                status=status,
                current=bool(row["current"]),
                rows=int(row["rows"]),
                mae=finite(row["mae"]),
                test_mae=finite(row.get("test_mae")),
                mase=finite(row["mase"]),
                test_mase=finite(row.get("test_mase")),
                coverage=finite(row["coverage"]),
                level=finite(row["level"]) if finite(row["level"]) is not None else finite(row.get("test_level")),
                degraded=degraded,
                drifted=drifted,
                last_night=str(row["last_night"]),
            )
        )
    for version in references:
        if version not in {v.version for v in verdicts}:
            verdicts.append(VersionVerdict(version, "no scores", False, 0, None, None, None, None, None, None))
    nights["bad"] = nights["bad"].astype(bool)
    return MonitorReport(
        model_name=model_name,
        as_of=window.end.isoformat(),
        window=window,
        config=config,
        versions=verdicts,
        series=series.drop(columns=["recent"]),
        steps=aggregates.steps,
        series_steps=aggregates.series_steps,
        nights=nights,
        drift=drift,
    )


def monitor(
    scores: pd.DataFrame,
    observations: pd.DataFrame,
    references: dict[str, ModelReference | None],
    config: MonitorConfig,
    model_name: str,
    window: MonitorWindow,
    series_ids: list[str] | None = None,
) -> MonitorReport:
    """aggregate -> drift -> compare, in one call (what the flow's tasks do one by one)."""
    aggregates = aggregate_scores(scores, references)
    drift = detect_drift(observations, references, window, config, monitored_series(aggregates, series_ids))
    return compare_with_references(aggregates, drift, references, config, model_name, window)


def monitored_series(aggregates: Aggregates, series_ids: list[str] | None) -> list[str]:
    """The series whose drift is reported: those asked for, else those with scores in the window."""
    return list(series_ids) if series_ids is not None else sorted(set(aggregates.series["series_id"].astype(str)))


def drift_series(references: dict[str, ModelReference | None], series_ids: list[str] | None) -> list[str]:
    """The series whose new observations are read for the drift check."""
    known = sorted({sid for ref in references.values() if ref is not None for sid in ref.series})
    return known if series_ids is None else [sid for sid in known if sid in set(series_ids)]


# --- Prefect tasks ------------------------------------------------------------------------------------------------


def is_transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry the registry read unless the answer was definite (a SeqcastError says what is wrong)."""
    try:
        state.result()
    except SeqcastError:
        return False
    except Exception:
        return True
    return False


@task(
    name="load-references",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def load_references_task(tracking_uri: str, model_name: str, versions: list[str]) -> dict[str, ModelReference | None]:
    return load_references(tracking_uri, model_name, versions)


@task(
    name="read-new-observations",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=store.is_connection_error,
    cache_policy=NO_CACHE,
)
def read_new_observations_task(url: str, series_ids: list[str], window: MonitorWindow) -> pd.DataFrame:
    """The window's observations of the series whose drift is checked."""
    return store.read_observations(store.get_engine(url), series_ids=series_ids, start=window.start, end=window.end)


@task(name="aggregate-scores", cache_policy=NO_CACHE)
def aggregate_scores_task(scores: pd.DataFrame, references: dict[str, ModelReference | None]) -> Aggregates:
    return aggregate_scores(scores, references)


@task(name="compare-with-references", cache_policy=NO_CACHE)
def compare_with_references_task(
    aggregates: Aggregates,
    observations: pd.DataFrame,
    references: dict[str, ModelReference | None],
    config: MonitorConfig,
    model_name: str,
    window: MonitorWindow,
    series_ids: list[str] | None = None,
) -> MonitorReport:
    drift = detect_drift(observations, references, window, config, monitored_series(aggregates, series_ids))
    return compare_with_references(aggregates, drift, references, config, model_name, window)
