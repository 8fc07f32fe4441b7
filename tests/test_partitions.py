"""Partitioned training: series split by a stable hash or by the user's groups, one network per partition trained
side by side, registered as one model version that serves every series by its partition's network.

Unit tests on small seeded series; one end-to-end test on real stores (SQLite, the session's MLflow store,
Prefect's harness): train with two partitions on the threads runner, forecast with the registered version, and
predict with its pyfunc model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from forecast_setup import LENGTH, START, at, forecasts, synthetic_frame
from pydantic import ValidationError

from models.packaging import (
    forecast_frame,
    forecast_origins,
    load_forecaster,
    pyfunc_input,
    save_forecaster,
)
from models.partitions import PartitionedForecaster, PartitionError, hash_partitions, plan_partitions
from tasks import partitions, registry, runners, store
from tasks.evaluate import candidate_forecaster
from tasks.spec import RunSpec
from tasks.train import TrainConfig, fit_forecaster
from tasks.windowing import WindowConfig, WindowedData, prepare_windows

IDS = [f"s{k}" for k in range(8)]
LOOKBACK, HORIZON = 48, 12
SMALL = RunSpec(
    model={"cells": ["lstm"], "hidden_size": 8, "scaling": "series"},
    training={"max_epochs": 2, "batch_size": 256},
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> WindowedData:
    return prepare_windows(
        synthetic_frame(IDS), WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=24, val_size=24)
    )


def with_partition(spec: RunSpec, **partition: Any) -> RunSpec:
    return RunSpec.model_validate({**spec.model_dump(), "partition": partition})


def fits_of(spec: RunSpec, data: WindowedData, cores: int = 1) -> partitions.CellPartitions:
    """Every partition of the spec's one cell trained one after the other."""
    plan = plan_partitions(data.panel.series_ids, spec.partition.partitions, spec.partition.partition_groups)
    jobs = partitions.fit_jobs(spec, plan)
    cell = partitions.fits_by_cell(plan, jobs, [partitions.fit_network(job, data, plan, cores) for job in jobs])["lstm"]
    assert isinstance(cell, partitions.CellPartitions)
    return cell


# ------------------------------------------------------------------------------------------------ assignment


def test_the_hash_assigns_the_same_partitions_in_another_process() -> None:
    ids = [f"meter-{k}" for k in range(300)] + ["x'; DROP TABLE forecasts; --\"ü名☃"]
    here = hash_partitions(ids, 4)
    code = "import json, sys; from models.partitions import hash_partitions; "
    code += "print(json.dumps(hash_partitions(json.load(sys.stdin), 4).tolist()))"
    env = {"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}  # Python's own hash() would differ in this process
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(out.stdout) == here.tolist()
    assert np.bincount(here, minlength=4).min() > 50, "the hash spreads series over every partition"
    assert (hash_partitions(ids[:10], 4) == here[:10]).all(), "a series keeps its partition when others go"


def test_user_groups_route_each_series_to_its_group() -> None:
    groups = {"north": ["s0", "s3", "absent"], "south": ["s1", "s2"]}
    plan = plan_partitions(["s0", "s1", "s2", "s3"], groups=groups)
    assert (plan.names, plan.by, plan.index.tolist()) == (["north", "south"], "groups", [0, 1, 1, 0])
    assert plan.routing() == {"s0": 0, "s1": 1, "s2": 1, "s3": 0} and plan.sizes().tolist() == [2, 2]
    assert with_partition(RunSpec(), partition_groups=groups).partition.count == 2


def test_bad_partition_settings_are_refused_with_what_to_change() -> None:
    with pytest.raises(PartitionError, match=r"`partitions` \(9\) exceeds the 8 series of this run"):
        plan_partitions(IDS, 9)
    with pytest.raises(PartitionError, match=r"series \['s2', 's3'\] are in no group of `partition_groups`"):
        plan_partitions(["s0", "s1", "s2", "s3"], groups={"a": ["s0"], "b": ["s1"]})
    with pytest.raises(PartitionError, match=r"groups \['b'\] of `partition_groups` have none of this run's 2 series"):
        plan_partitions(["s0", "s1"], groups={"a": ["s0", "s1"], "b": ["gone"]})
    same = next((a, b) for a in IDS for b in IDS if a < b and hash_partitions([a, b], 2).tolist() in ([0, 0], [1, 1]))
    with pytest.raises(PartitionError, match=r"leaves partitions \[\d\] of `partitions` \(2\) without series"):
        plan_partitions(list(same), 2)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        with_partition(RunSpec(), partitions=0)
    with pytest.raises(ValidationError, match=r"series 's1' is listed twice in `partition_groups` \(in groups 'a' and"):
        with_partition(RunSpec(), partition_groups={"a": ["s0", "s1"], "b": ["s1"]})
    with pytest.raises(ValidationError, match=r"`partitions` \(3\) differs from the 2 groups"):
        with_partition(RunSpec(), partitions=3, partition_groups={"a": ["s0"], "b": ["s1"]})
    with pytest.raises(ValidationError, match=r"groups \['b'\] of `partition_groups` list no series"):
        with_partition(RunSpec(), partition_groups={"a": ["s0"], "b": []})
    with pytest.raises(ValidationError, match="names no group"):
        with_partition(RunSpec(), partition_groups={})


def test_the_cli_reads_groups_from_a_json_file_and_names_the_option_in_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from flows.cli import JsonMappingFile, cli

    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"a": ["s0"], "b": ["s1"]}))
    assert JsonMappingFile().convert(str(groups), None, None) == {"a": ["s0"], "b": ["s1"]}
    result = CliRunner().invoke(cli, ["train", "--partitions", "3", "--partition-groups", str(groups)])
    assert result.exit_code == 2 and "--partitions (3) differs from the 2 groups of --partition-groups" in result.output
    (tmp_path / "list.json").write_text("[1]")
    result = CliRunner().invoke(cli, ["train", "--partition-groups", str(tmp_path / "list.json")])
    assert result.exit_code == 2 and "holds a JSON list; it needs an object" in result.output


