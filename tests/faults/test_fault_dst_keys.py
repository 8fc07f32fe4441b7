"""Keys hold across daylight-saving changes, from a local-time file to the forecasts table (SQLite and PostgreSQL).

Hourly readings written in Europe/London local time (naive timestamps) over the spring change (01:00 GMT jumps
to 02:00 BST: a local hour is missing) and the autumn change (01:00 local comes twice) are ingested with
`--tz Europe/London`, stored in UTC as one reading an hour, and backfilled at every hour across the change: every
origin has its `horizon` steps, each target exactly `step` hours after its origin, and no key repeats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from forecast_setup import HORIZON, KEY, Registered

from tasks import store
from tasks.settings import get_settings

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

ZONE = "Europe/London"
CHANGES = {  # series: the UTC instant its zone changes offset
    "a": pd.Timestamp("2024-03-31 01:00", tz="UTC"),  # spring: 01:00 GMT -> 02:00 BST
    "b": pd.Timestamp("2024-10-27 01:00", tz="UTC"),  # autumn: 02:00 BST -> 01:00 GMT
}
DAYS_BEFORE, DAYS_AFTER = 4, 3
ORIGINS_EACH_SIDE = 6  # hours of origins before and after the change


def _local_csv(folder: Path, series_id: str, change: pd.Timestamp) -> tuple[Path, pd.DatetimeIndex]:
    """A CSV of hourly readings as a meter in `ZONE` writes them (naive local times); and their UTC instants."""
    utc = pd.date_range(change - pd.Timedelta(days=DAYS_BEFORE), change + pd.Timedelta(days=DAYS_AFTER), freq="h")
    hours = np.arange(len(utc))
    values = 100 + 10 * np.sin(2 * np.pi * hours / 24) + np.random.default_rng(1).normal(0, 1, len(utc))
    local = utc.tz_convert(ZONE).strftime("%Y-%m-%d %H:%M:%S")
    path = folder / f"{series_id}.csv"
    pd.DataFrame({"ts": local, "value": values}).to_csv(path, index=False)
    return path, utc


@pytest.mark.parametrize("series_id", sorted(CHANGES))
def test_forecast_keys_are_unique_and_hourly_across_a_dst_change(
    series_id: str,
    db_url: str,
    seqcast_home: Path,
    mlflow_store: str,
    model: Registered,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.backfill import backfill_flow
    from flows.cli import main

    monkeypatch.setenv("SEQCAST_DATABASE_URL", db_url)
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("SEQCAST_REGISTERED_MODEL", model.name)
    get_settings.cache_clear()
    change = CHANGES[series_id]
    path, utc = _local_csv(tmp_path, series_id, change)
    local = pd.read_csv(path)["ts"]
    if series_id == "a":
        assert not local.str.startswith("2024-03-31 01:").any(), "spring: that local hour does not exist"
    else:
        assert local.str.startswith("2024-10-27 01:00").sum() == 2, "autumn: that local hour comes twice"

    assert main(["ingest", "--source", str(path), "--series-id", series_id, "--tz", ZONE]) == 0
    stored = store.read_observations(store.get_engine(db_url), [series_id])
    assert stored["ts"].tolist() == list(utc), "stored: one reading an hour in UTC, none lost or doubled"

    start = change - pd.Timedelta(hours=ORIGINS_EACH_SIDE)
    end = change + pd.Timedelta(hours=ORIGINS_EACH_SIDE)
    summary = backfill_flow(start=start.to_pydatetime(), end=end.to_pydatetime(), every="h", series=[series_id])
    origins = pd.date_range(start, end, freq="h")
    assert summary.origins_written == len(origins) and not summary.skipped

    rows = store.read_forecasts(store.get_engine(db_url), [series_id])
    assert not rows.duplicated(KEY).any()
    assert len(rows) == len(origins) * HORIZON
    assert sorted(rows["origin_ts"].unique()) == list(origins)
    for origin, part in rows.groupby("origin_ts"):
        assert part["step"].tolist() == list(range(1, HORIZON + 1))
        assert part["target_ts"].tolist() == [origin + pd.Timedelta(hours=s) for s in range(1, HORIZON + 1)]
    # read back in local time, the targets of one origin are distinct instants, an hour apart in UTC, even where
    # the wall clock repeats or skips an hour
    local_targets = rows.loc[rows["origin_ts"] == change - pd.Timedelta(hours=1), "target_ts"].dt.tz_convert(ZONE)
    assert local_targets.is_unique and (local_targets.diff().dropna() == pd.Timedelta(hours=1)).all()
