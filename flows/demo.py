"""`seqcast demo`: the whole pipeline on the embedded stores, from a bundled sample to forecasts in SQL."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow

from flows.forecast import ForecastSummary, forecast_flow
from flows.ingest import ingest_flow
from flows.train import TrainSummary, train_flow
from tasks.forecast import FORECASTS_TABLE, alias_version_task, read_command
from tasks.registry import experiment_url, mlflow_ui_url
from tasks.runners import task_runner_for
from tasks.settings import get_settings
from tasks.spec import RunSpec

DEMO_QUERY = (
    f"select series_id, target_ts, point, lower, upper, level, method from {FORECASTS_TABLE} "  # noqa: S608
    "order by target_ts limit 10"
)


@dataclass
class DemoSummary:
    training: TrainSummary
    next_steps: list[str] = field(default_factory=list)
    forecast: ForecastSummary | None = None


@flow(name="seqcast-demo", log_prints=True)
def demo_flow(
    source: str = "sample:electricity",
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen, so one shared default is safe; the dashboard form shows it
) -> DemoSummary:
    """Ingest `source`, train and register the spec's candidates, forecast with the champion (when there is
    one), and say how to look at the results.

    Args:
        source: What to ingest first: a file, folder or glob, or sample:electricity|temperature|msft.
        spec: Every setting of the training run: window, model, training, evaluation, data.
    """
    settings = get_settings()
    ingest_flow(
        source=source,
        gap_policy=spec.data.gap_policy,
        max_gap_steps=spec.data.max_gap_steps,
        outlier_policy=spec.data.outlier_policy,
    )
    training = train_flow.with_options(task_runner=task_runner_for(spec))(spec=spec)
    champion = alias_version_task(settings.tracking_uri, training.model_name)
    forecast = forecast_flow(registered_model=training.model_name) if champion is not None else None
    return DemoSummary(training=training, next_steps=next_steps(training, forecast), forecast=forecast)


def next_steps(training: TrainSummary | None = None, forecast: ForecastSummary | None = None) -> list[str]:
    """The commands that open what the demo made."""
    settings = get_settings()
    lines: list[str] = []
    # the training summary above says why nothing was registered; here, what that leaves to look at
    unregistered = training is not None and training.version is None
    if forecast is not None:
        origins = sorted(set(forecast.origins.values()))
        origin = origins[0] if len(origins) == 1 else f"{origins[0]} .. {origins[-1]}"
        lines += [
            f"Forecasts: {forecast.rows_written} rows of {forecast.model_name} v{forecast.model_version}"
            + (" (the previous champion: this training registered nothing)" if unregistered else "")
            + f" in table `{forecast.table}` of {forecast.database} (origin {origin}, {len(forecast.origins)} series"
            + (f", {len(forecast.skipped)} skipped" if forecast.skipped else "")
            + "). Read some:",
            f"  {read_command(settings.db_url, DEMO_QUERY)}",
        ]
    elif training is not None:
        why = "" if unregistered else f" ({training.reason})"
        lines += [
            "No forecasts written: " + ("nothing was registered, and " if unregistered else "") + f"there is no "
            f"champion yet{why}.",
            "  The first model must beat every baseline to become champion; try more epochs "
            "(seqcast demo --epochs 40) or a longer lookback.",
        ]
    return [
        *lines,
        *mlflow_ui_lines(settings.tracking_uri, training),
        "Open the Prefect UI on these flow runs:",
        "  prefect server start   # then http://127.0.0.1:4200",
    ]


MLFLOW_UI_PORT = 5000


def mlflow_ui_lines(tracking_uri: str, training: TrainSummary | None = None) -> list[str]:
    """How to open the runs in the MLflow UI: the server's own page when the tracking URI is one, else an `mlflow
    ui` on the embedded store that starts lean (one worker), and the link that opens the experiment's runs (MLflow
    3's UI opens its GenAI overview without `workflowType=machine_learning`)."""
    server = mlflow_ui_url(tracking_uri)
    ui = server or f"http://127.0.0.1:{MLFLOW_UI_PORT}"
    page = f"{ui}/" if training is None else experiment_url(ui, training.experiment_id)
    if server is not None:
        return ["Open the MLflow UI on these runs:", f"  {page}"]
    return [
        "Open the MLflow UI on these runs:",
        f"  mlflow ui --backend-store-uri {tracking_uri} --workers 1 --port {MLFLOW_UI_PORT}",
        f"  then {page}",
    ]