# ----------------------------------------------------------------------------------------------------- training


def test_each_partition_trains_on_its_own_series_windows_alone(data: WindowedData) -> None:
    plan = plan_partitions(data.panel.series_ids, 2)
    for k in range(2):
        subset = partitions.partition_windows(data, plan.members(k))
        for part in ("train_starts", "val_starts", "test_starts"):
            series, _ = subset.window_index(getattr(subset, part))
            assert set(series.tolist()) == set(np.flatnonzero(plan.members(k)).tolist()), part
        assert subset.scaled is data.scaled, "the panel is shared, not copied"


def test_one_partition_is_todays_training_exactly(data: WindowedData) -> None:
    """K = 1 is the default: one network per cell, through the same tasks, with the weights and forecasts of the
    network trained on every series."""
    assert with_partition(RunSpec(), partitions=1) == RunSpec()
    plan = plan_partitions(data.panel.series_ids, 1)
    assert [job.label for job in partitions.fit_jobs(SMALL, plan)] == ["lstm-series"]
    kept = fits_of(SMALL, data)
    whole = fit_forecaster(data, SMALL.train_config("lstm"))
    fit = partitions.cell_fit(kept, SMALL.train_config("lstm"))
    state, again = fit.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(state[name], again[name]) for name in state)
    assert fit.best_val_loss == whole.best_val_loss
    combined = partitions.combine_fits(kept, SMALL.train_config("lstm"))  # the routing model of one network
    series, positions = data.window_index(data.test_starts)
    assert len(series) >= 64, "whole batches: the plain network is not padded"
    routed = forecast_origins(candidate_forecaster(combined, data), data.panel, series, positions)
    plain = forecast_origins(candidate_forecaster(whole, data), data.panel, series, positions)
    np.testing.assert_array_equal(routed, plain)


def test_scaling_auto_trains_each_try_as_its_own_task_and_keeps_what_fit_forecaster_keeps(data: WindowedData) -> None:
    """Scaling "auto" is two jobs, one per try; the one kept is `fit_forecaster`'s choice, with its weights, the
    tries' losses and the epoch records it reports (each try's under its suffix, then the kept one's plain)."""
    spec = RunSpec.model_validate({**SMALL.model_dump(), "model": {**SMALL.model.model_dump(), "scaling": "auto"}})
    plan = plan_partitions(data.panel.series_ids, 1)
    assert [job.label for job in partitions.fit_jobs(spec, plan)] == ["lstm-series", "lstm-last"]
    kept = fits_of(spec, data)
    records: list[dict[str, float]] = []
    whole = fit_forecaster(data, spec.train_config("lstm"), records.append)
    fit = partitions.cell_fit(kept, spec.train_config("lstm"))
    assert fit.config.scaling == whole.config.scaling
    state, again = fit.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(state[name], again[name]) for name in state)
    assert fit.extra["scaling_val_loss"] == whole.extra["scaling_val_loss"]
    assert sorted(map(sorted, kept.fits[0].epochs)) == sorted(map(sorted, records))
    steps = partitions.epoch_metrics(kept, fit)
    assert {"val_loss", "val_loss_series", "val_loss_last"} <= set(steps[1]), "no _p0 suffix with one partition"


