"""Partitions of the series: which series each network of a partitioned model trains on and serves.

A run with K partitions trains one global network per partition, each on its own series' windows, and registers
them as one model: a `PartitionedForecaster` holds the K networks and the routing (series id -> partition), so the
serving core (models/packaging.py `forecast_origins`) sends every window to its series' network and nothing
downstream (forecast, backfill, monitoring, the pyfunc model) knows there are several.

Series go to partitions by a stable hash of their id (`hash_partitions`: sha256 of the UTF-8 id, the same in every
process and on every machine, unlike Python's `hash()`, so a series keeps its partition from night to night) or by
groups the user names (`group_partitions`). The run spec (tasks/spec.py, torch-free) checks the settings alone; the
checks that need the series happen here, once they are known (`plan_partitions`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.errors import SeqcastError
from models.forecaster import PREDICT_BATCH, ForecasterConfig, RecurrentForecaster, predict_windows

PartitionBy = Literal["hash", "groups"]
# Smallest batch a partition's windows are predicted in (its last batch is padded with copies of its first window):
# smaller CPU batches change the last bits of a forecast, so a window's forecast would depend on how many other
# windows of its partition share the call (tasks/forecast.py pads whole calls to the same size for the same reason).
MIN_BATCH = 64


class PartitionError(SeqcastError, ValueError):
    """Partition settings the series cannot satisfy (more partitions than series, an empty partition, a series in
    no group, a group with no series), or a series a partitioned model does not route; the message names them."""


@dataclass(frozen=True)
class PartitionPlan:
    """Which partition each series of a run belongs to: `index [S]` (0..K-1) for `series_ids [S]`, partition k
    named `names[k]` (the group's name, or "hash-k")."""

    series_ids: list[str]
    index: np.ndarray  # [S] int64
    names: list[str]  # [K]
    by: PartitionBy

    @property
    def count(self) -> int:
        return len(self.names)

    def routing(self) -> dict[str, int]:
        """Series id -> partition, what a partitioned model saves and serves by."""
        return dict(zip(self.series_ids, self.index.tolist(), strict=True))

    def members(self, partition: int) -> np.ndarray:
        """Whether each series `[S]` belongs to `partition`."""
        return self.index == partition

    def sizes(self) -> np.ndarray:
        """Series per partition `[K]`."""
        return np.bincount(self.index, minlength=self.count)


def hash_partitions(series_ids: Sequence[str], count: int) -> np.ndarray:
    """Partition `[S]` of each series by a stable hash: the first 8 bytes of the sha256 of its UTF-8 id (big-endian)
    modulo `count`; the same in every process and machine, and a series keeps it when others come and go."""
    digests = b"".join(hashlib.sha256(sid.encode("utf-8")).digest()[:8] for sid in series_ids)
    keys = np.frombuffer(digests, dtype=">u8").astype(np.uint64)  # [S]
    return (keys % np.uint64(count)).astype(np.int64)


def group_partitions(series_ids: Sequence[str], groups: Mapping[str, Sequence[str]]) -> tuple[np.ndarray, list[str]]:
    """Partition `[S]` of each series by the user's `groups` (name -> series ids), and the groups' names in order.

    Raises PartitionError naming the series in no group (every series trained must be served by some network)
    and the groups with none of `series_ids` (a network would train on nothing). Ids of a group that are not in
    `series_ids` (series not in this run) are left out.
    """
    names = list(groups)
    group_of = {sid: k for k, name in enumerate(names) for sid in groups[name]}
    ungrouped = [sid for sid in series_ids if sid not in group_of]
    if ungrouped:
        raise PartitionError(
            f"series {ungrouped[:5]!r}{_more(ungrouped)} are in no group of `partition_groups` "
            f"({_shown(names)}); add each series to a group, or leave them out of the run with --series"
        )
    index = np.array([group_of[sid] for sid in series_ids], dtype=np.int64)
    empty = [names[k] for k in np.flatnonzero(np.bincount(index, minlength=len(names)) == 0)]
    if empty:
        raise PartitionError(
            f"groups {empty[:5]!r}{_more(empty)} of `partition_groups` have none of this run's {len(series_ids)} "
            "series; drop those groups, or train their series too"
        )
    return index, names


def plan_partitions(
    series_ids: Sequence[str], count: int = 1, groups: Mapping[str, Sequence[str]] | None = None
) -> PartitionPlan:
    """The partition of every series: by `groups` when given, else by the stable hash into `count` partitions.

    Raises PartitionError when `count` exceeds the series or the hash leaves a partition without series (each
    network needs series to train on): the message gives the counts and what to change.
    """
    ids = [str(sid) for sid in series_ids]
    if groups is not None:
        index, names = group_partitions(ids, groups)
        return PartitionPlan(ids, index, names, "groups")
    if count < 1:
        raise PartitionError(f"`partitions` ({count}) must be at least 1")
    if count > len(ids):
        raise PartitionError(
            f"`partitions` ({count}) exceeds the {len(ids)} series of this run; each partition's network needs "
            f"series to train on: use at most {len(ids)} partitions"
        )
    index = hash_partitions(ids, count) if count > 1 else np.zeros(len(ids), dtype=np.int64)
    empty = np.flatnonzero(np.bincount(index, minlength=count) == 0)
    if len(empty):
        raise PartitionError(
            f"the hash of the {len(ids)} series ids leaves partitions {empty.tolist()[:5]} of `partitions` ({count}) "
            "without series; use fewer partitions, or name the groups with `partition_groups`"
        )
    return PartitionPlan(ids, index, [f"hash-{k}" for k in range(count)], "hash")


class PartitionedForecaster(RecurrentForecaster):
    """K recurrent networks of one cell, lookback and horizon, each serving the series of its partition.

    It stands wherever one `RecurrentForecaster` does (a fit's model, a loaded forecaster's, the saved folder's
    weights: `networks.<k>.<name>`), but a window alone does not say which network reads it: `predict` takes each
    window's partition, and `forecast_origins` routes by series (`partition_of`). Calling it on windows raises.
    `config` is the first network's; the networks may differ in what training chose per partition (the scaling
    "auto" kept), never in cell, lookback, horizon or head.

    - `networks`: the K networks, partition k's at position k;
    - `routing`: series id -> partition (0..K-1), every series the model was trained on;
    - `names`: each partition's name (its group, or "hash-k"); `by`: "hash" or "groups".
    """

    def __init__(
        self,
        networks: Sequence[RecurrentForecaster],
        routing: Mapping[str, int],
        names: Sequence[str],
        by: PartitionBy,
    ) -> None:
        nn.Module.__init__(self)  # the networks are the modules; none of the single network's own layers
        if len(networks) < 1 or len(networks) != len(names):
            raise ValueError(f"{len(networks)} networks for partitions {list(names)!r}: one network per partition")
        shared = ("cell", "lookback", "horizon", "head")
        first = networks[0].config
        for k, network in enumerate(networks):
            differs = [name for name in shared if getattr(network.config, name) != getattr(first, name)]
            if differs:
                raise ValueError(f"the network of partition {names[k]!r} differs from the first in {differs}")
        outside = sorted({int(k) for k in routing.values()} - set(range(len(networks))))
        if outside:
            raise ValueError(f"routing names partitions {outside} of a model with {len(networks)} networks")
        self.config = first
        self.networks = nn.ModuleList(networks)
        self.routing = dict(sorted((str(sid), int(k)) for sid, k in routing.items()))
        self.names = [str(name) for name in names]
        self.by: PartitionBy = by

    @property
    def partition_networks(self) -> list[RecurrentForecaster]:
        """The networks, partition k's at position k (typed: `networks` is a ModuleList of them)."""
        return [network for network in self.networks if isinstance(network, RecurrentForecaster)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise PartitionError(
            "a partitioned forecaster cannot tell from a window which of its networks reads it; predict with "
            "`predict(values, starts, partition)` or `models.packaging.forecast_origins`, which route by series"
        )

    def partition_of(self, series_ids: Sequence[str]) -> np.ndarray:
        """The partition `[S]` of each of `series_ids`; PartitionError names series the model does not route."""
        unknown = [sid for sid in series_ids if sid not in self.routing]
        if unknown:
            raise PartitionError(
                f"series {unknown[:5]!r}{_more(unknown)} are not in this partitioned model's routing (it was not "
                "trained on them); forecast only trained series or retrain with them"
            )
        return np.array([self.routing[sid] for sid in series_ids], dtype=np.int64)

    def predict(self, values: torch.Tensor, starts: np.ndarray, partition: np.ndarray) -> np.ndarray:
        """Forecasts `[N, H]` (scaled units) of the windows at flat `starts [N]` of `values [total]`, window i by the
        network of `partition[i]`: one `predict_windows` call per partition, its last batch padded to at least
        `MIN_BATCH` windows so a window's forecast does not depend on the other windows of the call."""
        starts = np.asarray(starts, dtype=np.int64)
        partition = np.asarray(partition, dtype=np.int64)
        lookback, horizon = self.config.lookback, self.config.horizon
        out = np.empty((len(starts), horizon), dtype=np.float32)  # [N, H]
        for k, network in enumerate(self.partition_networks):
            rows = np.flatnonzero(partition == k)  # [N_k]
            if len(rows) == 0:
                continue
            tail = len(rows) % PREDICT_BATCH
            pad = MIN_BATCH - tail if 0 < tail < MIN_BATCH else 0
            chosen = np.concatenate([starts[rows], np.repeat(starts[rows[:1]], pad)])  # [N_k + pad]
            out[rows] = predict_windows(network, values, chosen, lookback, horizon)[: len(rows)]
        return out

    def describe(self) -> dict[str, Any]:
        """What config.json keeps to rebuild it (`from_description`): the partitions' names, how series were
        assigned, each network's config and the routing."""
        return {
            "by": self.by,
            "names": list(self.names),
            "networks": [network.config.model_dump() for network in self.partition_networks],
            "routing": dict(self.routing),
        }

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> PartitionedForecaster:
        """The model `describe` wrote, with freshly initialised networks (load the saved state_dict into it)."""
        networks = [RecurrentForecaster(ForecasterConfig.model_validate(c)) for c in description["networks"]]
        routing = {str(sid): int(k) for sid, k in description["routing"].items()}
        return cls(networks, routing, [str(n) for n in description["names"]], description["by"])


def _more(items: Sequence[Any]) -> str:
    return f" (and {len(items) - 5} more)" if len(items) > 5 else ""


def _shown(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (f", ... {len(names)} in all" if len(names) > 5 else "")
