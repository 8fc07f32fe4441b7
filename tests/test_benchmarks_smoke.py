"""Smoke test of the benchmarks: `benchmarks/run.py --quick` on tiny data, as a subprocess; `--device cuda` refused
without CUDA; and `benchmarks/gpu_check.sh` in its CPU dry mode.

Only the seqcast and bare-loop entries run. Where Darts and NeuralForecast are not installed (CI installs the dev
extra only), they are requested anyway, to check that they are skipped with a note and nothing fails; where they
are installed, they are left out (their import and Lightning start-up alone would take most of the 30 s).
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("darts", "neuralforecast")
SECTIONS = ("speed", "accuracy", "time_to_accuracy", "scaling", "store", "windowing", "profile", "accuracy_panel")


def _numbers(tree: Any) -> list[float]:
    if isinstance(tree, dict):
        return [x for value in tree.values() for x in _numbers(value)]
    if isinstance(tree, numbers.Real) and not isinstance(tree, bool):
        return [float(tree)]
    return []


def test_quick_benchmark_writes_results_with_positive_ratios(tmp_path: Path) -> None:
    installed = [peer for peer in PEERS if importlib.util.find_spec(peer) is not None]
    tools = "seqcast,bare" if installed else "seqcast,bare,darts,neuralforecast"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--tools", tools, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert set(SECTIONS) | {"meta", "machine", "ratios", "targets"} <= set(results)
    assert not results["meta"].get("errors"), results["meta"].get("errors")
    for section in SECTIONS:
        assert "error" not in results[section], (section, results[section])

    machine = results["machine"]
    assert machine["cpu_model"] and machine["usable_cpus"] >= 1 and machine["torch"]
    assert machine["matmul_peak_gflops"] > 0

    for peer in PEERS:  # skipped with a reason, never failed
        assert peer in results["meta"]["skipped"]
        reason = results["meta"]["skipped"][peer]
        assert ("not installed" in reason) if peer not in installed else ("not requested" in reason)
    assert "skipped" in results["time_to_accuracy"]

    for section in ("speed", "accuracy"):
        entries = results[section]["entries"]
        assert {(e["tool"], e["cell"]) for e in entries} == {
            (tool, cell) for tool in ("seqcast", "bare") for cell in ("lstm", "gru")
        }
        for entry in entries:
            assert entry["windows"] > 0 and entry["wall_s"] > 0 and entry["windows_per_s"] > 0
            assert entry["peak_rss_delta_mib"] >= 0
    for entry in results["accuracy"]["entries"]:
        assert entry["test"]["mae"] > 0 and entry["test"]["mase"] > 0
    assert set(results["accuracy"]["baselines"]) >= {"naive", "seasonal_naive", "weekly_seasonal_naive"}

    ratios = results["ratios"]
    for key in ("speed_lstm", "speed_gru", "accuracy_lstm", "accuracy_gru"):
        assert ratios[key]["seqcast_vs_bare"] > 0
        assert ratios[key]["seqcast_gflops_vs_peak"] > 0
    assert ratios["store_sqlite_upsert_vs_bulk"] > 0
    values = _numbers(ratios)
    assert values and all(v > 0 for v in values), ratios

    assert results["store"]["sqlite"]["upsert_rows_per_s"] > 0
    assert "postgresql" in results["store"]  # measured, or skipped with the reason
    assert results["windowing"]["raw_values_mib"] > 0
    assert results["profile"]["seqcast_fit_forecaster"]["wall_ms_per_step"] > 0
    panel = results["accuracy_panel"]["variants"]["default"]
    assert [row["series"] for row in panel["rows"]] == ["trend_season", "level_shift", "random_walk"]
    assert all(row["mase"]["served"] > 0 for row in panel["rows"])
    assert {t["name"] for t in results["targets"]} >= {
        "windowing peak memory <= 2x raw values",
        "accuracy panel: (a) served <= better of naive / seasonal naive on every series",
    }
    markdown = (tmp_path / "latest.md").read_text()
    assert "## Speed" in markdown and "## Accuracy panel" in markdown


def test_device_cuda_is_refused_with_one_clear_line_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is allowed here")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--device", "cuda", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("--device cuda:") and "torch.cuda.is_available() is False" in last, proc.stderr[-4000:]
    assert not (tmp_path / "latest.json").exists()


def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh with SEQCAST_GPU_CHECK_DEVICE=cpu: the GPU check's own steps (python probe, Prefect
    stand-in, both speed shapes, results under $OUT, the table printed) with --device cpu --quick."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    env = {
        **os.environ,
        "SEQCAST_GPU_CHECK_DEVICE": "cpu",
        "SEQCAST_PYTHON": sys.executable,
        "SEQCAST_GPU_CHECK_TOOLS": "seqcast,bare",  # the peers' imports and Lightning start-up would take most of it
        "SEQCAST_GPU_CHECK_PREFECT_STUB": "1",  # the GPU image has no Prefect: the stand-in must be enough
        "SEQCAST_GPU_WHEELS": str(tmp_path / "no-wheels"),
        "OUT": str(tmp_path / "out"),
    }
    proc = subprocess.run(
        [bash, str(ROOT / "benchmarks" / "gpu_check.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "stand-in" in proc.stdout and "== run.py finished" in proc.stdout
    assert {"latest.json", "latest.md", "gpu_check.log"} <= {p.name for p in out.iterdir()}

    results = json.loads((out / "latest.json").read_text())
    assert results["meta"]["mode"] == "quick" and results["meta"]["shapes"] == ["reference", "large"]
    assert not results["meta"].get("errors"), results["meta"].get("errors")
    assert {"speed", "speed_large", "machine", "ratios", "targets"} <= set(results)
    assert results["speed_large"]["lookback"] > results["speed"]["lookback"]
    for section in ("speed", "speed_large"):
        entries = results[section]["entries"]
        assert {(e["tool"], e["cell"]) for e in entries} == {
            (tool, cell) for tool in ("seqcast", "bare") for cell in ("lstm", "gru")
        }
        assert all(e["windows_per_s"] > 0 for e in entries)
        for cell in ("lstm", "gru"):
            assert results["ratios"][f"{section}_{cell}"]["seqcast_vs_bare"] > 0
    markdown = (out / "latest.md").read_text()
    assert "## Speed summary" in markdown and "## Speed: larger shape" in markdown
    assert "## Speed summary" in proc.stdout  # the table is printed at the end


def test_scale_benchmark_runs_a_tiny_panel_and_saves_its_tables(tmp_path: Path) -> None:
    """`python -m benchmarks.scale` on 20 and 40 series x 200 days, SQLite only: every stage timed with sane
    figures in scale.json, the table printed and saved as scale.md, growth ratios next to the series ratio."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.scale",
            "--series",
            "20",
            "40",
            "--steps",
            "200",
            "--max-epochs",
            "1",
            "--budget",
            "300",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    from benchmarks.scale import STAGES

    results = json.loads((tmp_path / "scale.json").read_text())
    assert results["meta"]["series"] == [20, 40] and len(results["meta"]["load_start"]) == 3
    by_size = results["stores"]["sqlite"]
    for n_series in (20, 40):
        run = by_size[str(n_series)]
        assert list(run["stages"]) == list(STAGES)
        for stage in run["stages"].values():
            assert stage["seconds"] > 0 and stage["peak_mib"] >= stage["delta_mib"] >= 0
        facts = run["facts"]
        assert facts["observations"] == n_series * 200
        assert facts["forecast_rows_written"] == n_series * facts["horizon"]
        assert facts["windows_per_epoch"] == 300 and facts["epochs"] == 1
    assert set(results["growth"]["sqlite"]) == set(STAGES)
    assert all(g["seconds"] > 0 for g in results["growth"]["sqlite"].values())
    markdown = (tmp_path / "scale.md").read_text()
    assert "## sqlite" in markdown and "| training |" in markdown and "time x (2x series)" in markdown
    assert "| training |" in proc.stdout
