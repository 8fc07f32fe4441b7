"""Registry rules on a real MLflow store: idempotent registration, champion gating, alias look-ups."""

from __future__ import annotations

import uuid

import pytest

from tasks import registry


def test_first_model_becomes_champion_only_if_it_beats_seasonal_naive() -> None:
    assert registry.decide_promotion(0.8, 1.0, None).promote
    decision = registry.decide_promotion(1.2, 1.0, None)
    assert not decision.promote
    assert "does not beat seasonal naive 1.0000" in decision.reason


def test_worse_challenger_never_takes_the_champion() -> None:
    decision = registry.decide_promotion(0.9, 1.5, champion_mase=0.8)
    assert not decision.promote
    assert "does not beat champion 0.8000" in decision.reason
    assert registry.decide_promotion(0.7, 1.5, champion_mase=0.8).promote


def test_nan_candidate_is_never_promoted() -> None:
    assert not registry.decide_promotion(float("nan"), 1.0, None).promote


@pytest.fixture
def tiny_model_uri(mlflow_store: str, tmp_path) -> tuple[str, str, str]:
    """A logged pyfunc model in a fresh experiment: (model name, run id, model uri)."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input

    experiment_id = registry.configure_mlflow(mlflow_store, f"exp-{uuid.uuid4().hex[:8]}", tmp_path / "artifacts")
    run_id = registry.start_run(experiment_id, "tiny", {"seqcast.trigger": "manual"})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"])
    return f"model-{uuid.uuid4().hex[:8]}", run_id, str(info.model_uri)


def test_registering_the_same_run_twice_gives_one_version(tiny_model_uri: tuple[str, str, str]) -> None:
    name, run_id, uri = tiny_model_uri
    first = registry.register_model(name, uri, run_id)
    second = registry.register_model(name, uri, run_id)
    assert first.version == second.version
    assert len(registry.get_client().search_model_versions(f"name = '{name}'")) == 1


def test_missing_alias_and_missing_model_read_as_none(tiny_model_uri: tuple[str, str, str]) -> None:
    name, run_id, uri = tiny_model_uri
    assert registry.get_alias(f"no-such-{name}", registry.CHAMPION) is None
    registry.register_model(name, uri, run_id)
    assert registry.get_alias(name, registry.CHAMPION) is None
    with pytest.raises(registry.RegistryError, match="has no 'champion' alias yet"):
        registry.resolve_version(name)


def test_decision_moves_the_right_alias_and_records_the_reason(tiny_model_uri: tuple[str, str, str]) -> None:
    name, run_id, uri = tiny_model_uri
    version = str(registry.register_model(name, uri, run_id).version)
    rejected = registry.decide_promotion(2.0, 1.0, None)
    assert registry.apply_decision(name, version, rejected) == registry.CHALLENGER
    assert registry.get_alias(name, registry.CHAMPION) is None
    challenger = registry.get_alias(name, registry.CHALLENGER)
    assert challenger is not None and str(challenger.version) == version
    assert challenger.tags["promotion_reason"] == rejected.reason

    accepted = registry.decide_promotion(0.5, 1.0, None)
    assert registry.apply_decision(name, version, accepted) == registry.CHAMPION
    assert str(registry.resolve_version(name).version) == version


def test_unknown_version_is_a_clear_error(tiny_model_uri: tuple[str, str, str]) -> None:
    name, run_id, uri = tiny_model_uri
    registry.register_model(name, uri, run_id)
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        registry.resolve_version(name, version="99")
