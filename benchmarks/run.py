"""seqcast benchmarks: one command, one process. `python benchmarks/run.py [--quick] [--tools seqcast,bare,...]`.

Sections (docs/benchmarks.md explains each and the targets):
  speed        hourly temperatures (2 x 8760): windows/s, wall, peak memory per entry, LSTM and GRU, shared shape
  accuracy     electricity (4032 half-hours): test MAE / MASE at an equal training budget, with seasonal naive
  time_to_acc  electricity, LSTM: each tool at its own defaults: time until the best peer's MAE
  scaling      synthetic many-series sets at a fixed number of windows: how cost grows with the number of series
  store        upsert_forecasts vs a plain bulk insert, SQLite and PostgreSQL
  windowing    prepare_windows peak memory on 1,000 x 10,000 against the raw values
  profile      where seqcast's training step time goes (torch.profiler), against the bare loop
  demo         `seqcast demo` timed stage by stage on fresh stores, then again (benchmarks/demo_timing.py);
               not in --quick's default sections (it runs the real CLI twice)
  accuracy_panel  seqcast at its defaults across kinds of series (pmdarima's, the samples, synthetic) against
               naive, seasonal naive and AutoETS, with the issue's targets (benchmarks/accuracy_panel.py; --quick:
               3 synthetic series, 2 epochs)

Writes benchmarks/results/latest.json and latest.md (or --out DIR) and prints the ratios.

--device cuda (benchmarks/gpu_check.sh runs it): the same entries on the GPU with bf16 autocast (seqcast's own
CUDA path, a bare cuDNN loop, Darts / NeuralForecast with Lightning's "bf16-mixed"); sections speed, accuracy,
scaling, store and windowing (default: speed). --shapes reference,large adds a larger speed shape (lookback 336,
horizon 48, 2 x 256, batch 1024 on synthetic many-series data); on cuda the GPU targets (seqcast >= 0.9x the bare
loop and >= 3x Darts and NeuralForecast) are checked per shape and cell.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# OpenMP threads sleep instead of spinning while they wait (read when torch loads, so set before importing it).
# On a machine whose cores other processes also use, spinning 2 threads collapses RNN throughput 3-10x and makes
# every number noise; with nothing else running it costs little. An OMP_WAIT_POLICY already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import THREADS  # noqa: E402


def seqcast_defaults() -> dict[str, Any]:
    """seqcast's own defaults for time to accuracy: TrainConfig() as the train flow uses it (LSTM, head "auto",
    threads chosen by `training_threads`), so the benchmark measures what users get."""
    from tasks.train import TrainConfig

    keep: tuple[str, ...] = ("cell", "hidden_size", "num_layers", "batch_size", "learning_rate", "lr_schedule")
    keep += ("patience", "grad_clip", "max_epochs", "num_threads", "head", "loss", "weight_decay")
    config = TrainConfig(cell="lstm")
    return {**config.model_dump(include=set(keep)), "batch_size": config.effective_batch_size}


@dataclass(frozen=True)
class LargeShape:
    """The larger speed shape (--shapes large): synthetic many-series data, wider and longer than the reference."""

    lookback: int = 336
    horizon: int = 48
    hidden: int = 256
    layers: int = 2
    batch: int = 1024
    series: int = 64
    length: int = 1500  # 64 x (1500 - 2 x 48 held out - 336 - 48 + 1) = 65,344 training windows, 64 batches
    windows: int = 65_536  # at most about this many training windows per entry (every k-th window beyond)


@dataclass(frozen=True)
class Sizes:
    """How big each section is; FULL fits ~10 minutes on 2 quiet cores, QUICK a few seconds."""

    speed_epochs: int
    speed_train_stride: int
    speed_rounds: int
    accuracy_epochs: int
    accuracy_train_stride: int
    tta_cap_s: float
    tta_seqcast_cap_s: float
    scaling: tuple[tuple[int, int], ...]
    scaling_windows: int
    store: tuple[int, int, int]
    store_repeats: int
    windowing: tuple[int, int]
    profile_train_stride: int
    peak_seconds: float
    hidden: int = 64  # the shared network: layers x hidden
    layers: int = 2
    val_size: int | None = None  # observations per series held for validation (None: WindowConfig's 10%)
    large: LargeShape = field(default_factory=LargeShape)


FULL = Sizes(
    speed_epochs=1,
    speed_train_stride=1,
    speed_rounds=2,
    accuracy_epochs=3,
    accuracy_train_stride=1,
    tta_cap_s=60.0,
    tta_seqcast_cap_s=60.0,
    scaling=((10, 2000), (100, 2000), (500, 2000)),
    scaling_windows=8192,
    store=(200, 10, 48),
    store_repeats=2,
    windowing=(1000, 10_000),
    profile_train_stride=4,
    peak_seconds=1.5,
)
QUICK = Sizes(
    speed_epochs=1,
    speed_train_stride=24,
    speed_rounds=1,
    accuracy_epochs=1,
    accuracy_train_stride=40,
    tta_cap_s=3.0,
    tta_seqcast_cap_s=3.0,
    scaling=((4, 400), (16, 400)),
    scaling_windows=512,
    store=(10, 4, 24),
    store_repeats=1,
    windowing=(200, 2000),
    profile_train_stride=48,
    peak_seconds=0.3,
    hidden=16,
    layers=1,
    val_size=48,
    large=LargeShape(lookback=96, horizon=24, hidden=32, layers=1, batch=256, series=8, length=400, windows=512),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# sections


SHAPES = ("reference", "large")


def section_speed(
    sizes: Sizes, tools: list[str], skipped: dict[str, str], device: str = "cpu", shape_name: str = "reference"
) -> dict[str, Any]:
    """windows/s, wall and peak memory per entry, LSTM and GRU, at one shared shape. "reference": hourly
    temperatures, lookback 48, horizon 24, the Sizes network, batch 256. "large": `sizes.large` on synthetic
    many-series data (one horizon per series held for validation and for test)."""
    from benchmarks.entries import Shape, train_bare, train_darts, train_neuralforecast, train_seqcast, warm_up
    from tasks.windowing import WindowConfig, prepare_windows

    if shape_name == "reference":
        L, H, hidden, layers, batch = 48, 24, sizes.hidden, sizes.layers, 256
        stride = sizes.speed_train_stride
        frame = common.load_sample("temperature")
        data = prepare_windows(
            frame,
            WindowConfig(lookback=L, horizon=H, train_stride=stride, val_size=sizes.val_size),
        )
        description = f"temperature: {len(data.panel.series_ids)} series x {int(data.panel.lengths[0])} hourly"
        label = "speed"
    else:
        big = sizes.large
        L, H, hidden, layers, batch = big.lookback, big.horizon, big.hidden, big.layers, big.batch
        total = big.series * (big.length - 2 * H - L - H + 1)
        stride = max(1, total // big.windows)
        frame = common.synthetic_frame(big.series, big.length)
        data = prepare_windows(frame, WindowConfig(lookback=L, horizon=H, test_size=H, val_size=H, train_stride=stride))
        description = f"synthetic (benchmarks.common.synthetic_frame): {big.series} series x {big.length} hourly"
        label = "speed (large)"
    n = len(data.train_starts)
    windows = sizes.speed_epochs * n
    out: dict[str, Any] = {
        "data": description + (f", training windows thinned (train_stride={stride})" if stride > 1 else ""),
        "lookback": L,
        "horizon": H,
        "hidden": hidden,
        "layers": layers,
        "batch": batch,
        "windows": windows,
        "entries": [],
    }
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in ("lstm", "gru"):
        shape = Shape(cell=cell, hidden=hidden, layers=layers, batch=batch)
        warm_up(data, shape, device)
        for round_ in range(sizes.speed_rounds):  # rounds interleave the tools, so load spikes hit all alike
            for tool in tools:
                if tool in skipped:
                    continue
                log(f"{label}: {tool} {cell} (round {round_ + 1}/{sizes.speed_rounds})")
                if tool == "seqcast":
                    r = train_seqcast(data, shape, sizes.speed_epochs, forecast=False, device=device)
                elif tool == "bare":
                    r = train_bare(data, shape, sizes.speed_epochs, forecast=False, device=device)
                elif tool == "darts":  # the same number of windows per series (Darts keeps the newest ones)
                    per_ts = None if stride == 1 else -(-n // len(data.panel.series_ids))
                    r = train_darts(
                        data, shape, sizes.speed_epochs, forecast=False, max_samples_per_ts=per_ts, device=device
                    )
                else:
                    r = train_neuralforecast(data, shape, windows, forecast=False, device=device)
                entry = r.to_dict()
                flops = common.rnn_flops_per_window(cell, L, hidden, layers, H)
                entry["gflops_per_s"] = round(flops * r.windows_per_s / 1e9, 2)
                if device != "cpu":  # progress in the log, in case the run is cut off before the results are written
                    log(
                        f"  {entry['windows_per_s']:,.0f} windows/s, wall {r.wall_s:.2f} s, "
                        f"GPU memory {entry.get('peak_gpu_mem_delta_mib')} MiB, RNN {entry.get('rnn_dtype')}"
                    )
                entry["rounds_windows_per_s"] = [
                    *best.get((tool, cell), {}).get("rounds_windows_per_s", []),
                    entry["windows_per_s"],
                ]
                key = (tool, cell)
                if key not in best or entry["windows_per_s"] > best[key]["windows_per_s"]:
                    best[key] = entry
                else:
                    best[key]["rounds_windows_per_s"] = entry["rounds_windows_per_s"]
    out["entries"] = list(best.values())
    out["rounds"] = sizes.speed_rounds
    out["memory_method"] = r.memory_method if out["entries"] else ""
    return out


def section_accuracy(sizes: Sizes, tools: list[str], skipped: dict[str, str], device: str = "cpu") -> dict[str, Any]:
    from benchmarks.entries import train_bare, train_darts, train_neuralforecast, train_seqcast, warm_up

    data = electricity_windows(sizes)
    n = len(data.train_starts)
    windows = sizes.accuracy_epochs * n
    evaluate = scorer(data)
    base = evaluate(np.zeros((len(data.test_starts), data.horizon)))  # baselines only
    out: dict[str, Any] = {
        "data": "electricity: 1 series x 4032 half-hours; test = last 20%, daily origins",
        "lookback": 336,
        "horizon": 48,
        "hidden": sizes.hidden,
        "layers": sizes.layers,
        "batch": 256,
        "epochs": sizes.accuracy_epochs,
        "windows": windows,
        "train_windows": n,
        "test_windows": len(data.test_starts),
        "baselines": {name: _rounded(scores) for name, scores in base["baselines"].items()},
        "entries": [],
    }
    for cell in ("lstm", "gru"):
        shape = shape_for(sizes, cell)
        warm_up(data, shape, device)
        for tool in tools:
            if tool in skipped:
                continue
            log(f"accuracy: {tool} {cell}")
            if tool == "seqcast":
                r = train_seqcast(data, shape, sizes.accuracy_epochs, device=device)
            elif tool == "bare":
                r = train_bare(data, shape, sizes.accuracy_epochs, device=device)
            elif tool == "darts":
                r = train_darts(data, shape, sizes.accuracy_epochs, device=device)
            else:
                r = train_neuralforecast(data, shape, windows, device=device)
            entry = r.to_dict()
            assert r.predicted is not None
            entry["test"] = _rounded(evaluate(r.predicted)["model"])
            flops = common.rnn_flops_per_window(cell, 336, sizes.hidden, sizes.layers, 48)
            entry["gflops_per_s"] = round(flops * r.windows_per_s / 1e9, 2)
            out["entries"].append(entry)
    return out


def shape_for(sizes: Sizes, cell: str = "lstm") -> Any:
    from benchmarks.entries import Shape

    return Shape(cell=cell, hidden=sizes.hidden, layers=sizes.layers)


def electricity_windows(sizes: Sizes) -> Any:
    from tasks.windowing import WindowConfig, prepare_windows

    frame = common.load_sample("electricity")
    config = WindowConfig(
        lookback=336,
        horizon=48,
        test_fraction=0.2,
        stride=48,
        train_stride=sizes.accuracy_train_stride,
        val_size=sizes.val_size,
    )
    return prepare_windows(frame, config)


def scorer(data: Any) -> Any:
    """forecasts [N, H] original units -> {"model": {mae, mase, ...}, "baselines": {...}} (tasks.evaluate).

    Baselines keep the names earlier results use: naive, seasonal_naive (the daily season) and
    weekly_seasonal_naive (tasks.evaluate names them naive, seasonal_naive_48, seasonal_naive_336)."""
    from benchmarks.accuracy_panel import baseline_name, evaluate_with_seqcast, other_seasons
    from models.frequency import season_length

    season = season_length(data.freq)
    extra = other_seasons(data.freq, data.lookback, season)
    legacy = {f"seasonal_naive_{m}": "weekly_seasonal_naive" for m in extra[:1]}  # the names earlier results use

    def evaluate(predicted: np.ndarray) -> dict[str, Any]:
        ev = evaluate_with_seqcast(data, season, extra, predicted)
        names = {k: baseline_name(k, season) for k in ev.baselines}
        baselines = {legacy.get(names[k], names[k]): v.overall for k, v in ev.baselines.items()}
        return {"model": ev.model.overall, "baselines": baselines}

    return evaluate


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in scores.items()}


def section_time_to_accuracy(sizes: Sizes, tools: list[str], skipped: dict[str, str]) -> dict[str, Any]:
    from benchmarks.entries import Curve, train_darts, train_neuralforecast, train_seqcast
    from tasks.evaluate import mae

    peers = [t for t in ("darts", "neuralforecast") if t in tools and t not in skipped]
    out: dict[str, Any] = {
        "data": "electricity, LSTM; test = last 20%, daily origins",
        "lookback": 336,
        "horizon": 48,
        "cap_s": sizes.tta_cap_s,
        "rule": (
            "each tool at its own defaults (plus lookback/horizon; Darts model='LSTM'), trained until its defaults end "
            f"or {sizes.tta_cap_s:.0f} s of training time; test MAE scored at every epoch (Darts, seqcast) or 10 steps "
            "(NeuralForecast) with the clock paused. Target MAE = the best peer's final MAE; time to target = first "
            "checkpoint at or below it."
        ),
        "seqcast_settings": seqcast_defaults(),
        "runs": {},
    }
    if not peers or "seqcast" not in tools:
        out["skipped"] = "needs seqcast and at least one peer (Darts or NeuralForecast) installed"
        return out
    data = electricity_windows(sizes)
    actual = data.targets(data.test_starts)

    def score(pred: np.ndarray) -> float:
        return mae(actual, pred)

    evaluate = scorer(data)
    for tool in peers:
        log(f"time to accuracy: {tool} (own defaults, cap {sizes.tta_cap_s:.0f} s)")
        curve = Curve(score=score, clock=common.Stopwatch(), max_seconds=sizes.tta_cap_s)
        if tool == "darts":
            r = train_darts(data, None, 100, curve=curve)
        else:
            r = train_neuralforecast(data, None, 1000 * 128, curve=curve)
        assert r.predicted is not None
        out["runs"][tool] = {**r.to_dict(), "final_test": _rounded(evaluate(r.predicted)["model"])}
    target = min(run["final_test"]["mae"] for run in out["runs"].values())
    best_peer = min(out["runs"], key=lambda t: out["runs"][t]["final_test"]["mae"])
    log(f"time to accuracy: seqcast (its defaults, target MAE {target:.1f} from {best_peer})")
    for key, settings in (
        ("seqcast", seqcast_defaults()),
        ("seqcast_last_head", {**seqcast_defaults(), "head": "last"}),  # the head before 2026-11-27, for reference
    ):
        curve = Curve(score=score, clock=common.Stopwatch(), max_seconds=sizes.tta_seqcast_cap_s)
        epochs = int(settings["max_epochs"])
        r = train_seqcast(data, _shape_of(settings), epochs, curve=curve, overrides=settings)
        assert r.predicted is not None
        out["runs"][key] = {**r.to_dict(), "final_test": _rounded(evaluate(r.predicted)["model"])}
    out["target_mae"] = round(target, 4)
    out["best_peer"] = best_peer
    reached: dict[str, Any] = {}
    for tool, run in out["runs"].items():
        hit = next((p for p in run["curve"] if p["test_mae"] <= target * (1 + 1e-9)), None)
        if hit is None and tool.startswith("seqcast") and run["final_test"]["mae"] <= target:
            hit = {"seconds": run["wall_s"], "windows": run["windows"], "test_mae": run["final_test"]["mae"]}
        total = run["curve"][-1]["seconds"] if run["curve"] else run["wall_s"]
        reached[tool] = {
            "seconds": None if hit is None else hit["seconds"],
            "reached": hit is not None,
            "lower_bound_s": None if hit is not None else total,
        }
    out["time_to_target_s"] = reached
    seq = reached["seqcast"]["seconds"]
    ratios: dict[str, Any] = {}
    for tool in peers:
        peer = reached[tool]
        if seq is None:
            ratios[tool] = None
        elif peer["seconds"] is not None:
            ratios[tool] = round(peer["seconds"] / seq, 2)
        else:
            ratios[tool] = f">{peer['lower_bound_s'] / seq:.2f}"
    out["speedup_seqcast_vs_peer"] = ratios
    return out


def _shape_of(settings: dict[str, Any]) -> Any:
    from benchmarks.entries import Shape

    return Shape(
        cell=settings["cell"],
        hidden=settings["hidden_size"],
        layers=settings["num_layers"],
        batch=settings["batch_size"],
        learning_rate=settings["learning_rate"],
    )


def section_scaling(sizes: Sizes, tools: list[str], skipped: dict[str, str], device: str = "cpu") -> dict[str, Any]:
    from benchmarks.entries import train_bare, train_darts, train_neuralforecast, train_seqcast, warm_up
    from tasks.windowing import WindowConfig, prepare_windows

    shape = shape_for(sizes)
    L, H = 48, 24
    out: dict[str, Any] = {
        "shape": f"LSTM {sizes.layers}x{sizes.hidden}, batch 256, lookback 48, horizon 24",
        "windows": sizes.scaling_windows,
        "rule": (
            "a fixed number of training windows spread over all series (seqcast and bare: every k-th window via "
            "train_stride; Darts: max_samples_per_ts; NeuralForecast: max_steps x 256 sampled windows); validation "
            "and test parts = one horizon per series. prepare_s: seqcast's prepare_windows on the long frame; "
            "darts_from_group_dataframe_s: Darts' TimeSeries.from_group_dataframe on the same frame (NeuralForecast "
            "builds its dataset inside fit, so its wall includes it)."
        ),
        "sets": [],
    }
    for n_series, length in sizes.scaling:
        frame = common.synthetic_frame(n_series, length)
        total = n_series * (length - 2 * H - L - H + 1)
        stride = max(1, total // sizes.scaling_windows)
        t = time.perf_counter()
        data = prepare_windows(frame, WindowConfig(lookback=L, horizon=H, test_size=H, val_size=H, train_stride=stride))
        prepare_s = time.perf_counter() - t
        row: dict[str, Any] = {
            "series": n_series,
            "steps": length,
            "prepare_s": round(prepare_s, 3),
            "train_windows": len(data.train_starts),
            "entries": [],
        }
        if "darts" in tools and "darts" not in skipped:
            row["darts_from_group_dataframe_s"] = _darts_ingest_seconds(frame)
        warm_up(data, shape, device)
        for tool in tools:
            if tool in skipped:
                continue
            log(f"scaling: {tool} {n_series} x {length}")
            if tool == "seqcast":
                r = train_seqcast(data, shape, 1, forecast=False, device=device)
            elif tool == "bare":
                r = train_bare(data, shape, 1, forecast=False, device=device)
            elif tool == "darts":
                per_ts = max(1, sizes.scaling_windows // n_series)
                r = train_darts(data, shape, 1, forecast=False, max_samples_per_ts=per_ts, device=device)
            else:
                r = train_neuralforecast(data, shape, len(data.train_starts), forecast=False, device=device)
            entry = r.to_dict()
            entry.pop("settings", None)
            entry["setup_s"] = None if r.loop_s is None else round(max(r.wall_s - r.loop_s, 0.0), 3)
            row["entries"].append(entry)
        out["sets"].append(row)
    return out


def _darts_ingest_seconds(frame: Any) -> float:
    """Darts' own way in from a long frame (one TimeSeries per series), for comparison with prepare_windows."""
    from darts import TimeSeries

    naive = frame.assign(ts=frame["ts"].dt.tz_localize(None))
    t = time.perf_counter()
    TimeSeries.from_group_dataframe(naive, group_cols="series_id", time_col="ts", value_cols="value")
    return round(time.perf_counter() - t, 3)


