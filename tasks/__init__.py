"""Prefect tasks, one module per pipeline stage; plain functions do the work, thin @task wrappers orchestrate it."""

from models import opt_out_of_telemetry

opt_out_of_telemetry()  # before any task module imports Prefect or MLflow (models/__init__.py says why)
