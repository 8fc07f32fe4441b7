"""`seqcast tune` on real stores: the study in SQLite and PostgreSQL, parallel trials sharing it, pruning, the
budget, child runs under the tuning run in MLflow, the best spec picked up by the nightly deployment, the CLI."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from forecast_setup import synthetic_frame, use_train_settings

from tasks import registry, store
from tasks.spec import RunSpec
from tasks.tune import SearchSpace, TuneBudget, tuned_settings
from tasks.tune_study import load_best_spec, open_study, study_name

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

# Tiny: 4 hourly series of 10 days, a day in and 6 hours out, a few epochs per trial, one cell.
SPEC = RunSpec(
    window={"lookback": 24, "horizon": 6},
    model={"cells": ["lstm"]},
    training={"max_epochs": 40, "patience": 2},
    execution={"task_runner": "threads"},
)
LENGTH = 24 * 10


@pytest.fixture
def tune_env(db_url: str, seqcast_home: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings pointing at `db_url` and the session MLflow store, a model name of this test's own, and the tiny
    observations; returns the model name."""
    name = use_train_settings(monkeypatch, db_url, mlflow_store)
    store.upsert_observations(store.get_engine(db_url), synthetic_frame(length=LENGTH))
    return name


def tune(budget: dict[str, Any], spec: RunSpec = SPEC) -> Any:
    from flows.tune import tune_flow
    from tasks.runners import task_runner_for

    return tune_flow.with_options(task_runner=task_runner_for(spec))(spec=spec, budget=TuneBudget(**budget))


def child_runs(summary: Any) -> list[Any]:
    return registry.get_client().search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )


