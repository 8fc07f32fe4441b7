"""Prefect tasks, one module per pipeline stage; plain functions do the work, thin @task wrappers orchestrate it."""
