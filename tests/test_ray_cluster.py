"""The train flow on a real Ray cluster: a head and a worker node on 127.0.0.1, started as separate processes with
the command lines of deployments/commands.py (those of compose's `ray` profile), 1 CPU each.

The candidates must run in Ray worker processes, not in the test's, and give the metrics and the registered model
of a local run with the same seed. The cluster is stopped (`ray stop --force`) whatever happens. Real stores:
SQLite, the session's MLflow store, Prefect's harness, all reached from the Ray workers as from a remote machine
would be by URL.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from forecast_setup import TINY_REGISTERED, any_overlap, network_runs, synthetic_frame
from forecast_setup import electricity as _electricity

from deployments.commands import ray_head, ray_worker
from tasks import registry, runners, store
from tasks.spec import RunSpec

if not os.environ.get("CI"):  # CI installs the `ray` extra with `dev`: there, a missing Ray fails
    pytest.importorskip("prefect_ray", reason="needs the `ray` extra: pip install -e '.[ray]'")

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray head and one worker node on this machine (1 CPU each), in a temporary folder; stopped at the end."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay under 108 characters
    # Ray's token authentication, with a token of this cluster's own (not the user's ~/.ray/auth_token)
    ray_env = {"RAY_TMPDIR": str(folder), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **ray_env}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    address = f"127.0.0.1:{_free_port()}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ray_env.items():  # the driver (this process) too
            patch.setenv(name, value)
        patch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        try:
            for command in (ray_head(int(address.split(":")[1]), 1, block=False), ray_worker(address, 1, block=False)):
                started = subprocess.run([RAY, *command[1:]], env=env, capture_output=True, text=True, timeout=120)
                assert started.returncode == 0, f"{command} failed:\n{started.stdout}\n{started.stderr}"
            yield address
        finally:
            subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
            shutil.rmtree(folder, ignore_errors=True)


def _children(summary: Any) -> dict[str, Any]:
    runs = registry.get_client().search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    return {run.data.tags["seqcast.cell"]: run for run in runs}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_candidates_train_on_ray_workers_with_the_results_of_a_local_run(
    ray_cluster: str, train_env: str, db_url: str
) -> None:
    from flows.train import train_flow

    store.upsert_observations(store.get_engine(db_url), _electricity())
    local_spec = RunSpec.model_validate({**TINY_REGISTERED.model_dump(), "execution": {"task_runner": "threads"}})
    ray_spec = RunSpec.model_validate({**TINY_REGISTERED.model_dump(), "execution": {"ray_address": ray_cluster}})
    assert runners.runner_name(ray_spec) == "ray", "an address alone selects Ray"

    local = train_flow.with_options(task_runner=runners.task_runner_for(local_spec))(local_spec)
    on_ray = train_flow.with_options(task_runner=runners.task_runner_for(ray_spec))(ray_spec)

    # where they ran: Ray worker processes of the cluster's nodes, not this process
    children = _children(on_ray)
    assert sorted(children) == ["gru", "lstm"]
    nodes = {cell: run.data.tags.get("seqcast.ray_node") for cell, run in children.items()}
    assert all(nodes.values()), f"a candidate did not run in a Ray worker: {nodes}"
    networks = network_runs(on_ray)
    assert len(networks) == 4, "a task per cell and scaling try"
    assert any_overlap(networks), "1 CPU on each of two nodes: the networks trained side by side"
    for cell, run in children.items():
        pid = int(run.data.tags["seqcast.worker"].split()[0].rsplit(":", 1)[1])
        assert pid != os.getpid(), f"{cell} ran in the test's process"
        command = _cmdline(pid)  # empty once the worker exits (a zombie keeps its /proc entry a moment)
        assert not command or "ray" in command.lower(), command
    assert all("seqcast.ray_node" not in run.data.tags for run in _children(local).values())
    parent = registry.get_client().get_run(on_ray.parent_run_id)
    assert parent.data.tags["seqcast.task_runner"] == f"ray ({ray_cluster})"
    assert parent.data.params["execution.ray_address"] == ray_cluster

    # what they made: the local run's metrics and registered model
    assert [c.cell for c in on_ray.candidates] == ["lstm", "gru"]
    assert [c.metrics for c in on_ray.candidates] == [c.metrics for c in local.candidates]
    assert (on_ray.best_cell, on_ray.served) == (local.best_cell, local.served)
    assert local.version is not None and on_ray.version is not None and local.version != on_ray.version
    first, second = (registry.load_version(train_env, s.version) for s in (local, on_ray))
    assert first.config == second.config and first.fallback == second.fallback
    weights, again = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(weights[name], again[name]) for name in weights)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_partitions_and_tuning_trials_run_as_ray_tasks(ray_cluster: str, train_env: str, db_url: str) -> None:
    """Two partitions train as Ray tasks, with the weights of a local partitioned run; tuning trials run in Ray
    workers too and report to the one study in the project database."""
    import mlflow
    import optuna
    import pandas as pd

    from flows.train import train_flow
    from flows.tune import tune_flow
    from tasks.tune import TuneBudget
    from tasks.tune_study import study_name

    store.upsert_observations(store.get_engine(db_url), synthetic_frame(["a", "b", "c", "d", "e"]))
    base = {
        **TINY_REGISTERED.model_dump(),
        "model": {**TINY_REGISTERED.model.model_dump(), "cells": ["lstm"]},
        "partition": {"partitions": 2},
    }
    local_spec = RunSpec.model_validate({**base, "execution": {"task_runner": "threads"}})
    ray_spec = RunSpec.model_validate({**base, "execution": {"ray_address": ray_cluster}})
    local = train_flow.with_options(task_runner=runners.task_runner_for(local_spec))(local_spec)
    on_ray = train_flow.with_options(task_runner=runners.task_runner_for(ray_spec))(ray_spec)

    (child,) = _children(on_ray).values()
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="partitions.csv"))
    pids = {int(worker.split()[0].rsplit(":", 1)[1]) for worker in table["worker"]}
    assert len(table) == 2 and os.getpid() not in pids, f"the partitions trained in the test's process: {pids}"
    assert [c.metrics for c in on_ray.candidates] == [c.metrics for c in local.candidates]
    assert local.version is not None and on_ray.version is not None
    first, second = (registry.load_version(train_env, s.version) for s in (local, on_ray))
    weights, again = first.model.state_dict(), second.model.state_dict()
    assert weights.keys() == again.keys() and all(torch.equal(weights[name], again[name]) for name in weights)

    tuned = tune_flow.with_options(task_runner=runners.task_runner_for(ray_spec))(
        spec=ray_spec, budget=TuneBudget(trials=2, parallel=2, trial_epochs=1)
    )
    trials = registry.get_client().search_runs(
        [tuned.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tuned.parent_run_id}'"
    )
    assert len(trials) == 2 and all(run.data.tags.get("seqcast.ray_node") for run in trials)
    study = optuna.load_study(study_name=study_name(train_env), storage=db_url)
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
