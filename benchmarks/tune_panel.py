"""Tuning on the accuracy panel: does `seqcast tune` beat the run spec's defaults on the test windows?

    python -m benchmarks.tune_panel                               # every panel series, 20 trials each
    python -m benchmarks.tune_panel --series airpassengers,random_walk --trials 10 --trial-epochs 10 --out t.json

Per series (benchmarks/accuracy_panel.py's loaders and windows: the same cut, the same test windows, the same
MASE scales):

- default: the run spec's defaults, LSTM and GRU each trained as the accuracy panel trains them
  (`accuracy_panel.seqcast_forecasts`), the cell with the lower validation MASE kept (the criterion tuning uses,
  so neither side looks at the test part to choose);
- tuned: the real `seqcast-tune` flow (Prefect, an Optuna study in SQLite, MLflow runs in a temporary folder) on
  the series, `--trials` trials of at most `--trial-epochs` epochs each (fewer than the spec's 60, to keep the run
  affordable; early stopping and pruning end most sooner), side by side on the threads runner, and with
  `--minutes` no trial started after that many minutes per series; then the best spec trained once at its full
  max_epochs (60) and scored on the test windows.

Both are scored with `accuracy_panel.score_method`; the gain is 1 - tuned / default of the panel mean MASE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/tune_panel.py` as well as `python -m benchmarks.tune_panel`
    sys.path.insert(0, str(ROOT))

from benchmarks import accuracy_panel as ap  # noqa: E402

TRIALS = 20
TRIAL_EPOCHS = 15  # the spec's max_epochs is 60; patience 6 stops most trials well before either
PARALLEL = 2  # this machine's cores


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] tune panel: {message}", flush=True)


def use_temporary_stores(folder: Path) -> None:
    """Point seqcast's settings at a SQLite database and an MLflow store in `folder`, and start Prefect's temporary
    API as a `seqcast` command does."""
    from flows.prefect_server import start_temporary_prefect_api
    from tasks.settings import get_settings

    os.environ["SEQCAST_HOME"] = str(folder)
    os.environ["SEQCAST_DATABASE_URL"] = f"sqlite:///{folder / 'seqcast.db'}"
    os.environ["SEQCAST_MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["SEQCAST_EXPERIMENT"] = "tune-panel"
    get_settings.cache_clear()
    start_temporary_prefect_api()


def validation_mase(data: Any, season: int, validation: np.ndarray) -> float:
    """Mean per-series MASE of forecasts `[N_val, H]` on the validation windows (what tuning minimises)."""
    from tasks.evaluate import score_forecasts

    scores = score_forecasts(
        data.panel, data.val_starts, validation, data.lookback, data.horizon, season, data.splits.train_end
    )
    return float(scores.overall["mase"])


def default_entry(data: Any, season: int, extra: list[int]) -> dict[str, Any]:
    """Both cells at the run spec's defaults; the one with the lower validation MASE, scored on test."""
    cells: dict[str, dict[str, Any]] = {}
    for cell in ap.CELLS:
        forecasts, validation, info, _ = ap.seqcast_forecasts(data, cell, {}, [season, *extra])
        cells[cell] = {
            "val_mase": validation_mase(data, season, validation),
            "test_mase": ap.score_method(data, season, forecasts).mase,
            "train_s": info["train_s"],
            "scaling": info["scaling"],
        }
    kept = min(cells, key=lambda c: cells[c]["val_mase"])
    return {"cell": kept, "test_mase": cells[kept]["test_mase"], "cells": cells}


def tuned_entry(
    entry: ap.PanelSeries,
    frame: pd.DataFrame,
    data: Any,
    season: int,
    trials: int,
    trial_epochs: int,
    minutes: float | None = None,
) -> dict[str, Any]:
    """`seqcast-tune` on the series (its own study), then the best spec trained at full length and scored on test."""
    from flows.tune import tune_flow
    from models.packaging import forecast_origins
    from tasks import store
    from tasks.evaluate import candidate_forecaster
    from tasks.runners import task_runner_for
    from tasks.settings import get_settings
    from tasks.spec import RunSpec, resolve_for_frame
    from tasks.train import fit_forecaster
    from tasks.tune import TuneBudget, tuned_settings
    from tasks.windowing import prepare_windows

    store.upsert_observations(store.get_engine(get_settings().db_url), frame)
    spec = RunSpec.model_validate(
        {
            "window": {"lookback": data.lookback, "horizon": data.horizon, "eval_stride": data.config.stride},
            "data": {"outlier_policy": "warn"},  # the panel scores every series as it is
            "execution": {"task_runner": "threads"},
        }
    )
    budget = TuneBudget(trials=trials, minutes=minutes, trial_epochs=trial_epochs, parallel=PARALLEL)
    started = time.perf_counter()
    flow = tune_flow.with_options(task_runner=task_runner_for(spec))
    summary = flow(
        spec=spec, budget=budget, series=sorted(frame["series_id"].unique()), registered_model=f"panel-{entry.name}"
    )
    tune_seconds = time.perf_counter() - started
    if summary.best_spec is None:
        return {"test_mase": None, "tune_s": round(tune_seconds, 1), "trials": summary.this_run}
    common = {
        "val_mase": summary.best_value,
        "kept_defaults": summary.kept_defaults,
        "decision": summary.decision,
        "trials": summary.this_run,
        "trial_rows": [{k: r[k] for k in ("trial", "state", "val MASE", "epochs", "seconds")} for r in summary.trials],
        "tune_s": round(tune_seconds, 1),
    }
    if summary.kept_defaults:  # the spec as given: the nightly training trains it as `default_entry` did
        return {"test_mase": None, "settings": {}, **common}
    best = resolve_for_frame(RunSpec.model_validate(summary.best_spec), frame, data.freq)
    tuned_data = prepare_windows(frame, best.window_config(), freq=data.freq)
    assert np.array_equal(tuned_data.targets(tuned_data.test_starts), data.targets(data.test_starts))  # same windows
    cell = best.model.cells[0]
    started = time.perf_counter()
    fit = fit_forecaster(tuned_data, best.train_config(cell))
    forecaster = candidate_forecaster(fit, tuned_data)
    forecasts = forecast_origins(forecaster, tuned_data.panel, *tuned_data.window_index(tuned_data.test_starts))
    return {
        "test_mase": ap.score_method(tuned_data, season, forecasts).mase,
        "settings": tuned_settings(best),
        **common,
        "final_train_s": round(time.perf_counter() - started, 1),
        "final_epochs": len(fit.history),
    }


