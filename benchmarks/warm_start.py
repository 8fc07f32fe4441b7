"""Warm start against cold start: training time and test accuracy of the next night's model, on the accuracy panel.

    python -m benchmarks.warm_start [--series electricity,msft] [--new 0.05] [--cell lstm]

For each panel series (benchmarks/accuracy_panel.py), "last night" is the series without its newest `--new` share
and "tonight" the whole series, each windowed as `seqcast train` windows it. A cold fit at the defaults on last
night's windows is the champion. Tonight two candidates train on the same windows: a cold fit at the defaults, and
the champion's network continued (tasks/warm_start.py: its scaling, `warm_start_epochs`, a fifth of the learning
rate). Both are scored on tonight's test windows (mean per-series MASE, as the gate scores them); last night's
training part ends before tonight's test part, so the champion has not seen it. Prints a table with the time and
MASE of both and the ratios, and saves benchmarks/results/warm_start.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.accuracy_panel import load_series, panel_series, score_method, seasons_of, windows_for

RESULTS = Path(__file__).resolve().parent / "results" / "warm_start.json"


def compare(name: str, new_share: float, cell: str) -> dict[str, Any]:
    """Train the champion on last night's data, then tonight's cold and warm fits; their seconds and test MASE."""
    from tasks.evaluate import candidate_forecaster, forecast_test_windows
    from tasks.spec import RunSpec
    from tasks.train import TrainConfig, fit_forecaster
    from tasks.warm_start import WARM_LEARNING_RATE_SHARE

    entry = panel_series([name])[0]
    frame = load_series(entry)
    cut = frame.groupby("series_id", sort=False).cumcount(ascending=False) >= int(len(frame) * new_share)
    last_night, _ = windows_for(entry, frame[cut.to_numpy()])
    tonight, _ = windows_for(entry, frame)
    if (last_night.lookback, last_night.horizon) != (tonight.lookback, tonight.horizon):
        raise SystemExit(f"{name}: last night's window differs from tonight's; use a smaller --new")
    season, _ = seasons_of(entry, tonight)
    cold_config = TrainConfig.model_validate({"cell": cell})
    champion = fit_forecaster(last_night, cold_config)
    training = RunSpec().training
    warm_config = cold_config.model_copy(
        update={
            "scaling": champion.config.scaling,
            "max_epochs": training.warm_start_epochs,
            "learning_rate": training.learning_rate * WARM_LEARNING_RATE_SHARE,
        }
    )

    def scored(config: TrainConfig, initial: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        started = time.perf_counter()
        fit = fit_forecaster(tonight, config, initial_state=initial)
        seconds = time.perf_counter() - started
        predicted = forecast_test_windows(candidate_forecaster(fit, tonight), tonight)
        mase = score_method(tonight, season, predicted).mase
        return {"seconds": round(seconds, 2), "epochs": len(fit.history), "mase": round(mase, 4)}

    cold = scored(cold_config, None)
    warm = scored(warm_config, {k: v.clone() for k, v in champion.model.state_dict().items()})
    return {
        "series": name,
        "kind": entry.kind,
        "scaling": champion.config.scaling,
        "cold": cold,
        "warm": warm,
        "time_ratio": round(warm["seconds"] / cold["seconds"], 3),
        "mase_ratio": round(warm["mase"] / cold["mase"], 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", default=None, help="comma-separated panel entries (default: all)")
    parser.add_argument("--new", type=float, default=0.05, help="share of each series that is new tonight")
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    np.random.seed(0)
    names = [s.name for s in panel_series(args.series.split(",") if args.series else None)]
    rows = []
    for name in names:
        row = compare(name, args.new, args.cell)
        rows.append(row)
        print(
            f"{name:14s} cold {row['cold']['seconds']:7.1f} s MASE {row['cold']['mase']:.4f} | warm "
            f"{row['warm']['seconds']:6.1f} s MASE {row['warm']['mase']:.4f} | time x{row['time_ratio']:.2f} "
            f"MASE x{row['mase_ratio']:.3f}",
            flush=True,
        )
    summary = {
        "cold_seconds": round(sum(r["cold"]["seconds"] for r in rows), 1),
        "warm_seconds": round(sum(r["warm"]["seconds"] for r in rows), 1),
        "cold_mean_mase": round(statistics.mean(r["cold"]["mase"] for r in rows), 4),
        "warm_mean_mase": round(statistics.mean(r["warm"]["mase"] for r in rows), 4),
        "warm_better_on": sum(r["warm"]["mase"] < r["cold"]["mase"] for r in rows),
        "series": len(rows),
    }
    print(
        f"all: cold {summary['cold_seconds']} s, warm {summary['warm_seconds']} s "
        f"(x{summary['warm_seconds'] / max(summary['cold_seconds'], 1e-9):.2f}); mean MASE cold "
        f"{summary['cold_mean_mase']}, warm {summary['warm_mean_mase']}; warm better on {summary['warm_better_on']} "
        f"of {summary['series']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"new_share": args.new, "cell": args.cell, "rows": rows, "summary": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
