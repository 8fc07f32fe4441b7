"""How seqcast's time-to-accuracy settings were chosen: learning curves of `fit_forecaster` on the electricity set
(lookback 336, horizon 48, LSTM) for a handful of trainer settings, each capped at the same training time.

    python benchmarks/sweep_seqcast.py [--cap 40] [--only NAME,...]

Writes benchmarks/results/sweep.json: per setting, test MAE against training seconds (clock paused while scoring),
the time to reach each MAE threshold, and the final (best-validation-epoch) model's test MAE and MASE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

BASE = {"cell": "lstm", "hidden_size": 64, "num_layers": 2, "grad_clip": 1.0, "max_epochs": 200}
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults b256 lr1e-3 plateau p5": {
        "batch_size": 256,
        "learning_rate": 1e-3,
        "lr_schedule": "plateau",
        "patience": 5,
    },
    "b64 lr3e-3 plateau p6": {"batch_size": 64, "learning_rate": 3e-3, "lr_schedule": "plateau", "patience": 6},
    "b32 lr3e-3 plateau p6": {"batch_size": 32, "learning_rate": 3e-3, "lr_schedule": "plateau", "patience": 6},
    "b64 lr1e-2 plateau p6": {"batch_size": 64, "learning_rate": 1e-2, "lr_schedule": "plateau", "patience": 6},
    "b128 lr5e-3 plateau p6": {"batch_size": 128, "learning_rate": 5e-3, "lr_schedule": "plateau", "patience": 6},
    "b64 lr3e-3 plateau p6 1 thread": {
        "batch_size": 64,
        "learning_rate": 3e-3,
        "lr_schedule": "plateau",
        "patience": 6,
        "num_threads": 1,
    },
    "1x64 b64 lr3e-3 plateau p6": {
        "num_layers": 1,
        "batch_size": 64,
        "learning_rate": 3e-3,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "1x64 b32 lr5e-3 plateau p6": {
        "num_layers": 1,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "1x64 b32 lr5e-3 plateau p6 1 thread": {
        "num_layers": 1,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
        "num_threads": 1,
    },
    "1x64 b32 lr1e-2 plateau p6": {
        "num_layers": 1,
        "batch_size": 32,
        "learning_rate": 1e-2,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "1x32 b32 lr5e-3 plateau p6": {
        "num_layers": 1,
        "hidden_size": 32,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "1x64 b16 lr3e-3 plateau p6": {
        "num_layers": 1,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "gru 1x64 b32 lr5e-3 plateau p6": {
        "cell": "gru",
        "num_layers": 1,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "2x64 b32 lr5e-3 plateau p6 1 thread": {
        "batch_size": 32,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
        "num_threads": 1,
    },
    "1x32 b32 lr5e-3 plateau p6 1 thread": {
        "num_layers": 1,
        "hidden_size": 32,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
        "num_threads": 1,
    },
    "1x32 b16 lr5e-3 plateau p6": {
        "num_layers": 1,
        "hidden_size": 32,
        "batch_size": 16,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "1x32 b32 lr1e-2 plateau p6": {
        "num_layers": 1,
        "hidden_size": 32,
        "batch_size": 32,
        "learning_rate": 1e-2,
        "lr_schedule": "plateau",
        "patience": 6,
    },
    "2x32 b32 lr5e-3 plateau p6": {
        "hidden_size": 32,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "lr_schedule": "plateau",
        "patience": 6,
    },
}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.entries import Curve, Shape, train_seqcast
    from benchmarks.run import FULL, electricity_windows, scorer
    from tasks.evaluate import mae

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=float, default=40.0, help="training seconds per setting")
    parser.add_argument("--only", default="", help="comma-separated setting names")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(common.THREADS)
    data = electricity_windows(FULL)
    actual = data.targets(data.test_starts)
    evaluate = scorer(data)
    chosen = [s for s in args.only.split(",") if s] or list(SETTINGS)
    out: dict[str, Any] = {"cap_s": args.cap, "load_average_start": common.load_average(), "settings": {}}
    for name in chosen:
        settings = {**BASE, "num_threads": common.THREADS, **SETTINGS[name]}
        curve = Curve(score=lambda p: mae(actual, p), clock=common.Stopwatch(), max_seconds=args.cap)
        shape = Shape(
            cell=settings["cell"],
            hidden=settings["hidden_size"],
            layers=settings["num_layers"],
            batch=settings["batch_size"],
            learning_rate=settings["learning_rate"],
        )
        t = time.perf_counter()
        r = train_seqcast(data, shape, settings["max_epochs"], curve=curve, overrides=settings)
        assert r.predicted is not None
        final = evaluate(r.predicted)["model"]
        thresholds = {}
        for level in (2000, 1500, 1200, 1000, 800):
            hit = next((p["seconds"] for p in r.curve if p["test_mae"] <= level), None)
            thresholds[str(level)] = hit
        out["settings"][name] = {
            "settings": settings,
            "final_mae": round(final["mae"], 1),
            "final_mase": round(final["mase"], 4),
            "best_checkpoint_mae": min(p["test_mae"] for p in r.curve) if r.curve else None,
            "seconds_to_mae": thresholds,
            "epochs": len(r.curve),
            "windows_per_s": round(r.windows_per_s, 1),
            "note": r.note,
            "curve": r.curve,
        }
        print(
            f"{name:40s} {time.perf_counter() - t:5.1f}s epochs {len(r.curve):3d} w/s {r.windows_per_s:7.1f} "
            f"final {final['mae']:7.1f} best {out['settings'][name]['best_checkpoint_mae']} to {thresholds}",
            flush=True,
        )
    out["load_average_end"] = common.load_average()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
