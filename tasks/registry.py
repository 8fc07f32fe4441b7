"""MLflow: experiment set-up, run logging, registration and champion gating, loading by alias or version.

Runs are addressed by id (never the fluent "active run"), so tasks can log from any thread.
Registering is idempotent: a run that already has a version gets it back instead of a new one.
The sha256 of the forecaster's files is recorded outside the artifact, as tags on its run and its registered
version, and checked when a version is loaded, so a tampered artifact is refused even with a rewritten manifest.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.errors import SeqcastError
from tasks.run_context import run_logger
from tasks.settings import apply_mlflow_timeouts, redact_uri, seconds

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from models.packaging import LoadedForecaster
    from tasks.evaluate import Evaluation
    from tasks.forecast import BackfillSummary, ForecastSummary
    from tasks.gate import GateDecision
    from tasks.train import FitResult
    from tasks.windowing import WindowedData

CHAMPION = "champion"
CHALLENGER = "challenger"
NOT_REGISTERED = "not registered"  # a training run's alias when its best candidate lost to a baseline
MODEL_ARTIFACT = "model"
VALIDATION_ARTIFACTS = "validation"  # the parent run's folder of the validation report
FLOW_RUN_URL_TAG = "prefect.flow_run_url"


class RegistryError(SeqcastError, RuntimeError):
    """The registry cannot give what was asked (no champion, unknown version, unreachable server)."""


class TrackingUnavailableError(RegistryError):
    """The MLflow tracking server refused the connection or did not answer within SEQCAST_MLFLOW_TIMEOUT, after
    MLflow's own retries (SEQCAST_MLFLOW_RETRIES). Wraps MLflow's error (its cause); one message naming the server
    without password. Not retried by the forecast tasks: MLflow has retried already."""

    def __init__(self, message: str, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def tracking_error(exc: BaseException) -> TrackingUnavailableError | None:
    """The TrackingUnavailableError for an error of MLflow's HTTP client that could not reach or hear from the
    tracking server (MlflowException over requests/urllib3 connection and timeout errors); None for any other."""
    if isinstance(exc, SeqcastError):
        return None
    failure = _http_failure(exc)
    if failure is None:
        return None
    import mlflow

    server = redact_uri(mlflow.get_tracking_uri())
    limits = apply_mlflow_timeouts()
    tries = f"tried {limits.retries + 1} time{'s' if limits.retries else ''}"
    if failure == "timeout":
        return TrackingUnavailableError(
            f"MLflow tracking server {server} did not answer: a request timed out after {seconds(limits.timeout)} "
            f"({limits.setting}), {tries}; is the server up and answering?",
            timed_out=True,
        )
    errno = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", str(exc))
    statuses = re.search(r"too many \d+ error responses", str(exc))
    why = errno.group(1).strip().lower() if errno else statuses.group(0) if statuses else "connection failed"
    return TrackingUnavailableError(
        f"cannot reach MLflow tracking server {server}: {why} ({tries}); is it running, and the URI right?",
        timed_out=False,
    )


def _http_failure(exc: BaseException) -> str | None:
    """`timeout` or `unreachable` when the HTTP client under `exc` failed to hear from or reach the server."""
    import requests
    import urllib3.exceptions as http

    chain: list[BaseException] = []
    todo, seen = [exc], set()
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        chain.append(error)
        if isinstance(error, http.MaxRetryError) and error.reason is not None:
            todo.append(error.reason)
        todo += [arg for arg in error.args if isinstance(arg, BaseException)]
        todo += [link for link in (error.__cause__, error.__context__) if link is not None]
    # urllib3's NewConnectionError (refused, no route, unknown host) subclasses its ConnectTimeoutError: test it first
    if any(isinstance(error, http.NewConnectionError | ConnectionRefusedError) for error in chain):
        return "unreachable"
    timeouts = requests.exceptions.Timeout | http.TimeoutError | TimeoutError
    if any(isinstance(error, timeouts) for error in chain):
        return "timeout"
    connections = requests.exceptions.ConnectionError | http.HTTPError | ConnectionError
    if any(isinstance(error, connections) for error in chain):
        return "unreachable"
    return None


P = ParamSpec("P")
R = TypeVar("R")


def tracking_boundary(function: Callable[P, R]) -> Callable[P, R]:
    """Calls to MLflow in `function` that cannot reach or hear from the tracking server raise
    TrackingUnavailableError instead of MLflow's error with the HTTP client's chain."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            unreachable = tracking_error(exc)
            if unreachable is None:
                raise
            raise unreachable from exc

    return wrapper