def test_partitions_side_by_side_give_the_serial_results(data: WindowedData) -> None:
    spec = with_partition(SMALL, partitions=2)
    plan = plan_partitions(data.panel.series_ids, 2)
    jobs = partitions.fit_jobs(spec, plan)
    assert [job.config.seed for job in jobs] == [0, 1], "seed + partition number"
    assert [job.label for job in jobs] == ["lstm-series-hash-0", "lstm-series-hash-1"]
    serial = [partitions.fit_network(job, data, plan, 1) for job in jobs]
    with ThreadPoolExecutor(2) as pool:
        side_by_side = list(pool.map(lambda job: partitions.fit_network(job, data, plan, 1), jobs))
    for one, other in zip(serial, side_by_side, strict=True):
        state, again = one.fit.model.state_dict(), other.fit.model.state_dict()
        assert all(torch.equal(state[name], again[name]) for name in state)


def test_the_model_routes_each_series_to_its_partitions_network(data: WindowedData, tmp_path: Path) -> None:
    cell = fits_of(with_partition(SMALL, partitions=2), data)
    combined = partitions.combine_fits(cell, SMALL.train_config("lstm"))
    series, positions = data.window_index(data.test_starts)
    routed = forecast_origins(candidate_forecaster(combined, data), data.panel, series, positions)
    for fit in cell.fits:  # each series' forecasts are those of its partition's network alone
        alone = candidate_forecaster(fit.fit, data)
        rows = np.flatnonzero(cell.plan.members(fit.partition)[series])
        expected = forecast_origins(alone, data.panel, series[rows], positions[rows])
        np.testing.assert_allclose(routed[rows], expected, rtol=1e-6)
    history = combined.history
    assert len(history) == max(len(f.fit.history) for f in cell.fits) and combined.extra["partitions"] == 2

    folder = save_forecaster(tmp_path / "model", combined.model, data.scalers, data.freq)
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 2 and config["partitions"]["routing"] == cell.plan.routing()
    loaded = load_forecaster(folder)
    assert isinstance(loaded.model, PartitionedForecaster) and len(loaded.model.networks) == 2
    np.testing.assert_array_equal(forecast_origins(loaded, data.panel, series, positions), routed)
    frame = synthetic_frame(IDS)
    unknown = pd.concat([frame, frame[frame["series_id"] == "s0"].assign(series_id="new")], ignore_index=True)
    with pytest.raises(ValueError, match=r"series \['new'\] \(1 in all\) were not in this model's training data"):
        forecast_frame(loaded, unknown)
    with pytest.raises(PartitionError, match="route by series"):
        loaded.model(torch.zeros(1, LOOKBACK, 1))


