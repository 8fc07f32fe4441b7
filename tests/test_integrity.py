"""A registered model's file hashes live in MLflow, outside the artifact: tampering with the stored artifact is
refused even when its manifest was rewritten too, and the message names the model version, not a temp folder.

Each test registers its own tiny model in the session's real MLflow store (SQLite, local artifacts) and edits the
version's files where the artifact store keeps them on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from pathlib import Path

import pytest
import torch
from forecast_setup import Registered, register_tiny_model

from models.packaging import CHECKED_FILES, ArtifactIntegrityError, hash_tag, verify_forecaster
from tasks import registry


@pytest.fixture
def tiny(mlflow_store: str, tmp_path: Path) -> tuple[Registered, Path]:
    """A freshly registered tiny model and its forecaster folder inside the MLflow artifact store."""
    registered = register_tiny_model(mlflow_store, tmp_path, f"integrity-{uuid.uuid4().hex[:8]}")
    stored = sorted((tmp_path / "art").rglob("artifacts/forecaster/weights.pt"))
    assert len(stored) == 1, stored  # the one logged model of this test's own experiment
    return registered, stored[0].parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_manifest(folder: Path, overrides: dict[str, str] | None = None) -> None:
    """Record the files' current sha256 in manifest.json (as a tamperer covering their tracks would), or
    `overrides` (file name -> sha256)."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in CHECKED_FILES:
        manifest["files"][name] = {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
    for name, digest in (overrides or {}).items():
        manifest["files"][name]["sha256"] = digest
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _version_hashes(model: Registered) -> dict[str, str]:
    return registry.recorded_hashes(registry.get_client().get_model_version(model.name, model.version).tags)


def test_registration_records_the_hashes_on_the_run_and_the_version(tiny: tuple[Registered, Path]) -> None:
    model, stored = tiny
    expected = {name: _sha256(stored / name) for name in CHECKED_FILES}
    assert _version_hashes(model) == expected
    run_tags = registry.get_client().get_run(model.run_id).data.tags
    assert registry.recorded_hashes(run_tags) == expected
    assert set(expected) == {"config.json", "weights.pt", "scalers.json"}
    loaded = registry.load_version(model.name, model.version)  # an untouched version loads
    assert loaded.horizon > 0


def test_tampered_weights_with_a_rewritten_manifest_are_refused(tiny: tuple[Registered, Path]) -> None:
    model, stored = tiny
    state = torch.load(stored / "weights.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, stored / "weights.pt")
    _rewrite_manifest(stored)
    verify_forecaster(stored)  # the manifest check alone is fooled

    with pytest.raises(ArtifactIntegrityError) as caught:
        registry.load_version(model.name, model.version)
    message = str(caught.value)
    assert message.startswith(f"registered model '{model.name}' v{model.version}: weights.pt has sha256 ")
    assert _version_hashes(model)["weights.pt"] in message and "refusing to load it" in message
    assert "seqcast-model-" not in message and "/tmp" not in message  # no deleted download folder


def test_a_manifest_failure_names_the_model_version(tiny: tuple[Registered, Path]) -> None:
    model, stored = tiny
    _rewrite_manifest(stored, {"weights.pt": "0" * 64})  # files as registered, the manifest damaged
    with pytest.raises(ArtifactIntegrityError) as caught:
        registry.load_version(model.name, model.version)
    message = str(caught.value)
    assert f"weights.pt in registered model '{model.name}' v{model.version} has sha256" in message
    assert "but the manifest records " + "0" * 64 in message
    assert "seqcast-model-" not in message


def test_a_version_without_recorded_hashes_loads_with_a_warning_until_registered_again(
    tiny: tuple[Registered, Path], caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = tiny
    client = registry.get_client()
    recorded = _version_hashes(model)

    client.delete_model_version_tag(model.name, model.version, hash_tag("weights.pt"))
    with pytest.raises(ArtifactIntegrityError, match=r"records no sha256 for weights\.pt"):
        registry.load_version(model.name, model.version)  # a partial record is not an old version

    for name in CHECKED_FILES:
        client.delete_model_version_tag(model.name, model.version, hash_tag(name))
    with caplog.at_level(logging.WARNING, logger="tasks.registry"):
        loaded = registry.load_version(model.name, model.version)
    assert loaded.horizon > 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"registered model '{model.name}' v{model.version} has no sha256" in line for line in warned)

    # registering the run again (a rerun of the flow) finds the same version and sets the same tags
    source = client.get_model_version(model.name, model.version).source
    again = registry.register_model(model.name, source, model.run_id)
    assert str(again.version) == model.version
    assert registry.recorded_hashes(again.tags) == recorded == _version_hashes(model)
    assert len(client.search_model_versions(f"name = '{model.name}'")) == 1
