"""Training behaviour: learning, early stopping with best-weight restore, callbacks, config checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.train import TrainConfig, _validation_loss, fit_forecaster, train_candidate_task, training_threads
from tasks.windowing import WindowConfig, WindowedData, prepare_windows

LOOKBACK, HORIZON = 24, 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frame_of(values: dict[str, np.ndarray]) -> pd.DataFrame:
    parts = [
        pd.DataFrame(
            {"series_id": sid, "ts": pd.date_range("2024-01-01", periods=len(v), freq="h", tz="UTC"), "value": v}
        )
        for sid, v in values.items()
    ]
    return pd.concat(parts, ignore_index=True)


def windows(values: dict[str, np.ndarray]) -> WindowedData:
    return prepare_windows(
        frame_of(values), WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=12, val_size=24)
    )


def config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "hidden_size": 16,
        "num_layers": 1,
        "batch_size": 32,
        "learning_rate": 1e-2,
        "device": "cpu",
        "num_threads": 1,
        "seed": 3,
        "scaling": "series",  # one network per fit; "auto" (two) has its own test
    }
    base.update(overrides)
    return TrainConfig.model_validate(base)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_loss_decreases_on_a_learnable_sine(cell: str) -> None:
    t = np.arange(400)
    data = windows({"sine": 50 + 20 * np.sin(2 * np.pi * t / 12)})
    fit = fit_forecaster(data, config(cell=cell, max_epochs=6, patience=6))
    train = [h["train_loss"] for h in fit.history]
    val = [h["val_loss"] for h in fit.history]
    assert train[-1] < 0.5 * train[0]
    assert min(val) < 0.5 * val[0]
    assert fit.windows_per_second > 0 and fit.device == "cpu" and not fit.bf16


def test_early_stopping_restores_the_best_weights() -> None:
    # white noise: nothing to learn, a wide network overfits and validation loss rises after the first epochs
    rng = np.random.default_rng(0)
    data = windows({"noise": rng.normal(0, 1, 160)})
    records: list[dict[str, float]] = []
    fit = fit_forecaster(
        data,
        config(hidden_size=64, max_epochs=40, patience=3, learning_rate=2e-2, lr_schedule="none", batch_size=16),
        on_epoch=records.append,
    )
    assert fit.stopped_early and len(fit.history) < 40
    val = [h["val_loss"] for h in fit.history]
    assert fit.best_epoch == int(np.argmin(val)) + 1
    assert fit.best_epoch == len(fit.history) - 3  # stopped `patience` epochs after the best
    values = torch.from_numpy(data.scaled)
    restored = _validation_loss(fit.model, values, torch.from_numpy(data.val_starts), fit.train_config, False).item()
    assert restored == pytest.approx(fit.best_val_loss, rel=1e-6)
    assert restored < val[-1]
    assert records == fit.history
    assert set(records[0]) == {"epoch", "train_loss", "val_loss", "seconds", "learning_rate"}


def test_plateau_schedule_halves_the_learning_rate_when_validation_stalls() -> None:
    rng = np.random.default_rng(1)
    data = windows({"noise": rng.normal(0, 1, 160)})
    fit = fit_forecaster(
        data,
        config(hidden_size=64, batch_size=16, max_epochs=20, patience=4, lr_schedule="plateau", learning_rate=2e-2),
    )
    rates = [h["learning_rate"] for h in fit.history]
    # plateau patience is patience // 2 = 2: three epochs without a gain halve the rate, four stop training
    assert fit.stopped_early
    assert rates[: fit.best_epoch + 3] == [2e-2] * (fit.best_epoch + 3)
    assert rates[-1] == 1e-2


def test_num_threads_is_restored() -> None:
    before = torch.get_num_threads()
    data = windows({"s": np.sin(np.arange(200) / 3.0)})
    fit_forecaster(data, config(max_epochs=1, num_threads=2))
    assert torch.get_num_threads() == before


def test_small_networks_train_on_one_cpu_thread_and_large_ones_on_torchs_default() -> None:
    cpu = torch.device("cpu")
    assert training_threads(TrainConfig(), cpu) == 1  # 1x32 LSTM at batch 32
    assert training_threads(TrainConfig(cell="gru"), cpu) == 1  # 1x32 GRU at batch 64
    assert training_threads(TrainConfig(hidden_size=64, num_layers=2, batch_size=256), cpu) is None
    assert training_threads(TrainConfig(cell="gru", hidden_size=80, batch_size=128), cpu) == 1  # 30,720 outputs
    assert training_threads(TrainConfig(cell="lstm", hidden_size=80, batch_size=128), cpu) is None  # 40,960
    assert training_threads(TrainConfig(num_threads=2), cpu) == 2
    assert training_threads(TrainConfig(), torch.device("cuda")) is None


def test_automatic_threads_apply_only_while_training() -> None:
    data = windows({"s": np.sin(np.arange(200) / 3.0)})
    seen: list[int] = []
    torch.set_num_threads(2)
    try:
        fit_forecaster(
            data, config(max_epochs=1, num_threads=None), on_epoch=lambda _: seen.append(torch.get_num_threads())
        )
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_each_cell_gets_its_own_default_batch_and_an_explicit_one_wins() -> None:
    from torch.nn.modules.module import register_module_forward_pre_hook

    from models.forecaster import RecurrentForecaster

    assert TrainConfig(cell="gru", batch_size=16).effective_batch_size == 16
    data = windows({"s": np.sin(np.arange(400) / 3.0)})
    batches: dict[str, list[int]] = {"lstm": [], "gru": []}

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if isinstance(module, RecurrentForecaster) and module.training:
            batches[module.config.cell].append(args[0].shape[0])

    handle = register_module_forward_pre_hook(record)
    try:
        for cell in ("lstm", "gru"):
            fit_forecaster(data, config(cell=cell, batch_size=None, max_epochs=1))
    finally:
        handle.remove()
    n_train = len(data.train_starts)
    assert batches["lstm"][0] == 32 and sum(batches["lstm"]) == n_train
    assert batches["gru"][0] == 64 and sum(batches["gru"]) == n_train


def test_config_is_validated_and_cuda_refused_without_a_gpu() -> None:
    with pytest.raises(ValueError):
        TrainConfig(loss="mae")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TrainConfig(learning_rate=0.0)
    with pytest.raises(ValueError):
        TrainConfig(extra_knob=1)  # type: ignore[call-arg]
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = windows({"s": np.sin(np.arange(200) / 3.0)})
    with pytest.raises(RuntimeError, match="no CUDA; use 'cpu' or 'auto'"):
        fit_forecaster(data, config(device="cuda"))


def test_huber_loss_trains() -> None:
    data = windows({"s": 10 + np.sin(np.arange(200) / 2.0)})
    fit = fit_forecaster(data, config(loss="huber", max_epochs=3, patience=3))
    assert np.isfinite([h["train_loss"] for h in fit.history]).all()


def test_task_wrapper_calls_the_plain_function() -> None:
    data = windows({"s": np.sin(np.arange(200) / 3.0)})
    fit = train_candidate_task.fn(data, config(max_epochs=1))
    assert fit.best_epoch == 1 and fit.config.lookback == LOOKBACK and fit.config.horizon == HORIZON


def test_auto_scaling_keeps_the_scaling_with_the_lower_validation_loss() -> None:
    # a series that keeps rising: validation lies above the training range, where only "last" follows it
    t_ = np.arange(300, dtype=np.float64)
    data = windows({"rising": 0.05 * t_ + np.sin(t_ / 3.0)})
    seen: list[dict[str, float]] = []
    fit = fit_forecaster(data, config(scaling="auto", max_epochs=8), on_epoch=seen.append)
    losses = fit.extra["scaling_val_loss"]
    assert set(losses) == {"series", "last"}
    assert fit.config.scaling == min(losses, key=losses.get) == "last"
    assert fit.train_config.scaling == "last" and fit.best_val_loss == losses["last"]
    # each try's epochs carry their scaling; the winner's are replayed under the plain names at the end
    assert {"val_loss_series", "val_loss_last"} <= set().union(*seen)
    plain = [r for r in seen if "val_loss" in r]
    assert [r["val_loss"] for r in plain] == [r["val_loss"] for r in fit.history]
    assert seen[-len(plain) :] == plain
    separate = fit_forecaster(data, config(scaling="last", max_epochs=8))
    assert all(
        torch.equal(a, b)
        for a, b in zip(fit.model.state_dict().values(), separate.model.state_dict().values(), strict=True)
    )


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _noisy_sines(n_series: int, length: int = 160) -> WindowedData:
    rng = np.random.default_rng(1)
    t = np.arange(length)
    return windows(
        {f"s{k}": 20 + 5 * np.sin(2 * np.pi * t / 12 + k) + rng.normal(0, 0.3, length) for k in range(n_series)}
    )


def test_window_budget_bounds_the_windows_each_epoch_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.train as train_module

    data = _noisy_sines(4)
    n_train, n_val = len(data.train_starts), len(data.val_starts)
    budget = 40
    assert n_train > budget and n_val > budget // 2
    gathered: list[int] = []
    real_gather = train_module.gather_windows

    def counting_gather(values: torch.Tensor, starts: torch.Tensor, lookback: int, horizon: int) -> object:
        gathered.append(len(starts))
        return real_gather(values, starts, lookback, horizon)

    monkeypatch.setattr(train_module, "gather_windows", counting_gather)
    fit = fit_forecaster(data, config(max_epochs=2, patience=5, max_windows_per_epoch=budget, eval_batch_size=10_000))
    # per epoch: the budget in training batches, then one validation batch of min(budget, N_val) windows
    assert sum(gathered) == 2 * (budget + min(budget, n_val))
    assert len(fit.history) == 2

    gathered.clear()
    fit_forecaster(data, config(max_epochs=1, patience=5, max_windows_per_epoch=None, eval_batch_size=10_000))
    assert sum(gathered) == n_train + n_val


def test_no_window_budget_is_every_window_and_the_same_fit_as_a_budget_above_the_counts() -> None:
    data = _noisy_sines(3)
    unbounded = fit_forecaster(data, config(max_epochs=3))
    roomy = fit_forecaster(data, config(max_epochs=3, max_windows_per_epoch=10**6))
    assert _weights_equal(unbounded.model, roomy.model)
    assert [h["val_loss"] for h in unbounded.history] == [h["val_loss"] for h in roomy.history]


def test_window_budget_is_seeded_same_seed_same_weights() -> None:
    data = _noisy_sines(4)
    first = fit_forecaster(data, config(max_epochs=3, max_windows_per_epoch=50))
    again = fit_forecaster(data, config(max_epochs=3, max_windows_per_epoch=50))
    other_seed = fit_forecaster(data, config(max_epochs=3, max_windows_per_epoch=50, seed=4))
    assert _weights_equal(first.model, again.model)
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in again.history]
    assert not _weights_equal(first.model, other_seed.model)


def test_validation_sample_is_fixed_sorted_and_drawn_apart_from_the_shuffles() -> None:
    from tasks.train import sample_validation_starts

    starts = torch.arange(100, 200, dtype=torch.int32)
    assert sample_validation_starts(starts, None, 0) is starts
    assert sample_validation_starts(starts, 100, 0) is starts
    sample = sample_validation_starts(starts, 30, 7)
    assert len(sample) == 30 and torch.equal(sample, sample.sort().values)
    assert len(set(sample.tolist())) == 30 and set(sample.tolist()) <= set(starts.tolist())
    assert torch.equal(sample, sample_validation_starts(starts, 30, 7))
    assert not torch.equal(sample, sample_validation_starts(starts, 30, 8))


def test_window_budget_is_a_run_spec_setting() -> None:
    from tasks.spec import RunSpec

    spec = RunSpec(training={"max_windows_per_epoch": 20_000})
    assert spec.train_config("lstm").max_windows_per_epoch == 20_000
    assert RunSpec().train_config("gru").max_windows_per_epoch is None
    with pytest.raises(ValueError, match="max_windows_per_epoch"):
        RunSpec(training={"max_windows_per_epoch": 0})
