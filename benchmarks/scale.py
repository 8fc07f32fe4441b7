"""The nightly path at scale: synthetic panels of many series, timed stage by stage on SQLite and PostgreSQL.

```bash
python -m benchmarks.scale --series 1000 10000                        # SQLite (the embedded store)
python -m benchmarks.scale --series 1000 10000 --store sqlite postgresql
python -m benchmarks.scale --series 20 --steps 200 --max-epochs 1 --budget 500 --out /tmp/scale   # a smoke run
```

Each panel is `series x steps` daily observations of three kinds, one third each: seasonal (weekly and yearly
cycles around a level), trend plus weekly cycle, and random walk; built with numpy, written to Parquet. Each
(store, size) then runs in a fresh process, which calls the same plain functions the flows call, in the nightly
order:

- ingest flow: `read_source` (the Parquet file), `validate_observations`, `upsert_observations`;
- train flow: `read_observations`, `resolve_for_frame` + `validate_observations` (the window's minimum lengths),
  `prepare_windows`, one candidate: `fit_forecaster` (the LSTM, scaling auto: two fits side by side) under a fixed
  per-epoch window budget (`TrainingSpec.max_windows_per_epoch`), then its evaluation (`calibrate_intervals`,
  `forecast_test_windows`, `evaluate_test_windows`);
- forecast flow: `read_observations` of each series' last lookback rows (`last`), `plan_forecast` +
  `forecast_frame_at` for every series, `upsert_forecasts`.

MLflow logging, plots and Prefect's own overhead are not part of it (they do not grow with the data here: one run,
one model). Memory: each stage's peak resident memory, read from the kernel's high-water mark after resetting it
at the stage's start (`benchmarks.common.host_peak_memory`, exact on Linux): `peak_mib` is the process's peak
during the stage, `delta_mib` that peak minus the memory held when the stage began. Each size runs in its own
process, so one size's leftovers never hide the next one's peak. The load average is recorded at every stage's
start and end: on a shared machine wall times are inflated by the other work, memory is not.

Results: `<out>/scale.json` (every number) and `<out>/scale.md` (the tables), default `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from benchmarks.common import ROOT, cpu_model, host_peak_memory, load_average

T = TypeVar("T")
RESULTS = ROOT / "benchmarks" / "results"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE = "seqcast_scale"
KINDS = ("seasonal", "trend", "random_walk")
START = "2023-01-01"
FREQ = "D"
DEFAULT_BUDGET = 20_000  # training windows per epoch (and validation windows watched): about 2 s per epoch here
DEFAULT_EPOCHS = 10
STAGES = (
    "read_parquet",
    "validate_ingest",
    "write_observations",
    "read_observations",
    "validate_train",
    "windowing",
    "training",
    "evaluation",
    "read_for_forecast",
    "forecast",
    "write_forecasts",
)


# ---------------------------------------------------------------------------------------------------------------
# the panel


def panel_arrays(n_series: int, steps: int, seed: int = 0) -> np.ndarray:
    """Values `[n_series, steps]`: series k is seasonal (k % 3 == 0), trend + weekly cycle (1) or a random walk (2),
    each with its own level, amplitudes, phase and noise; all positive, no outlier beyond the validation band."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps, dtype=np.float64)  # [T]
    kind = np.arange(n_series) % len(KINDS)  # [S]
    level = rng.uniform(50, 500, (n_series, 1))  # [S, 1]
    weekly = (
        rng.uniform(0.02, 0.1, (n_series, 1)) * level * np.sin(2 * np.pi * t / 7 + rng.uniform(0, 7, (n_series, 1)))
    )
    yearly = rng.uniform(0.05, 0.2, (n_series, 1)) * level * np.sin(2 * np.pi * t / 365.25)
    noise = rng.normal(0, 0.01, (n_series, steps)) * level  # [S, T]
    slope = rng.uniform(-0.5, 1.0, (n_series, 1)) * level / steps  # [S, 1]: up to one level over the panel
    walk = np.cumsum(rng.normal(0, 0.01, (n_series, steps)), axis=1) * level  # [S, T]
    values = np.where(
        (kind == 0)[:, None],
        level + weekly + yearly + noise,
        np.where((kind == 1)[:, None], level + slope * t + weekly + noise, level + walk + noise),
    )
    return np.abs(values) + 1.0  # [S, T]


