"""Evaluation: metrics against hand-computed numbers, baselines by index arithmetic, same-window scoring, plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import baselines as bl
from models import frequency
from models.windows import SeriesPanel, window_starts
from tasks import evaluate as ev
from tasks.plots import plot_forecasts


def make_panel(series: dict[str, np.ndarray], freq: str = "h") -> SeriesPanel:
    lengths = [len(v) for v in series.values()]
    return SeriesPanel(
        series_ids=list(series),
        values=np.concatenate([np.asarray(v, dtype=np.float64) for v in series.values()]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        timestamps=[pd.date_range("2024-01-01", periods=n, freq=freq, tz="UTC") for n in lengths],
        freq=freq,
    )


def test_metrics_match_hand_computed_values() -> None:
    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    predicted = np.array([[2.0, 2.0], [1.0, 5.0]])  # errors 1, 0, 2, 1
    assert ev.mae(actual, predicted) == 1.0
    assert ev.rmse(actual, predicted) == pytest.approx(math.sqrt(6 / 4), rel=1e-15)
    # 200|a-p|/(|a|+|p|): 200/3, 0, 400/4, 200/9
    assert ev.smape(actual, predicted) == pytest.approx((200 / 3 + 0 + 100 + 200 / 9) / 4, rel=1e-15)
    assert ev.smape(actual, predicted) == pytest.approx(425 / 9, rel=1e-15)


def test_smape_edge_cases() -> None:
    assert ev.smape(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0  # 0/0 is a perfect forecast
    assert ev.smape(np.array([[0.0]]), np.array([[5.0]])) == 200.0  # the upper bound
    assert ev.smape(np.array([[1.0]]), np.array([[-1.0]])) == 200.0  # opposite signs
    assert ev.smape(np.array([[0.0, 2.0]]), np.array([[0.0, 2.0]])) == 0.0
    assert ev.smape(np.array([[0.0, 1.0]]), np.array([[0.0, 3.0]])) == pytest.approx(50.0)  # (0 + 100) / 2


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ev.mae(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        ev.rmse(np.zeros((0, 3)), np.zeros((0, 3)))


def test_mase_with_known_scale() -> None:
    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    predicted = np.array([[2.0, 2.0], [1.0, 5.0]])  # window MAEs 0.5 and 1.5
    assert ev.mase(actual, predicted, 2.0) == 0.5
    assert ev.mase(actual, predicted, np.array([1.0, 4.0])) == (0.5 / 1 + 1.5 / 4) / 2
    with pytest.raises(ValueError, match="positive"):
        ev.mase(actual, predicted, np.array([1.0, 0.0]))


def test_mase_scales_per_series_and_fallback_rules() -> None:
    panel = make_panel(
        {
            "seasonal": np.array([1.0, 3.0, 2.0, 5.0, 4.0, 99.0]),  # train 5: |2-1|, |5-3|, |4-2| -> 5/3
            "constant": np.full(6, 7.0),  # zero seasonal and naive scale -> 1.0
            "periodic": np.array([1.0, 3.0, 1.0, 3.0, 1.0, 3.0]),  # seasonal scale 0 -> naive |diff| = 2
            "short": np.array([4.0, 10.0, 0.0, 0.0]),  # 2 training points < m + 1 -> naive scale 6
            "empty": np.array([5.0, 6.0]),  # no training part at all -> 1.0
        }
    )
    start = panel.offsets[:-1]
    train_end = start + np.array([5, 5, 6, 2, 0])
    scale = ev.mase_scales(panel, train_end, season=2)
    np.testing.assert_allclose(scale, [5 / 3, 1.0, 2.0, 6.0, 1.0], rtol=1e-15)


def test_mase_scale_ignores_values_after_training_and_other_series() -> None:
    a = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    b = np.array([100.0, 100.0, 90.0, 70.0, -5.0])
    panel = make_panel({"a": a, "b": b})
    train_end = panel.offsets[:-1] + 4
    changed = panel.values.copy()
    changed[[4, 9]] = 1e6  # past each training part
    np.testing.assert_array_equal(
        ev.mase_scales(panel, train_end, 1), ev.mase_scales(panel.with_values(changed), train_end, 1)
    )
    np.testing.assert_allclose(ev.mase_scales(panel, train_end, 1), [(1 + 2 + 3) / 3, (0 + 10 + 20) / 3])


@pytest.mark.parametrize(
    ("freq", "expected"),
    [
        ("30min", 48),
        ("h", 24),
        ("15min", 96),
        ("2h", 12),
        ("7h", 24),
        ("min", 1440),
        ("D", 7),
        ("B", 5),
        ("W", 52),
        ("W-SUN", 52),
        ("7D", 52),
        ("2W", 26),
        ("MS", 12),
        ("M", 12),
        ("ME", 12),
        ("QS", 4),
        ("YS", 1),
        ("3D", 1),
        ("48h", 1),
        ("SMS-15", 24),
        ("QE-DEC", 4),
    ],
)
def test_season_length(freq: str, expected: int) -> None:
    assert frequency.season_length(freq) == expected


def test_season_length_override_and_unknown() -> None:
    assert frequency.season_length("30min", override=336) == 336
    with pytest.raises(ValueError, match="at least 1"):
        frequency.season_length("h", override=0)
    with pytest.raises(ValueError, match="pass the season length explicitly"):
        frequency.season_length("fortnightly")
    assert frequency.weekly_season_length("30min") == 336
    assert frequency.weekly_season_length("h") == 168
    assert frequency.weekly_season_length("D") is None


def test_naive_repeats_the_last_input() -> None:
    values = np.arange(20.0)
    forecasts = bl.naive_forecasts(values, np.array([0, 5, 11]), lookback=3, horizon=2)
    np.testing.assert_array_equal(forecasts, [[2.0, 2.0], [7.0, 7.0], [13.0, 13.0]])


def test_seasonal_naive_by_index_arithmetic() -> None:
    values = np.arange(100.0)
    starts = np.array([0, 10, 37])
    lookback, horizon, season = 6, 7, 3
    forecasts = bl.seasonal_naive_forecasts(values, starts, lookback, horizon, season)
    # origin o = s + 5; h = 1..7 -> o-2, o-1, o, o-2, o-1, o, o-2
    np.testing.assert_array_equal(forecasts[0], [3, 4, 5, 3, 4, 5, 3])
    origin = starts + lookback - 1
    for h in range(1, horizon + 1):
        np.testing.assert_array_equal(forecasts[:, h - 1], origin + h - season * math.ceil(h / season))
    # it only reads the window's inputs: nothing at or past the first target
    assert (forecasts < (starts + lookback)[:, None]).all()
    assert (forecasts >= starts[:, None]).all()


def test_seasonal_naive_season_equal_to_lookback_and_one() -> None:
    values = np.arange(30.0)
    np.testing.assert_array_equal(bl.seasonal_naive_forecasts(values, np.array([2]), 4, 5, 4), [[2, 3, 4, 5, 2]])
    np.testing.assert_array_equal(
        bl.seasonal_naive_forecasts(values, np.array([2]), 4, 3, 1), bl.naive_forecasts(values, np.array([2]), 4, 3)
    )


def test_seasonal_naive_needs_lookback_of_a_season() -> None:
    with pytest.raises(ValueError) as err:
        bl.seasonal_naive_forecasts(np.arange(100.0), np.array([0]), lookback=24, horizon=4, season=48)
    assert str(err.value) == (
        "seasonal naive with season 48 reads 48 inputs but `lookback` is 24; "
        "raise `lookback` to at least 48 or use a shorter season"
    )


def periodic_panel() -> tuple[SeriesPanel, np.ndarray]:
    pattern_a = np.array([3.0, 7.0, 5.0, 1.0])
    pattern_b = np.array([10.0, 20.0, 30.0, 20.0])
    panel = make_panel({"a": np.tile(pattern_a, 10), "b": np.tile(pattern_b, 12)})
    return panel, panel.offsets[:-1] + 24  # training: the first 24 points of each series


def test_seasonal_naive_is_perfect_on_a_periodic_series() -> None:
    panel, train_end = periodic_panel()
    lookback, horizon = 8, 6
    starts = window_starts(panel, lookback, horizon, train_end, panel.offsets[1:] - 1)
    evaluation = ev.evaluate_against_baselines(
        panel, starts, bl.naive_forecasts(panel.values, starts, lookback, horizon), lookback, horizon, 4, train_end
    )
    seasonal = evaluation.baselines["seasonal_naive_4"]
    assert seasonal.overall == {"mae": 0.0, "rmse": 0.0, "smape": 0.0, "mase": 0.0}
    # the model here is the naive forecast: its scores equal the naive baseline's
    assert evaluation.model.overall == evaluation.baselines["naive"].overall
    # a periodic training part has seasonal scale 0 -> the naive (m=1) scale, over its 23 diffs
    diffs_a = np.abs(np.diff(np.tile([3.0, 7.0, 5.0, 1.0], 6)))
    diffs_b = np.abs(np.diff(np.tile([10.0, 20.0, 30.0, 20.0], 6)))
    np.testing.assert_allclose(evaluation.model.per_series["mase_scale"], [diffs_a.mean(), diffs_b.mean()])


def test_score_forecasts_hand_computed() -> None:
    # series a: 0..9, train 4; series b: 10 constant values of 2 with train 4 (scale rule -> 1.0)
    panel = make_panel({"a": np.arange(10.0), "b": np.full(10, 2.0)})
    train_end = panel.offsets[:-1] + 4
    lookback, horizon = 2, 2
    starts = np.array([3, 5, 12])  # a: targets [5, 6], [7, 8]; b: targets [2, 2]
    predicted = np.array([[5.0, 8.0], [6.0, 8.0], [3.0, 0.0]])  # errors a: 0, 2 | 1, 0; b: 1, 2
    scores = ev.score_forecasts(panel, starts, predicted, lookback, horizon, season=1, train_end=train_end)
    assert scores.n_windows == 3
    assert scores.overall["mae"] == 1.0  # (0 + 2 + 1 + 0 + 1 + 2) / 6
    assert scores.overall["rmse"] == pytest.approx(math.sqrt(10 / 6), rel=1e-15)
    # a's scale is 1 (steps of 1), b's is 1.0 by the constant-series rule: MASE a 0.75, b 1.5, each weighs the same
    assert scores.overall["mase"] == pytest.approx((0.75 + 1.5) / 2, rel=1e-15)
    np.testing.assert_allclose(scores.mae_by_step, [(0 + 1 + 1) / 3, (2 + 0 + 2) / 3])
    per = scores.per_series.set_index("series_id")
    assert per.loc["a", "n_windows"] == 2 and per.loc["b", "n_windows"] == 1
    assert per.loc["a", "mae"] == 0.75 and per.loc["b", "mae"] == 1.5
    assert per.loc["a", "rmse"] == pytest.approx(math.sqrt(5 / 4), rel=1e-15)
    # sMAPE a: 0, 200*2/(6+8), 200*1/(7+6), 0; b: 200*1/(2+3), 200*2/(2+0)
    assert per.loc["a", "smape"] == pytest.approx((400 / 14 + 200 / 13) / 4, rel=1e-14)
    assert per.loc["b", "smape"] == pytest.approx((40 + 200) / 2, rel=1e-14)
    assert per.loc["a", "mase"] == 0.75 and per.loc["b", "mase"] == 1.5


def test_only_the_given_windows_are_scored() -> None:
    panel = make_panel({"a": np.sin(np.arange(60.0)) * 10 + 50, "b": np.cos(np.arange(50.0)) * 5 + 20})
    train_end = panel.offsets[:-1] + 30
    lookback, horizon = 6, 3
    starts = window_starts(panel, lookback, horizon, train_end, panel.offsets[1:] - 1, stride=4)
    rng = np.random.default_rng(0)
    predicted = ev.target_values(panel.values, starts, lookback, horizon) + rng.normal(size=(len(starts), horizon))
    base = ev.score_forecasts(panel, starts, predicted, lookback, horizon, 24, train_end)

    targets = (starts[:, None] + lookback + np.arange(horizon)).ravel()
    test_part = np.concatenate([np.arange(t, e) for t, e in zip(train_end, panel.offsets[1:], strict=True)])
    outside = np.setdiff1d(test_part, targets)
    assert len(outside) > 0  # stride 4 > horizon 3 leaves held-out points in no window's targets
    changed = panel.values.copy()
    changed[outside] += 1000.0
    again = ev.score_forecasts(panel.with_values(changed), starts, predicted, lookback, horizon, 24, train_end)
    assert again.overall["mae"] == base.overall["mae"]
    assert again.overall["rmse"] == base.overall["rmse"]

    changed = panel.values.copy()
    changed[targets[0]] += 1000.0
    moved = ev.score_forecasts(panel.with_values(changed), starts, predicted, lookback, horizon, 24, train_end)
    assert moved.overall["mae"] > base.overall["mae"]


def test_windows_are_checked() -> None:
    panel = make_panel({"a": np.arange(20.0), "b": np.arange(20.0)})
    train_end = panel.offsets[:-1] + 10
    with pytest.raises(ValueError, match="`starts` is empty"):
        ev.score_forecasts(panel, np.array([], dtype=np.int64), np.zeros((0, 2)), 3, 2, 1, train_end)
    with pytest.raises(ValueError, match=r"runs past the end of series 'a'"):
        ev.score_forecasts(panel, np.array([17]), np.zeros((1, 2)), 3, 2, 1, train_end)
    with pytest.raises(ValueError, match=r"series 'b' has targets from position 5, inside the training part"):
        ev.score_forecasts(panel, np.array([22]), np.zeros((1, 2)), 3, 2, 1, train_end)
    with pytest.raises(ValueError, match=r"`predicted` must be \[windows, horizon\] = \[1, 2\]; got \[1, 3\]"):
        ev.score_forecasts(panel, np.array([10]), np.zeros((1, 3)), 3, 2, 1, train_end)
    with pytest.raises(ValueError, match="one flat index per series"):
        ev.score_forecasts(panel, np.array([10]), np.zeros((1, 2)), 3, 2, 1, train_end[:1])


def test_evaluation_metric_names_and_table() -> None:
    panel, train_end = periodic_panel()
    lookback, horizon = 8, 12
    starts = window_starts(panel, lookback, horizon, train_end, panel.offsets[1:] - 1)
    predicted = ev.target_values(panel.values, starts, lookback, horizon) + 0.5
    evaluation = ev.evaluate_against_baselines(
        panel, starts, predicted, lookback, horizon, 4, train_end, seasons=(8,), model_name="lstm"
    )
    metrics = evaluation.metrics()
    expected = {f"test_{m}" for m in ev.METRIC_NAMES} | {f"served_test_{m}" for m in ev.METRIC_NAMES}
    for baseline in ("naive", "seasonal_naive_4", "seasonal_naive_8"):
        expected |= {f"{baseline}_test_{m}" for m in ev.METRIC_NAMES}
    expected |= {"test_windows", "test_fallback_series"}
    assert set(metrics) == expected
    assert metrics["test_mae"] == 0.5
    assert metrics["seasonal_naive_8_test_mae"] == 0.0
    assert metrics["test_windows"] == len(starts)
    # seasonal naive is perfect on both periodic series: both fall back to it (the shorter season wins a tie)
    assert evaluation.fallback == {"a": "seasonal_naive_4", "b": "seasonal_naive_4"}
    assert metrics["test_fallback_series"] == 2 and metrics["served_test_mae"] == 0.0
    np.testing.assert_array_equal(evaluation.mae_by_step()["lstm"], np.full(12, 0.5))

    table = evaluation.table()
    assert list(table.columns) == ["method", "scope", "series_id", "n_windows", "mae", "rmse", "smape", "mase"]
    assert len(table) == 5 + 5 * 2  # 5 methods overall, then 5 methods x 2 series
    assert list(table["method"][:5]) == ["lstm", "served", "naive", "seasonal_naive_4", "seasonal_naive_8"]
    # a periodic training part falls back to the naive scale: a: 23 diffs 4, 2, 4, 2, ... -> 70 / 23; b: 10.
    # MASE overall is the mean of per-series MASE: every series weighs the same
    assert metrics["test_mase"] == pytest.approx(np.mean([0.5 / (70 / 23), 0.5 / 10.0]), rel=1e-14)
    rows = evaluation.table_rows()
    assert rows[0] == {
        "method": "lstm",
        "scope": "overall",
        "series_id": "",
        "n_windows": len(starts),
        "mae": 0.5,
        "rmse": 0.5,
        "smape": float(f"{metrics['test_smape']:.6g}"),
        "mase": float(f"{metrics['test_mase']:.6g}"),
    }
    assert [(r["method"], r["series_id"]) for r in rows[5:7]] == [("lstm", "a"), ("served", "a")]


def test_seasons_longer_than_the_lookback_are_left_out() -> None:
    panel, train_end = periodic_panel()
    starts = window_starts(panel, 4, 2, train_end, panel.offsets[1:] - 1)
    predicted = ev.target_values(panel.values, starts, 4, 2)
    evaluation = ev.evaluate_against_baselines(panel, starts, predicted, 4, 2, 4, train_end, seasons=(8, 4, 1))
    assert list(evaluation.baselines) == ["naive", "seasonal_naive_4"]
    assert not any("seasonal_naive_8" in name for name in evaluation.metrics())


def test_fallback_serves_the_best_baseline_where_the_model_loses() -> None:
    # a: a random walk the model forecasts badly; b: a smooth cycle the model forecasts exactly
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=60)) + 50
    cycle = 10 + np.sin(np.arange(60) * 2 * np.pi / 6)
    panel = make_panel({"a": walk, "b": cycle})
    train_end = panel.offsets[:-1] + 40
    lookback, horizon = 12, 3
    starts = window_starts(panel, lookback, horizon, train_end, panel.offsets[1:] - 1)
    actual = ev.target_values(panel.values, starts, lookback, horizon)
    series = panel.series_of(starts)
    predicted = np.where((series == 0)[:, None], actual - 5.0, actual)  # a: 5 below every target; b: perfect
    evaluation = ev.evaluate_against_baselines(panel, starts, predicted, lookback, horizon, 6, train_end)
    assert evaluation.fallback == {"a": "naive"}
    table = evaluation.series_table().set_index("series_id")
    assert table.loc["a", "served"] == "naive" and table.loc["b", "served"] == "model"
    assert table.loc["a", "best_baseline"] == "naive"
    assert table.loc["a", "ratio"] > 1 and table.loc["b", "ratio"] == 0.0
    served = evaluation.served.per_series.set_index("series_id")["mase"]
    assert served["a"] == evaluation.baselines["naive"].per_series.set_index("series_id").loc["a", "mase"]
    assert served["b"] == 0.0
    # a given fallback is kept as it is (a registered model scored on new windows)
    kept = ev.evaluate_against_baselines(panel, starts, predicted, lookback, horizon, 6, train_end, fallback={})
    assert kept.fallback == {} and kept.served.overall == kept.model.overall


def test_a_tie_or_a_nan_goes_to_the_baseline() -> None:
    panel, train_end = periodic_panel()
    starts = window_starts(panel, 8, 2, train_end, panel.offsets[1:] - 1)
    naive = bl.naive_forecasts(panel.values, starts, 8, 2)
    predicted = np.where((panel.series_of(starts) == 0)[:, None], np.nan, naive)  # a: NaN; b: exactly naive
    evaluation = ev.evaluate_against_baselines(panel, starts, predicted, 8, 2, 1, train_end)
    assert evaluation.fallback == {"a": "naive", "b": "naive"}
    assert math.isfinite(evaluation.served.overall["mase"])


def test_nan_forecasts_give_nan_metrics_and_null_table_cells() -> None:
    panel, train_end = periodic_panel()
    starts = window_starts(panel, 8, 2, train_end, panel.offsets[1:] - 1)
    predicted = np.full((len(starts), 2), np.nan)
    evaluation = ev.evaluate_against_baselines(panel, starts, predicted, 8, 2, 4, train_end)
    assert math.isnan(evaluation.metrics()["test_mase"])
    assert evaluation.table_rows()[0]["mae"] is None


def test_plot_writes_valid_pngs(tmp_path: Path) -> None:
    hostile = "x'); DROP TABLE forecasts; -- ünï/../\x00" + "z" * 300
    n = 24 * 6
    panel = make_panel(
        {
            "load": 100 + 10 * np.sin(np.arange(n) * 2 * np.pi / 24),
            hostile: 5 + np.cos(np.arange(n) * 2 * np.pi / 24),
            "unused": np.arange(n, dtype=float),
        }
    )
    train_end = panel.offsets[:-1] + 96
    lookback, horizon = 24, 6
    starts = window_starts(panel, lookback, horizon, train_end, panel.offsets[1:] - 1)
    predicted = ev.target_values(panel.values, starts, lookback, horizon) * 1.02
    evaluation = ev.evaluate_against_baselines(panel, starts, predicted, lookback, horizon, 24, train_end)
    paths = plot_forecasts(
        panel,
        starts,
        predicted,
        lookback,
        horizon,
        tmp_path / "plots",
        max_series=2,
        baseline=evaluation.baseline_forecasts["seasonal_naive_24"],
        scores=evaluation.model,
    )
    assert len(paths) == 2
    for path in paths:
        assert path.parent == tmp_path / "plots"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 10_000
    assert paths[0].name == "forecast_000_load.png"
    assert len(paths[1].name) < 80 and "\x00" not in paths[1].name and "/" not in paths[1].name
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_evaluate_task_publishes_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.windowing import WindowConfig, prepare_windows

    published: list[dict[str, object]] = []
    monkeypatch.setattr("prefect.artifacts.create_table_artifact", lambda **kwargs: published.append(kwargs))
    ts = pd.date_range("2024-01-01", periods=80, freq="h", tz="UTC")
    frame = pd.DataFrame({"series_id": "a", "ts": ts, "value": np.tile([3.0, 7.0, 5.0, 1.0], 20)})
    data = prepare_windows(frame, WindowConfig(lookback=8, horizon=2))
    predicted = ev.target_values(data.panel.values, data.test_starts, 8, 2)
    evaluation = ev.evaluate_task.fn(data, predicted, 4, artifact_key="gru-test")
    assert evaluation.metrics()["test_mae"] == 0.0
    assert [p["key"] for p in published] == ["gru-test"]
    assert published[0]["table"] == evaluation.table_rows()
