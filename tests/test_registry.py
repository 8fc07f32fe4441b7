"""Registry rules on a real MLflow store: idempotent registration, moving aliases, alias look-ups."""

from __future__ import annotations

import uuid

import pytest

from tasks import registry


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
    reason = "lstm mean per-series MASE 2.0000 does not beat naive 1.0000"
    assert registry.apply_decision(name, version, False, reason) == registry.CHALLENGER
    assert registry.get_alias(name, registry.CHAMPION) is None
    challenger = registry.get_alias(name, registry.CHALLENGER)
    assert challenger is not None and str(challenger.version) == version
    assert challenger.tags["promotion_reason"] == reason

    assert registry.apply_decision(name, version, True, "beats every baseline") == registry.CHAMPION
    assert str(registry.resolve_version(name).version) == version


def test_unknown_version_is_a_clear_error(tiny_model_uri: tuple[str, str, str]) -> None:
    name, run_id, uri = tiny_model_uri
    registry.register_model(name, uri, run_id)
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        registry.resolve_version(name, version="99")


def test_no_champion_after_a_refused_training_says_why_and_how_to_forecast_anyway(
    tiny_model_uri: tuple[str, str, str],
) -> None:
    name, run_id, uri = tiny_model_uri
    version = str(registry.register_model(name, uri, run_id).version)
    reason = "lstm mean per-series MASE 1.4510 does not beat naive 1.4410"
    registry.apply_decision(name, version, False, reason)
    with pytest.raises(registry.RegistryError) as caught:
        registry.resolve_version(name)
    assert str(caught.value) == (
        f"registered model '{name}' has no 'champion' yet: training ran, but v{version} was not promoted ({reason}). "
        "To forecast with it anyway, pass `--alias challenger`: the series on which its network lost are served by "
        "their best baseline"
    )
    assert str(registry.resolve_version(name, registry.CHALLENGER).version) == version