def write_panel(path: Path, n_series: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """The panel as a long Parquet file `series_id, ts, value` (ts UTC, daily), built column-wise in pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    values = panel_arrays(n_series, steps, seed)
    width = len(str(n_series - 1))
    ids = pa.array([f"series_{k:0{width}d}" for k in range(n_series)], type=pa.string())
    ts = np.datetime64(START, "us") + np.arange(steps).astype("m8[D]").astype("m8[us]")  # [T]
    table = pa.table(
        {
            "series_id": ids.take(pa.array(np.repeat(np.arange(n_series), steps))),
            "ts": pa.array(np.tile(ts, n_series), type=pa.timestamp("us", tz="UTC")),
            "value": pa.array(values.reshape(-1)),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return {"rows": table.num_rows, "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - started, 2)}


# ---------------------------------------------------------------------------------------------------------------
# one size on one store, in this process


class StageClock:
    """Wall time, peak memory and load average of each stage, in order."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.memory_method = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"load_start": load_average()}
        with host_peak_memory() as memory:
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            yield record
            seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
        self.memory_method = memory.method
        record.update(
            seconds=round(seconds, 3),
            cpu_s=round(cpu_seconds, 3),
            peak_mib=round(memory.peak_mib, 1),
            delta_mib=round(memory.delta_mib, 1),
            start_mib=round(memory.start_mib, 1),
            load_end=load_average(),
        )
        self.stages[name] = record

    def run(self, name: str, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`work(*args, **kwargs)` timed and measured as stage `name`."""
        with self.stage(name):
            return work(*args, **kwargs)


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads): unlike wall time, barely inflated by other work on
    a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_size(
    parquet: Path, store_url: str, budget: int | None, max_epochs: int, workdir: Path, threads: int | None
) -> dict[str, Any]:
    """Every stage of the nightly path on the panel in `parquet`, against the database at `store_url`."""
    import pandas as pd
    import torch

    from models.frequency import season_length
    from tasks.evaluate import candidate_forecaster, evaluate_test_windows, forecast_test_windows
    from tasks.forecast import ModelRef, forecast_frame_at, plan_forecast
    from tasks.ingest import read_source
    from tasks.intervals import calibrate_intervals
    from tasks.spec import RunSpec, TrainingSpec, resolve_for_frame
    from tasks.store import get_engine, read_observations, upsert_forecasts, upsert_observations
    from tasks.train import fit_forecaster
    from tasks.validate import validate_observations
    from tasks.windowing import WindowedData, prepare_windows

    if threads is not None:
        torch.set_num_threads(threads)
    import great_expectations  # noqa: F401  # imported once per process, as in a flow run: not a stage's cost

    clock = StageClock()
    engine = get_engine(store_url)  # the schema is made here, outside the clock
    reports = workdir / "validation"
    spec = RunSpec(training=TrainingSpec(max_windows_per_epoch=budget, max_epochs=max_epochs))
    facts: dict[str, Any] = {}

    raw = clock.run("read_parquet", read_source, str(parquet))
    clean, _ = clock.run("validate_ingest", validate_observations, raw, source=parquet.name, report_dir=reports)
    del raw
    written = clock.run("write_observations", upsert_observations, engine, clean)
    facts["observations_new"] = written.new
    del clean, written
    gc.collect()

    frame = clock.run("read_observations", read_observations, engine)
    facts["observations"] = len(frame)

    def validate_for_training() -> tuple[pd.DataFrame, RunSpec]:
        window = resolve_for_frame(spec, frame)
        valid, _ = validate_observations(
            frame, min_length=window.min_length(), source="observations", report_dir=reports
        )
        return valid, resolve_for_frame(spec, valid)

    valid, resolved = clock.run("validate_train", validate_for_training)
    data = clock.run("windowing", prepare_windows, valid, resolved.window_config())
    del valid
    gc.collect()
    facts.update(
        lookback=data.lookback,
        horizon=data.horizon,
        eval_stride=resolved.window.eval_stride,
        train_windows=len(data.train_starts),
        val_windows=len(data.val_starts),
        test_windows=len(data.test_starts),
    )

    config = resolved.train_config("lstm")
    fit = clock.run("training", fit_forecaster, data, config)
    facts.update(
        epochs=len(fit.history),
        best_epoch=fit.best_epoch,
        scaling=fit.config.scaling,
        windows_per_epoch=min(budget or len(data.train_starts), len(data.train_starts)),
        windows_per_second=round(fit.windows_per_second),
        best_val_loss=round(fit.best_val_loss, 5),
    )

    season = season_length(data.freq)
    seasons = resolved.evaluation.seasons or []
    loaded = candidate_forecaster(fit, data)

    def evaluate(data: WindowedData) -> tuple[Any, Any]:
        calibration = calibrate_intervals(loaded, data, resolved.evaluation.interval_level, season, seasons)
        predicted = forecast_test_windows(loaded, data)
        evaluation = evaluate_test_windows(data, predicted, season, seasons, "lstm", calibration)
        # served as registered: the intervals and the per-series fallback come with the model
        return evaluation, replace(loaded, intervals=calibration, fallback=evaluation.fallback)

    evaluation, loaded = clock.run("evaluation", evaluate, data)
    facts.update(
        test_mase=round(evaluation.model.overall["mase"], 4),
        served_test_mase=round(evaluation.served.overall["mase"], 4),
        fallback_series=len(evaluation.fallback),
    )
    del evaluation, data
    gc.collect()

    as_of = frame["ts"].max()
    model = ModelRef(name="seqcast-scale", version="1", run_id="scale-benchmark", alias=None)

    # the forecast flow's own read: each series' last lookback rows
    recent = clock.run("read_for_forecast", read_observations, engine, end=as_of, last=loaded.lookback)

    def forecast() -> pd.DataFrame:
        plan = plan_forecast(recent, loaded, None, as_of, as_of_given=True)
        return forecast_frame_at(loaded, model, plan, flow_run_id="scale-benchmark")

    rows = clock.run("forecast", forecast)
    facts["forecast_rows"] = len(rows)
    facts["forecast_rows_written"] = clock.run("write_forecasts", lambda: upsert_forecasts(engine, rows))
    engine.dispose()
    return {"stages": clock.stages, "facts": facts, "memory_method": clock.memory_method}


# ---------------------------------------------------------------------------------------------------------------
# the stores


def postgres_admin_url() -> str:
    return os.environ.get("SEQCAST_BENCH_POSTGRES_URL") or os.environ.get(
        "SEQCAST_TEST_POSTGRES_URL", POSTGRES_ADMIN_URL
    )


@contextmanager
def fresh_store(store: str, workdir: Path) -> Iterator[str]:
    """A URL of an empty database for one size: a SQLite file in `workdir`, or database `seqcast_scale` created on
    the PostgreSQL server (dropped afterwards)."""
    if store == "sqlite":
        path = workdir / "scale.db"
        for leftover in workdir.glob("scale.db*"):
            leftover.unlink()
        try:
            yield f"sqlite:///{path}"
        finally:
            for leftover in workdir.glob("scale.db*"):
                leftover.unlink()
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(postgres_admin_url())
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))

    try:
        drop()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
        yield admin_url.set(database=DATABASE).render_as_string(hide_password=False)
    finally:
        drop()
        admin.dispose()


def postgres_available() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(postgres_admin_url(), connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect skips the store with its reason
        return f"PostgreSQL at {postgres_admin_url()} is not reachable: {str(exc).splitlines()[0]}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# the driver: one process per (store, size)


def run_in_subprocess(
    args: argparse.Namespace, store: str, n_series: int, parquet: Path, workdir: Path
) -> dict[str, Any]:
    """One size on one store in a fresh Python process; its result, or an `error` with the process's output."""
    out = workdir / f"result-{store}-{n_series}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--worker",
        "--store",
        store,
        "--series",
        str(n_series),
        "--parquet",
        str(parquet),
        "--workdir",
        str(workdir),
        "--max-epochs",
        str(args.max_epochs),
        "--budget",
        str(args.budget),
        "--result",
        str(out),
    ]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    env = {
        **os.environ,
        "SEQCAST_HOME": str(workdir / "home"),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out.exists():
        return {"error": f"exit {proc.returncode}", "output": (proc.stdout + proc.stderr)[-4000:], "wall_s": wall}
    result: dict[str, Any] = json.loads(out.read_text())
    result["process_wall_s"] = round(wall, 2)
    return result


def growth(results: dict[int, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per stage: seconds and memory delta at the largest size over those at the smallest."""
    sizes = sorted(n for n, r in results.items() if "stages" in r)
    if len(sizes) < 2:
        return {}
    small, large = results[sizes[0]]["stages"], results[sizes[-1]]["stages"]
    out: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        a, b = small.get(stage), large.get(stage)
        if a is None or b is None:
            continue
        out[stage] = {
            "seconds": round(b["seconds"] / a["seconds"], 2) if a["seconds"] > 0 else None,
            "delta_mib": round(b["delta_mib"] / a["delta_mib"], 2) if a["delta_mib"] >= 1 else None,
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    """The tables: per store, stage x size (seconds, peak and delta MiB) and the growth next to the series ratio."""
    lines = [
        f"# The nightly path at scale ({report['meta']['finished']})",
        "",
        f"{report['meta']['steps']} daily steps per series; training budget "
        f"{report['meta']['budget']:,} windows per epoch, at most {report['meta']['max_epochs']} epochs; "
        f"{report['machine']['cpu_model']}, {report['machine']['cpus']} CPUs. Load average (1, 5, 15 min) at the "
        f"start: {report['meta']['load_start']}, at the end: {report['meta']['load_end']}.",
        f"Memory: {report['meta'].get('memory_method', '')}.",
    ]
    for store, by_size in report["stores"].items():
        lines += ["", f"## {store}", ""]
        if isinstance(by_size, str):
            lines.append(f"Skipped: {by_size}")
            continue
        sizes = sorted(int(n) for n in by_size)
        measured = [n for n in sizes if "stages" in by_size[str(n)]]
        for n in sizes:
            if "error" in by_size[str(n)]:
                lines.append(f"{n:,} series failed: {by_size[str(n)]['error']}")
        if not measured:
            continue
        head = "| stage | " + " | ".join(f"{n:,}: s | {n:,}: peak MiB | {n:,}: +MiB" for n in measured)
        ratio = len(measured) > 1
        if ratio:
            head += f" | time x ({measured[-1] // measured[0]}x series) | +MiB x |"
        else:
            head += " |"
        lines += [head, "|---" * (1 + 3 * len(measured) + (2 if ratio else 0)) + "|"]
        grown = report["growth"].get(store, {})
        for stage in STAGES:
            cells = []
            for n in measured:
                record = by_size[str(n)]["stages"].get(stage)
                cells += ["" if record is None else f"{record['seconds']:.2f}"]
                cells += ["" if record is None else f"{record['peak_mib']:,.0f}"]
                cells += ["" if record is None else f"{record['delta_mib']:,.0f}"]
            if ratio:
                g = grown.get(stage, {})
                cells += [_ratio(g.get("seconds")), _ratio(g.get("delta_mib"))]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        totals = [sum(r["seconds"] for r in by_size[str(n)]["stages"].values()) for n in measured]
        peaks = [max(r["peak_mib"] for r in by_size[str(n)]["stages"].values()) for n in measured]
        cells = []
        for total, peak in zip(totals, peaks, strict=True):
            cells += [f"**{total:.1f}**", f"**{peak:,.0f}**", ""]
        if ratio:
            cells += [_ratio(totals[-1] / totals[0]), ""]
        lines.append("| **all stages** | " + " | ".join(cells) + " |")
        with_cpu = [n for n in measured if all("cpu_s" in r for r in by_size[str(n)]["stages"].values())]
        if with_cpu:  # CPU seconds: what the wall times would be on an idle machine, for the single-threaded stages
            lines += ["", "| stage | " + " | ".join(f"{n:,}: CPU s" for n in with_cpu) + " |"]
            lines.append("|---" * (1 + len(with_cpu)) + "|")
            for stage in STAGES:
                cells = [f"{by_size[str(n)]['stages'][stage]['cpu_s']:.2f}" for n in with_cpu]
                lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines.append("")
        for n in measured:
            facts = by_size[str(n)]["facts"]
            lines.append(
                f"- {n:,} series: {facts['observations']:,} observations; L={facts['lookback']}, H={facts['horizon']}; "
                f"{facts['train_windows']:,} train / {facts['val_windows']:,} validation / {facts['test_windows']:,} "
                f"test windows; {facts['epochs']} epochs of {facts['windows_per_epoch']:,} windows "
                f"({facts['windows_per_second']:,} windows/s), test MASE {facts['test_mase']} (served "
                f"{facts['served_test_mase']}); {facts['forecast_rows_written']:,} forecast rows; load "
                f"{by_size[str(n)]['load']['start']} -> {by_size[str(n)]['load']['end']}"
            )
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks.scale")
    parser.add_argument("--series", type=int, nargs="+", default=[1000, 10000], help="panel sizes (series)")
    parser.add_argument("--steps", type=int, default=1000, help="daily steps per series (default 1000)")
    parser.add_argument("--store", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite"])
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="training windows per epoch")
    parser.add_argument("--max-epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: seqcast's own rule)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of scale.json and scale.md")
    parser.add_argument("--workdir", type=Path, default=None, help="Parquet files and SQLite databases (temporary)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parquet", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # one size on one store, in this fresh process
        workdir: Path = args.workdir
        load_start = load_average()
        with fresh_store(args.store[0], workdir) as url:
            result = run_size(args.parquet, url, args.budget, args.max_epochs, workdir, args.threads)
        result["load"] = {"start": load_start, "end": load_average()}
        args.result.write_text(json.dumps(result, indent=1))
        return 0

    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="seqcast-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "series": args.series,
            "steps": args.steps,
            "freq": FREQ,
            "kinds": list(KINDS),
            "budget": args.budget,
            "max_epochs": args.max_epochs,
            "load_start": load_average(),
            "note": "wall times are inflated when the load average exceeds the CPUs (other work on the machine)",
        },
        "machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count()},
        "panels": {},
        "stores": {},
        "growth": {},
    }
    try:
        for n_series in args.series:
            parquet = workdir / f"panel-{n_series}x{args.steps}.parquet"
            report["panels"][str(n_series)] = write_panel(parquet, n_series, args.steps)
            print(f"panel {n_series:,} x {args.steps}: {report['panels'][str(n_series)]}", flush=True)
        for store in args.store:
            reason = postgres_available() if store == "postgresql" else None
            if reason is not None:
                report["stores"][store] = reason
                print(f"{store}: skipped: {reason}", flush=True)
                continue
            by_size: dict[str, Any] = {}
            for n_series in args.series:
                parquet = workdir / f"panel-{n_series}x{args.steps}.parquet"
                result = run_in_subprocess(args, store, n_series, parquet, workdir)
                by_size[str(n_series)] = result
                report["meta"]["memory_method"] = result.get("memory_method", report["meta"].get("memory_method"))
                summary = result.get("error") or {k: v["seconds"] for k, v in result["stages"].items()}
                print(f"{store} {n_series:,} series: {summary}", flush=True)
            report["stores"][store] = by_size
            report["growth"][store] = growth({int(n): r for n, r in by_size.items()})
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["meta"]["load_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / "scale.md").write_text(text)
    print(text)
    failed = [
        f"{store} {n}"
        for store, by in report["stores"].items()
        if isinstance(by, dict)
        for n, r in by.items()
        if "error" in r
    ]
    for name in failed:
        print(f"{name}: {report['stores'][name.split()[0]][name.split()[1]]['output']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