def section_store(sizes: Sizes) -> dict[str, Any]:
    from benchmarks.store_bench import POSTGRES_ADMIN_URL, run_store_bench

    url = os.environ.get("SEQCAST_BENCH_POSTGRES_URL", os.environ.get("SEQCAST_TEST_POSTGRES_URL", POSTGRES_ADMIN_URL))
    with tempfile.TemporaryDirectory() as tmp:
        return run_store_bench(tmp, *sizes.store, repeats=sizes.store_repeats, pg_url=url)


def section_windowing(sizes: Sizes) -> dict[str, Any]:
    from benchmarks.windowing_bench import run_windowing_bench

    return run_windowing_bench(*sizes.windowing)


def section_demo(quick: bool) -> dict[str, Any]:
    from benchmarks.demo_timing import run_demo_timing

    return run_demo_timing(quick=quick)


def section_accuracy_panel(quick: bool) -> dict[str, Any]:
    """benchmarks/accuracy_panel.py at seqcast's defaults; its pmdarima series are left out, with a note, where the
    bench extra is not installed."""
    from benchmarks.accuracy_panel import panel_series, run_panel

    names = None
    skipped = []
    if not quick and not common.installed("pmdarima"):
        skipped = [s.name for s in panel_series() if s.source == "pmdarima"]
        names = [s.name for s in panel_series() if s.source != "pmdarima"]
    results = run_panel(names=names, quick=quick)
    if skipped:
        results["skipped_series"] = {"series": skipped, "why": "pmdarima not installed: pip install -e '.[bench]'"}
    return results


