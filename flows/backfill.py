"""Backfill: the forecasts that would have been made at each past origin of a range, from the data known then."""

from __future__ import annotations

import datetime as dt

from prefect import flow

from tasks.forecast import (
    BackfillSummary,
    Skipped,
    backfill_summary,
    check_backfill_range,
    chunk_forecasts,
    forecast_frame_task,
    load_model_task,
    observation_span_task,
    pending_origins_task,
    pin_model_task,
    plan_backfill_task,
    publish_backfill_summary_task,
    report_progress,
    requested_series,
    start_progress,
    write_forecasts_task,
)
from tasks.run_context import resolve_run_context
from tasks.settings import get_settings
from tasks.store import read_observations_task

__all__ = ["BackfillSummary", "Skipped", "backfill_flow"]


@flow(name="seqcast-backfill", log_prints=True)
def backfill_flow(
    start: dt.datetime,
    end: dt.datetime,
    every: str | None = None,
    model_alias: str = "champion",
    model_version: str | None = None,
    series: list[str] | None = None,
    registered_model: str | None = None,
) -> BackfillSummary:
    """Forecast at every origin of [`start`, `end`] exactly as the forecast flow would have then.

    - `every`: spacing of origin times as a pandas offset alias ("1D", "6h", "30min"; default: the model's
      frequency). An origin time between observations snaps back to the last observation at or before it.
    - Each origin reads only observations with ts <= origin; origins without `lookback` regular observations
      before them, or stale ones, are skipped and reported.
    - Writes go in chunks of whole origins, one transaction each; origins this model version already has in the
      table are not recomputed, so a rerun after a failure fills in what is missing and duplicates nothing.
    - `model_alias` / `model_version` / `registered_model`: as for the forecast flow (resolved once).
    """
    settings = get_settings()
    start_utc, end_utc = check_backfill_range(start, end, every)
    context = resolve_run_context(end_utc, "backfill")
    wanted = requested_series(series)
    model = pin_model_task(
        settings.tracking_uri, registered_model or settings.registered_model, model_alias, model_version
    )
    loaded = load_model_task(settings.tracking_uri, model)
    span = observation_span_task(settings.db_url, wanted)
    frame = read_observations_task(settings.db_url, wanted, end_utc)
    plan = plan_backfill_task(frame, span, loaded, wanted, start_utc, end_utc, every)
    pending, existing = pending_origins_task(settings.db_url, model, plan)
    rows = forecast_frame_task(loaded, model, pending, context.flow_run_id)
    chunks = chunk_forecasts(rows, loaded.horizon)
    progress = start_progress(len(rows), f"backfill {start_utc.isoformat()} .. {end_utc.isoformat()}")
    written = 0
    for number, chunk in enumerate(chunks, start=1):
        written += write_forecasts_task(settings.db_url, chunk)
        report_progress(progress, chunk, number, len(chunks), written, len(rows))
    summary = backfill_summary(
        settings.db_url,
        model,
        plan,
        existing,
        written,
        len(chunks),
        start_utc,
        end_utc,
        every or loaded.freq,
        context.flow_run_id,
    )
    publish_backfill_summary_task(summary)
    return summary