@tracking_boundary
def configure_mlflow(tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    """Point MLflow at `tracking_uri` and return the id of `experiment`, creating it on first use.

    On an embedded store the experiment's artifacts go to `artifact_root`; a tracking server decides itself.
    """
    import mlflow

    apply_mlflow_timeouts()  # bounded waits: an unreachable or hung server fails in seconds, not minutes
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
    import os

    from mlflow import MlflowClient

    apply_mlflow_timeouts()
    # MLflow draws a tqdm bar on stderr for every artifact download (loading a version, validating an input
    # example): noise in a command's output and in run logs. A user's own setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient()


def mlflow_ui_url(tracking_uri: str) -> str | None:
    """The MLflow UI's address: the tracking URI when it is an http(s) server (without credentials or a trailing
    slash); None for an embedded store (SQLite, files), whose UI is whatever `mlflow ui` the user starts."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.hostname + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def experiment_url(ui_url: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI at `ui_url`. MLflow 3's UI opens an experiment on its GenAI
    overview unless told the workflow; `workflowType=machine_learning` opens the runs."""
    return f"{ui_url}/#/experiments/{quote(str(experiment_id), safe='')}/runs?workflowType=machine_learning"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The page of run `run_id` in the MLflow UI, or None without a UI URL (see `mlflow_ui_url`)."""
    ui = mlflow_ui_url(tracking_uri)
    if ui is None:
        return None
    return f"{ui}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(str(run_id), safe='')}"


def version_url(tracking_uri: str, name: str, version: str) -> str | None:
    """The page of a registered model version in the MLflow UI, or None without a UI URL."""
    ui = mlflow_ui_url(tracking_uri)
    if ui is None:
        return None
    return f"{ui}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


def flow_run_url(flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run when Prefect's UI URL is known (PREFECT_UI_URL, or derived by Prefect from
    PREFECT_API_URL); None otherwise or without a flow run."""
    if not flow_run_id:
        return None
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    if not ui:
        return None
    return f"{ui.rstrip('/')}/runs/flow-run/{quote(flow_run_id, safe='')}"


def markdown_link(text: str, url: str | None) -> str:
    """`[text](url)`, or `text` as code when there is no URL: a plain-text id to search for."""
    return f"`{text}`" if url is None else f"[{text}]({url})"


def run_links(tracking_uri: str, experiment_id: str, run_id: str, flow_run_id: str | None) -> list[str]:
    """Markdown lines pointing at an MLflow run and the Prefect flow run that made it: links when the servers
    have URLs, else the ids as text to search for."""
    run = markdown_link(run_id, run_url(tracking_uri, experiment_id, run_id))
    lines = [f"MLflow run: {run} (experiment `{experiment_id}`)"]
    if flow_run_id:
        lines.append(f"Prefect flow run: {markdown_link(flow_run_id, flow_run_url(flow_run_id))}")
    return lines


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


@tracking_boundary
def start_run(experiment_id: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    """Create a run (a child run when `parent_run_id` is given) and return its id. A run started by a Prefect flow
    run (tag `prefect.flow_run_id`) links back to it in tag `prefect.flow_run_url` when Prefect's UI URL is known."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    all_tags = {MLFLOW_RUN_NAME: run_name, **tags}
    link = flow_run_url(tags.get("prefect.flow_run_id"))
    if link is not None:
        all_tags.setdefault(FLOW_RUN_URL_TAG, link)
    if parent_run_id is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = get_client().create_run(experiment_id, tags=all_tags, run_name=run_name)
    return str(run.info.run_id)


@tracking_boundary
def end_run(run_id: str, failed: bool = False) -> None:
    get_client().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


@tracking_boundary
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


@tracking_boundary
def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log a flat dict of params; nested values are written as JSON."""
    from mlflow.entities import Param

    items = [Param(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in params.items()]
    get_client().log_batch(run_id, params=items)


@task(name="log-params", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_params_task(run_id: str, params: dict[str, Any]) -> None:
    log_params(run_id, params)


@tracking_boundary
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


@tracking_boundary
def log_artifacts(run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
    client = get_client()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


@tracking_boundary
def log_dataset(run_id: str, frame: pd.DataFrame, name: str, source: str) -> str:
    """Log the training frame as an MLflow dataset input (name, digest, schema); returns its digest.

    Its source is named as what it is, rows read by code from the observations store (`source` says which), so
    MLflow does not guess a file source from the string.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    origin = CodeDatasetSource(tags={"seqcast.source": source})
    dataset = from_pandas(frame, source=origin, name=name, targets="value")
    entity = dataset._to_mlflow_entity()
    get_client().log_inputs(
        run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
    )
    return str(dataset.digest)


@tracking_boundary
def log_forecaster(
    run_id: str, model_dir: Path, input_example: pd.DataFrame, metadata: dict[str, Any] | None = None
) -> str:
    """Log a saved forecaster folder as an MLflow pyfunc model in `run_id`; returns its model URI.

    Loading it back with `mlflow.pyfunc.load_model` gives forecasts in original units from a frame of
    recent observations (series_id, ts, value): scaler and config travel with the weights. The wrapper is logged
    as code (models/pyfunc_model.py), not pickled, and the signature is declared from the columns' types.
    """
    import mlflow
    from mlflow.entities import RunTag
    from mlflow.models import ModelSignature

    from models import packaging
    from models.packaging import forecast_frame, forecaster_hashes, hash_tag, load_forecaster

    output_example = forecast_frame(load_forecaster(model_dir), input_example)  # checks the manifest too
    hashes = [RunTag(hash_tag(name), digest) for name, digest in forecaster_hashes(model_dir).items()]
    get_client().log_batch(run_id, tags=hashes)  # recorded outside the artifact; registration copies them
    signature = ModelSignature(inputs=_declared_schema(input_example), outputs=_declared_schema(output_example))
    requirements = [f"torch=={_version('torch')}", f"pandas=={_version('pandas')}", f"mlflow=={_version('mlflow')}"]
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(Path(packaging.__file__).with_name("pyfunc_model.py")),
            artifacts={"forecaster": str(model_dir)},
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
            metadata=metadata,
        )
    return str(info.model_uri)


def _declared_schema(frame: pd.DataFrame) -> Any:
    """The MLflow schema of `frame`'s columns, declared from their dtypes rather than inferred from values (inference
    warns about every integer column: `step` is one, and is never missing)."""
    from mlflow.types import ColSpec, DataType, Schema

    def column_type(values: pd.Series) -> DataType:
        if pd.api.types.is_bool_dtype(values):
            return DataType.boolean
        if pd.api.types.is_integer_dtype(values):
            return DataType.long
        if pd.api.types.is_float_dtype(values):
            return DataType.double
        if pd.api.types.is_datetime64_any_dtype(values):
            return DataType.datetime
        return DataType.string

    return Schema([ColSpec(column_type(frame[name]), str(name)) for name in frame.columns])


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package).split("+")[0]


def find_version(name: str, run_id: str) -> ModelVersion | None:
    """The registered version of `name` made from `run_id`, if a previous attempt registered it."""
    from mlflow.exceptions import MlflowException

    try:
        versions = get_client().search_model_versions(f"name = '{_quote(name)}' and run_id = '{_quote(run_id)}'")
    except MlflowException as exc:
        if _http_failure(exc) is not None:  # the server is down or hung, not "no such version"
            raise
        return None
    return versions[0] if versions else None


def _quote(value: str) -> str:
    return value.replace("'", "''")


def recorded_hashes(tags: dict[str, str]) -> dict[str, str]:
    """The forecaster files' sha256 recorded in MLflow tags (of a run or a version), by file name."""
    from models.packaging import HASH_TAG_PREFIX

    return {key.removeprefix(HASH_TAG_PREFIX): value for key, value in tags.items() if key.startswith(HASH_TAG_PREFIX)}


@tracking_boundary
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


@tracking_boundary
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


@tracking_boundary
def apply_decision(name: str, version: str, promote: bool, reason: str, description: str | None = None) -> str:
    """Move `champion` (or `challenger`) to `version` and record why on the version: the reason as its tag
    `promotion_reason`, and `description` (what the UI shows on the version's page) when given; returns the alias."""
    client = get_client()
    alias = CHAMPION if promote else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion", "champion" if promote else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    if description is not None:
        client.update_model_version(name, version, description=description)
    return alias


@tracking_boundary
def resolve_version(name: str, alias: str | None = None, version: str | None = None) -> ModelVersion:
    """Pin the version to use once, so a run keeps it even if the alias moves meanwhile."""
    from mlflow.exceptions import MlflowException

    if version is not None:
        try:
            return get_client().get_model_version(name, str(version))
        except MlflowException as exc:
            if _http_failure(exc) is not None:  # the server is down or hung, not "no such version"
                raise
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
            f"registered model '{name}' has no '{alias}' alias yet; run `seqcast train` (or `seqcast demo`) first "
            "(a training run registers its best candidate only when its network beats every baseline; "
            "`--register-rejected` registers it anyway, as challenger)"
        )
    return found


@contextmanager
def downloaded_model(name: str, version: str) -> Iterator[Path]:
    """The forecaster folder of a registered version, downloaded to a temporary folder."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="seqcast-model-") as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        yield root / "artifacts" / "forecaster"


@tracking_boundary
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


@task(name="configure-mlflow", retries=2, retry_delay_seconds=[2, 10])
def configure_mlflow_task(tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> str:
    return configure_mlflow(tracking_uri, experiment, artifact_root)


@task(name="register-model", retries=2, retry_delay_seconds=[2, 10])
def register_model_task(name: str, model_uri: str, run_id: str) -> str:
    return str(register_model(name, model_uri, run_id).version)


@task(name="apply-decision", retries=2, retry_delay_seconds=[2, 10])
def apply_decision_task(name: str, version: str, promote: bool, reason: str, description: str | None = None) -> str:
    return apply_decision(name, version, promote, reason, description)


@tracking_boundary
def log_candidate(
    run_id: str,
    fit: FitResult,
    evaluation: Evaluation,
    data: WindowedData,
    frame: pd.DataFrame,
    plots: list[Path],
) -> str:
    """Log one trained candidate to its run: params, final metrics, score tables, plots and the model (with the
    per-series baseline fallback its evaluation chose, its interval calibration and the test figures that
    monitoring holds it to).

    Returns the model URI to register. The input example is the last `lookback` rows of the first series.
    """
    from models.packaging import pyfunc_input, save_forecaster
    from tasks.evaluate import model_reference

    log_params(run_id, candidate_params(fit, data))
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
            intervals=evaluation.calibration,
            reference=model_reference(evaluation, data),
        )
        return log_forecaster(run_id, model_dir, example, {"fallback": evaluation.fallback})


def candidate_params(fit: FitResult, data: WindowedData) -> dict[str, Any]:
    """A candidate run's params: its training config and windows with the values the fit used where the config
    left a choice to the code: the batch size, the head, the scaling "auto" kept (its metrics
    `scaling_val_loss_<scaling>` say it chose), the device and CPU threads it trained with, the test and validation
    sizes of the series."""
    import torch

    from tasks.train import training_threads

    config = fit.train_config
    threads = training_threads(config, torch.device(fit.device)) or torch.get_num_threads()
    params: dict[str, Any] = {
        **config.model_dump(),
        "batch_size": config.effective_batch_size,
        "head": fit.config.head,
        "scaling": fit.config.scaling,
        "device": fit.device,
        "num_threads": threads,
        "grad_clip": "off" if config.grad_clip is None else config.grad_clip,
        "max_windows_per_epoch": config.max_windows_per_epoch or "all",
    }
    window = data.config.model_dump()
    test_sizes, val_sizes = data.config.part_sizes(data.panel.lengths)
    for name, sizes in (("test_size", test_sizes), ("val_size", val_sizes)):
        low, high = (int(sizes.min()), int(sizes.max())) if len(sizes) else (0, 0)
        window[name] = low if low == high else f"{low}..{high}"
    return {**params, **window, "freq": data.freq}


@task(name="log-candidate", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_candidate_task(
    run_id: str,
    fit: FitResult,
    evaluation: Evaluation,
    data: WindowedData,
    frame: pd.DataFrame,
    plots: list[Path],
) -> str:
    return log_candidate(run_id, fit, evaluation, data, frame, plots)


@tracking_boundary
def log_training_data(
    run_id: str,
    frame: pd.DataFrame,
    data: WindowedData,
    extra_tags: dict[str, str],
    validation: list[Path | None] | None = None,
) -> str:
    """Tag the parent run with the data window (its run-context tags were given when it was started), in one
    call, log the frame as a dataset, and the validation report's files (JSON, HTML) under `validation/`, with tag
    `seqcast.validation` naming the JSON there."""
    from mlflow.entities import RunTag

    reports = [path for path in validation or [] if path is not None and path.exists()]
    tags = {**data.split_tags(), **extra_tags}
    json_reports = [path for path in reports if path.suffix == ".json"]
    if json_reports:
        tags["seqcast.validation"] = f"{VALIDATION_ARTIFACTS}/{json_reports[0].name}"
    commit = git_commit()
    if commit:
        tags["git.commit"] = commit
    get_client().log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    log_artifacts(run_id, reports, VALIDATION_ARTIFACTS)
    return log_dataset(run_id, frame, name="observations", source=extra_tags.get("seqcast.source", "observations"))


@task(
    name="start-mlflow-run",
    task_run_name="start-mlflow-run-{run_name}",
    retries=2,
    retry_delay_seconds=[2, 10],
    cache_policy=NO_CACHE,
)
def start_run_task(experiment_id: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
    return start_run(experiment_id, run_name, tags, parent_run_id)


@task(name="log-training-data", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_training_data_task(
    run_id: str,
    frame: pd.DataFrame,
    data: WindowedData,
    extra_tags: dict[str, str],
    validation: list[Path | None] | None = None,
) -> str:
    return log_training_data(run_id, frame, data, extra_tags, validation)


@task(name="end-mlflow-run", retries=2, retry_delay_seconds=[2, 10])
def end_run_task(run_id: str, failed: bool = False) -> None:
    end_run(run_id, failed)


@tracking_boundary
def log_decision(
    parent_run_id: str,
    decision: GateDecision,
    markdown: str,
    version: str | None = None,
    winner_metrics: dict[str, float] | None = None,
) -> None:
    """The gate's decision on the parent run: the winner's figures as metrics (`winner_metrics`, its candidate
    run's test metrics under the same names, and the gate's MASE figures; so nights compare row by row in the runs
    table), the verdict, reason and registered `version` (None: not registered) as tags, the per-series table and
    its markdown as artifacts."""
    from mlflow.entities import RunTag

    metrics = {
        **(winner_metrics or {}),
        "test_mase": decision.model_mase,
        "served_test_mase": decision.served_mase,
        "promoted": float(decision.promote),
        "beats_baselines": float(decision.beats_baselines),
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
        "seqcast.registered_version": NOT_REGISTERED if version is None else str(version),
    }
    get_client().log_batch(parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with tempfile.TemporaryDirectory(prefix="seqcast-gate-") as tmp:
        table = Path(tmp) / "gate_series.csv"
        decision.series.to_csv(table, index=False)
        log_artifacts(parent_run_id, [table])
    get_client().log_text(parent_run_id, markdown, "gate.md")


@task(name="log-decision", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def log_decision_task(
    parent_run_id: str,
    decision: GateDecision,
    markdown: str,
    version: str | None = None,
    winner_metrics: dict[str, float] | None = None,
) -> None:
    log_decision(parent_run_id, decision, markdown, version, winner_metrics)


@tracking_boundary
def finish_training(parent_run_id: str, summary_markdown: str) -> None:
    """Close the parent run with the summary as its MLflow note and as a Prefect markdown artifact."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
    from prefect.artifacts import create_markdown_artifact

    client = get_client()
    client.set_tag(parent_run_id, MLFLOW_RUN_NOTE, summary_markdown)
    client.log_text(parent_run_id, summary_markdown, "summary.md")
    end_run(parent_run_id)
    create_markdown_artifact(markdown=summary_markdown, key="training-summary", description="seqcast training run")


@task(name="finish-training", retries=2, retry_delay_seconds=[2, 10])
def finish_training_task(parent_run_id: str, summary_markdown: str) -> None:
    finish_training(parent_run_id, summary_markdown)


# --- the record of each forecast and backfill run -------------------------------------------------------------


@dataclass(frozen=True)
class ServingRecord:
    """The MLflow run that records one forecast or backfill run, and its page in the MLflow UI (None without a
    tracking server URL)."""

    run_id: str
    experiment_id: str
    experiment: str
    url: str | None

    def markdown(self) -> str:
        """`[forecast run <id>](url)`, or the ids as text to search for in the MLflow UI."""
        return markdown_link(f"run {self.run_id}", self.url) + f" in experiment `{self.experiment}`"


def serving_run_name(summary: ForecastSummary | BackfillSummary) -> str:
    """`forecast 2026-11-30 03:00` (its as_of) or `backfill 2026-11-01 00:00..2026-11-10 00:00` (its range)."""
    from tasks.forecast import BackfillSummary

    def shown(text: str) -> str:
        return f"{pd.Timestamp(text):%Y-%m-%d %H:%M}"

    if isinstance(summary, BackfillSummary):
        return f"backfill {shown(summary.start)}..{shown(summary.end)}"
    return f"forecast {shown(summary.as_of)}"


def serving_record_content(
    tracking_uri: str, summary: ForecastSummary | BackfillSummary
) -> tuple[dict[str, str], dict[str, float]]:
    """The tags and metrics of a forecast or backfill run's MLflow record: the model name, version and the MLflow
    run of that version, the series, the rows written (and for a backfill its range and origins), and MAE and
    interval coverage where actuals exist."""
    from tasks.forecast import BackfillSummary

    backfill = isinstance(summary, BackfillSummary)
    series = summary.series
    shown = ", ".join(series[:50]) + (f" (and {len(series) - 50} more)" if len(series) > 50 else "")
    tags = {
        "seqcast.kind": "backfill" if backfill else "forecast",
        "seqcast.model_name": summary.model_name,
        "seqcast.model_version": summary.model_version,
        "seqcast.model_run_id": summary.mlflow_run_id,
        "seqcast.series": shown[:4000],
        "seqcast.table": summary.table,
        "seqcast.database": summary.database,
    }
    link = version_url(tracking_uri, summary.model_name, summary.model_version)
    if link is not None:
        tags["seqcast.model_version_url"] = link
    metrics = {
        "rows_written": float(summary.rows_written),
        "series": float(len(series)),
        "skipped_series": float(len(summary.skipped)),
    }
    if isinstance(summary, BackfillSummary):
        tags.update({"seqcast.start": summary.start, "seqcast.end": summary.end, "seqcast.every": summary.every})
        metrics.update(
            {
                "origins_planned": float(summary.origins_planned),
                "origins_written": float(summary.origins_written),
                "origins_existing": float(summary.origins_existing),
                "chunks": float(summary.chunks),
            }
        )
    realised = getattr(summary, "realised", None)  # RealisedAccuracy, where actuals exist
    if realised is not None and realised.rows:
        metrics["realised_rows"] = float(realised.rows)
        if realised.mae is not None:
            metrics["realised_mae"] = float(realised.mae)
        if realised.coverage is not None:
            metrics["realised_coverage"] = float(realised.coverage)
        if realised.level is not None:
            metrics["level"] = float(realised.level)
    return tags, metrics


@tracking_boundary
def record_serving_run(
    tracking_uri: str,
    experiment: str,
    summary: ForecastSummary | BackfillSummary,
    run_tags: dict[str, str],
    artifact_root: Path | None = None,
) -> ServingRecord:
    """Record a forecast or backfill run as a finished MLflow run of `experiment` (see `serving_record_content`),
    with the summary as `summary.json` and a note linking the model version and the Prefect flow run. A rerun of
    the same Prefect flow run updates its record instead of adding one."""
    import dataclasses

    from mlflow.entities import RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    experiment_id = configure_mlflow(tracking_uri, experiment, artifact_root)
    tags, metrics = serving_record_content(tracking_uri, summary)
    client = get_client()
    flow_run_id = run_tags.get("prefect.flow_run_id")
    found = (
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`prefect.flow_run_id` = '{_quote(flow_run_id)}' "
            f"and tags.`seqcast.kind` = '{tags['seqcast.kind']}'",
            max_results=1,
        )
        if flow_run_id
        else []
    )
    run_id = found[0].info.run_id if found else start_run(experiment_id, serving_run_name(summary), run_tags)
    flow_link = flow_run_url(flow_run_id)
    note = [
        f"seqcast {tags['seqcast.kind']}: {summary.rows_written} rows written to `{summary.table}` by "
        + markdown_link(f"{summary.model_name} v{summary.model_version}", tags.get("seqcast.model_version_url"))
        + f" (MLflow run `{summary.mlflow_run_id}`) for {len(summary.series)} series.",
        "",
        "Prefect flow run: " + (markdown_link(flow_run_id, flow_link) if flow_run_id else "none (run outside Prefect)"),
    ]
    tags[MLFLOW_RUN_NOTE] = "\n".join(note)
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    log_metrics(run_id, metrics)
    client.log_dict(run_id, dataclasses.asdict(summary), "summary.json")
    end_run(run_id)
    return ServingRecord(run_id, experiment_id, experiment, run_url(tracking_uri, experiment_id, run_id))


def log_serving_run(
    tracking_uri: str,
    experiment: str,
    summary: ForecastSummary | BackfillSummary,
    run_tags: dict[str, str],
    artifact_root: Path | None = None,
) -> ServingRecord | None:
    """`record_serving_run`, or None and one warning when the tracking server cannot be reached: the forecasts are
    the product and are written already, so a missing record never fails their run."""
    try:
        return record_serving_run(tracking_uri, experiment, summary, run_tags, artifact_root)
    except TrackingUnavailableError as exc:
        run_logger(__name__).warning(
            "the %s run was not recorded in MLflow (its forecasts are written): %s", serving_run_name(summary), exc
        )
        return None


@task(name="log-serving-run", cache_policy=NO_CACHE)
def log_serving_run_task(
    tracking_uri: str,
    experiment: str,
    summary: ForecastSummary | BackfillSummary,
    run_tags: dict[str, str],
    artifact_root: Path | None = None,
) -> ServingRecord | None:
    """Not retried: MLflow's client has retried each request already, and a failure only warns."""
    return log_serving_run(tracking_uri, experiment, summary, run_tags, artifact_root)
