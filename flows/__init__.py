"""Prefect flows, the entry points users run and schedule, and the `seqcast` command line."""

from models import opt_out_of_telemetry

opt_out_of_telemetry()  # before any flow module imports Prefect or MLflow (models/__init__.py says why)
