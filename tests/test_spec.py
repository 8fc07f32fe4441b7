"""The run spec: defaults resolved per frequency, JSON round trips, refused values, one set of defaults, and the
CLI options that build it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from flows.cli import cli, spec_fields, spec_options
from models.frequency import default_eval_stride
from tasks.spec import DEFAULT_SCALING, RunSpec, resolve_for_frame

LONG = [20_000]  # a series long enough for every default window


@pytest.mark.parametrize(
    ("freq", "lookback", "horizon", "seasons"),
    [
        ("30min", 336, 48, [48, 336]),
        ("h", 168, 24, [24, 168]),
        ("15min", 672, 96, [96, 672]),
        ("D", 56, 14, [7]),
        ("B", 60, 5, [5]),
        ("W-SUN", 104, 13, [52]),
        ("MS", 36, 12, [12]),
        ("QS-JAN", 16, 8, [4]),
        ("YS-JAN", 10, 3, []),
    ],
)
def test_defaults_resolve_from_the_frequency(freq: str, lookback: int, horizon: int, seasons: list[int]) -> None:
    resolved = RunSpec().resolve(freq, LONG)
    assert (resolved.window.lookback, resolved.window.horizon) == (lookback, horizon)
    assert resolved.evaluation.seasons == seasons
    test_length = math.ceil(0.2 * LONG[0])
    assert resolved.window.eval_stride == default_eval_stride(freq, test_length, horizon)
    assert resolved.is_resolved and not RunSpec().is_resolved
    config = resolved.window_config()
    assert (config.lookback, config.horizon, config.stride) == (lookback, horizon, resolved.window.eval_stride)
    assert (config.test_fraction, config.val_fraction) == (0.2, 0.1)


def test_given_settings_are_kept() -> None:
    spec = RunSpec(window={"lookback": 96, "horizon": 24, "eval_stride": 5}, evaluation={"seasons": [48]})
    resolved = spec.resolve("30min", LONG)
    assert (resolved.window.lookback, resolved.window.horizon, resolved.window.eval_stride) == (96, 24, 5)
    assert resolved.evaluation.seasons == [48]
    assert resolved.resolve("D", LONG) == resolved, "a resolved spec has nothing left to fill"
    # only the horizon given: the lookback still follows the frequency, the seasons follow the lookback
    only_horizon = RunSpec(window={"horizon": 1}).resolve("30min", [4000])
    assert (only_horizon.window.lookback, only_horizon.window.horizon) == (336, 1)
    assert only_horizon.window.eval_stride == 11, "800 origins: a stride coprime with 48, not 48"


def test_a_season_longer_than_the_window_and_a_per_step_head_too_wide_are_refused() -> None:
    # when the lookback is given, at once
    with pytest.raises(ValidationError, match=r"`seasons` \(\[336\]\) has a season longer than `lookback` \(96\)"):
        RunSpec(window={"lookback": 96}, evaluation={"seasons": [336]})
    with pytest.raises(ValidationError, match=r"`head` 'per_step' .* `lookback` \(24\) must be at least `horizon`"):
        RunSpec(window={"lookback": 24, "horizon": 48}, model={"head": "per_step"})
    # when it follows the frequency, once it is known (hourly data: a lookback of 168)
    with pytest.raises(ValueError, match=r"`seasons` \(\[336\]\) has a season longer than `lookback` \(168\)"):
        RunSpec(evaluation={"seasons": [336]}).resolve("h", LONG)
    with pytest.raises(ValueError, match=r"`head` 'per_step' .* `lookback` \(168\) must be at least `horizon`"):
        RunSpec(window={"horizon": 200}, model={"head": "per_step"}).resolve("h", LONG)
    assert RunSpec(window={"horizon": 200}).resolve("h", LONG).mlflow_params()["model.head"] == "last"
    with pytest.raises(ValueError, match="call `resolve"):
        RunSpec().window_config()


def test_a_spec_round_trips_through_json() -> None:
    spec = RunSpec(
        window={"lookback": 168, "test_fraction": 0.25},
        model={"cells": ["gru"], "scaling": "last", "head": "per_step"},
        training={"loss": "huber", "learning_rate": 1e-3, "batch_size": 128},
        evaluation={"seasons": [24, 168]},
        data={"gap_policy": "fill", "max_gap_steps": 3},
    )
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec
    resolved = spec.resolve("h", LONG)
    assert RunSpec.model_validate_json(resolved.model_dump_json()) == resolved
    assert RunSpec.model_validate(RunSpec().model_dump(mode="json")) == RunSpec()


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"window": {"test_fraction": 1.5}}, ("window", "test_fraction")),
        ({"window": {"lookback": 0}}, ("window", "lookback")),
        ({"model": {"hidden_size": 0}}, ("model", "hidden_size")),
        ({"model": {"cells": ["rnn"]}}, ("model", "cells", 0)),
        ({"model": {"cells": []}}, ("model", "cells")),
        ({"model": {"dropout": 1.0}}, ("model", "dropout")),
        ({"model": {"scaling": "minmax"}}, ("model", "scaling")),
        ({"training": {"learning_rate": 0}}, ("training", "learning_rate")),
        ({"training": {"loss": "mae"}}, ("training", "loss")),
        ({"training": {"device": "tpu"}}, ("training", "device")),
        ({"evaluation": {"seasons": [0]}}, ("evaluation", "seasons", 0)),
        ({"data": {"max_gap_steps": 0}}, ("data", "max_gap_steps")),
        ({"training": {"epochs": 3}}, ("training", "epochs")),  # extra="forbid"
        ({"lookback": 3}, ("lookback",)),
    ],
)
def test_bad_values_are_refused_naming_the_field(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    assert [tuple(e["loc"]) for e in info.value.errors()] == [loc]
    assert ".".join(str(part) for part in loc) in str(info.value)


def test_settings_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"`gap_policy` 'fill' needs `max_gap_steps`"):
        RunSpec(data={"gap_policy": "fill"})
    with pytest.raises(ValidationError, match=r"`test_fraction` \(0.5\) \+ `val_fraction` \(0.4\) leave"):
        RunSpec(window={"test_fraction": 0.5, "val_fraction": 0.4})
    with pytest.raises(ValidationError, match="names a cell twice"):
        RunSpec(model={"cells": ["lstm", "lstm"]})
    with pytest.raises(ValidationError, match="frozen"):
        RunSpec().window.lookback = 3  # type: ignore[misc]


def test_train_config_and_mlflow_params_carry_the_values_used() -> None:
    spec = RunSpec(model={"hidden_size": 16, "dropout": 0.1}, training={"patience": 3, "loss": "huber"})
    config = spec.train_config("gru")
    assert (config.cell, config.hidden_size, config.dropout, config.patience, config.loss) == (
        "gru",
        16,
        0.1,
        3,
        "huber",
    )
    assert config.scaling == DEFAULT_SCALING and config.batch_size is None
    with pytest.raises(ValueError, match="call `resolve"):
        spec.mlflow_params()
    params = spec.resolve("30min", LONG).mlflow_params()
    assert None not in params.values()
    assert params["window.lookback"] == 336 and params["window.horizon"] == 48
    assert params["evaluation.seasons"] == [48, 336]
    assert params["training.batch_size"] == {"lstm": 32, "gru": 64}
    assert params["model.head"] == "per_step" and params["data.max_gap_steps"] == 0
    assert {name.split(".")[0] for name in params} == set(RunSpec.model_fields)


def test_one_set_of_defaults() -> None:
    """The run spec holds the defaults; the trainer, the network config, the flows and the CLI take them from it."""
    import inspect

    from flows.demo import demo_flow
    from flows.train import train_flow
    from models.forecaster import ForecasterConfig
    from tasks.train import TrainConfig

    spec = RunSpec()
    trainer = TrainConfig()
    for part in ("model", "training"):
        values = getattr(spec, part).model_dump()
        values.pop("cells", None)
        for run_level in ("warm_start", "warm_start_epochs"):  # which candidates the run trains, not how one fits
            values.pop(run_level, None)
        assert {name: getattr(trainer, name) for name in values} == values, part
    assert trainer.cell == spec.model.cells[0]
    network = ForecasterConfig(lookback=10, horizon=2)
    assert (network.hidden_size, network.num_layers, network.dropout) == (32, 1, 0.0)
    assert (network.hidden_size, network.num_layers) == (spec.model.hidden_size, spec.model.num_layers)
    for flow in (train_flow, demo_flow):
        assert inspect.signature(flow.fn).parameters["spec"].default == spec
    for command in ("train", "demo"):
        spec_command = cli.commands[command]
        options = {p.name: p for p in spec_command.get_params(click.Context(spec_command))}
        for part, name, _ in spec_fields():
            default = getattr(getattr(spec, part), name)
            shown = options[name].default
            assert (list(shown) if isinstance(shown, tuple) else shown) == default, (command, name)


# ------------------------------------------------------------------------------------------------ the CLI


OLD_OPTIONS = ("--cell", "--lookback", "--horizon", "--epochs", "--hidden-size", "--layers", "--batch-size")
NEW_OPTIONS = ("--test-fraction", "--val-fraction", "--eval-stride", "--dropout", "--head", "--scaling")
NEW_OPTIONS += ("--learning-rate", "--patience", "--loss", "--season", "--gap-policy", "--max-gap-steps")


@pytest.mark.parametrize("command", ["train", "demo"])
def test_help_lists_an_option_per_setting_with_its_description(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in (*OLD_OPTIONS, *NEW_OPTIONS, "--device", "--seed"):
        assert f"  {option} " in result.output, option
    assert set(spec_options().values()) <= {word for word in result.output.split() if word.startswith("--")}
    assert "Input steps per window. Default: from the data's frequency" in result.output
    assert "[lstm|gru]" in result.output and "[default: lstm, gru]" in result.output
    assert "[mse|huber]" in result.output and "[default: 0.2]" in result.output
    assert "up to --max-gap-steps of them" in result.output, "other settings are named as their options"


def test_an_invalid_value_is_a_usage_error_naming_the_option() -> None:
    result = CliRunner().invoke(cli, ["train", "--test-fraction", "1.5"])
    assert result.exit_code == 2
    assert "Invalid value for '--test-fraction': 1.5" in result.output
    result = CliRunner().invoke(cli, ["demo", "--test-fraction", "0.5", "--val-fraction", "0.4"])
    assert result.exit_code == 2
    assert "--test-fraction (0.5) + --val-fraction (0.4) leave" in result.output
    result = CliRunner().invoke(cli, ["train", "--gap-policy", "fill"])
    assert result.exit_code == 2 and "--gap-policy 'fill' needs --max-gap-steps" in result.output


class _Reached(Exception):
    """Raised by the stand-in flows once they have the spec."""


def test_options_reach_the_train_flow_as_one_spec(monkeypatch: pytest.MonkeyPatch, seqcast_home: Path) -> None:
    from forecast_setup import synthetic_frame

    import flows.train
    from tasks import store
    from tasks.settings import get_settings

    store.upsert_observations(store.get_engine(get_settings().db_url), synthetic_frame(["a"]))  # the CLI checks first
    seen: dict[str, Any] = {}

    def fake_train_flow(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Reached

    fake_train_flow.with_options = lambda **options: fake_train_flow  # type: ignore[attr-defined]
    monkeypatch.setattr(flows.train, "train_flow", fake_train_flow)
    args = ["train", "--lookback", "96", "--cell", "gru", "--season", "24", "--season", "48", "--layers", "2"]
    args += ["--test-fraction", "0.25", "--epochs", "3", "--scaling", "last", "--series", "a", "--loss", "huber"]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, _Reached), result.output
    assert seen["series"] == ["a"] and seen["as_of"] is None
    assert seen["spec"] == RunSpec(
        window={"lookback": 96, "test_fraction": 0.25},
        model={"cells": ["gru"], "num_layers": 2, "scaling": "last"},
        training={"max_epochs": 3, "loss": "huber"},
        evaluation={"seasons": [24, 48]},
    )


def test_options_reach_the_demo_flow_and_defaults_stay_the_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.demo

    seen: dict[str, Any] = {}

    def fake_demo_flow(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Reached

    monkeypatch.setattr(flows.demo, "demo_flow", fake_demo_flow)
    result = CliRunner().invoke(cli, ["demo"])
    assert isinstance(result.exception, _Reached), result.output
    assert seen == {"source": "sample:electricity", "spec": RunSpec()}


# ----------------------------------------------------------------------------------- resolving for a frame


def _frame(lengths: dict[str, int], freq: str = "30min") -> pd.DataFrame:
    parts = [
        pd.DataFrame(
            {"series_id": sid, "ts": pd.date_range("2024-01-01", periods=n, freq=freq, tz="UTC"), "value": 1.0}
        )
        for sid, n in lengths.items()
    ]
    return pd.concat(parts, ignore_index=True)


def test_resolve_for_a_frame_reads_its_frequency_and_lengths() -> None:
    resolved = resolve_for_frame(RunSpec(), _frame({"a": 2000, "b": 3000}, "h"))
    assert (resolved.window.lookback, resolved.window.horizon) == (168, 24)
    assert resolved.window.eval_stride == default_eval_stride("h", int(np.median([400, 600])), 24)
    assert resolve_for_frame(RunSpec(), _frame({"a": 500}, "MS")).window.lookback == 36
    empty = pd.DataFrame(columns=["series_id", "ts", "value"])
    assert resolve_for_frame(RunSpec(), empty) == RunSpec(), "validation refuses an empty frame, with its own message"


def test_a_series_too_short_for_the_default_window_is_named_with_the_option_to_pass() -> None:
    from tasks.validate import DataValidationError

    with pytest.raises(DataValidationError) as info:
        resolve_for_frame(RunSpec(), _frame({"uk_load": 120, "long": 2000}))
    message = str(info.value)
    assert message.startswith(
        "series too short for the window (30min data): series 'uk_load' has 120 observations, needs 480: "
        "lookback (336) + horizon (48) + a validation part of 0.1 and a test part of 0.2 of the series"
    )
    # the split's own rule: parts are fractions of the series, at least a horizon each
    assert RunSpec().resolve("30min", [2000]).needed(2000) == 336 + 48 + 200 + 400
    assert "--lookback" in message and "'long'" not in message
    # gap filling may lengthen a series: validation's min_length decides then
    spec = RunSpec(data={"gap_policy": "fill", "max_gap_steps": 2})
    assert resolve_for_frame(spec, _frame({"uk_load": 120})).min_length() == {
        "lookback": 336,
        "horizon": 48,
        "validation": 48,
        "test": 48,
    }