def test_a_one_network_folder_keeps_its_format_and_an_older_seqcast_refuses_a_partitioned_one(
    data: WindowedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = fit_forecaster(data, TrainConfig(hidden_size=4, max_epochs=1, device="cpu", scaling="series"))
    single = save_forecaster(tmp_path / "single", whole.model, data.scalers, data.freq)
    config = json.loads((single / "config.json").read_text())
    assert config["format_version"] == 1 and "partitions" not in config, "what seqcast saved before partitions"
    assert json.loads((single / "manifest.json").read_text())["format_version"] == 1
    assert not isinstance(load_forecaster(single).model, PartitionedForecaster)

    combined = partitions.combine_fits(fits_of(with_partition(SMALL, partitions=2), data), SMALL.train_config("lstm"))
    folder = save_forecaster(tmp_path / "partitioned", combined.model, data.scalers, data.freq)
    from models import packaging

    monkeypatch.setattr(packaging, "FORMAT_VERSION", 1)
    with pytest.raises(packaging.ArtifactIntegrityError, match="forecaster format 2 is newer than this seqcast"):
        load_forecaster(folder)


# -------------------------------------------------------------------------------- end to end on real stores


def observations() -> pd.DataFrame:
    """Hourly series: four noisy daily sines (seasonal naive is hard to beat) and four of pure noise around a level
    (the network's mean beats naive), so the registered model serves some series by a baseline, some by itself."""
    sines = synthetic_frame(IDS[:4])
    rng = np.random.default_rng(3)
    noise = [
        pd.DataFrame(
            {
                "series_id": sid,
                "ts": pd.date_range(START, periods=len(sines) // 4, freq="h"),
                "value": 50 + 5 * rng.normal(size=len(sines) // 4),
            }
        )
        for sid in IDS[4:]
    ]
    return pd.concat([sines, *noise], ignore_index=True)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_two_partitions_train_side_by_side_and_serve_as_one_version(train_env: str, db_url: str) -> None:
    import mlflow

    from flows.backfill import backfill_flow
    from flows.forecast import forecast_flow
    from flows.train import train_flow

    frame = observations()
    store.upsert_observations(store.get_engine(db_url), frame)
    spec = RunSpec.model_validate(
        {
            **SMALL.model_dump(),
            "window": {"lookback": LOOKBACK, "horizon": HORIZON},
            "training": {**SMALL.training.model_dump(), "max_epochs": 4},
            "evaluation": {"register_rejected": True},
            "partition": {"partitions": 2},
            "execution": {"task_runner": "threads"},
        }
    )
    summary = train_flow.with_options(task_runner=runners.task_runner_for(spec))(spec)

    assert summary.version is not None and [c.cell for c in summary.candidates] == ["lstm"]
    client = registry.get_client()
    assert [str(v.version) for v in client.search_model_versions(f"name = '{train_env}'")] == [summary.version]
    (child,) = client.search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    assert child.data.params["partitions"] == "2" and child.data.params["partition_by"] == "hash"
    assert {"train_loss", "val_loss", "train_loss_p0", "val_loss_p1", "test_mase"} <= set(child.data.metrics)
    assert client.get_run(summary.parent_run_id).data.params["partition.partitions"] == "2"
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="partitions.csv"))
    assert table["series"].sum() == len(IDS) and table["name"].tolist() == ["hash-0", "hash-1"]
    if runners.machine_cores() >= 2:  # each partition a task of its own, side by side in two threads
        started, finished = pd.to_datetime(table["started"]), pd.to_datetime(table["finished"])
        assert finished.min() > started.max(), "the partitions trained one after the other"
        assert table["worker"].nunique() == 2

    loaded = registry.load_version(train_env, summary.version)
    assert isinstance(loaded.model, PartitionedForecaster) and len(loaded.model.networks) == 2
    assert set(loaded.model.routing) == set(IDS)
    served = {row["series_id"]: row["served"] for row in summary.series}
    assert loaded.fallback == {sid: method for sid, method in served.items() if method != "lstm"}
    assert 0 < len(loaded.fallback) < len(IDS), f"want series served by each: {served}"
    assert loaded.reference is not None and set(loaded.reference.series) == set(IDS)

    forecast_flow(registered_model=train_env, model_version=summary.version)
    rows = forecasts(db_url)
    rows = rows[rows["model_version"] == summary.version]
    assert set(rows["series_id"]) == set(IDS) and len(rows) == len(IDS) * HORIZON
    methods = rows.groupby("series_id")["method"].agg(set).to_dict()
    assert methods == {sid: {loaded.fallback.get(sid, "lstm")} for sid in IDS}, "the fallback applies per series"
    backfill_flow(
        start=at(LENGTH - 25).to_pydatetime(),
        end=at(LENGTH - 2).to_pydatetime(),
        every="12h",
        registered_model=train_env,
        model_version=summary.version,
    )
    past = forecasts(db_url)
    past = past[(past["model_version"] == summary.version) & (past["origin_ts"] < at(LENGTH - 1))]
    assert past.groupby("origin_ts")["series_id"].nunique().to_dict() == {at(LENGTH - 25): 8, at(LENGTH - 13): 8}

    model = mlflow.pyfunc.load_model(f"models:/{train_env}/{summary.version}")
    predicted = model.predict(pyfunc_input(frame))
    key = ["series_id", "target_ts"]
    both = rows.merge(predicted, on=key, suffixes=("", "_pyfunc"), validate="one_to_one")
    assert len(both) == len(rows)
    for column in ("point", "method"):
        assert both[column].tolist() == both[f"{column}_pyfunc"].tolist(), column
    for column in ("lower", "upper"):  # each window's spread is summed over a different panel: last bits differ
        np.testing.assert_allclose(both[column], both[f"{column}_pyfunc"], rtol=1e-12)
