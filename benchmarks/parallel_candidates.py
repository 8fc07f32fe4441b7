"""The train flow's candidates one after the other against side by side: wall time per task runner.

On fresh embedded stores in a temporary folder (SQLite, a local MLflow store, Prefect's test harness), the demo's
data (`sample:electricity`) is ingested once, then the train flow runs with the demo's settings once per runner
(tasks/runners.py), and prints each run's wall time, the threads/serial ratio, and whether the candidates' metrics
are equal (they must be). With `--ray ADDRESS` (or `--ray local`: a head and a worker started here, 1 CPU each,
stopped at the end) the flow also runs on that Ray cluster, and the per-task overhead of Ray is measured on a no-op
Prefect task: the first task in a fresh worker and the next ones.

    python -m benchmarks.parallel_candidates                    # serial vs threads, the demo's 60 epochs at most
    python -m benchmarks.parallel_candidates --epochs 5         # quicker
    python -m benchmarks.parallel_candidates --ray local        # and on a local Ray cluster of two nodes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RUNNERS = ("serial", "threads")


def _spec(runner: str, epochs: int | None, address: str | None = None, scaling: str | None = None) -> Any:
    from tasks.spec import RunSpec

    training = {} if epochs is None else {"max_epochs": epochs}
    model = {} if scaling is None else {"scaling": scaling}
    execution = {"task_runner": runner, "ray_address": address}
    return RunSpec.model_validate({"training": training, "model": model, "execution": execution})


def time_train(
    runner: str, epochs: int | None, address: str | None = None, scaling: str | None = None
) -> tuple[float, Any]:
    """Wall seconds of one train flow run with `runner`, and its summary."""
    from flows.train import train_flow
    from tasks.runners import task_runner_for

    spec = _spec(runner, epochs, address, scaling)
    started, cpu = time.perf_counter(), process_cpu_seconds()
    summary = train_flow.with_options(task_runner=task_runner_for(spec))(spec)
    wall = time.perf_counter() - started
    print(f"{runner:>8}: {wall:6.1f} s wall, {process_cpu_seconds() - cpu:6.1f} s CPU", flush=True)
    return wall, summary


def process_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children, every thread together."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def local_ray_cluster(folder: Path) -> Iterator[str]:
    """A Ray head and a worker on 127.0.0.1, 1 CPU each, stopped (with every Ray process of theirs) at the end."""
    from deployments.commands import ray_head, ray_worker

    ray = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    env = {**os.environ, "RAY_TMPDIR": str(folder)}
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([ray, *ray_head(port, 1, block=False)[1:]], env=env, check=True)
        subprocess.run([ray, *ray_worker(address, 1, block=False)[1:]], env=env, check=True)
        yield address
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, check=False, capture_output=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_task_overhead(address: str, tasks: int = 6) -> tuple[float, float]:
    """Seconds from submit to result of a no-op Prefect task on the Ray cluster: the first (a fresh worker imports
    Prefect) and the mean of the next ones."""
    from prefect import flow, task
    from prefect_ray import RayTaskRunner

    @task
    def noop(i: int) -> int:
        return i

    @flow(task_runner=RayTaskRunner(address=address))
    def probe() -> list[float]:
        seconds = []
        for i in range(tasks):
            started = time.perf_counter()
            noop.submit(i).result()
            seconds.append(time.perf_counter() - started)
        return seconds

    seconds = probe()
    return seconds[0], sum(seconds[1:]) / max(len(seconds) - 1, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="max epochs (default: the spec's, as the demo)")
    parser.add_argument("--ray", default=None, help="a Ray address, or `local` for a two-node cluster here")
    parser.add_argument("--scaling", default=None, help="one scaling for every candidate (default: the spec's, auto)")
    args = parser.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness

    from tasks.ingest import ingest
    from tasks.runners import machine_cores

    with tempfile.TemporaryDirectory(prefix="seqcast-bench-") as tmp, prefect_test_harness(120):
        os.environ["SEQCAST_HOME"] = str(Path(tmp) / "home")
        for name in ("SEQCAST_DATABASE_URL", "SEQCAST_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"):
            os.environ.pop(name, None)
        ingest("sample:electricity", save_report=False)
        walls, summaries = {}, {}
        for runner in RUNNERS:
            walls[runner], summaries[runner] = time_train(runner, args.epochs, scaling=args.scaling)
        print(f"threads / serial: {walls['threads'] / walls['serial']:.2f} on {machine_cores()} cores")
        same = [c.metrics for c in summaries["threads"].candidates] == [
            c.metrics for c in summaries["serial"].candidates
        ]
        print(f"candidates' metrics equal: {same}")
        if args.ray:
            ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
            try:
                with local_ray_cluster(ray_dir) if args.ray == "local" else contextlib.nullcontext(args.ray) as address:
                    first, next_ones = ray_task_overhead(address)
                    print(f"Ray no-op task: first {first:.2f} s (fresh worker), then {next_ones:.3f} s each")
                    wall, summary = time_train("ray", args.epochs, address, args.scaling)
                    equal = [c.metrics for c in summary.candidates] == [
                        c.metrics for c in summaries["serial"].candidates
                    ]
                    print(
                        f"     ray: {wall:6.1f} s wall ({wall / walls['serial']:.2f} of serial); metrics equal: {equal}"
                    )
            finally:
                shutil.rmtree(ray_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
