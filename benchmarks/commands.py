"""How long a user waits for each `seqcast` command, end to end, cold and on a warm server (flows/warm.py).

Every command runs as a user runs it: the `seqcast` script in its own process, on fresh embedded stores (SQLite,
a local MLflow store and a Prefect home, all in a temporary folder). "Cold" sets SEQCAST_WARM_IDLE=0: the command
imports everything and starts Prefect's temporary API itself. "Warm" is the same command once a warm server is
up (a command that finds none runs cold and starts one as it exits: "first command").

- `--help`: the CLI alone.
- `ingest`: a 10,000-row CSV (2 hourly series of 5,000 points), validated and upserted (the second and later
  runs find every row unchanged, which validates and compares as much as a first write).
- `forecast`: the champion's forecasts for both series, written to SQL, with the MLflow record.
- `train` overhead: the wall time of `seqcast train` minus its training, i.e. minus the span from the first
  "training ..." line to the last "... s on cpu" line the command prints (candidates may train side by side).

    python -m benchmarks.commands            # 3 runs of each, about 4 minutes on 2 cores
    python -m benchmarks.commands --runs 1   # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flows.warm import command_argv, server_paths, stop_warm_server

TARGETS = {"--help": 0.5, "ingest": 3.0, "forecast": 4.0, "train overhead": 5.0}
TRAIN_ARGS = ["train", "--epochs", "3", "--lookback", "48", "--horizon", "24", "--hidden-size", "16"]
LOG_TIME = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \|", re.M)


def write_csv(path: Path, rows: int = 10_000) -> None:
    """Two hourly series, daily seasonal with noise, `rows` rows in all."""
    n = rows // 2
    t = np.arange(n)
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame(
            {
                "timestamp": pd.date_range("2024-01-01", periods=n, freq="h"),
                "series_id": sid,
                "value": 100 + 10 * (k + 1) * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, n),
            }
        )
        for k, sid in enumerate(["north", "south"])
    ]
    pd.concat(parts).to_csv(path, index=False)


def timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of one command, and its output; fails loudly if the command does."""
    start = time.perf_counter()
    done = subprocess.run([*command_argv(), *args], capture_output=True, text=True, env=env, cwd=cwd, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"seqcast {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, done.stdout + done.stderr


def training_span(output: str) -> float:
    """Seconds from the first "training ..." log line to the last "... s on <device>" line."""
    starts, ends = [], []
    for line in output.splitlines():
        match = LOG_TIME.match(line)
        if not match:
            continue
        clock = dt.datetime.strptime(match.group(1), "%H:%M:%S.%f")
        if " - training " in line:
            starts.append(clock)
        elif re.search(r" s on \w+$", line):
            ends.append(clock)
    if not starts or not ends:
        raise RuntimeError("no training lines in the output of seqcast train")
    return (max(ends) - min(starts)).total_seconds()


def measure(mode: str, runs: int, folder: Path) -> dict[str, list[float]]:
    """Each command `runs` times in `mode` ("cold" or "warm") on fresh stores; seconds per command."""
    home = folder / mode
    home.mkdir()
    csv = home / "load.csv"
    write_csv(csv)
    env = {
        **os.environ,
        "SEQCAST_HOME": str(home / ".seqcast"),
        "PREFECT_HOME": str(home / "prefect"),
        "SEQCAST_WARM_IDLE": "0" if mode == "cold" else "300",
    }
    for name in ("SEQCAST_DATABASE_URL", "SEQCAST_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(name, None)
    times: dict[str, list[float]] = {name: [] for name in ["first command", *TARGETS]}
    first, _ = timed(["ingest", "--source", str(csv)], env, home)  # creates the stores (and starts a warm server)
    times["first command"].append(first)
    if mode == "warm":
        deadline = time.monotonic() + 300
        while not server_paths(env)[0].exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no warm server after 300 s; see {server_paths(env)[2]}")
            time.sleep(0.2)
    timed([*TRAIN_ARGS, "--register-rejected"], env, home)  # a champion to forecast with, and Prefect's database
    for _ in range(runs):
        times["--help"].append(timed(["--help"], env, home)[0])
        times["ingest"].append(timed(["ingest", "--source", str(csv)], env, home)[0])
        times["forecast"].append(timed(["forecast"], env, home)[0])
        wall, output = timed(TRAIN_ARGS, env, home)
        times["train overhead"].append(wall - training_span(output))
    if mode == "warm":
        stop_warm_server(env)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each command per mode (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqcast-commands-") as tmp:
        results = {mode: measure(mode, args.runs, Path(tmp)) for mode in ("cold", "warm")}
    print(f"seqcast commands, end to end (median of {args.runs}; {os.cpu_count()} cores)")
    print("| command | cold (s) | warm (s) | warm / cold | target (s) | warm meets it |")
    print("|---|---|---|---|---|---|")
    for name in ["first command", *TARGETS]:
        cold = statistics.median(results["cold"][name])
        warm = statistics.median(results["warm"][name])
        target = TARGETS.get(name)
        verdict = "" if target is None else ("yes" if warm <= target else "no")
        shown = "" if target is None else f"{target:g}"
        print(f"| {name} | {cold:.2f} | {warm:.2f} | {warm / cold:.2f} | {shown} | {verdict} |")


if __name__ == "__main__":
    main()
