"""Warm start: the champion's network, fine-tuned on tonight's windows, as one more candidate.

A nightly retrain from scratch repeats most of the previous night's work. Continuing the champion's weights on the
new data takes a few epochs at a lower learning rate; the result competes with the cells trained from scratch on
the same windows and passes the same gate, so it serves only when it is the better model. The champion must
match the run: the same lookback, horizon and frequency, and one network (a partitioned champion is not continued).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.partitions import PartitionedForecaster
from tasks.run_context import run_logger
from tasks.spec import RunSpec
from tasks.train import TrainConfig

if TYPE_CHECKING:
    from tasks.windowing import WindowedData

# The warm candidate's learning rate, as a share of the run's: fine-tuning moves weights that already fit.
WARM_LEARNING_RATE_SHARE = 0.2


@dataclass(frozen=True)
class WarmStart:
    """The champion's network to continue: its registered `version`, the training config that rebuilds and
    fine-tunes it (its cell, shape and concrete scaling; the spec's warm epochs and a lower learning rate), and its
    weights on the CPU."""

    version: str
    config: TrainConfig
    state: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        """The candidate's name beside the cells: "<cell>-warm"."""
        return f"{self.config.cell}-warm"


def champion_start(model_name: str, data: WindowedData, spec: RunSpec) -> tuple[WarmStart | None, str]:
    """The champion of `model_name` as a warm start for a run on `data` with `spec`, or None; and why (or which
    version), in words for the run's log."""
    from tasks.registry import CHAMPION, get_alias, load_version

    if spec.partition.count > 1:
        return None, "a partitioned run trains its partitions from scratch"
    version = get_alias(model_name, CHAMPION)
    if version is None:
        return None, f"registered model {model_name!r} has no champion yet"
    champion = load_version(model_name, str(version.version))
    network, shape = champion.model, champion.config
    reason = None
    if isinstance(network, PartitionedForecaster):
        reason = f"champion v{version.version} is partitioned"
    elif (shape.lookback, shape.horizon) != (data.lookback, data.horizon):
        reason = (
            f"champion v{version.version} reads {shape.lookback} steps and forecasts {shape.horizon}; this run "
            f"{data.lookback} and {data.horizon}"
        )
    elif champion.freq != data.freq:
        reason = f"champion v{version.version} is for {champion.freq!r} data, this run's is {data.freq!r}"
    if reason is not None:
        return None, reason
    training = spec.training
    config = spec.train_config(shape.cell).model_copy(
        update={
            "hidden_size": shape.hidden_size,
            "num_layers": shape.num_layers,
            "dropout": shape.dropout,
            "head": shape.head,
            "scaling": shape.scaling,
            "max_epochs": training.warm_start_epochs,
            "learning_rate": training.learning_rate * WARM_LEARNING_RATE_SHARE,
        }
    )
    state = {name: tensor.detach().to("cpu").clone() for name, tensor in network.state_dict().items()}
    return WarmStart(str(version.version), config, state), f"from champion v{version.version}"


@task(name="load-warm-start", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def champion_start_task(model_name: str, data: WindowedData, spec: RunSpec) -> WarmStart | None:
    """`champion_start`, its outcome logged: which champion the warm candidate continues, or why there is none."""
    start, why = champion_start(model_name, data, spec)
    run_logger(__name__).log(
        logging.INFO, "warm start %s" if start is not None else "no warm-started candidate: %s", why
    )
    return start
