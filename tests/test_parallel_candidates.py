"""Candidates on the flow's task runner: side by side in threads, the same results as one after the other.

The train flow runs twice on the same observations and seed, once with the serial runner and once with the threads
runner (tasks/runners.py); every candidate's metrics, weights and forecasts must be equal, and under threads the
networks' tasks and the candidates' MLflow child runs must overlap in time (under serial they must not). Real
stores: SQLite, the session's MLflow store, Prefect's harness.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from forecast_setup import TINY, any_overlap, network_runs
from forecast_setup import electricity as _electricity

from tasks import registry, runners, store
from tasks.spec import RunSpec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the runner, not the database, is tested


def with_runner(spec: RunSpec, runner: str) -> RunSpec:
    return RunSpec.model_validate({**spec.model_dump(), "execution": {"task_runner": runner}})


def train(spec: RunSpec) -> Any:
    """The train flow with the spec's task runner, chosen at call time as the CLI does."""
    from flows.train import train_flow

    return train_flow.with_options(task_runner=runners.task_runner_for(spec))(spec)


def candidate_runs(summary: Any) -> dict[str, Any]:
    """{cell: its MLflow child run} of a training run."""
    runs = registry.get_client().search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    return {run.data.tags["seqcast.cell"]: run for run in runs}


def load_candidate(model_uri: str, folder: Path) -> Any:
    """A logged candidate's forecaster, from its MLflow model URI."""
    import mlflow

    from models.packaging import load_forecaster

    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
    return load_forecaster(root / "artifacts" / "forecaster")


def overlap(runs: dict[str, Any]) -> float:
    """Seconds during which every run was running at once (negative: a gap between them)."""
    starts = [run.info.start_time for run in runs.values()]
    ends = [run.info.end_time for run in runs.values()]
    return (min(ends) - max(starts)) / 1000


@SQLITE_ONLY
def test_threads_give_the_serial_results_with_candidates_side_by_side(
    train_env: str, db_url: str, tmp_path: Path
) -> None:
    if runners.machine_cores() < 2:
        pytest.skip("side by side needs two cores; the threads runner runs one task at a time on one")
    frame = _electricity()
    store.upsert_observations(store.get_engine(db_url), frame)
    spec = RunSpec.model_validate({**TINY.model_dump(), "training": {**TINY.training.model_dump(), "max_epochs": 3}})

    serial = train(with_runner(spec, "serial"))
    threads = train(with_runner(spec, "threads"))

    for summary in (serial, threads):
        assert [c.cell for c in summary.candidates] == ["lstm", "gru"], "results come in the cells' order"
    assert [c.metrics for c in threads.candidates] == [c.metrics for c in serial.candidates]
    assert (threads.best_cell, threads.baselines, threads.served) == (serial.best_cell, serial.baselines, serial.served)
    recent = frame[frame["series_id"] == frame["series_id"].iloc[0]].tail(48)
    for one, other in zip(serial.candidates, threads.candidates, strict=True):
        first = load_candidate(one.model_uri, tmp_path / "serial" / one.cell)
        second = load_candidate(other.model_uri, tmp_path / "threads" / other.cell)
        assert first.config == second.config
        weights, again = first.model.state_dict(), second.model.state_dict()
        assert weights.keys() == again.keys()
        assert all(torch.equal(weights[name], again[name]) for name in weights), f"{one.cell}: weights differ"
        from models.packaging import forecast_frame

        pd.testing.assert_frame_equal(forecast_frame(first, recent), forecast_frame(second, recent))

    # every network its own task: one at a time on the serial runner, side by side on the threads runner
    networks = {name: network_runs(summary) for name, summary in (("serial", serial), ("threads", threads))}
    expected = {f"train-{cell}-{scaling}" for cell in ("lstm", "gru") for scaling in ("series", "last")}
    assert set(networks["serial"]) == set(networks["threads"]) == expected
    assert not any_overlap(networks["serial"]), "the serial runner trained two networks at once"
    assert any_overlap(networks["threads"]), "the threads runner trained the networks one after the other"

    # where and when they ran: one after the other in one thread, or side by side in two
    serial_runs, thread_runs = candidate_runs(serial), candidate_runs(threads)
    assert overlap(serial_runs) < 0, "the serial runner ran the candidates at the same time"
    assert overlap(thread_runs) > 0, "the threads runner ran the candidates one after the other"
    workers = {cell: run.data.tags["seqcast.worker"] for cell, run in thread_runs.items()}
    assert workers["lstm"] != workers["gru"], "each candidate runs in a thread of its own"
    parents = [
        registry.get_client().get_run(s.parent_run_id).data.tags["seqcast.task_runner"] for s in (serial, threads)
    ]
    assert parents == ["serial", f"threads ({runners.TASKS_PER_CORE * runners.machine_cores()} workers)"]


