"""The accuracy panel (benchmarks/accuracy_panel.py): its --quick run in-process, baselines that are seqcast's own
on a hand-checkable series, the target checks, and AutoETS's forecast-from-each-origin against statsmodels.

--quick uses only synthetic series, so none of this needs the bench extra; AutoETS is checked where statsmodels
is installed and reported as not run where it is not.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmarks import accuracy_panel as ap

HAS_STATSMODELS = importlib.util.find_spec("statsmodels") is not None


@pytest.fixture(scope="module")
def quick_results() -> dict[str, Any]:
    return ap.run_panel(quick=True)


def test_quick_panel_has_a_scored_row_per_series(quick_results: dict[str, Any]) -> None:
    assert quick_results["mode"] == "quick"
    variant = quick_results["variants"][ap.DEFAULT_VARIANT]
    assert variant["train_overrides"] == {"max_epochs": ap.QUICK_EPOCHS}
    rows = variant["rows"]
    assert [r["series"] for r in rows] == list(ap.QUICK_PANEL)
    for row in rows:
        assert row["windows"] >= 10, row
        for method in ("naive", "seasonal_naive", "lstm", "gru", "best_cell", "served", "served_val"):
            value = row["mase"][method]
            assert value is not None and math.isfinite(value) and value > 0, (row["series"], method, value)
        assert row["mase"]["best_cell"] == row["mase"][variant["best_cell"]]
        # served is the model or a baseline per series, chosen on test, so never worse than the better baseline
        assert row["served_vs_better_baseline"] <= 1 + 1e-9
        for column in ("served", "served_val"):
            (method,) = row["served_by"][column].values()
            assert method == "model" or method in row["mase"], (column, method)
            if method != "model":  # a series served by a baseline scores exactly as that baseline
                assert row["mase"][column] == pytest.approx(row["mase"][method])
        assert row["train"]["lstm"]["epochs"] <= ap.QUICK_EPOCHS
        intervals = row["intervals"]  # every served row has bounds: coverage is a share, width positive
        assert 0 < intervals["coverage"] <= 1 and intervals["width"] > 0 and intervals["msis"] > 0, intervals
        assert intervals["coverage_step_min"] <= intervals["coverage"] <= intervals["coverage_step_max"]
        if HAS_STATSMODELS:
            assert row["mase"]["ets"] > 0 and row["ets_model"] == {row["series"]: "ETS(A,Ad,A)"}
        else:
            assert row["mase"]["ets"] is None and "statsmodels" in row["ets_model"]
    means = variant["mean_mase"]
    assert means["naive"] == pytest.approx(np.mean([r["mase"]["naive"] for r in rows]), abs=1e-4)
    names = [t["name"].split()[0] for t in variant["targets"]]
    assert names == ["(a)", "(a')", "(b)", "(c)", "(d)"]
    electricity = variant["targets"][3]
    assert electricity["met"] is None and electricity["value"] == "not in this run"

    text = "\n".join(ap.markdown_lines(quick_results))
    for name in ap.QUICK_PANEL:  # one row in the MASE table, one in the intervals table
        assert sum(line.startswith(f"| {name} |") for line in text.splitlines()) == 2
    assert "Coverage within 3 points of 90%" in text
    assert "| (a) served <= better of naive / seasonal naive on every series |" in text
    assert "served (val)" in text


def test_baselines_are_seqcasts_own_on_a_line() -> None:
    """y = t, daily (season 7), L=14, H=7: naive misses by h at step h (MAE 4), seasonal naive by 7 at every step;
    the MASE scale is |y_t - y_{t-7}| = 7, so naive MASE = 4/7 and seasonal naive MASE = 1."""
    from tasks.evaluate import score_forecasts

    n = 100  # too short for the daily defaults (56 in, 14 out): the entry's own 14/7 apply
    frame = pd.DataFrame(
        {
            "series_id": "line",
            "ts": pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC"),
            "value": np.arange(n, dtype=np.float64),
        }
    )
    spec = ap.PanelSeries("line", "trend", "synthetic", "D", 14, 7, 1, "y = t")
    data, window_from = ap.windows_for(spec, frame)
    assert window_from.startswith("panel table") and (data.lookback, data.horizon) == (14, 7)
    assert len(data.test_starts) == math.ceil(0.2 * n) - 7 + 1  # every origin of the test part, stride 1
    longer = pd.DataFrame({"series_id": "line", "ts": pd.date_range("2024-01-01", periods=400, freq="D", tz="UTC")})
    defaults, window_from = ap.windows_for(spec, longer.assign(value=np.arange(400.0)))
    assert window_from == "defaults" and (defaults.lookback, defaults.horizon) == (56, 14)  # as `seqcast train`
    season, extra = ap.seasons_of(spec, data)
    assert (season, extra) == (7, [])
    baselines = ap.baseline_methods(data, season, extra)
    assert set(baselines) == {"naive", "seasonal_naive"}
    assert baselines["naive"].mae == pytest.approx(4.0)
    assert baselines["naive"].mase == pytest.approx(4.0 / 7.0)
    assert baselines["seasonal_naive"].mae == pytest.approx(7.0)
    assert baselines["seasonal_naive"].mase == pytest.approx(1.0)

    origins = data.test_starts.astype(np.int64) + data.lookback - 1
    naive = np.repeat(data.panel.values[origins][:, None], data.horizon, axis=1)
    np.testing.assert_array_equal(baselines["naive"].forecasts, naive)
    direct = score_forecasts(
        data.panel, data.test_starts, naive, data.lookback, data.horizon, season, data.splits.train_end
    )
    assert baselines["naive"].scores.overall == direct.overall


def _row(series: str, kind: str, naive: float, seasonal: float, model: float, served: float) -> dict[str, Any]:
    mase = {"naive": naive, "seasonal_naive": seasonal, "lstm": model, "best_cell": model, "served": served}
    better = "naive" if naive <= seasonal else "seasonal_naive"
    return {"series": series, "kind": kind, "horizon": 48, "mase": mase, "better_baseline": better, "train": {}}


def test_targets_flag_a_served_forecast_worse_than_naive() -> None:
    good = _row("airpassengers", "trend+season", 1.0, 0.8, 0.5, 0.5)
    walk = _row("msft", ap.RANDOM_WALK, 1.0, 1.1, 1.015, 1.0)
    bad = _row("wineind", "seasonal", 1.0, 1.2, 1.3, 1.1)  # served 1.1 > naive 1.0
    targets = ap.check_targets([good, walk, bad], {"served": 0.9, "ets": 0.95, "best_cell": 0.9})
    a, b, c, d = targets
    assert a["met"] is False and a["value"] == "2/3 series" and "wineind" in a["detail"]
    assert b["met"] is True and b["value"] == "2/2 series"  # msft within 2 % of naive, wineind not judged
    assert c["met"] is None
    assert d["met"] is True

    bad["mase"]["served_val"] = 1.1
    good["mase"]["served_val"], walk["mase"]["served_val"] = 0.5, 1.0
    a, a_val, *_ = ap.check_targets([good, walk, bad], {"served": 0.9, "ets": 0.95, "best_cell": 0.9})
    assert a_val["name"].startswith("(a')") and a_val["met"] is False and a_val["detail"] == "worse on wineind"

    slow_walk = _row("random_walk", ap.RANDOM_WALK, 1.0, 1.1, 1.03, 1.0)  # 3 % above naive
    losing = _row("electricity", "multi-seasonal", 0.5, 0.3, 0.31, 0.3)
    losing["train"] = {"lstm": {}, "gru": {}}
    losing["mase"]["gru"] = 0.25
    a, b, c, d = ap.check_targets([slow_walk, losing], {"served": 1.0, "ets": 0.9, "best_cell": 0.7})
    assert a["met"] is True
    assert b["met"] is False and "random_walk" in b["detail"] and "electricity" in b["detail"]
    assert c["met"] is False and c["value"] == 0.25  # the better cell, above 0.216
    assert d["met"] is False


def test_scaling_is_refused_with_a_clear_message() -> None:
    from tasks.train import TrainConfig

    if "scaling" in TrainConfig.model_fields:
        with pytest.raises(SystemExit, match="--scaling 'no-such-scaling' is refused by TrainConfig"):
            ap.check_scalings(["no-such-scaling"])
    else:
        with pytest.raises(SystemExit, match="has no `scaling` field"):
            ap.check_scalings(["series"])
    with pytest.raises(ValueError, match="unknown --series"):
        ap.panel_series(["no-such-series"])


def test_main_writes_json_for_one_series(tmp_path: Path) -> None:
    out = tmp_path / "panel.json"
    assert ap.main(["--quick", "--series", "random_walk", "--cells", "gru", "--no-ets", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    (row,) = results["variants"][ap.DEFAULT_VARIANT]["rows"]
    assert row["series"] == "random_walk" and row["kind"] == ap.RANDOM_WALK
    assert set(row["train"]) == {"gru"} and row["mase"]["ets"] is None and "--no-ets" in row["ets_model"]


@pytest.mark.skipif(not HAS_STATSMODELS, reason="statsmodels (the bench extra) is not installed")
def test_ets_forecasts_match_statsmodels_refiltered_at_each_origin() -> None:
    """The panel forecasts every origin from one filtered pass; statsmodels re-filtering the data up to an origin
    with the same parameters must give the same forecast."""
    import warnings

    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    spec = ap.panel_series(["trend_season"])[0]
    data, _ = ap.windows_for(spec, ap.load_series(spec, quick=True))
    season, _ = ap.seasons_of(spec, data)
    forecasts, info = ap.ets_forecasts(data, season, search=False)
    assert info["model"] == {"trend_season": "ETS(A,Ad,A)"}
    y = data.panel.values
    fit_end = int(data.splits.val_end[0])
    options: dict[str, Any] = {"error": "add", "trend": "add", "damped_trend": True}
    options.update(seasonal="add", seasonal_periods=season)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = ETSModel(y[:fit_end], **options).fit(disp=False).params
        _, positions = data.window_index(data.test_starts)
        for i in (0, len(positions) // 2, len(positions) - 1):
            origin = int(positions[i])
            expected = ETSModel(y[: origin + 1], **options).smooth(params).forecast(data.horizon)
            np.testing.assert_allclose(forecasts[i], expected, rtol=1e-9, atol=1e-9)
