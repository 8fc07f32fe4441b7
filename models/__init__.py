"""Plain PyTorch modules (LSTM, GRU forecasters), baselines, windows and MLflow packaging: no Prefect, no database.

Importing any seqcast package (models, tasks, flows) opts this process out of the usage telemetry that Prefect and
MLflow start on import (`opt_out_of_telemetry`), so that importing seqcast opens no socket.
"""

from __future__ import annotations

import os


def opt_out_of_telemetry() -> None:
    """Turn off Prefect's and MLflow's client telemetry for this process unless the user set otherwise.

    Imported in an interactive terminal, Prefect sends a usage event to its analytics service from a background
    thread and writes a device id under PREFECT_HOME; MLflow writes an installation id under ~/.config/mlflow and
    sends usage events. `DO_NOT_TRACK` is the variable Prefect's client reads (and the common convention);
    `MLFLOW_DISABLE_TELEMETRY` is MLflow's own. A value the user set for either is kept. This must run before Prefect
    or MLflow is imported: every seqcast package calls it from its `__init__`.
    """
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


opt_out_of_telemetry()