# ------------------------------------------------------------------------------------------ the cores' shares


def _tiny_data() -> Any:
    from forecast_setup import synthetic_frame

    from tasks.windowing import WindowConfig, prepare_windows

    return prepare_windows(synthetic_frame(["a", "b"]), WindowConfig(lookback=24, horizon=6, test_size=6, val_size=6))


@pytest.mark.parametrize("cores", [1, 2, None])
def test_small_networks_train_their_scaling_tries_side_by_side_on_any_share(
    cores: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Two candidates at once on 2 cores get a core each and still train their tries side by side, 1 thread each:
    4 one-thread fits on 2 cores keep both busy until the slower candidate ends (tasks/train.py `cpu_budget`)."""
    from tasks.train import TrainConfig, cpu_budget, fit_forecaster

    config = TrainConfig(hidden_size=4, max_epochs=1, device="cpu", scaling="auto")
    with caplog.at_level(logging.INFO, logger="tasks.train"), cpu_budget(cores):
        fit = fit_forecaster(_tiny_data(), config)
    started = next(r.getMessage() for r in caplog.records if "scalings series and last" in r.getMessage())
    assert "side by side (1 thread each)" in started, started
    assert set(fit.extra["scaling_val_loss"]) == {"series", "last"}
    large = config.model_copy(update={"hidden_size": 256, "batch_size": 64, "max_epochs": 1})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tasks.train"), cpu_budget(cores):
        fit_forecaster(_tiny_data(), large)
    started = next(r.getMessage() for r in caplog.records if "scalings series and last" in r.getMessage())
    assert "one after the other" in started, "a large network's tries share its threads, one try at a time"


def test_a_large_network_trains_on_its_share_not_on_every_core() -> None:
    from tasks.train import TrainConfig, cpu_budget, training_threads

    large = TrainConfig(hidden_size=256, batch_size=64)  # 64 x 4 gates x 256 = 65,536 outputs per step: threaded
    small = TrainConfig(hidden_size=8, batch_size=32)
    cpu = torch.device("cpu")
    assert training_threads(large, cpu) is None, "no share: torch's default, every core"
    with cpu_budget(3):
        assert training_threads(large, cpu) == 3
        assert training_threads(small, cpu) == 1
        assert training_threads(large.model_copy(update={"num_threads": 5}), cpu) == 5, "an explicit count wins"
    assert training_threads(large, cpu) is None, "the share ends with its block"


def test_dropout_fits_side_by_side_give_the_results_of_one_after_the_other() -> None:
    """Dropout masks come from torch's one global generator: fits in two threads at once must still equal two
    serial fits (a fit with dropout holds the generator for its whole run)."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.train import TrainConfig, fit_forecaster

    data = _tiny_data()
    configs = [
        TrainConfig(
            cell=cell, hidden_size=6, num_layers=2, dropout=0.3, max_epochs=3, device="cpu", seed=7, scaling="series"
        )
        for cell in ("lstm", "gru")
    ]
    serial = [fit_forecaster(data, config) for config in configs]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(lambda config: fit_forecaster(data, config), configs))
    for one, other in zip(serial, parallel, strict=True):
        assert [r["train_loss"] for r in one.history] == [r["train_loss"] for r in other.history]
        state, again = one.model.state_dict(), other.model.state_dict()
        assert all(torch.equal(state[name], again[name]) for name in state)


def test_the_runner_follows_the_spec_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.delenv(runners.RAY_ADDRESS_ENV, raising=False)
    spec = RunSpec()
    assert runners.runner_name(spec) == "threads"
    threads = runners.task_runner_for(spec)
    assert threads == ThreadPoolTaskRunner(runners.TASKS_PER_CORE * runners.machine_cores()), "two tasks per core"
    assert runners.task_runner_for(with_runner(spec, "serial")) == ThreadPoolTaskRunner(max_workers=1)
    monkeypatch.setenv(runners.RAY_ADDRESS_ENV, "127.0.0.1:1")
    assert runners.runner_name(spec) == "ray" and runners.ray_address(spec) == "127.0.0.1:1"
    assert runners.runner_name(with_runner(spec, "threads")) == "threads", "an explicit runner beats the address"
    given = RunSpec(execution={"ray_address": "ray://head:10001"})
    assert runners.ray_address(given) == "ray://head:10001", "the spec's address beats the environment's"
