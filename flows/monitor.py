"""Nightly monitoring: score the forecasts whose actuals arrived, compare them with what each model promised, publish,
and raise `seqcast.forecast.degraded` when a model serving now has degraded (the retraining automation listens)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from prefect import flow

from flows.console import quiet_worker_console
from tasks.forecast import requested_series
from tasks.monitor import (
    MonitorConfig,
    aggregate_scores_task,
    compare_with_references_task,
    drift_series,
    load_references_task,
    mase_scales,
    monitor_window,
    read_new_observations_task,
)
from tasks.monitor_publish import (
    MONITOR_EXPERIMENT_SUFFIX,
    MonitorSummary,
    emit_degraded_task,
    log_night_task,
    monitor_summary,
    publish_report_task,
)
from tasks.run_context import resolve_run_context
from tasks.scores import forecast_versions_task, read_scores_task, score_forecasts_task
from tasks.settings import get_settings

__all__ = ["MonitorConfig", "MonitorSummary", "monitor_flow"]


@flow(name="seqcast-monitor", log_prints=True, on_running=[quiet_worker_console])
def monitor_flow(
    config: MonitorConfig = MonitorConfig(),  # noqa: B008 - frozen, so one shared default is safe; a form in the UI
    model_version: str | None = None,
    series: Sequence[str] | None = (),
    registered_model: str | None = "",
    as_of: dt.datetime | None = None,
) -> MonitorSummary:
    """Score the forecasts of the last `config.days` nights against the observations that arrived up to `as_of`,
    aggregate them per version, series and horizon step, compare them with each version's test figures, publish the
    report (Prefect artifacts, one MLflow record per night), and emit `seqcast.forecast.degraded` for a degraded
    version that still forecasts.

    Args:
        config: The trailing window, the degradation rules (MASE factor and nights, coverage tolerance) and the
            drift thresholds.
        model_version: Monitor this registered version only, e.g. "3"; None (default): every version with
            forecasts in the window.
        series: Monitor these series ids only; empty (default): every series with forecasts.
        registered_model: MLflow registered model name; empty (default): SEQCAST_REGISTERED_MODEL ("seqcast").
        as_of: The night to report on, a date and time (UTC unless it carries an offset): scores use observations
            up to it; None (default): the run's scheduled start.
    """
    settings = get_settings()
    context = resolve_run_context(as_of, None)
    name = registered_model or settings.registered_model
    wanted = requested_series(series)
    window = monitor_window(context.as_of, config.days)

    versions = forecast_versions_task(settings.db_url, name, window.start, window.end, model_version)
    references = load_references_task(settings.tracking_uri, name, versions)
    written = score_forecasts_task(
        settings.db_url, name, mase_scales(references), window.end, window.start, versions, wanted
    )
    scores = read_scores_task(settings.db_url, name, versions, window.start, window.end, wanted)
    observations = read_new_observations_task(settings.db_url, drift_series(references, wanted), window)
    aggregates = aggregate_scores_task(scores, references)
    report = compare_with_references_task(aggregates, observations, references, config, name, window, wanted)

    publish_report_task(report)
    experiment = settings.experiment + MONITOR_EXPERIMENT_SUFFIX
    runs = log_night_task(settings.tracking_uri, experiment, settings.artifact_root, report)
    events = emit_degraded_task(report)
    return monitor_summary(report, written, runs, events, experiment, settings.db_url)
