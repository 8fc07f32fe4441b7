"""The promotion gate: which candidate may become champion, judged per series on a scale-free metric.

A candidate is promoted only if, on the same test windows, the network alone beats every baseline (naive and
seasonal naive at each season the data implies) on the mean of per-series MASE, and what it would serve (the
network, or its per-series baseline fallback) beats what the current champion serves. MAE pooled over series is
never used: series in different units would make it meaningless, and a large series would hide a losing one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.evaluate import Evaluation, evaluate_test_windows, forecast_test_windows
from tasks.run_context import run_logger

if TYPE_CHECKING:
    from tasks.windowing import WindowedData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChampionScore:
    """The current champion's served forecasts scored on this run's test windows; `mase` (mean per-series MASE)
    is None when there is no champion or it cannot be compared."""

    version: str | None
    run_id: str | None
    mase: float | None
    note: str


def score_champion(model_name: str, data: WindowedData, season: int, seasons: Sequence[int] = ()) -> ChampionScore:
    """Score the registered champion, as it serves (its own scalers, weights and fallback), on this run's test
    windows."""
    from tasks.registry import CHAMPION, get_alias, load_version

    version = get_alias(model_name, CHAMPION)
    if version is None:
        return ChampionScore(None, None, None, f"registered model '{model_name}' has no champion yet")
    champion = load_version(model_name, str(version.version))
    unknown = sorted(set(data.panel.series_ids) - set(champion.series_ids))
    reason = None
    if champion.horizon != data.horizon:
        reason = f"champion horizon {champion.horizon} differs from {data.horizon}"
    elif champion.lookback > data.lookback:
        reason = f"champion lookback {champion.lookback} is longer than {data.lookback}"
    elif champion.freq != data.freq:
        reason = f"champion frequency {champion.freq!r} differs from {data.freq!r}"
    elif unknown:
        reason = f"champion was not trained on series {unknown[:5]!r}"
    if reason is not None:
        return ChampionScore(str(version.version), version.run_id, None, reason + "; not comparable")
    served = forecast_test_windows(champion, data)  # its fallback is already in what it serves
    evaluation = evaluate_test_windows(data, served, season, seasons, model_name="champion")
    return ChampionScore(
        str(version.version), version.run_id, evaluation.model.overall["mase"], f"champion v{version.version}"
    )


@task(name="score-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def score_champion_task(model_name: str, data: WindowedData, season: int, seasons: Sequence[int] = ()) -> ChampionScore:
    return score_champion(model_name, data, season, seasons)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on the best candidate, with the numbers behind it.

    `model_mase`, `served_mase`, `baseline_mase` and `champion_mase` are means of per-series MASE on the same
    test windows; `series` is the candidate's per-series table (`Evaluation.series_table`). `beats_baselines` is
    the gate's first condition alone (the network beats every baseline), whatever the champion: only such a
    candidate is registered (as `challenger` when it does not also beat the champion).
    """

    promote: bool
    beats_baselines: bool
    reason: str
    candidate: str
    model_mase: float
    served_mase: float
    baseline_mase: dict[str, float]
    champion_mase: float | None
    series: pd.DataFrame

    @property
    def fallback_series(self) -> int:
        return int((self.series["served"] != self.candidate).sum())


def best_candidate(evaluations: dict[str, Evaluation]) -> str:
    """The candidate whose network alone has the lowest mean per-series MASE (NaN never wins)."""
    if not evaluations:
        raise ValueError("no candidates to choose from")

    def key(name: str) -> float:
        value = evaluations[name].model.overall["mase"]
        return value if math.isfinite(value) else math.inf

    return min(evaluations, key=key)


