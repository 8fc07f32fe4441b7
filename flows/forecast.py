"""Scheduled inference: the registered champion's forecasts from each series' last observation, into SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

from prefect import flow

from flows.console import quiet_worker_console
from tasks.forecast import (
    ForecastSummary,
    Skipped,
    StalePolicy,
    forecast_frame_task,
    forecast_summary,
    load_model_task,
    pin_model_task,
    plan_forecast_task,
    publish_forecast_summary_task,
    requested_series,
    write_forecasts_task,
)
from tasks.registry import log_serving_run_task
from tasks.run_context import resolve_run_context
from tasks.settings import get_settings
from tasks.store import read_observations_task

__all__ = ["ForecastSummary", "Skipped", "forecast_flow"]


@flow(name="seqcast-forecast", log_prints=True, on_running=[quiet_worker_console])
def forecast_flow(
    model_alias: str = "champion",
    model_version: str | None = "",
    series: Sequence[str] | None = (),
    as_of: dt.datetime | None = None,
    registered_model: str | None = "",
    stale_policy: Literal["skip", "fail"] = "skip",
    trigger: Literal["schedule", "backfill", "manual"] | None = "manual",
) -> ForecastSummary:
    """Forecast `horizon` steps from each series' last observation at or before `as_of`; write them in one
    transaction (a rerun replaces the rows, a failure writes none).

    The model version is resolved once (the version wins when both it and the alias are given), so the run keeps
    it even if the alias moves meanwhile. The run leaves a record in the MLflow experiment (SEQCAST_EXPERIMENT): a
    run `forecast <as_of>` tagged with the model version, this flow run and the rows written; a tracking server
    that cannot be reached then only warns.

    Args:
        model_alias: Registered model alias to forecast with, e.g. "champion" (default) or "challenger".
        model_version: A registered version number, e.g. "3", used instead of the alias; empty: use the alias.
        series: Forecast these series ids only; empty (default): every series in the observations table.
        as_of: Read only observations up to this date and time (UTC unless it carries an offset); None (default):
            the run's scheduled start, i.e. now.
        registered_model: MLflow registered model name; empty (default): SEQCAST_REGISTERED_MODEL ("seqcast").
        stale_policy: A series unknown to the model, too short for its lookback, with a gap in its last lookback
            window, or stale (origin + horizon x freq before `as_of`): "skip" (default) lists it in the run
            summary, "fail" fails the run before anything is written.
        trigger: What started the run, tagged on its MLflow record: "schedule", "backfill" or "manual" (default).
    """
    settings = get_settings()
    context = resolve_run_context(as_of, trigger)
    policy: StalePolicy = "fail" if stale_policy == "fail" else "skip"
    wanted = requested_series(series)
    model = pin_model_task(
        settings.tracking_uri, registered_model or settings.registered_model, model_alias, model_version
    )
    loaded = load_model_task(settings.tracking_uri, model)
    # a forecast reads each series' last lookback observations, not its history
    frame = read_observations_task(settings.db_url, wanted, context.as_of, last=loaded.lookback)
    plan = plan_forecast_task(frame, loaded, wanted, context.as_of, as_of is not None, policy)
    rows = forecast_frame_task(loaded, model, plan, context.flow_run_id)
    written = write_forecasts_task(settings.db_url, rows)
    summary = forecast_summary(settings.db_url, model, plan, written, context.as_of, context.flow_run_id)
    record = log_serving_run_task(
        settings.tracking_uri, settings.experiment, summary, context.mlflow_tags(), settings.artifact_root
    )
    publish_forecast_summary_task(summary, record)
    return summary
