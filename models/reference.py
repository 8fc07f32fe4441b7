"""What a registered model promised at evaluation, kept with it so that monitoring can hold it to it.

Saved in the forecaster's config.json (so the manifest's and MLflow's sha256 cover it) and read back as
`LoadedForecaster.reference`; models saved before it existed have none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _number(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class SeriesReference:
    """One series at evaluation: MASE's scale (its training part's in-sample seasonal-naive MAE), the method that
    serves it, its test MASE as served, and the level and spread of its last observations before `data_end`
    (what new observations are compared with to detect drift)."""

    mase_scale: float
    method: str
    test_mase: float | None
    recent_mean: float
    recent_std: float
    data_end: str  # ISO timestamp (UTC) of the last observation the model was trained and evaluated on


@dataclass(frozen=True)
class ModelReference:
    """Test figures of what the model serves (its network with the per-series fallback) on the test windows.

    `mae_by_step` and `coverage_by_step` have one value per horizon step; coverage is None without intervals.
    """

    season: int
    level: float | None
    test_mase: float | None
    mae_by_step: list[float | None]
    coverage: float | None = None
    coverage_by_step: list[float | None] | None = None
    series: dict[str, SeriesReference] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["test_mase"] = _number(self.test_mase)
        data["coverage"] = _number(self.coverage)
        data["mae_by_step"] = [_number(v) for v in self.mae_by_step]
        if self.coverage_by_step is not None:
            data["coverage_by_step"] = [_number(v) for v in self.coverage_by_step]
        data["series"] = {
            sid: {**asdict(ref), "test_mase": _number(ref.test_mase)} for sid, ref in sorted(self.series.items())
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelReference:
        series = {str(sid): SeriesReference(**values) for sid, values in data.get("series", {}).items()}
        return cls(
            season=int(data["season"]),
            level=data.get("level"),
            test_mase=data.get("test_mase"),
            mae_by_step=list(data.get("mae_by_step", [])),
            coverage=data.get("coverage"),
            coverage_by_step=data.get("coverage_by_step"),
            series=series,
        )
