"""Warm start: the champion's network continued on the new windows as one more candidate (tasks/warm_start.py).

Unit tests of the fit from given weights; one end-to-end test on real stores (SQLite, the session's MLflow store,
Prefect's harness): a first night registers a champion, the next night's run with `warm_start` trains the cells
from scratch and the champion's network from its weights, and the gate chooses among all of them.
"""

from __future__ import annotations

import pytest
import torch
from forecast_setup import LENGTH, at, synthetic_frame

from tasks import registry, runners, store
from tasks.spec import RunSpec
from tasks.train import FitResult, TrainConfig, fit_forecaster
from tasks.warm_start import WARM_LEARNING_RATE_SHARE, champion_start
from tasks.windowing import WindowConfig, WindowedData, prepare_windows

IDS = ["a", "b", "c"]
LOOKBACK, HORIZON = 48, 12
SMALL = {"cells": ["lstm"], "hidden_size": 8, "scaling": "auto"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> WindowedData:
    return prepare_windows(
        synthetic_frame(IDS), WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=24, val_size=24)
    )


def weights(fit: FitResult) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in fit.model.state_dict().items()}


def test_a_warm_fit_starts_from_the_given_weights(data: WindowedData) -> None:
    """With a vanishing learning rate the fit ends where it started: at the given weights, not at the seed's."""
    config = TrainConfig(cell="gru", hidden_size=8, scaling="series", max_epochs=1, batch_size=256, seed=1)
    start = weights(fit_forecaster(data, config.model_copy(update={"seed": 7})))
    warm = fit_forecaster(data, config.model_copy(update={"learning_rate": 1e-12}), initial_state=start)
    cold = fit_forecaster(data, config.model_copy(update={"learning_rate": 1e-12}))
    for name, tensor in weights(warm).items():
        torch.testing.assert_close(tensor, start[name], rtol=0, atol=1e-6)
    assert any(not torch.allclose(cold.model.state_dict()[k], start[k]) for k in start), "the seed's weights"
    with pytest.raises(ValueError, match="concrete scaling"):
        fit_forecaster(data, config.model_copy(update={"scaling": "auto"}), initial_state=start)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_next_night_trains_the_champion_on_as_one_more_candidate(train_env: str, db_url: str) -> None:
    from flows.train import train_flow

    store.upsert_observations(store.get_engine(db_url), synthetic_frame(IDS))
    spec = RunSpec.model_validate(
        {
            "window": {"lookback": LOOKBACK, "horizon": HORIZON},
            "model": SMALL,
            "training": {"max_epochs": 3, "batch_size": 256, "warm_start": True, "warm_start_epochs": 2},
            "evaluation": {"register_rejected": True},
            "execution": {"task_runner": "threads"},
        }
    )
    run = train_flow.with_options(task_runner=runners.task_runner_for(spec))
    first = run(spec, as_of=at(LENGTH - 30).to_pydatetime())
    assert [c.cell for c in first.candidates] == ["lstm"], "no champion yet: no warm candidate"
    champion = registry.load_version(train_env, str(first.version))
    registry.get_client().set_registered_model_alias(train_env, registry.CHAMPION, str(first.version))

    second = run(spec, as_of=at(LENGTH - 1).to_pydatetime())
    assert [c.cell for c in second.candidates] == ["lstm", "lstm-warm"]
    warm_run = registry.get_client().get_run(second.candidates[1].run_id)
    assert warm_run.data.tags["seqcast.warm_start_from"] == f"v{first.version}"
    assert warm_run.data.tags["mlflow.parentRunId"] == second.parent_run_id
    scaling = champion.config.scaling  # the champion's own: "auto" chose it on the first night
    assert warm_run.data.params["scaling"] == scaling
    assert float(warm_run.data.params["learning_rate"]) == pytest.approx(5e-3 * WARM_LEARNING_RATE_SHARE)
    epochs = registry.get_client().get_metric_history(warm_run.info.run_id, "train_loss")
    assert 1 <= len(epochs) <= 2, "at most warm_start_epochs epochs"
    cold, warm = (c.metrics["test_mase"] for c in second.candidates)
    assert cold != warm, "two different networks were evaluated"
    assert second.best_cell in ("lstm", "lstm-warm")

    # a champion that reads another window is not continued: the run trains its cells alone
    other = RunSpec.model_validate({**spec.model_dump(), "window": {"lookback": 36, "horizon": HORIZON}})
    third = run(other, as_of=at(LENGTH - 1).to_pydatetime())
    assert [c.cell for c in third.candidates] == ["lstm"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_without_a_champion_or_in_a_partitioned_run_there_is_no_warm_start(train_env: str, data: WindowedData) -> None:
    """No warm candidate, and the reason says why."""
    spec = RunSpec.model_validate({"window": {"lookback": LOOKBACK, "horizon": HORIZON}})
    start, why = champion_start(train_env, data, spec)
    assert start is None and "has no champion yet" in why
    partitioned = RunSpec.model_validate({"partition": {"partitions": 2}})
    start, why = champion_start(train_env, data, partitioned)
    assert start is None and "partitioned run" in why
