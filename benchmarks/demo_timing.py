"""`seqcast demo` timed stage by stage: what a user waits for, from the command to the last line it prints.

The demo runs as the user runs it, in its own process on fresh embedded stores (SQLite, a local MLflow store and
Prefect's temporary local server, all in a temporary folder). Afterwards its task and flow runs are read back
from that Prefect database through Prefect's client, and every second of the command's wall time is put in one
stage:

- startup: importing seqcast's stack (timed separately in a process that only imports it) and Prefect starting
  its temporary server and the first flow run;
- ingest, validate, read + window, train, evaluate, register (MLflow), forecast: the task runs of each stage;
- Prefect overhead: the demo flow's wall time not spent inside any task (orchestration, subflow start-up,
  state changes);
- shutdown: from the end of the demo flow to the process exit (stopping the temporary server).

    python -m benchmarks.demo_timing            # the real demo (LSTM and GRU, up to 60 epochs)
    python -m benchmarks.demo_timing --quick    # 1 epoch of tiny networks: checks the plumbing
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

STAGES = [
    "startup: imports",
    "startup: Prefect temporary server and first flow run",
    "ingest",
    "validate",
    "read + window",
    "train",
    "evaluate",
    "register (MLflow)",
    "forecast",
    "Prefect overhead between tasks and flows",
    "shutdown",
]

# task key (the task function's name) -> stage; tasks of the forecast flow are all "forecast"
TASK_STAGES = {
    "read_source_task": "ingest",
    "write_observations_task": "ingest",
    "validate_observations_task": "validate",
    "read_observations_task": "read + window",
    "make_windows_task": "read + window",
    "resolve_spec_task": "read + window",
    "train_candidate_task": "train",
    "fit_network_task": "train",
    "forecast_test_windows_task": "evaluate",
    "evaluate_task": "evaluate",
    "plot_forecasts_task": "evaluate",
    "plot_mae_by_step_task": "evaluate",
    "score_champion_task": "evaluate",
    "publish_decision_task": "evaluate",
    "configure_mlflow_task": "register (MLflow)",
    "start_run_task": "register (MLflow)",
    "log_training_data_task": "register (MLflow)",
    "log_candidate_task": "register (MLflow)",
    "end_run_task": "register (MLflow)",
    "register_model_task": "register (MLflow)",
    "apply_decision_task": "register (MLflow)",
    "finish_training_task": "register (MLflow)",
    "log_params_task": "register (MLflow)",
    "log_decision_task": "register (MLflow)",
    "alias_version_task": "register (MLflow)",
}
QUICK_OPTIONS = ["--epochs", "1", "--hidden-size", "8", "--lookback", "96"]
# stages add up to the wall time only when they run one after the other: the candidates on the serial runner
SERIAL = ["--task-runner", "serial"]
CONTAINER_TASKS = {"candidate_task"}  # one candidate's whole pipeline: its nested task runs hold the time
# what `seqcast demo` imports before its flow starts
DEMO_IMPORTS = "import flows.cli, flows.demo, flows.train, flows.forecast, flows.ingest"


def demo_env(folder: Path) -> dict[str, str]:
    """The environment of a first-time user: embedded stores under `folder`, nothing inherited that points away."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQCAST_", "MLFLOW_", "PREFECT_"))}
    env.update(
        {
            "SEQCAST_HOME": str(folder / "seqcast-home"),
            "PREFECT_HOME": str(folder / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": str(ROOT),
            "SEQCAST_WARM_IDLE": "0",  # a cold command, timed whole: no warm server (flows/warm.py) left behind
        }
    )
    return env


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float:
    return 0.0 if start is None or end is None else (end - start).total_seconds()


async def _read_runs() -> dict[str, Any]:
    """Every flow run and task run in this Prefect database, as plain dicts (run with PREFECT_HOME set)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_runs = await client.read_flow_runs(limit=200)
        flow_names = {f.flow_id: (await client.read_flow(f.flow_id)).name for f in flow_runs}
        task_runs: list[Any] = []
        while batch := await client.read_task_runs(limit=200, offset=len(task_runs)):  # the API's page limit
            task_runs += batch
    return {
        "flows": [
            {
                "id": str(f.id),
                "flow": flow_names[f.flow_id],
                "parent_task_run_id": str(f.parent_task_run_id) if f.parent_task_run_id else None,
                "start": f.start_time.timestamp() if f.start_time else None,
                "end": f.end_time.timestamp() if f.end_time else None,
                "state": f.state_type.value if f.state_type else None,
            }
            for f in flow_runs
        ],
        "tasks": [
            {
                "id": str(t.id),
                "name": t.name,
                "key": t.task_key.rsplit("-", 1)[0],
                "flow_run_id": str(t.flow_run_id) if t.flow_run_id else None,
                "seconds": _seconds(t.start_time, t.end_time),
            }
            for t in task_runs
        ],
    }


def stage_times(runs: dict[str, Any], started: float, ended: float, imports_s: float) -> dict[str, Any]:
    """Put the command's wall time `ended - started` into STAGES, from the runs `_read_runs` returned."""
    flows = runs["flows"]
    demo = next((f for f in flows if f["flow"] == "seqcast-demo"), None)
    if demo is None or demo["start"] is None or demo["end"] is None:
        raise RuntimeError("the demo's flow run was not found in its Prefect database")
    flow_of = {f["id"]: f["flow"] for f in flows}
    subflow_tasks = {f["parent_task_run_id"] for f in flows if f["parent_task_run_id"]}
    stages = dict.fromkeys(STAGES, 0.0)
    per_task: dict[str, float] = {}
    inside_tasks = 0.0
    for task in runs["tasks"]:
        if task["id"] in subflow_tasks or task["key"] in CONTAINER_TASKS:  # time counted in the runs inside
            continue
        flow = flow_of.get(task["flow_run_id"], "")
        stage = "forecast" if flow == "seqcast-forecast" else TASK_STAGES.get(task["key"], "register (MLflow)")
        if task["key"] not in TASK_STAGES and flow != "seqcast-forecast":
            stage = f"other: {task['key']}"
            stages.setdefault(stage, 0.0)
        stages[stage] += task["seconds"]
        per_task[task["name"]] = round(task["seconds"], 3)
        inside_tasks += task["seconds"]
    startup = demo["start"] - started
    stages["startup: imports"] = min(imports_s, startup)
    stages["startup: Prefect temporary server and first flow run"] = startup - stages["startup: imports"]
    stages["Prefect overhead between tasks and flows"] = (demo["end"] - demo["start"]) - inside_tasks
    stages["shutdown"] = ended - demo["end"]
    wall = ended - started
    return {
        "wall_s": round(wall, 2),
        "demo_flow_s": round(demo["end"] - demo["start"], 2),
        "stages_s": {name: round(seconds, 2) for name, seconds in stages.items()},
        "stages_share": {name: round(seconds / wall, 3) for name, seconds in stages.items()},
        "task_runs_s": dict(sorted(per_task.items(), key=lambda item: -item[1])),
        "flow_states": {f["flow"]: f["state"] for f in flows},
    }


def time_imports(env: dict[str, str]) -> float:
    """Seconds a fresh interpreter takes to import what `seqcast demo` imports (best of 2: the disk cache warm)."""
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", DEMO_IMPORTS], env=env, cwd=ROOT, check=True, timeout=300)
        best = min(best, time.perf_counter() - started)
    return best


def _timed_demo(env: dict[str, str], options: list[str], imports_s: float) -> dict[str, Any]:
    """One `seqcast demo` process, timed, and its stages read back from the Prefect database it wrote."""
    before = _read_runs_of(env)["flows"] if Path(env["PREFECT_HOME"]).exists() else []
    argv = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())", "demo", *SERIAL, *options]
    started = time.time()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"seqcast demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    runs = _read_runs_of(env)
    earlier = {f["id"] for f in before}
    runs["flows"] = [f for f in runs["flows"] if f["id"] not in earlier]
    ours = {f["id"] for f in runs["flows"]}
    runs["tasks"] = [t for t in runs["tasks"] if t["flow_run_id"] in ours]
    result = stage_times(runs, started, ended, imports_s)
    result["command"] = " ".join(["seqcast", "demo", *SERIAL, *options])
    result["printed"] = [line for line in done.stdout.splitlines() if line.strip()][:12]
    return result


