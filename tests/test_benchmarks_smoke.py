"""Smoke test of the benchmarks: `benchmarks/run.py --quick` on tiny data, as a subprocess.

Only the seqcast and bare-loop entries run. Where Darts and NeuralForecast are not installed (CI installs the dev
extra only), they are requested anyway, to check that they are skipped with a note and nothing fails; where they
are installed, they are left out (their import and Lightning start-up alone would take most of the 30 s).
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("darts", "neuralforecast")
SECTIONS = ("speed", "accuracy", "time_to_accuracy", "scaling", "store", "windowing", "profile")


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
    assert {t["name"] for t in results["targets"]} >= {"windowing peak memory <= 2x raw values"}
    assert "## Speed" in (tmp_path / "latest.md").read_text()
