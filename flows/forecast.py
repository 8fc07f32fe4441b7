"""Scheduled inference: the registered champion's forecasts from each series' last observation, into SQL."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from prefect import flow

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
from tasks.run_context import resolve_run_context
from tasks.settings import get_settings
from tasks.store import read_observations_task

__all__ = ["ForecastSummary", "Skipped", "forecast_flow"]


@flow(name="seqcast-forecast", log_prints=True)
def forecast_flow(
    model_alias: str = "champion",
    model_version: str | None = None,
    series: list[str] | None = None,
    as_of: dt.datetime | None = None,
    registered_model: str | None = None,
    stale_policy: Literal["skip", "fail"] = "skip",
    trigger: Literal["schedule", "backfill", "manual"] | None = None,
) -> ForecastSummary:
    """Forecast `horizon` steps from each series' last observation at or before `as_of`; write them in one
    transaction (a rerun replaces the rows, a failure writes none).

    - `model_alias` / `model_version`: which registered version (the version wins when both are given); it is
      resolved once, so the run keeps it even if the alias moves meanwhile.
    - `series`: series ids to forecast (default: every series in the observations table).
    - `as_of`: read only observations with ts <= as_of (default: the run's scheduled start, i.e. now).
    - `stale_policy`: what to do with a series that is unknown to the model, too short for its lookback, has a
      gap in its last lookback window, or is stale (origin + horizon x freq < as_of; without `as_of`, against the
      newest observation): "skip" lists it in the run summary, "fail" fails the run before anything is written.
    - `registered_model`: registry name (default SEQCAST_REGISTERED_MODEL).
    """
    settings = get_settings()
    context = resolve_run_context(as_of, trigger)
    policy: StalePolicy = "fail" if stale_policy == "fail" else "skip"
    wanted = requested_series(series)
    model = pin_model_task(
        settings.tracking_uri, registered_model or settings.registered_model, model_alias, model_version
    )
    loaded = load_model_task(settings.tracking_uri, model)
    frame = read_observations_task(settings.db_url, wanted, context.as_of)
    plan = plan_forecast_task(frame, loaded, wanted, context.as_of, as_of is not None, policy)
    rows = forecast_frame_task(loaded, model, plan, context.flow_run_id)
    written = write_forecasts_task(settings.db_url, rows)
    summary = forecast_summary(settings.db_url, model, plan, written, context.as_of, context.flow_run_id)
    publish_forecast_summary_task(summary)
    return summary
