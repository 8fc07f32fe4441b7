"""`seqcast demo`: the whole pipeline on the embedded stores, from a bundled sample to a registered champion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefect import flow

from flows.ingest import ingest_flow
from flows.train import TrainSummary, train_flow
from tasks.settings import get_settings


@dataclass
class DemoSummary:
    training: TrainSummary
    next_steps: list[str] = field(default_factory=list)


@flow(name="seqcast-demo", log_prints=True)
def demo_flow(
    source: str = "sample:electricity",
    cells: list[Literal["lstm", "gru"]] | None = None,
    lookback: int = 336,
    horizon: int = 48,
    max_epochs: int = 20,
    hidden_size: int = 64,
    num_layers: int = 2,
    batch_size: int = 256,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    seed: int = 0,
) -> DemoSummary:
    """Ingest `source`, train and register LSTM and GRU candidates, and say how to look at the results."""
    ingest_flow(source=source)
    training = train_flow(
        cells=cells,
        lookback=lookback,
        horizon=horizon,
        max_epochs=max_epochs,
        hidden_size=hidden_size,
        num_layers=num_layers,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
    return DemoSummary(training=training, next_steps=next_steps())


def next_steps() -> list[str]:
    """The commands that open what the demo made."""
    settings = get_settings()
    return [
        "Open the MLflow UI on these runs:",
        f"  mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000   # then http://127.0.0.1:5000",
        "Open the Prefect UI on these flow runs:",
        "  prefect server start   # then http://127.0.0.1:4200",
    ]
