"""What every flow run knows about itself: its logical date (`as_of`), what started it, its Prefect id."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Literal

import pandas as pd

Trigger = Literal["schedule", "backfill", "manual"]


@dataclass(frozen=True)
class RunContext:
    as_of: pd.Timestamp  # UTC; the run reads only rows with ts <= as_of
    trigger: Trigger
    flow_run_id: str | None

    def mlflow_tags(self) -> dict[str, str]:
        tags = {"seqcast.as_of": self.as_of.isoformat(), "seqcast.trigger": self.trigger}
        if self.flow_run_id:
            tags["prefect.flow_run_id"] = self.flow_run_id
        return tags


def to_utc(value: dt.datetime | pd.Timestamp | str) -> pd.Timestamp:
    """A timestamp in UTC; naive values are taken as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def resolve_run_context(as_of: dt.datetime | None, trigger: Trigger | None) -> RunContext:
    """`as_of` defaults to the run's scheduled start (now for an ad-hoc run); trigger defaults to manual."""
    from prefect.runtime import flow_run

    flow_run_id = flow_run.id
    if as_of is None:
        scheduled = flow_run.scheduled_start_time if flow_run_id else None
        as_of = scheduled or dt.datetime.now(dt.UTC)
    return RunContext(as_of=to_utc(as_of), trigger=trigger or "manual", flow_run_id=flow_run_id)


def run_logger(name: str = "seqcast") -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a flow or task run (its lines reach the UI), the `name` logger elsewhere."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()  # type: ignore[return-value]
    except MissingContextError:
        return logging.getLogger(name)