def test_parallel_trials_share_one_study_that_a_second_run_resumes(tune_env: str, db_url: str) -> None:
    summary = tune({"trials": 3, "parallel": 2, "trial_epochs": 3})

    study = optuna.load_study(study_name=study_name(tune_env), storage=db_url)
    assert summary.study_name == f"seqcast-tune-{tune_env}" == study.study_name
    assert len(study.trials) == 3 and sum(summary.this_run.values()) == 3
    assert all(t.state.is_finished() for t in study.trials)
    # a new study starts from the spec's own settings: both scalings "auto" would try, then the sampler's
    start = {"lookback_factor": 1.0, "hidden_size": 32, "num_layers": 1, "dropout": 0.0, "learning_rate": 5e-3}
    assert [t.params for t in study.trials[:2]] == [
        {**start, "scaling": "series", "batch_size": 32},
        {**start, "scaling": "last", "batch_size": 32},
    ]
    # every trial is a child run of the tuning run, each with its trial's number and validation MASE
    children = child_runs(summary)
    assert sorted(int(r.data.tags["seqcast.trial"]) for r in children) == [0, 1, 2]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, "a 3-epoch trial on clean daily cycles completes unless pruned; none did"
    for t in complete:
        run = registry.get_client().get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.metrics["val_mase"] == pytest.approx(t.value)
        assert run.data.tags["mlflow.parentRunId"] == summary.parent_run_id
        assert {"val_loss", "val_relative_loss", "train_loss"} <= set(run.data.metrics)
    # two ran side by side, in two threads of the flow's task runner: their child runs overlap in time
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans
    assert len({r.data.tags["seqcast.worker"] for r in children}) >= 2
    # the parent run: the best figure, the plot, the best spec
    parent = registry.get_client().get_run(summary.parent_run_id)
    assert parent.data.metrics["best_val_mase"] == pytest.approx(min(t.value for t in complete))
    assert parent.data.params["study.name"] == study.study_name and parent.info.status == "FINISHED"
    artifacts = {a.path for a in registry.get_client().list_artifacts(summary.parent_run_id)}
    assert {"best_spec.json", "summary.md", "trials.json", "plots"} <= artifacts

    # the best spec is saved in the study, in the project's database
    saved = load_best_spec(db_url, tune_env)
    assert saved is not None
    spec, number, value = saved
    assert spec.model_dump(mode="json") == summary.best_spec and summary.decision
    assert spec.training.max_epochs == SPEC.training.max_epochs, "trial_epochs is for trials only"
    assert spec.execution.task_runner == "auto", "where tuning ran is not where the nightly training runs"
    if summary.kept_defaults:  # the best trial is not clearly better than the spec's own settings: the spec as given
        starts = [t for t in complete if t.number < 2]
        best = min(starts, key=lambda t: t.value)
        assert spec == RunSpec.model_validate({**SPEC.model_dump(), "execution": {}}) and spec.model.scaling == "auto"
    else:
        best = min(complete, key=lambda t: t.value)
        assert spec.model_dump(mode="json") == best.user_attrs["spec"]
        assert spec.model.scaling != "auto" and spec.model.cells == ["lstm"]
    assert (number, value) == (best.number, pytest.approx(best.value))

    again = tune({"trials": 2, "parallel": 2, "trial_epochs": 3})
    study = optuna.load_study(study_name=study_name(tune_env), storage=db_url)
    assert len(study.trials) == 5 and [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert study.trials[3].params != study.trials[0].params, "a resumed study samples afresh, not from the start"
    assert again.study_name == summary.study_name and len(again.trials) == 5


def test_pruning_stops_trials_worse_than_the_median(tune_env: str, db_url: str) -> None:
    """A complete trial with a near-perfect validation loss at every epoch: the median pruner stops each new trial
    at the first epoch after the warm-up, and the trial's run and the study say so."""
    study = open_study(db_url, study_name(tune_env))
    distribution = optuna.distributions.FloatDistribution(0.5, 2.0)
    study.add_trial(
        optuna.trial.create_trial(
            params={"lookback_factor_probe": 1.0},
            distributions={"lookback_factor_probe": distribution},
            value=0.01,
            intermediate_values={epoch: 1e-6 for epoch in range(1, 9)},
        )
    )
    summary = tune({"trials": 2, "parallel": 2, "trial_epochs": 8, "startup_trials": 1, "warmup_epochs": 2})

    assert summary.this_run == {"COMPLETE": 0, "PRUNED": 2, "FAIL": 0}
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == 2
    for t in pruned:
        assert max(t.intermediate_values) == 2, "pruned at the first epoch after 2 warm-up epochs"
        run = registry.get_client().get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["seqcast.trial_state"] == "PRUNED" and "val_mase" not in run.data.metrics
    assert summary.best_trial is None and load_best_spec(db_url, tune_env) is None  # nothing deployable completed


def test_a_minutes_budget_starts_no_trial_after_the_time(tune_env: str, db_url: str) -> None:
    """6 ms: the first trial starts at once, and one at a time the next could start only once it has ended, after
    the time, so it never does (with no trial limit: minutes alone do not fall back to the default 20 trials)."""
    summary = tune({"minutes": 1e-4, "parallel": 1, "trial_epochs": 2})
    assert sum(summary.this_run.values()) == 1
    trials = optuna.load_study(study_name=study_name(tune_env), storage=db_url).trials
    assert [t.state.is_finished() for t in trials] == [True, False]  # the second starting point waits for a rerun
    assert trials[1].state == optuna.trial.TrialState.WAITING
    assert TuneBudget(minutes=5).trial_limit is None and TuneBudget().trial_limit == 20


def test_the_nightly_deployment_takes_the_best_spec(tune_env: str, db_url: str) -> None:
    """`seqcast deploy` builds the nightly training's `spec` from the saved best spec, and tuning updates the
    deployment's parameters when it is deployed."""
    from prefect.client.orchestration import get_client

    from flows import deploy

    assert deploy.tuned_spec() is None  # nothing tuned: the run spec's defaults
    assert deploy.with_tuned_spec(deploy.DEPLOYMENTS[0]) == deploy.DEPLOYMENTS[0]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("seqcast-train")
        client.create_deployment(flow_id, "nightly-retrain", parameters={"series": ["a"], "trigger": "schedule"})

    summary = tune({"trials": 2, "parallel": 2, "trial_epochs": 2})
    assert summary.best_spec is not None and "now trains with it" in summary.nightly

    found = deploy.tuned_spec()
    assert found is not None and found[0] == summary.best_spec
    assert f"spec of trial {summary.best_trial} of study seqcast-tune-{tune_env}" in found[1]
    nightly = deploy.with_tuned_spec(deploy.DEPLOYMENTS[0])
    assert nightly.parameters == {**deploy.DEPLOYMENTS[0].parameters, "spec": summary.best_spec}
    assert (
        RunSpec.model_validate(nightly.parameters["spec"]).window.lookback == summary.best_settings["window.lookback"]
    )
    with get_client(sync_client=True) as client:
        deployed = client.read_deployment_by_name(deploy.TRAIN_DEPLOYMENT)
        client.delete_deployment(deployed.id)
    assert deployed.parameters == {"series": ["a"], "trigger": "schedule", "spec": summary.best_spec}


def test_seqcast_tune_end_to_end(tune_env: str, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    args = ["tune", "--trials", "2", "--trial-epochs", "2", "--lookback", "24", "--horizon", "6", "--cell", "gru"]
    assert main([*args, "--task-runner", "serial"]) == 0
    out = capsys.readouterr().out
    assert f"tuned seqcast-tune-{tune_env}: 2 trials this run" in out
    assert "trial  state" in out and "best spec" in out
    saved = load_best_spec(db_url, tune_env)
    if saved is not None:  # a trial completed (2 epochs of a GRU may also fail to beat nothing: it is not pruned)
        assert f"best trial {saved[1]}" in out
        assert saved[0].model.cells == ["gru"] and saved[0].window.horizon == 6
    assert json.loads(out.split("best spec (JSON): ", 1)[1].splitlines()[0]) == (
        saved[0].model_dump(mode="json") if saved else None
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--trials", "0"], "Invalid value for '--trials': 0 is not in the range x>=1"),
        (["--minutes", "0"], "Invalid value for '--minutes': 0.0 is not in the range x>0"),
        (["--parallel", "-1"], "Invalid value for '--parallel': -1 is not in the range x>=1"),
        (["--trial-epochs", "x"], "Invalid value for '--trial-epochs': 'x' is not a valid integer"),
    ],
)
def test_bad_budget_is_one_usage_error(option: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["tune", *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_observations_is_one_error_line(seqcast_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["tune", "--trials", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no observations in sqlite:///") and "\n" not in err


# --- the search space, without stores -----------------------------------------------------------------------


def test_the_lookback_follows_the_frequency_default_within_what_the_series_hold() -> None:
    from tasks.tune import plan_search

    frame = synthetic_frame(ids=["a", "b"], length=24 * 30)  # hourly: the default lookback is a week, 168
    spec = RunSpec()
    resolved = spec.resolve("h", [24 * 30, 24 * 30])
    space = plan_search(spec, resolved, frame)
    assert (space.base_lookback, space.horizon, space.freq) == (168, 24, "h")
    # 720 hours: test and validation parts of 144 and 72, a horizon 24 -> at most 480
    assert space.max_lookback == 720 - 24 - 72 - 144
    assert [space.lookback(f) for f in space.lookback_factors] == [84, 126, 168, 252, 336]
    short = synthetic_frame(ids=["a"], length=24 * 12)
    space = plan_search(spec, spec.resolve("h", [24 * 12]), short)
    assert space.lookback(2.0) == space.max_lookback == 24 * 12 - 24 - 58 - 29


def test_a_series_too_short_for_any_lookback_is_a_clear_error() -> None:
    from tasks.tune import TuneError, plan_search

    frame = synthetic_frame(ids=["a"], length=50)  # validation and test parts of a horizon (12) each
    spec = RunSpec(window={"lookback": 24, "horizon": 12}, evaluation={"seasons": [24]})
    with pytest.raises(TuneError, match=r"holds a lookback of at most 14 .* needs at least 24"):
        plan_search(spec, spec, frame)


def test_each_trial_samples_the_settings_and_keeps_the_rest() -> None:
    space = SearchSpace(base_lookback=48, min_lookback=6, max_lookback=80, horizon=12, freq="h", cells=("gru", "lstm"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    from tasks.tune import suggest_spec

    base = RunSpec(window={"horizon": 12}, training={"patience": 3})
    specs = [suggest_spec(study.ask(), base, space) for _ in range(12)]
    for spec in specs:
        settings = tuned_settings(spec)
        assert settings["window.lookback"] in {24, 36, 48, 72, 80}  # x2 = 96 is kept to the 80 the series hold
        assert settings["model.cells"] in (["gru"], ["lstm"]) and settings["model.scaling"] != "auto"
        assert 3e-4 <= settings["training.learning_rate"] <= 3e-2
        assert math.isclose(settings["model.dropout"] * 10, round(settings["model.dropout"] * 10))
        assert spec.window.horizon == 12 and spec.training.patience == 3 and spec.window.eval_stride is None
    assert len({json.dumps(tuned_settings(s), sort_keys=True) for s in specs}) == 12


def test_the_benchmark_reports_the_panel_means_and_the_gain() -> None:
    from benchmarks.tune_panel import markdown_lines

    counts = {"COMPLETE": 12, "PRUNED": 7, "FAIL": 1}
    settings = {
        "window.lookback": 48,
        "model.cells": ["gru"],
        "model.hidden_size": 64,
        "model.num_layers": 2,
        "model.dropout": 0.1,
        "model.scaling": "last",
        "training.learning_rate": 0.004,
        "training.batch_size": 32,
    }
    rows = [
        {
            "series": name,
            "kind": "synthetic",
            "lookback": 24,
            "horizon": 6,
            "default": {"cell": "lstm", "test_mase": default},
            "tuned": {"test_mase": tuned, "settings": settings, "trials": counts, "tune_s": 30.0},
        }
        for name, default, tuned in (("a", 1.0, 0.5), ("b", 3.0, 2.5))
    ]
    results = {"rows": rows, "mean_default": 2.0, "mean_tuned": 1.5, "gain": 0.25, "series_scored": 2}
    lines = markdown_lines({**results, "trials": 20, "trial_epochs": 15, "parallel": 2})
    tuned = "gru L48 2x64 last lr 0.004 drop 0.1 batch 32"
    assert f"| a | synthetic | 24/6 | 1.000 (lstm) | 0.500 | {tuned} | 12/7/1 | 30 |" in lines
    assert lines[-1].startswith("Panel mean test MASE over 2 series: default 2.000, tuned 1.500; gain 25.0 %")


def _study_with_trials(windows: dict[int, list[float]], start_points: tuple[int, ...] = (0, 1)) -> optuna.Study:
    """An in-memory study that started from SPEC: complete trials with the given MASE per validation window, the
    numbers in `start_points` being the spec's own settings (each trial's spec a different lookback)."""
    from tasks.tune import START_POINT_ATTR, WINDOW_MASE_ATTR, with_settings
    from tasks.tune_study import START_SPEC_ATTR

    study = optuna.create_study()
    study.set_user_attr(START_SPEC_ATTR, SPEC.model_dump(mode="json"))
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    for number, per_window in windows.items():
        spec = with_settings(SPEC, window={"lookback": 12 + number})
        attrs: dict[str, Any] = {"spec": spec.model_dump(mode="json"), WINDOW_MASE_ATTR: per_window}
        if number in start_points:
            attrs[START_POINT_ATTR] = True
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": number / 100},
                distributions={"x": distribution},
                value=sum(per_window) / len(per_window),
                user_attrs=attrs,
            )
        )
    return study


def test_a_trial_only_marginally_better_on_few_windows_keeps_the_defaults() -> None:
    """5 validation windows, the sampled trial lower on 4 of them by a few percent: a sign test cannot tell that
    from chance (p = 6/32), so the spec as given is saved, not the trial's."""
    from tasks.tune_study import BEST_SPEC_ATTR, save_best_spec

    defaults = [1.0, 1.1, 0.9, 1.2, 1.0]
    study = _study_with_trials({0: defaults, 1: [v + 0.1 for v in defaults], 2: [0.95, 1.05, 0.85, 1.15, 1.01]})
    best = save_best_spec(study)
    assert best is not None and best.kept_defaults
    assert best.spec == SPEC and best.trial == 0 and best.value == pytest.approx(1.04)
    assert "trial 2 is not clearly better" in best.decision and "4 of 5" in best.decision
    assert study.user_attrs[BEST_SPEC_ATTR] == SPEC.model_dump(mode="json")


def test_a_trial_clearly_better_on_many_windows_replaces_the_defaults() -> None:
    """40 windows, the sampled trial lower on 36 (p ~ 1e-7, below 0.05 / 2 sampled trials): its spec is saved."""
    from tasks.tune_study import save_best_spec

    defaults = [1.0 + 0.01 * (i % 7) for i in range(40)]
    better = [v * 0.8 if i % 10 else v * 1.05 for i, v in enumerate(defaults)]
    study = _study_with_trials(
        {0: defaults, 1: [v * 1.1 for v in defaults], 2: [v * 0.99 for v in defaults], 3: better}
    )
    best = save_best_spec(study)
    assert best is not None and not best.kept_defaults
    assert best.trial == 3 and best.spec.window.lookback == 15
    assert "clearly better" in best.decision and "36 of 40" in best.decision


def test_the_best_trial_being_a_default_saves_the_spec_as_given() -> None:
    from tasks.tune_study import save_best_spec

    study = _study_with_trials({0: [1.0, 2.0], 1: [0.5, 0.6], 2: [0.9, 0.9]})
    best = save_best_spec(study)
    assert best is not None and best.kept_defaults and best.trial == 1 and best.spec == SPEC
    assert best.spec.model.scaling == SPEC.model.scaling  # "auto", not the trial's concrete scaling


def test_the_switch_test_is_stricter_for_the_best_of_many_trials() -> None:
    """6 windows all lower (p = 1/64): enough for a single candidate, not for the best of 20 sampled trials; a
    lower error on average is required as well, and windows that do not pair never switch."""
    from tasks.tune import clearly_better

    reference = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0]
    candidate = [v - 0.05 for v in reference]
    assert clearly_better(candidate, reference, 0.05, compared=1).switch
    verdict = clearly_better(candidate, reference, 0.05, compared=20)
    assert not verdict.switch and verdict.wins == 6 and verdict.p_value == pytest.approx(1 / 64)
    mostly_lower_but_worse = [v - 0.01 for v in reference[:5]] + [5.0]  # lower on 5 of 6, far higher on one
    assert not clearly_better(mostly_lower_but_worse, reference, 0.5).switch
    assert not clearly_better(candidate[:5], reference, 0.5).switch
