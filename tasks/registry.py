"""MLflow: experiment set-up, run logging, registration and champion gating, loading by alias or version.

Runs are addressed by id (never the fluent "active run"), so tasks can log from any thread.
Registering is idempotent: a run that already has a version gets it back instead of a new one.
The sha256 of the forecaster's files is recorded outside the artifact, as tags on its run and its registered
version, and checked when a version is loaded, so a tampered artifact is refused even with a rewritten manifest.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.run_context import run_logger

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from models.packaging import LoadedForecaster
    from tasks.evaluate import Evaluation
    from tasks.gate import GateDecision
    from tasks.train import FitResult
    from tasks.windowing import WindowedData

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"


class RegistryError(RuntimeError):
    """The registry cannot give what was asked (no champion, unknown version, unreachable server)."""


def configure_mlflow(tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Point MLflow at `tracking_uri` and return the id of `experiment`, creating it on first use.

    On an embedded store the experiment's artifacts go to `artifact_root`; a tracking server decides itself.
    """
    import mlflow

    # bounded retries so an unreachable server fails in seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return str(found.experiment_id)
    local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    location = artifact_root.resolve().as_uri() if (artifact_root is not None and local) else None
    try:
        return str(client.create_experiment(experiment, artifact_location=location))
    except Exception:
        # another process created it between our look-up and create
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return str(found.experiment_id)


def get_client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def git_commit() -> str | None:
    """The commit of the working tree seqcast runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def start_run(experiment_id: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    """Create a run (a child run when `parent_run_id` is given) and return its id."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    all_tags = {MLFLOW_RUN_NAME: run_name, **tags}
    if parent_run_id is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = get_client().create_run(experiment_id, tags=all_tags, run_name=run_name)
    return str(run.info.run_id)


def end_run(run_id: str, failed: bool = False) -> None:
    get_client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def fail_open_runs(tracking_uri: str, experiment: str, flow_run_id: str) -> list[str]:
    """Mark FAILED the runs of `experiment` that Prefect flow run `flow_run_id` started and left RUNNING.

    A flow that fails mid-training would otherwise leave its parent and child runs RUNNING for ever in the UI.
    Returns the ids of the runs it closed.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = get_client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        end_run(run.info.run_id, failed=True)
    return [run.info.run_id for run in runs]


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log a flat dict of params; nested values are written as JSON."""
    from mlflow.entities import Param

    items = [Param(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in params.items()]
    get_client().log_batch(run_id, params=items)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_params_task(run_id: str, params: dict[str, Any]) -> None:
    log_params(run_id, params)


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite metrics in one call; NaN/inf values are skipped (MLflow would refuse the batch)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if math.isfinite(float(v))]
    get_client().log_batch(run_id, metrics=items)


def epoch_logger(run_id: str) -> Callable[[dict[str, float]], None]:
    """A training callback that logs each epoch's losses to the run, step = epoch."""

    def on_epoch(record: dict[str, float]) -> None:
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        log_metrics(run_id, metrics, step=int(record["epoch"]))

    return on_epoch


