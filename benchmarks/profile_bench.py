"""Where seqcast's training time goes: torch.profiler over `fit_forecaster` and over the bare loop, same windows.

Reported per training step: wall time, time inside torch operators on the main thread (kernels, including the
waits for the intra-op worker), and the rest ("outside operators": Python, the optimizer's and the trainer's own
bookkeeping), plus the operators that take the most self time, grouped by what they are for.
"""

from __future__ import annotations

import time
from typing import Any, Literal, cast

import numpy as np
import torch

from benchmarks.common import THREADS
from benchmarks.entries import Shape, _BareNet
from tasks.windowing import WindowedData

GROUPS = (
    ("rnn forward", ("lstm", "gru", "rnn_layer", "mkldnn_rnn")),
    ("rnn backward", ("backward",)),
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "sqrt")),
    ("grad clip", ("norm", "clamp", "clip")),
    ("gather", ("index", "gather", "randperm")),
)


def _group(name: str) -> str:
    lowered = name.lower()
    if "backward" in lowered or lowered.startswith("autograd"):
        return "backward (autograd)"
    for group, keys in GROUPS:
        if any(k in lowered for k in keys):
            return group
    return "other ops"


def _summarise(prof: Any, wall: float, steps: int) -> dict[str, Any]:
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep") and e.key != "[memory]"]
    self_us = {e.key: e.self_cpu_time_total for e in events}
    inside = sum(self_us.values()) / 1e6
    groups: dict[str, float] = {}
    for key, us in self_us.items():
        groups[_group(key)] = groups.get(_group(key), 0.0) + us / 1e6
    top = sorted(self_us.items(), key=lambda kv: kv[1], reverse=True)[:10]
    return {
        "steps": steps,
        "wall_ms_per_step": round(1e3 * wall / steps, 2),
        "inside_ops_ms_per_step": round(1e3 * inside / steps, 2),
        "outside_ops_ms_per_step": round(1e3 * max(wall - inside, 0.0) / steps, 2),
        "inside_ops_fraction": round(inside / wall, 3),
        "groups_ms_per_step": {k: round(1e3 * v / steps, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_ops_ms_per_step": {k: round(us / 1e3 / steps, 2) for k, us in top},
    }


def profile_training(data: WindowedData, shape: Shape) -> dict[str, Any]:
    """One epoch of `fit_forecaster` (validation included, as it runs) and the same number of bare-loop steps."""
    from torch.profiler import ProfilerActivity, profile

    from tasks.train import TrainConfig, fit_forecaster

    torch.set_num_threads(THREADS)
    n = len(data.train_starts)
    steps = -(-n // shape.batch)
    config = TrainConfig(
        cell=cast(Literal["lstm", "gru"], shape.cell),  # Shape keeps a plain str; TrainConfig checks it
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        batch_size=shape.batch,
        learning_rate=shape.learning_rate,
        max_epochs=1,
        lr_schedule="none",
        device="cpu",
        num_threads=THREADS,
        scaling="series",  # one network, as in the speed section
    )
    fit_forecaster(data, config)  # warm-up: oneDNN primitives, allocator
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fit = fit_forecaster(data, config)
        wall = time.perf_counter() - t
    seqcast = _summarise(prof, wall, steps)
    seqcast["validation_s"] = round(fit.history[0]["seconds"] - n / fit.windows_per_second, 3)

    L, H = data.lookback, data.horizon
    index = data.train_starts[:, None] + np.arange(L + H)
    block = torch.from_numpy(data.scaled[index])
    x_all, y_all = block[:, :L, None].contiguous(), block[:, L:].contiguous()
    torch.manual_seed(0)
    net = _BareNet(shape, H)
    optimizer = torch.optim.Adam(net.parameters(), lr=shape.learning_rate)

    def loop() -> None:
        for i in range(0, n, shape.batch):
            loss = torch.nn.functional.mse_loss(net(x_all[i : i + shape.batch]), y_all[i : i + shape.batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    loop()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        loop()
        wall = time.perf_counter() - t
    bare = _summarise(prof, wall, steps)
    return {
        "data": f"{n} windows, batch {shape.batch}, {shape.cell} {shape.layers}x{shape.hidden}, L={L}, H={H}",
        "seqcast_fit_forecaster": seqcast,
        "bare_loop": bare,
        "note": "torch.profiler (CPU activity, main thread); profiler overhead inflates small ops a little",
    }
