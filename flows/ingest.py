"""The ingest flow: read a source, validate it, upsert it. Wiring only; the work is in tasks/ingest.py and
tasks/validate.py. The database URL comes from SEQCAST_DATABASE_URL, never a parameter, so no password shows
in the Prefect UI.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.ingest import describe_source, read_source_task, write_observations_task
from tasks.validate import GapPolicy, OutlierPolicy, validate_observations_task


@flow(name="ingest")
def ingest_flow(
    source: str | None = "sample:electricity",
    query: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    series_col: str | None = None,
    series_id: str | None = None,
    tz: str | None = None,
    gap_policy: GapPolicy = "fail",
    max_gap_steps: int | None = None,
    calendar: str | None = None,
    outlier_policy: OutlierPolicy = "fail",
) -> dict[str, Any]:
    """Read `source` (retried on I/O errors), validate it (never retried), write it in one transaction.

    `calendar` ("NYSE", "XLON", ...) declares daily series on that exchange's trading days (holidays are no gaps).
    `outlier_policy` refuses ("fail"), keeps ("warn") or clips ("clip") values far outside their series' band.
    """
    raw = read_source_task(
        source, query=query, time_col=time_col, value_col=value_col, series_col=series_col, series_id=series_id
    )
    clean, report = validate_observations_task(
        raw,
        tz=tz,
        gap_policy=gap_policy,
        max_gap_steps=max_gap_steps,
        source=describe_source(source, query),
        calendar=calendar,
        outlier_policy=outlier_policy,
    )
    summary = write_observations_task(clean)
    return {
        "new": summary.new,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "series": len(summary.series),
        "outliers": report.outliers,
        "validation_report": str(report.json_path),
    }