def log_artifacts(run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
    client = get_client()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def log_dataset(run_id: str, frame: pd.DataFrame, name: str, source: str) -> str:
    """Log the training frame as an MLflow dataset input (name, digest, schema); returns its digest."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = from_pandas(frame, source=source, name=name, targets="value")
    entity = dataset._to_mlflow_entity()
    get_client().log_inputs(
        run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
    )
    return str(dataset.digest)


def log_forecaster(
    run_id: str, model_dir: Path, input_example: pd.DataFrame, metadata: dict[str, Any] | None = None
) -> str:
    """Log a saved forecaster folder as an MLflow pyfunc model in `run_id`; returns its model URI.

    Loading it back with `mlflow.pyfunc.load_model` gives forecasts in original units from a frame of
    recent observations (series_id, ts, value): scaler and config travel with the weights.
    """
    import mlflow
    from mlflow.entities import RunTag
    from mlflow.models import infer_signature

    from models.packaging import SeqcastForecaster, forecast_frame, forecaster_hashes, hash_tag, load_forecaster

    output_example = forecast_frame(load_forecaster(model_dir), input_example)  # checks the manifest too
    hashes = [RunTag(hash_tag(name), digest) for name, digest in forecaster_hashes(model_dir).items()]
    get_client().log_batch(run_id, tags=hashes)  # recorded outside the artifact; registration copies them
    signature = infer_signature(input_example, output_example)
    requirements = [f"torch=={_version('torch')}", f"pandas=={_version('pandas')}", f"mlflow=={_version('mlflow')}"]
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=SeqcastForecaster(),
            artifacts={"forecaster": str(model_dir)},
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
            metadata=metadata,
        )
    return str(info.model_uri)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package).split("+")[0]


def find_version(name: str, run_id: str) -> ModelVersion | None:
    """The registered version of `name` made from `run_id`, if a previous attempt registered it."""
    from mlflow.exceptions import MlflowException

    try:
        versions = get_client().search_model_versions(f"name = '{_quote(name)}' and run_id = '{_quote(run_id)}'")
    except MlflowException:
        return None
    return versions[0] if versions else None


def _quote(value: str) -> str:
    return value.replace("'", "''")


def recorded_hashes(tags: dict[str, str]) -> dict[str, str]:
    """The forecaster files' sha256 recorded in MLflow tags (of a run or a version), by file name."""
    from models.packaging import HASH_TAG_PREFIX

    return {key.removeprefix(HASH_TAG_PREFIX): value for key, value in tags.items() if key.startswith(HASH_TAG_PREFIX)}


def register_model(name: str, model_uri: str, run_id: str, tags: dict[str, str] | None = None) -> ModelVersion:
    """A new version of registered model `name` for `run_id`, or the one an earlier attempt made; either way the
    version carries the sha256 tags its run recorded when the model was logged (what `load_version` checks)."""
    import mlflow

    from models.packaging import hash_tag

    hash_tags = {
        hash_tag(file): digest for file, digest in recorded_hashes(get_client().get_run(run_id).data.tags).items()
    }
    if not hash_tags:
        run_logger(__name__).warning(
            "run %s recorded no sha256 of its model files; registered model '%s' cannot be checked on load",
            run_id,
            name,
        )
    existing = find_version(name, run_id)
    if existing is None:
        return mlflow.register_model(model_uri, name, tags={**(tags or {}), **hash_tags})
    client = get_client()
    missing = {key: value for key, value in hash_tags.items() if existing.tags.get(key) != value}
    for key, value in missing.items():  # a rerun (or a crash before the tags) ends with the same tags
        client.set_model_version_tag(name, str(existing.version), key, value)
    return client.get_model_version(name, str(existing.version)) if missing else existing


def get_alias(name: str, alias: str) -> ModelVersion | None:
    """The version behind `alias`, or None when the model or the alias does not exist (any store)."""
    from mlflow.exceptions import MlflowException

    try:
        return get_client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        code = str(getattr(exc, "error_code", ""))
        if code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"} or "not found" in str(exc):
            return None
        raise


def apply_decision(name: str, version: str, promote: bool, reason: str) -> str:
    """Move `champion` (or `challenger`) to `version` and record why on the version; returns the alias set."""
    client = get_client()
    alias = CHAMPION if promote else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion", "champion" if promote else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    return alias


def resolve_version(name: str, alias: str | None = None, version: str | None = None) -> ModelVersion:
    """Pin the version to use once, so a run keeps it even if the alias moves meanwhile."""
    from mlflow.exceptions import MlflowException

    if version is not None:
        try:
            return get_client().get_model_version(name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"registered model '{name}' has no version {version}: {exc.message}") from exc
    alias = alias or CHAMPION
    found = get_alias(name, alias)
    if found is None:
        challenger = get_alias(name, CHALLENGER) if alias == CHAMPION else None
        if challenger is not None:
            reason = challenger.tags.get("promotion_reason", "it did not pass the promotion gate")
            raise RegistryError(
                f"registered model '{name}' has no '{alias}' yet: training ran, but v{challenger.version} was not "
                f"promoted ({reason}). To forecast with it anyway, pass `--alias challenger`: the series on which "
                "its network lost are served by their best baseline"
            )
        raise RegistryError(
            f"registered model '{name}' has no '{alias}' alias yet; run `seqcast train` (or `seqcast demo`) first"
        )
    return found


@contextmanager
def downloaded_model(name: str, version: str) -> Iterator[Path]:
    """The forecaster folder of a registered version, downloaded to a temporary folder."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="seqcast-model-") as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        yield root / "artifacts" / "forecaster"


def load_version(name: str, version: str, device: str = "cpu") -> LoadedForecaster:
    """Load a registered version's forecaster onto `device`, its files checked against the sha256 recorded on the
    version in MLflow (a rewritten manifest cannot hide a change) and against its manifest.

    Raises ArtifactIntegrityError naming the model and version; a version registered before the hashes were
    recorded loads on its manifest alone, with a warning.
    """
    from models.packaging import check_recorded_hashes, load_forecaster

    source = f"registered model '{name}' v{version}"
    recorded = recorded_hashes(resolve_version(name, version=version).tags)
    with downloaded_model(name, version) as folder:
        if recorded:
            check_recorded_hashes(folder, recorded, source)
        else:
            run_logger(__name__).warning(
                "%s has no sha256 recorded in MLflow (registered before they were); checked against its own "
                "manifest only",
                source,
            )
        return load_forecaster(folder, device=device, source=source)


@task(retries=2, retry_delay_seconds=[2, 10])
def configure_mlflow_task(tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    return configure_mlflow(tracking_uri, experiment, artifact_root)


@task(retries=2, retry_delay_seconds=[2, 10])
def register_model_task(name: str, model_uri: str, run_id: str) -> str:
    return str(register_model(name, model_uri, run_id).version)


@task(retries=2, retry_delay_seconds=[2, 10])
def apply_decision_task(name: str, version: str, promote: bool, reason: str) -> str:
    return apply_decision(name, version, promote, reason)


def log_candidate(
    run_id: str,
    fit: FitResult,
    evaluation: Evaluation,
    data: WindowedData,
    frame: pd.DataFrame,
    plots: list[Path],
) -> str:
    """Log one trained candidate to its run: params, final metrics, score tables, plots and the model (with the
    per-series baseline fallback its evaluation chose).

    Returns the model URI to register. The input example is the last `lookback` rows of the first series.
    """
    from models.packaging import pyfunc_input, save_forecaster

    log_params(run_id, {**fit.train_config.model_dump(), **data.config.model_dump(), "freq": data.freq})
    metrics = evaluation.metrics()
    metrics.update(
        {
            "best_epoch": fit.best_epoch,
            "best_val_loss": fit.best_val_loss,
            "epochs": len(fit.history),
            "train_seconds": fit.seconds,
            "train_windows_per_second": fit.windows_per_second,
            **{f"scaling_val_loss_{s}": v for s, v in fit.extra.get("scaling_val_loss", {}).items()},
        }
    )
    log_metrics(run_id, metrics)
    client = get_client()
    for key, value in {"device": fit.device, "bf16": str(fit.bf16), "stopped_early": str(fit.stopped_early)}.items():
        client.set_tag(run_id, f"seqcast.{key}", value)
    first = data.panel.series_ids[0]
    example = pyfunc_input(frame[frame["series_id"] == first].sort_values("ts").tail(data.lookback))
    with tempfile.TemporaryDirectory(prefix="seqcast-candidate-") as tmp:
        folder = Path(tmp)
        tables = {
            "test_scores.csv": evaluation.table(),
            "test_series.csv": evaluation.series_table(),
            "test_mae_by_step.csv": evaluation.mae_by_step(),
        }
        for name, table in tables.items():
            table.to_csv(folder / name, index=False)
        log_artifacts(run_id, [folder / name for name in tables])
        log_artifacts(run_id, plots, "plots")
        model_dir = save_forecaster(
            folder / "forecaster",
            fit.model,
            data.scalers,
            data.freq,
            metadata={"mlflow_run_id": run_id},
            fallback=evaluation.fallback,
        )
        return log_forecaster(run_id, model_dir, example, {"fallback": evaluation.fallback})


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_candidate_task(
    run_id: str,
    fit: FitResult,
    evaluation: Evaluation,
    data: WindowedData,
    frame: pd.DataFrame,
    plots: list[Path],
) -> str:
    return log_candidate(run_id, fit, evaluation, data, frame, plots)


def log_training_data(run_id: str, frame: pd.DataFrame, data: WindowedData, extra_tags: dict[str, str]) -> str:
    """Tag the parent run with the data window (its run-context tags were given when it was started), in one
    call, and log the frame as a dataset."""
    from mlflow.entities import RunTag

    tags = {**data.split_tags(), **extra_tags}
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    get_client().log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    return log_dataset(run_id, frame, name="observations", source=extra_tags.get("seqcast.source", "observations"))


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def start_run_task(experiment_id: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    return start_run(experiment_id, run_name, tags, parent_run_id)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_training_data_task(run_id: str, frame: pd.DataFrame, data: WindowedData, extra_tags: dict[str, str]) -> str:
    return log_training_data(run_id, frame, data, extra_tags)


@task(retries=2, retry_delay_seconds=[2, 10])
def end_run_task(run_id: str, failed: bool = False) -> None:
    end_run(run_id, failed)


def log_decision(parent_run_id: str, decision: GateDecision, markdown: str) -> None:
    """The gate's decision on the parent run: the winner's figures as metrics (so nights compare row by row in
    the runs table), the verdict and reason as tags, the per-series table and its markdown as artifacts."""
    from mlflow.entities import RunTag

    metrics = {
        "test_mase": decision.model_mase,
        "served_test_mase": decision.served_mase,
        "promoted": float(decision.promote),
        "fallback_series": float(decision.fallback_series),
        **{f"{name}_test_mase": value for name, value in decision.baseline_mase.items()},
    }
    if decision.champion_mase is not None:
        metrics["champion_test_mase"] = decision.champion_mase
    log_metrics(parent_run_id, metrics)
    tags = {
        "seqcast.decision": "promoted" if decision.promote else "rejected",
        "seqcast.decision_reason": decision.reason[:4000],
        "seqcast.best_cell": decision.candidate,
    }
    get_client().log_batch(parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with tempfile.TemporaryDirectory(prefix="seqcast-gate-") as tmp:
        table = Path(tmp) / "gate_series.csv"
        decision.series.to_csv(table, index=False)
        log_artifacts(parent_run_id, [table])
    get_client().log_text(parent_run_id, markdown, "gate.md")


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_decision_task(parent_run_id: str, decision: GateDecision, markdown: str) -> None:
    log_decision(parent_run_id, decision, markdown)


def finish_training(parent_run_id: str, summary_markdown: str) -> None:
    """Close the parent run with the summary as its MLflow note and as a Prefect markdown artifact."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
    from prefect.artifacts import create_markdown_artifact

    client = get_client()
    client.set_tag(parent_run_id, MLFLOW_RUN_NOTE, summary_markdown)
    client.log_text(parent_run_id, summary_markdown, "summary.md")
    end_run(parent_run_id)
    create_markdown_artifact(markdown=summary_markdown, key="training-summary", description="seqcast training run")


@task(retries=2, retry_delay_seconds=[2, 10])
def finish_training_task(parent_run_id: str, summary_markdown: str) -> None:
    finish_training(parent_run_id, summary_markdown)
