"""Retries on real failures: a task whose database is not there on the first try and is there on the second succeeds
on the second (calls counted), and an error that retrying cannot fix (a file that is not a database) runs once.

(Bad data and a missing champion running once are tests/test_ingest.py's and tests/test_forecast.py's.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy.exc import DatabaseError

from tasks import store

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def _run_read_task(url: str) -> tuple[str, Any]:
    """read_observations_task (no retry delay) in a flow: the name of its final state, and its result or error."""
    from prefect import flow

    @flow
    def probe() -> tuple[str, Any]:
        state = store.read_observations_task.with_options(retry_delay_seconds=0)(url, return_state=True)
        try:
            return str(state.name), state.result()
        except Exception as exc:
            return str(state.name), exc

    return probe()


def test_a_database_that_comes_up_after_the_first_try_is_read_on_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "not-there-yet"
    url = f"sqlite:///{folder / 'seqcast.db'}"
    calls: list[str] = []
    real_get_engine = store.get_engine

    def get_engine(given: str) -> Any:
        calls.append(given)
        try:
            return real_get_engine(given)
        except Exception:
            folder.mkdir()  # the database becomes available for the next try
            raise

    monkeypatch.setattr(store, "get_engine", get_engine)
    final, frame = _run_read_task(url)
    assert calls == [url, url], "one failed try, then one that succeeds"
    assert final == "Completed", frame
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["series_id", "ts", "value"]
    store.dispose_engines()


def test_a_file_that_is_not_a_database_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "seqcast.db"
    path.write_bytes(b"this is not a database\n" * 200)
    url = f"sqlite:///{path}"
    calls: list[str] = []
    real_get_engine = store.get_engine

    def get_engine(given: str) -> Any:
        calls.append(given)
        return real_get_engine(given)

    monkeypatch.setattr(store, "get_engine", get_engine)
    final, error = _run_read_task(url)
    assert calls == [url], "retrying cannot turn the file into a database: one try"
    assert final == "Failed"
    assert isinstance(error, DatabaseError) and "file is not a database" in str(error)
    store.dispose_engines()
