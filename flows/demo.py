"""`seqcast demo`: the whole pipeline on the embedded stores, from a bundled sample to forecasts in SQL."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow

from flows.forecast import ForecastSummary, forecast_flow
from flows.ingest import ingest_flow
from flows.train import TrainSummary, train_flow
from tasks.forecast import FORECASTS_TABLE, alias_version_task, read_command
from tasks.settings import get_settings
from tasks.spec import RunSpec

DEMO_QUERY = f"select series_id, origin_ts, target_ts, point from {FORECASTS_TABLE} order by target_ts limit 10"  # noqa: S608


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
    training = train_flow(spec=spec)
    champion = alias_version_task(settings.tracking_uri, training.model_name)
    forecast = forecast_flow(registered_model=training.model_name) if champion is not None else None
    return DemoSummary(training=training, next_steps=next_steps(training, forecast), forecast=forecast)


def next_steps(training: TrainSummary | None = None, forecast: ForecastSummary | None = None) -> list[str]:
    """The commands that open what the demo made."""
    settings = get_settings()
    lines: list[str] = []
    if forecast is not None:
        origins = sorted(set(forecast.origins.values()))
        origin = origins[0] if len(origins) == 1 else f"{origins[0]} .. {origins[-1]}"
        lines += [
            f"Forecasts: {forecast.rows_written} rows of {forecast.model_name} v{forecast.model_version} in table "
            f"`{forecast.table}` of {forecast.database} (origin {origin}, {len(forecast.origins)} series"
            + (f", {len(forecast.skipped)} skipped" if forecast.skipped else "")
            + "). Read some:",
            f"  {read_command(settings.db_url, DEMO_QUERY)}",
        ]
    elif training is not None:
        lines += [
            f"No forecasts written: there is no champion yet ({training.reason}).",
            "  The first model must beat seasonal naive to become champion; try more epochs "
            "(seqcast demo --epochs 40) or a longer lookback.",
        ]
    return [
        *lines,
        "Open the MLflow UI on these runs:",
        f"  mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000   # then http://127.0.0.1:5000",
        "Open the Prefect UI on these flow runs:",
        "  prefect server start   # then http://127.0.0.1:4200",
    ]
