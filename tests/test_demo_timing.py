"""benchmarks/demo_timing.py puts every second of `seqcast demo` in exactly one stage."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.demo_timing import STAGES, stage_times

T0 = 1_000.0


def _flow(id_: str, flow: str, start: float, end: float, parent: str | None = None) -> dict[str, Any]:
    return {"id": id_, "flow": flow, "parent_task_run_id": parent, "start": T0 + start, "end": T0 + end, "state": "x"}


def _task(id_: str, key: str, flow_run_id: str, seconds: float) -> dict[str, Any]:
    return {"id": id_, "name": f"{key}-{id_}", "key": key, "flow_run_id": flow_run_id, "seconds": seconds}


RUNS = {
    "flows": [
        _flow("demo", "seqcast-demo", 10.0, 40.0),
        _flow("ingest", "seqcast-ingest", 10.5, 13.0, parent="t-ingest"),
        _flow("train", "seqcast-train", 13.5, 35.0, parent="t-train"),
        _flow("forecast", "seqcast-forecast", 35.5, 39.0, parent="t-forecast"),
    ],
    "tasks": [
        _task("t-ingest", "ingest_flow", "demo", 2.5),  # stand-ins for the subflows: not work of their own
        _task("t-train", "train_flow", "demo", 21.5),
        _task("t-forecast", "forecast_flow", "demo", 3.5),
        _task("a", "read_source_task", "ingest", 0.5),
        _task("b", "validate_observations_task", "ingest", 1.0),
        _task("c", "write_observations_task", "ingest", 0.25),
        _task("d", "validate_observations_task", "train", 0.5),
        _task("e", "make_windows_task", "train", 0.25),
        _task("f", "train_candidate_task", "train", 15.0),
        _task("g", "evaluate_task", "train", 1.0),
        _task("h", "log_candidate_task", "train", 2.0),
        _task("i", "read_observations_task", "forecast", 0.5),  # in the forecast flow: forecast
        _task("j", "forecast_frame_task", "forecast", 2.0),
        _task("k", "something_new_task", "train", 0.75),
    ],
}


def test_every_second_of_the_command_lands_in_one_stage() -> None:
    result = stage_times(RUNS, started=T0, ended=T0 + 45.0, imports_s=4.0)
    stages = result["stages_s"]
    assert sum(stages.values()) == pytest.approx(45.0) and result["wall_s"] == 45.0
    assert stages["startup: imports"] == 4.0
    assert stages["startup: Prefect temporary server and first flow run"] == 6.0
    assert stages["ingest"] == 0.75 and stages["validate"] == 1.5 and stages["read + window"] == 0.25
    assert stages["train"] == 15.0 and stages["evaluate"] == 1.0 and stages["register (MLflow)"] == 2.0
    assert stages["forecast"] == 2.5
    assert stages["other: something_new_task"] == 0.75, "an unknown task is shown, not hidden in a stage"
    inside = 0.75 + 1.5 + 0.25 + 15.0 + 1.0 + 2.0 + 2.5 + 0.75
    assert stages["Prefect overhead between tasks and flows"] == pytest.approx(30.0 - inside)
    assert stages["shutdown"] == 5.0
    assert list(stages)[: len(STAGES)] == STAGES
    assert next(iter(result["task_runs_s"])) == "train_candidate_task-f", "slowest task first"


def test_imports_never_exceed_the_startup_they_are_part_of() -> None:
    stages = stage_times(RUNS, started=T0 + 8.0, ended=T0 + 45.0, imports_s=4.0)["stages_s"]
    assert stages["startup: imports"] == 2.0 and stages["startup: Prefect temporary server and first flow run"] == 0.0


def test_a_demo_without_its_flow_run_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="demo's flow run was not found"):
        stage_times({"flows": RUNS["flows"][1:], "tasks": []}, started=T0, ended=T0 + 1, imports_s=0.0)
