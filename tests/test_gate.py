"""The promotion gate: per-series, every baseline, the champion on the same windows; never a pooled MAE."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.windows import SeriesPanel, window_starts
from tasks import evaluate as ev
from tasks import gate


def hourly_panel(names: tuple[str, ...]) -> SeriesPanel:
    """Series on one hourly clock: a steady ramp (naive is near perfect) and a daily cycle whose amplitude grows
    (seasonal naive is close)."""
    n = 24 * 8
    t = np.arange(n, dtype=np.float64)
    every = {"ramp": 100 + 0.5 * t, "cycle": 50 + (10 + 0.05 * t) * np.sin(2 * np.pi * t / 24)}
    values = [every[name] for name in names]
    return SeriesPanel(
        series_ids=list(names),
        values=np.concatenate(values),
        offsets=np.arange(len(names) + 1, dtype=np.int64) * n,
        timestamps=[pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")] * len(names),
        freq="h",
    )


def evaluation_of(
    predicted_fn: object, names: tuple[str, ...] = ("ramp", "cycle")
) -> tuple[ev.Evaluation, SeriesPanel, np.ndarray]:
    panel = hourly_panel(names)
    train_end = panel.offsets[:-1] + 24 * 6
    lookback, horizon = 24, 6
    starts = window_starts(panel, lookback, horizon, train_end, panel.offsets[1:] - 1)
    actual = ev.target_values(panel.values, starts, lookback, horizon)
    predicted = predicted_fn(actual, panel.series_of(starts))  # type: ignore[operator]
    evaluation = ev.evaluate_against_baselines(
        panel, starts, predicted, lookback, horizon, 24, train_end, model_name="lstm"
    )
    return evaluation, panel, starts


NO_CHAMPION = gate.ChampionScore(None, None, None, "no champion yet")


def test_a_model_that_beats_seasonal_naive_but_loses_to_naive_is_refused() -> None:
    # On the ramp, forecasts 11 below the targets: better than seasonal naive (12 below), far worse than naive
    # (0.5 per step ahead) -- the weekly series at horizon 1 that was once promoted.
    evaluation, _, _ = evaluation_of(lambda actual, series: actual - 11.0, names=("ramp",))
    assert evaluation.model.overall["mase"] < evaluation.baselines["seasonal_naive_24"].overall["mase"]
    decision = gate.decide_promotion(evaluation, NO_CHAMPION)
    assert not decision.promote
    naive = evaluation.baselines["naive"].overall["mase"]
    assert f"does not beat naive {naive:.4f}" in decision.reason
    assert "seasonal_naive_24" not in decision.reason.split("does not beat")[1]
    assert list(decision.series["served"]) == ["naive"]


def test_each_series_is_served_by_the_better_of_the_network_and_its_best_baseline() -> None:
    evaluation, _, _ = evaluation_of(lambda actual, series: np.where((series == 0)[:, None], actual - 11.0, actual))
    decision = gate.decide_promotion(evaluation, NO_CHAMPION)
    assert dict(zip(decision.series["series_id"], decision.series["served"], strict=True)) == {
        "ramp": "naive",
        "cycle": "lstm",
    }
    assert decision.fallback_series == 1
    assert "1 of 2 series served by a baseline" in decision.reason
    assert decision.served_mase < min(decision.baseline_mase.values())


def test_a_model_that_beats_every_baseline_is_promoted_and_the_champion_is_judged_on_what_it_serves() -> None:
    evaluation, _, _ = evaluation_of(lambda actual, series: actual + 0.1)
    first = gate.decide_promotion(evaluation, NO_CHAMPION)
    assert first.candidate == "lstm"
    assert first.promote and "first champion" in first.reason
    better = gate.ChampionScore("3", "run", first.served_mase / 2, "champion v3")
    refused = gate.decide_promotion(evaluation, better)
    assert not refused.promote and "not better than champion v3" in refused.reason
    worse = gate.ChampionScore("3", "run", first.served_mase * 2, "champion v3")
    assert gate.decide_promotion(evaluation, worse).promote


def test_nan_candidate_is_never_promoted_and_never_chosen() -> None:
    nan_eval, _, _ = evaluation_of(lambda actual, series: np.full_like(actual, np.nan))
    good_eval, _, _ = evaluation_of(lambda actual, series: actual + 0.1)
    assert not gate.decide_promotion(nan_eval, NO_CHAMPION).promote
    assert gate.best_candidate({"lstm": nan_eval, "gru": good_eval}) == "gru"


def test_decision_markdown_lists_every_series() -> None:
    evaluation, _, _ = evaluation_of(lambda actual, series: actual - 11.0, names=("ramp",))
    text = gate.decision_markdown(gate.decide_promotion(evaluation, NO_CHAMPION))
    assert "**lstm: not promoted.**" in text
    assert "| ramp | 43 |" in text and "| naive |" in text
