"""Integration fixtures: the real Prefect server, MLflow server and worker of tests/servers.py.

A failing test here gets the end of every running server's log attached to its report.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest
from servers import (  # noqa: F401 - fixtures are registered by being imported here
    mlflow_server,
    mlflow_server_process,
    prefect_server,
    prefect_server_process,
    prefect_worker,
    prefect_worker_process,
    running_services,
    server_logs,
    start_servers,
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for service in running_services():
            report.sections.append((f"{service.name} log", service.log_tail(120)))
    return report