def decide_promotion(evaluation: Evaluation, champion: ChampionScore) -> GateDecision:
    """Promote only if the network beats every baseline and the candidate's served forecast beats the champion's."""
    candidate = evaluation.model_name
    model = evaluation.model.overall["mase"]
    served = evaluation.served.overall["mase"]
    baselines = {name: scores.overall["mase"] for name, scores in evaluation.baselines.items()}
    losses = [f"{name} {value:.4f}" for name, value in baselines.items() if not model < value]
    if not math.isfinite(model):
        promote, reason = False, f"{candidate} mean per-series MASE is {model}"
    elif losses:
        promote = False
        reason = f"{candidate} mean per-series MASE {model:.4f} does not beat " + ", ".join(losses)
    elif champion.mase is not None and not served < champion.mase:
        promote = False
        reason = (
            f"{candidate} serves mean per-series MASE {served:.4f}, not better than {champion.note} "
            f"({champion.mase:.4f}) on the same windows"
        )
    else:
        promote = True
        beaten = ", ".join(f"{name} {value:.4f}" for name, value in baselines.items())
        reason = f"{candidate} mean per-series MASE {model:.4f} beats {beaten}"
        reason += (
            "; first champion"
            if champion.mase is None
            else f"; serves {served:.4f} against {champion.note} {champion.mase:.4f}"
        )
    fallback = len(evaluation.fallback)
    if fallback:
        reason += f"; {fallback} of {len(evaluation.model.per_series)} series served by a baseline"
    return GateDecision(
        promote=promote,
        beats_baselines=math.isfinite(model) and not losses,
        reason=reason,
        candidate=candidate,
        model_mase=model,
        served_mase=served,
        baseline_mase=baselines,
        champion_mase=champion.mase,
        series=evaluation.series_table(),
    )


def decision_markdown(decision: GateDecision, limit: int = 200) -> str:
    """The decision and its per-series table, as the MLflow run and the Prefect artifact show it."""
    verdict = "promoted to champion" if decision.promote else "not promoted"
    lines = [
        f"**{decision.candidate}: {verdict}.** {decision.reason}.",
        "",
        "Mean per-series MASE on the test windows (lower is better): "
        + ", ".join(
            [
                f"{decision.candidate} {decision.model_mase:.4f}",
                f"served {decision.served_mase:.4f}",
                *(f"{name} {value:.4f}" for name, value in decision.baseline_mase.items()),
                *([] if decision.champion_mase is None else [f"champion {decision.champion_mase:.4f}"]),
            ]
        ),
        "",
        "| series | windows | model MASE | best baseline | its MASE | model / best | served | served MASE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in decision.series.head(limit).itertuples(index=False):
        lines.append(
            f"| {_cell(str(row.series_id))} | {row.n_windows} | {row.model_mase:.4f} | {row.best_baseline} "
            f"| {row.best_baseline_mase:.4f} | {row.ratio:.3f} | {row.served} | {row.served_mase:.4f} |"
        )
    if len(decision.series) > limit:
        lines.append(f"| ... {len(decision.series) - limit} more | | | | | | | |")
    return "\n".join(lines)


def version_description(decision: GateDecision, evaluation: Evaluation, links: Sequence[str] = ()) -> str:
    """A registered version's description: what it serves scored on the test windows (MASE, MAE, coverage when
    it has intervals), the gate's decision and its full reason (the version's tag holds a shortened one), then
    `links` (one line each: where it was trained)."""
    served = evaluation.served.overall
    figures = [f"MASE {served['mase']:.4f} (mean per series)", f"MAE {served['mae']:.4g}"]
    intervals = evaluation.intervals.get("served")
    if intervals is not None:
        figures.append(f"coverage {intervals.coverage:.3f} of a {intervals.level:.0%} interval")
    fallback = len(evaluation.fallback)
    by = f"{decision.candidate}" + (f", {fallback} series by their best baseline" if fallback else "")
    verdict = (
        "promoted to champion"
        if decision.promote
        else "registered as challenger, not promoted"
        if decision.beats_baselines
        else "registered although it does not beat every baseline (register_rejected), not promoted"
    )
    lines = [
        f"Served test scores ({by}): " + ", ".join(figures) + ".",
        "",
        f"Decision: {verdict}.",
        "",
        f"Reason: {decision.reason}.",
    ]
    if links:
        lines += ["", *links]
    return "\n".join(lines)


def _cell(text: str, limit: int = 60) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in text).replace("|", "\\|")
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


@task(name="publish-decision", cache_policy=NO_CACHE)
def publish_decision_task(decision: GateDecision) -> str:
    """The decision as one log line and a Prefect markdown artifact; returns the markdown."""
    from prefect.artifacts import create_markdown_artifact

    markdown = decision_markdown(decision)
    run_logger(__name__).info(
        "gate: %s %s: %s", decision.candidate, "promoted" if decision.promote else "not promoted", decision.reason
    )
    create_markdown_artifact(markdown=markdown, key="promotion-decision", description="seqcast promotion gate")
    return markdown
