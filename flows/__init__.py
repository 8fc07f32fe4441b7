"""Prefect flows, the entry points users run and schedule, and the `seqcast` command line."""

import os

from models import opt_out_of_telemetry

opt_out_of_telemetry()  # before any flow module imports Prefect or MLflow (models/__init__.py says why)

if os.environ.get("PREFECT__FLOW_RUN_ID") and not os.environ.get("SEQCAST_DEBUG"):
    # a flow run that a Prefect worker started: its console is the worker's log, which gets what a command's console
    # gets (no state line per task, our errors without a traceback); the Prefect UI keeps every line
    from flows.console import quiet_worker_console

    quiet_worker_console()