def run(names: list[str] | None, trials: int, trial_epochs: int, minutes: float | None = None) -> dict[str, Any]:
    """Default and tuned test MASE per panel series, and the panel means."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="seqcast-tune-panel-") as tmp:
        use_temporary_stores(Path(tmp))
        for entry in ap.panel_series(names):
            started = time.perf_counter()
            frame = ap.load_series(entry)
            data, window_from = ap.windows_for(entry, frame)
            season, extra = ap.seasons_of(entry, data)
            log(f"{entry.name}: L={data.lookback} H={data.horizon}, defaults")
            default = default_entry(data, season, extra)
            log(f"{entry.name}: default {default['cell']} test MASE {default['test_mase']:.3f}; tuning")
            tuned = tuned_entry(entry, frame, data, season, trials, trial_epochs, minutes)
            if tuned.get("kept_defaults"):
                tuned["test_mase"] = default["test_mase"]
            row: dict[str, Any] = {
                "series": entry.name,
                "kind": entry.kind,
                "lookback": data.lookback,
                "horizon": data.horizon,
                "window_from": window_from,
                "default": default,
                "tuned": tuned,
                "seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            log(f"{entry.name}: tuned test MASE {_cell(tuned['test_mase'])} in {row['seconds']:.0f} s")
    scored = [r for r in rows if r["tuned"]["test_mase"] is not None]
    default_mean = float(np.mean([r["default"]["test_mase"] for r in scored])) if scored else None
    tuned_mean = float(np.mean([r["tuned"]["test_mase"] for r in scored])) if scored else None
    gain = None if not scored or not default_mean else 1.0 - (tuned_mean or 0.0) / default_mean
    return {
        "trials": trials,
        "trial_epochs": trial_epochs,
        "minutes": minutes,
        "parallel": PARALLEL,
        "rows": rows,
        "mean_default": default_mean,
        "mean_tuned": tuned_mean,
        "gain": gain,
        "series_scored": len(scored),
    }


def _cell(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_lines(results: dict[str, Any]) -> list[str]:
    """Per series: default and tuned test MASE, the tuned settings, the trials and the time; then the means."""
    lines = [
        "| series | kind | L/H | default (cell) | tuned | tuned settings | trials (complete/pruned/failed) "
        "| tuning s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        d, t = r["default"], r["tuned"]
        s = t.get("settings", {})
        settings = (
            f"{'/'.join(s['model.cells'])} L{s['window.lookback']} {s['model.num_layers']}x{s['model.hidden_size']} "
            f"{s['model.scaling']} lr {s['training.learning_rate']:.2g} drop {s['model.dropout']:.1f} "
            f"batch {s['training.batch_size']}"
            if s
            else "the defaults (kept)"
            if t.get("kept_defaults")
            else "-"
        )
        counts = t["trials"]
        lines.append(
            f"| {r['series']} | {r['kind']} | {r['lookback']}/{r['horizon']} | {_cell(d['test_mase'])} ({d['cell']}) "
            f"| {_cell(t['test_mase'])} | {settings} | {counts['COMPLETE']}/{counts['PRUNED']}/{counts['FAIL']} "
            f"| {t['tune_s']:.0f} |"
        )
    lines += [
        "",
        f"Panel mean test MASE over {results['series_scored']} series: default {_cell(results['mean_default'])}, "
        f"tuned {_cell(results['mean_tuned'])}; gain {_cell(results['gain'] and 100 * results['gain'], 1)} % "
        f"({results['trials']} trials of at most {results['trial_epochs']} epochs, {results['parallel']} side by "
        "side).",
    ]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", default=None, help=f"comma-separated, from {','.join(s.name for s in ap.PANEL)}")
    parser.add_argument("--trials", type=int, default=TRIALS, help=f"trials per series (default {TRIALS})")
    parser.add_argument(
        "--trial-epochs", type=int, default=TRIAL_EPOCHS, help=f"most epochs per trial (default {TRIAL_EPOCHS})"
    )
    parser.add_argument(
        "--minutes", type=float, default=None, help="also stop starting trials after this many minutes per series"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the accuracy panel: read when torch loads
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # one line per trial would drown the table
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    names = ap._split(args.series) or None
    try:
        ap.panel_series(names)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    results = run(names, args.trials, args.trial_epochs, args.minutes)
    print("\n".join(markdown_lines(results)))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=ap.json_default) + "\n")
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
