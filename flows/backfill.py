"""Backfill: the forecasts that would have been made at each past origin of a range, from the data known then."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from prefect import flow

from flows.console import quiet_worker_console
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
from tasks.registry import log_serving_run_task
from tasks.run_context import resolve_run_context
from tasks.settings import get_settings
from tasks.store import read_observations_task

__all__ = ["BackfillSummary", "Skipped", "backfill_flow"]


@flow(name="seqcast-backfill", log_prints=True, on_running=[quiet_worker_console])
def backfill_flow(
    start: dt.datetime,
    end: dt.datetime,
    every: str | None = "1D",
    model_alias: str = "champion",
    model_version: str | None = "",
    series: Sequence[str] | None = (),
    registered_model: str | None = "",
) -> BackfillSummary:
    """Forecast at every origin of [`start`, `end`] exactly as the forecast flow would have then.

    - Origins are `every` apart from `start` (one a day by default, as the nightly forecast makes them); an origin
      time between observations snaps back to the last observation at or before it.
    - Each origin reads only observations with ts <= origin; origins without `lookback` regular observations
      before them, or stale ones, are skipped and reported.
    - Contract: each origin is written all or nothing, and a rerun completes the backfill. Rows go in chunks of
      whole origins (all `horizon` steps of a series at an origin; `tasks.forecast.BACKFILL_CHUNK_ROWS` rows
      each), one database transaction per chunk, so a run that fails or is killed, even with SIGKILL, leaves the
      chunks it committed, each origin complete, and nothing of the chunk in flight. Origins this model version
      already has in the table are not recomputed, so rerunning the same backfill writes exactly the missing
      origins, duplicates nothing, and ends with the forecasts a run that never stopped would have written
      (tests/faults/test_backfill_kill.py).
    - The model is resolved once, so the whole backfill uses one version even if the alias moves meanwhile.
    - The run leaves a record in the MLflow experiment: a run `backfill <start>..<end>`, as the forecast flow does.

    Args:
        start: First origin time, a date and time (UTC unless it carries an offset), e.g. 2000-08-01T00:00:00Z.
        end: Last origin time, included (UTC unless it carries an offset); each origin reads only observations
            up to itself.
        every: Time between two origins, a pandas offset alias: "1D" (default: one origin a day), "6h", "30min",
            "1W". None: one origin at every observation of the series.
        model_alias: Registered model alias to forecast with, e.g. "champion" (default) or "challenger".
        model_version: A registered version number, e.g. "3", used instead of the alias; empty: use the alias.
        series: Backfill these series ids only; empty (default): every stored series.
        registered_model: MLflow registered model name; empty (default): SEQCAST_REGISTERED_MODEL ("seqcast").
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
    record = log_serving_run_task(
        settings.tracking_uri, settings.experiment, summary, context.mlflow_tags(), settings.artifact_root
    )
    publish_backfill_summary_task(summary, record)
    return summary