def _read_runs_of(env: dict[str, str]) -> dict[str, Any]:
    """`_read_runs` in a child process whose PREFECT_HOME is the demo's."""
    reader = [sys.executable, "-m", "benchmarks.demo_timing", "--read-runs"]
    dumped = subprocess.run(reader, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if dumped.returncode != 0:
        raise RuntimeError(f"reading the demo's Prefect runs failed:\n{dumped.stderr[-3000:]}")
    runs: dict[str, Any] = json.loads(dumped.stdout.strip().splitlines()[-1])
    return runs


def run_demo_timing(quick: bool = False) -> dict[str, Any]:
    """Run `seqcast demo` twice, as a new user would: on fresh stores, then again on the stores the first made."""
    with tempfile.TemporaryDirectory(prefix="seqcast-demo-timing-") as scratch:
        env = demo_env(Path(scratch))
        imports_s = time_imports(env)
        options = QUICK_OPTIONS if quick else []
        first = _timed_demo(env, options, imports_s)
        again = _timed_demo(env, options, imports_s)
    return {"imports_s": round(imports_s, 2), "first_run": first, "second_run": again}


def markdown(result: dict[str, Any]) -> list[str]:
    """The stage table of both runs: seconds and share of each command's wall time."""
    first, again = result["first_run"], result["second_run"]
    lines = [
        f"`{first['command']}` on fresh stores: **{first['wall_s']:.1f} s** from the command to its exit (the demo "
        f"flow itself: {first['demo_flow_s']:.1f} s); run again on the stores it made: **{again['wall_s']:.1f} s** "
        f"({again['demo_flow_s']:.1f} s).",
        "",
        "| stage | first run s | share | second run s | share |",
        "|---|---|---|---|---|",
    ]
    for name in first["stages_s"]:
        lines.append(
            f"| {name} | {first['stages_s'][name]:.2f} | {100 * first['stages_share'][name]:.0f} % "
            f"| {again['stages_s'].get(name, 0.0):.2f} | {100 * again['stages_share'].get(name, 0.0):.0f} % |"
        )
    lines.append(f"| **total** | **{first['wall_s']:.1f}** | 100 % | **{again['wall_s']:.1f}** | 100 % |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch of tiny networks (checks the plumbing)")
    parser.add_argument("--read-runs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.read_runs:  # the child that reads the demo's Prefect database (PREFECT_HOME is set by the parent)
        print(json.dumps(asyncio.run(_read_runs())))
        return 0
    result = run_demo_timing(quick=args.quick)
    print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
