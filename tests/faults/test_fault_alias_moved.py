"""The alias moves between resolving and loading: a run stays pinned to the version it resolved (RELIABILITY:
"the alias moves mid-run")."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from forecast_setup import register_tiny_model, synthetic_frame

from tasks import forecast as fc

pytestmark = pytest.mark.faults


def test_a_run_pinned_before_the_alias_moves_loads_and_writes_the_version_it_resolved(
    mlflow_store: str, tmp_path: Path
) -> None:
    name = f"pinned-{uuid.uuid4().hex[:8]}"
    first = register_tiny_model(mlflow_store, tmp_path / "v1", name)
    pinned = fc.pin_model(mlflow_store, name)  # what a forecast or backfill run resolves once, at its start
    assert pinned.version == first.version and pinned.alias == "champion"

    second = register_tiny_model(mlflow_store, tmp_path / "v2", name)  # a training promotes a new champion now
    assert second.version != first.version
    assert fc.alias_version(mlflow_store, name) == second.version

    loaded = fc.load_model(mlflow_store, pinned)
    assert loaded.metadata["mlflow_run_id"] == first.run_id, "loaded the new champion, not the pinned version"
    frame = synthetic_frame()
    plan = fc.plan_forecast(frame, loaded, None, frame["ts"].max(), as_of_given=True)
    rows = fc.forecast_frame_at(loaded, pinned, plan, flow_run_id=None)
    assert set(rows["model_version"]) == {first.version} and set(rows["mlflow_run_id"]) == {first.run_id}