def section_profile(sizes: Sizes) -> dict[str, Any]:
    from benchmarks.profile_bench import profile_training
    from tasks.windowing import WindowConfig, prepare_windows

    frame = common.load_sample("temperature")
    data = prepare_windows(
        frame,
        WindowConfig(lookback=48, horizon=24, train_stride=sizes.profile_train_stride, val_size=sizes.val_size),
    )
    return profile_training(data, shape_for(sizes))


# ---------------------------------------------------------------------------------------------------------------
# ratios and targets


def _entry(section: dict[str, Any], tool: str, cell: str) -> dict[str, Any] | None:
    return next((e for e in section.get("entries", []) if e["tool"] == tool and e["cell"] == cell), None)


SPEED_KEYS = {"speed": "reference", "speed_large": "large"}  # results key -> --shapes name
GPU_TARGETS = {"bare": 0.9, "darts": 3.0, "neuralforecast": 3.0}  # seqcast windows/s over the tool's, at least


def compute_ratios(results: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    peak = results["machine"].get("matmul_peak_gflops")
    for name in ("speed", "speed_large", "accuracy"):
        section = results.get(name, {})
        for cell in ("lstm", "gru"):
            seq = _entry(section, "seqcast", cell)
            if seq is None:
                continue
            speed: dict[str, Any] = {}
            for tool in ("bare", "darts", "neuralforecast"):
                other = _entry(section, tool, cell)
                if other is not None:
                    speed[f"seqcast_vs_{tool}"] = round(seq["windows_per_s"] / other["windows_per_s"], 3)
                    if seq.get("loop_windows_per_s") and other.get("loop_windows_per_s"):
                        speed[f"seqcast_vs_{tool}_loop"] = round(
                            seq["loop_windows_per_s"] / other["loop_windows_per_s"], 3
                        )
                    speed[f"seqcast_vs_{tool}_memory"] = round(
                        max(seq["peak_rss_delta_mib"], 1.0) / max(other["peak_rss_delta_mib"], 1.0), 3
                    )
                    if seq.get("peak_gpu_mem_delta_mib") is not None and other.get("peak_gpu_mem_delta_mib"):
                        speed[f"seqcast_vs_{tool}_gpu_memory"] = round(
                            max(seq["peak_gpu_mem_delta_mib"], 1.0) / max(other["peak_gpu_mem_delta_mib"], 1.0), 3
                        )
                    if name == "accuracy":
                        speed[f"seqcast_vs_{tool}_test_mae"] = round(seq["test"]["mae"] / other["test"]["mae"], 3)
            if peak:
                speed["seqcast_gflops_vs_peak"] = round(seq["gflops_per_s"] / peak, 4)
                bare = _entry(section, "bare", cell)
                if bare is not None:
                    speed["bare_gflops_vs_peak"] = round(bare["gflops_per_s"] / peak, 4)
            ratios[f"{name}_{cell}"] = speed
    tta = results.get("time_to_accuracy", {})
    if tta.get("speedup_seqcast_vs_peer"):
        ratios["time_to_accuracy"] = tta["speedup_seqcast_vs_peer"]
    store = results.get("store", {})
    for backend in ("sqlite", "postgresql"):
        b = store.get(backend, {})
        if "ratio_upsert_vs_bulk" in b:
            ratios[f"store_{backend}_upsert_vs_bulk"] = b["ratio_upsert_vs_bulk"]
    win = results.get("windowing", {})
    if "ratio_peak_vs_raw" in win:
        ratios["windowing_peak_vs_raw"] = win["ratio_peak_vs_raw"]
    return ratios


def compute_gpu_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """--device cuda: per speed shape and cell, seqcast >= 0.9x the bare cuDNN loop and >= 3x Darts and
    NeuralForecast (windows/s). A tool that was not measured (skipped, failed) gives met=None with the reason."""
    targets: list[dict[str, Any]] = []
    skipped = results["meta"].get("skipped", {})
    for key, shape_name in SPEED_KEYS.items():
        section = results.get(key)
        if section is None:
            continue
        for cell in ("lstm", "gru"):
            seq = _entry(section, "seqcast", cell)
            for tool, minimum in GPU_TARGETS.items():
                name = f"GPU speed, {shape_name} shape, {cell}: seqcast >= {minimum:g}x {TOOL_NAMES[tool]}"
                other = _entry(section, tool, cell)
                if seq is None or other is None:
                    missing = "seqcast" if seq is None else tool
                    why = skipped.get(missing) or section.get("error") or "no entry"
                where = {"shape": shape_name, "cell": cell, "tool": tool, "minimum": minimum}
                if seq is None or other is None:
                    missing = "seqcast" if seq is None else tool
                    why = skipped.get(missing) or section.get("error") or "no entry"
                    targets.append({"name": name, "value": f"not measured ({missing}: {why})", "met": None, **where})
                    continue
                value = round(seq["windows_per_s"] / other["windows_per_s"], 3)
                targets.append({"name": name, "value": value, "met": value >= minimum, **where})
    return targets


TOOL_NAMES = {"seqcast": "seqcast", "bare": "bare cuDNN loop", "darts": "Darts", "neuralforecast": "NeuralForecast"}


def compute_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    if results["meta"].get("device") == "cuda":
        targets += compute_gpu_targets(results)
    tta = results.get("time_to_accuracy", {})
    for tool, ratio in (tta.get("speedup_seqcast_vs_peer") or {}).items():
        value = float(ratio.lstrip(">")) if isinstance(ratio, str) else ratio
        targets.append(
            {
                "name": f"time to accuracy: seqcast >= 2x faster than {tool}",
                "value": ratio,
                "met": value is not None and value >= 2.0,
            }
        )
    for backend in ("sqlite", "postgresql"):
        b = results.get("store", {}).get(backend, {})
        if "ratio_upsert_vs_bulk" in b:
            targets.append(
                {
                    "name": f"forecast writes ({backend}): upsert >= 0.8x bulk insert",
                    "value": b["ratio_upsert_vs_bulk"],
                    "met": b["ratio_upsert_vs_bulk"] >= 0.8,
                }
            )
    for variant, panel in results.get("accuracy_panel", {}).get("variants", {}).items():
        suffix = "" if variant == "default" else f" (scaling={variant})"
        for t in panel["targets"]:
            targets.append({"name": f"accuracy panel{suffix}: {t['name']}", "value": t["value"], "met": t["met"]})
    win = results.get("windowing", {})
    if "ratio_peak_vs_raw" in win:
        targets.append(
            {
                "name": "windowing peak memory <= 2x raw values",
                "value": win["ratio_peak_vs_raw"],
                "met": win["ratio_peak_vs_raw"] <= 2.0,
            }
        )
    return targets


# ---------------------------------------------------------------------------------------------------------------
# main


SECTIONS: tuple[str, ...] = (
    "speed",
    "accuracy",
    "time_to_accuracy",
    "scaling",
    "store",
    "windowing",
    "profile",
    "demo",
    "accuracy_panel",
)
CUDA_SECTIONS = ("speed", "accuracy", "scaling", "store", "windowing")  # time_to_accuracy and profile: CPU only


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny data everywhere (the smoke test; seconds)")
    parser.add_argument(
        "--tools",
        default="seqcast,bare,darts,neuralforecast",
        help="comma-separated entries to run (default: all; peers that are not installed are skipped with a note)",
    )
    parser.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated, from {','.join(SECTIONS)} (default: all on cpu, speed on cuda)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for latest.json/md")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: every entry on the GPU with bf16 autocast (needs torch with CUDA); sections "
        + ",".join(CUDA_SECTIONS),
    )
    parser.add_argument(
        "--shapes",
        default="reference",
        help="comma-separated speed shapes, from reference (temperature, L=48, H=24, batch 256) and large "
        "(synthetic, L=336, H=48, 2x256, batch 1024; very slow on CPU unless --quick)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False); "
            "run on a machine with a GPU and a CUDA build of torch, or use --device cpu"
        )
    from benchmarks.entries import PEERS, TOOLS, available
    from benchmarks.report import markdown

    torch.set_num_threads(THREADS)
    sizes = QUICK if args.quick else FULL
    cuda = args.device == "cuda"
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown --tools {unknown}; choose from {','.join(TOOLS)}")
    default_sections = ",".join(s for s in SECTIONS if not (args.quick and s == "demo")) if not cuda else "speed"
    sections = [s.strip() for s in (args.sections or default_sections).split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown --sections {bad}; choose from {','.join(SECTIONS)}")
    if args.device == "cuda" and any(s not in CUDA_SECTIONS for s in sections):
        cpu_only = [s for s in sections if s not in CUDA_SECTIONS]
        raise SystemExit(
            f"--sections {cpu_only} run on CPU only; with --device cuda choose from {','.join(CUDA_SECTIONS)}"
        )
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not shapes or any(s not in SHAPES for s in shapes):
        raise SystemExit(f"unknown --shapes {shapes}; choose from {','.join(SHAPES)}")
    skipped: dict[str, str] = {}
    for tool in TOOLS:
        if tool not in tools:
            skipped[tool] = "not requested (--tools)"
        elif not available(tool):
            skipped[tool] = "not installed: pip install -e '.[bench]' (with torch==2.13.0 on the same command line)"
        elif args.device == "cuda" and tool in PEERS:  # on a GPU image a peer may be there with a dependency missing
            try:
                importlib.import_module(PEERS[tool])
            except Exception as exc:
                skipped[tool] = f"not importable: {exc.__class__.__name__}: {exc}"
    started = time.perf_counter()
    log(
        f"benchmarks ({'quick' if args.quick else 'full'}{', cuda' if cuda else ''}): "
        f"tools {[t for t in tools if t not in skipped]}"
    )
    for tool, why in skipped.items():
        log(f"skipping {tool}: {why}")
    machine = common.machine_info()
    if cuda:
        torch.backends.cudnn.benchmark = True  # what seqcast's CUDA path sets; set here so every entry has it
        machine["gpu"] = common.gpu_info()
        machine["matmul_peak_dtype"] = "bfloat16 (GPU)"
        log(f"GPU: {machine['gpu']['name']}, CUDA {machine['gpu']['cuda']}, cuDNN {machine['gpu']['cudnn']}")
    machine["matmul_peak_gflops"] = round(common.matmul_peak_gflops(seconds=sizes.peak_seconds, device=args.device), 1)
    results: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_start": common.load_average(),
            "skipped": skipped,
            "threads": THREADS,
        },
        "machine": machine,
    }
    if cuda:
        results["meta"]["device"] = "cuda"
    if shapes != ["reference"] and "speed" in sections:
        results["meta"]["shapes"] = shapes
    errors: dict[str, str] = {}
    device = args.device
    runners = {
        "speed": lambda: section_speed(sizes, tools, skipped, device, "reference"),
        "speed_large": lambda: section_speed(sizes, tools, skipped, device, "large"),
        "accuracy": lambda: section_accuracy(sizes, tools, skipped, device),
        "time_to_accuracy": lambda: section_time_to_accuracy(sizes, tools, skipped),
        "scaling": lambda: section_scaling(sizes, tools, skipped, device),
        "store": lambda: section_store(sizes),
        "windowing": lambda: section_windowing(sizes),
        "profile": lambda: section_profile(sizes),
        "demo": lambda: section_demo(args.quick),
        "accuracy_panel": lambda: section_accuracy_panel(args.quick),
    }
    planned: list[str] = []
    for name in SECTIONS:
        if name not in sections:
            continue
        if name == "profile" and "seqcast" in skipped:
            continue
        if name == "speed":  # one results key per shape: "speed" (reference) and "speed_large"
            planned += [key for key, shape in SPEED_KEYS.items() if shape in shapes]
        else:
            planned.append(name)
    for name in planned:
        t = time.perf_counter()
        log(f"section {name}")
        try:
            results[name] = runners[name]()
        except Exception as exc:
            errors[name] = "".join(traceback.format_exception(exc))
            results[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
            log(f"section {name} FAILED: {exc.__class__.__name__}: {exc}")
        results[name]["section_s"] = round(time.perf_counter() - t, 1)
        if cuda:  # what is done so far survives a run cut off by gpu_check.sh's time budget
            Path(args.out).mkdir(parents=True, exist_ok=True)
            _write(Path(args.out) / "partial.json", json.dumps(results, indent=2, default=_json_default) + "\n")
    if cuda:
        results["meta"]["bf16"] = bf16_summary(results)
    results["ratios"] = compute_ratios(results)
    results["targets"] = compute_targets(results)
    results["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["load_average_end"] = common.load_average()
    if errors:
        results["meta"]["errors"] = errors

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "latest.json", json.dumps(results, indent=2, default=_json_default) + "\n")
    _write(out / "latest.md", markdown(results))
    if cuda:
        (out / "partial.json").unlink(missing_ok=True)  # superseded by latest.json
    print(json.dumps({"ratios": results["ratios"], "targets": results["targets"]}, indent=2, default=_json_default))
    log(f"wrote {out / 'latest.json'} and {out / 'latest.md'} in {results['meta']['total_s']:.0f} s")
    return 1 if errors else 0


def bf16_summary(results: dict[str, Any]) -> dict[str, Any]:
    """--device cuda: what each entry asked for (bf16 autocast) and what its first RNN layer really produced."""
    rnn: dict[str, Any] = {}
    asked: dict[str, Any] = {}
    for key in ("speed", "speed_large", "accuracy", "scaling"):
        section = results.get(key, {})
        entries = section.get("entries", []) or [e for s in section.get("sets", []) for e in s.get("entries", [])]
        for e in entries:
            rnn[f"{key}/{e['tool']}/{e['cell']}"] = e.get("rnn_dtype")
            asked[f"{key}/{e['tool']}/{e['cell']}"] = e.get("bf16_autocast")
    return {
        "autocast_dtype": "bfloat16",
        "lightning_precision": "bf16-mixed",
        "all_bf16": bool(rnn) and all(v == "bfloat16" for v in rnn.values()),
        "rnn_output_dtype": rnn,
        "bf16_autocast": asked,
        "gpu_bf16_supported": results["machine"].get("gpu", {}).get("bf16_supported"),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
