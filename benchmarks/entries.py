"""The training entries: seqcast's trainer, a bare PyTorch loop, Darts BlockRNNModel, NeuralForecast LSTM/GRU.

Every entry trains on exactly the same windows (the training part of `WindowedData`, in seqcast's scaled units
unless a tool's own defaults say otherwise), with torch pinned to `THREADS` threads, and forecasts the same test
windows, which are scored in original units. Peers are imported lazily, so the seqcast and bare entries run where
Darts and NeuralForecast are not installed.

Each `train_*` returns an `EntryResult`. A `Curve` (time to accuracy) records the test MAE at checkpoints with the
clock paused, so the time charged to a tool is only its own training.

`device="cuda"` (run.py --device cuda): seqcast gets `TrainConfig(device="cuda")` and its own bf16 autocast; the
bare loop keeps its pre-made tensors on the GPU and runs under `torch.autocast("cuda", dtype=torch.bfloat16)`
(cuDNN RNN, fused Adam); Darts and NeuralForecast get Lightning's `accelerator="gpu", devices=1,
precision="bf16-mixed"`. Every clock is read after `torch.cuda.synchronize()`, memory is the GPU's
(`torch.cuda.max_memory_allocated` delta), and each entry records the dtype its first recurrent layer actually
produced (bfloat16 when autocast reached the cuDNN RNN).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmarks.common import THREADS, PeakMemory, Stopwatch, installed, peak_memory, sync
from tasks.windowing import WindowedData

PEERS = {"darts": "darts", "neuralforecast": "neuralforecast"}  # tool -> module that must be importable
TOOLS = ("seqcast", "bare", "darts", "neuralforecast")


@dataclass(frozen=True)
class Shape:
    """The network and batch every entry shares."""

    cell: str = "lstm"
    hidden: int = 64
    layers: int = 2
    batch: int = 256
    learning_rate: float = 1e-3


@dataclass
class EntryResult:
    tool: str
    cell: str
    windows: int  # training windows seen (with repeats over epochs)
    wall_s: float  # the whole fit call: set-up, training loop, and for seqcast its per-epoch validation
    peak_rss_mib: float
    memory_method: str
    loop_s: float | None = None  # training loop only, where the tool lets us see it
    predicted: np.ndarray | None = field(default=None, repr=False)  # test forecasts [N, H], original units
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    curve: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    gpu_peak_mib: float | None = None  # device="cuda": torch.cuda.max_memory_allocated delta
    bf16_autocast: bool | None = None  # device="cuda": whether the tool ran its step under bf16 autocast
    rnn_dtype: str | None = None  # device="cuda": dtype of the first recurrent layer's output (what really ran)

    @property
    def windows_per_s(self) -> float:
        return self.windows / max(self.wall_s, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "tool": self.tool,
            "cell": self.cell,
            "windows": self.windows,
            "wall_s": round(self.wall_s, 3),
            "windows_per_s": round(self.windows_per_s, 1),
            "loop_s": None if self.loop_s is None else round(self.loop_s, 3),
            "loop_windows_per_s": None if not self.loop_s else round(self.windows / self.loop_s, 1),
            "peak_rss_delta_mib": round(self.peak_rss_mib, 1),
            "settings": self.settings,
        }
        if self.device != "cpu":  # CPU results keep exactly their keys
            out["device"] = self.device
            out["peak_gpu_mem_delta_mib"] = None if self.gpu_peak_mib is None else round(self.gpu_peak_mib, 1)
            out["bf16_autocast"] = self.bf16_autocast
            out["rnn_dtype"] = self.rnn_dtype
            out["bf16"] = self.rnn_dtype == "bfloat16"
        if self.note:
            out["note"] = self.note
        if self.curve:
            out["curve"] = self.curve
        return out


def available(tool: str) -> bool:
    return tool not in PEERS or installed(PEERS[tool])


def pin_threads() -> None:
    torch.set_num_threads(THREADS)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's, Darts' and NeuralForecast's banners and warnings for the duration."""
    names = (
        "pytorch_lightning",
        "pytorch_lightning.utilities.rank_zero",
        "lightning",
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "lightning_fabric",
        "darts",
        "neuralforecast",
    )
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def watch_rnn_dtype(module: torch.nn.Module, sink: dict[str, Any]) -> None:
    """Record in `sink["rnn_dtype"]` the dtype of the first recurrent layer's output at its first forward, then
    unhook (no cost afterwards): "bfloat16" when bf16 autocast really reached the RNN kernel."""
    handles: list[Any] = []

    def hook(mod: torch.nn.Module, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        sink.setdefault("rnn_dtype", str(out.dtype).removeprefix("torch."))
        for handle in handles:
            handle.remove()

    rnn = next((m for m in module.modules() if isinstance(m, torch.nn.RNNBase)), None)
    if rnn is not None:
        handles.append(rnn.register_forward_hook(hook))


def bf16_rnn_supported(cell: str, device: torch.device) -> bool:
    """Whether nn.LSTM / nn.GRU runs forward and backward under bf16 autocast on this CUDA device: seqcast's own
    probe (`bf16_autocast_supported`, once per device and cell); False on CPU. The bare loop falls back to float32
    where it does not, as seqcast does."""
    from models.forecaster import ForecasterConfig, RecurrentForecaster, bf16_autocast_supported

    if device.type != "cuda":
        return False
    with torch.random.fork_rng(devices=[]):  # building the probe must not shift the entries' seeded CPU RNG
        probe = RecurrentForecaster(ForecasterConfig(cell=cell, lookback=4, horizon=2, hidden_size=8, num_layers=1))  # type: ignore[arg-type]
    return bf16_autocast_supported(probe, device)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints for time to accuracy


@dataclass
class Curve:
    """Test MAE at checkpoints against the tool's own training time (the clock is paused while scoring)."""

    score: Callable[[np.ndarray], float]  # forecasts [N, H] in original units -> test MAE
    clock: Stopwatch
    max_seconds: float = math.inf
    points: list[dict[str, float]] = field(default_factory=list)

    def record(self, windows: int, forecast: Callable[[], np.ndarray]) -> bool:
        """Score a checkpoint; returns True when the training-time cap is reached (the caller stops)."""
        seconds = self.clock.pause()
        with torch.no_grad():
            mae = self.score(forecast())
        self.points.append({"seconds": round(seconds, 3), "windows": int(windows), "test_mae": round(mae, 4)})
        self.clock.resume()
        return seconds >= self.max_seconds


# ---------------------------------------------------------------------------------------------------------------
# shared tensors


def test_inputs(data: WindowedData, values: np.ndarray | None = None) -> torch.Tensor:
    """Inputs `[N, L, 1]` of the test windows from `values` (default: seqcast's scaled values)."""
    source = data.scaled if values is None else values
    index = data.test_starts[:, None] + np.arange(data.lookback)
    return torch.from_numpy(np.ascontiguousarray(source[index], dtype=np.float32))[:, :, None]


def test_series(data: WindowedData) -> np.ndarray:
    return data.panel.series_of(data.test_starts)


def unscale(data: WindowedData, scaled: np.ndarray) -> np.ndarray:
    """Forecasts in seqcast's scaled units `[N, H]` -> original units."""
    return data.scalers.inverse(np.asarray(scaled, dtype=np.float64), test_series(data))


def train_part(data: WindowedData, values: np.ndarray) -> list[np.ndarray]:
    """Each series' training part (the values every tool trains on)."""
    start = data.panel.offsets[:-1]
    return [values[start[k] : data.splits.train_end[k]] for k in range(len(start))]


# ---------------------------------------------------------------------------------------------------------------
# seqcast


def train_seqcast(
    data: WindowedData,
    shape: Shape,
    epochs: int,
    curve: Curve | None = None,
    overrides: dict[str, Any] | None = None,
    forecast: bool = True,
    device: str = "cpu",
) -> EntryResult:
    """`fit_forecaster` as the pipeline calls it. Without `overrides`: seqcast's defaults (AdamW with no weight
    decay = Adam, MSE, clip 1.0, validation every epoch, best-epoch restore), the shared shape, no LR schedule,
    no early stop, so it sees exactly `epochs x train windows` like every other entry. `device="cuda"`:
    `TrainConfig(device="cuda")`, i.e. seqcast's own CUDA path (cuDNN, fused AdamW, bf16 autocast when its probe
    allows)."""
    import tasks.train as train_module
    from models.forecaster import RecurrentForecaster, predict_windows

    settings: dict[str, Any] = {
        "cell": shape.cell,
        "hidden_size": shape.hidden,
        "num_layers": shape.layers,
        "batch_size": shape.batch,
        "learning_rate": shape.learning_rate,
        "max_epochs": epochs,
        "patience": epochs + 1,
        "lr_schedule": "none",
        "device": device,
        "num_threads": THREADS,
        "seed": 0,
        "scaling": "series",  # one network at the shared shape, normalised as the peers normalise (auto trains two)
    }
    settings.update(overrides or {})
    config = train_module.TrainConfig.model_validate(settings)
    n_train = len(data.train_starts)
    values = torch.from_numpy(data.scaled)

    live: dict[str, RecurrentForecaster] = {}
    seen: dict[str, Any] = {}

    class _Spy(RecurrentForecaster):  # hands the model being trained to the checkpoint scorer
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            live["model"] = self
            if device != "cpu":
                watch_rnn_dtype(self, seen)

    def on_epoch(record: dict[str, float]) -> None:
        if curve is None:
            return
        model = live["model"]
        done = curve.record(
            int(record["epoch"]) * n_train,
            lambda: unscale(data, predict_windows(model, values, data.test_starts, data.lookback, data.horizon)),
        )
        if done:
            raise _TimeCap

    pin_threads()
    original = train_module.RecurrentForecaster
    train_module.RecurrentForecaster = _Spy  # type: ignore[misc,assignment]
    clock = curve.clock if curve is not None else Stopwatch()
    fit = None
    note = ""
    try:
        with peak_memory(device) as mem:
            sync(device)
            clock.start()
            try:
                fit = train_module.fit_forecaster(data, config, on_epoch=on_epoch)
            except _TimeCap:
                note = f"stopped at the {curve.max_seconds if curve else 0:.0f} s training-time cap"
            sync(device)
            wall = clock.pause()
    finally:
        train_module.RecurrentForecaster = original  # type: ignore[misc]
    model = fit.model if fit is not None else live["model"].eval()
    epochs_run = len(fit.history) if fit is not None else (len(curve.points) if curve else 0)
    predicted = None
    if forecast:
        predicted = unscale(data, predict_windows(model, values, data.test_starts, data.lookback, data.horizon))
    loop_s = None
    if fit is not None:
        loop_s = epochs_run * n_train / fit.windows_per_second
        if fit.stopped_early:
            note = f"early stop after epoch {epochs_run} (best epoch {fit.best_epoch})"
    return EntryResult(
        tool="seqcast",
        cell=config.cell,
        windows=epochs_run * n_train,
        wall_s=wall,
        loop_s=loop_s,
        peak_rss_mib=mem.delta_mib,
        memory_method=mem.method,
        predicted=predicted,
        settings=config.model_dump(exclude={"device", "eval_batch_size", "max_loss", "huber_delta"}),
        note=note,
        curve=curve.points if curve else [],
        device=device,
        gpu_peak_mib=mem.gpu_delta_mib,
        bf16_autocast=None if fit is None else fit.bf16,
        rnn_dtype=seen.get("rnn_dtype"),
    )


class _TimeCap(Exception):
    """Raised from a checkpoint to end a run at its training-time cap."""


# ---------------------------------------------------------------------------------------------------------------
# bare PyTorch loop over pre-made tensors: the hardware limit for the shape


class _BareNet(torch.nn.Module):
    def __init__(self, shape: Shape, horizon: int) -> None:
        super().__init__()
        rnn = torch.nn.LSTM if shape.cell == "lstm" else torch.nn.GRU
        self.rnn = rnn(1, shape.hidden, shape.layers, batch_first=True)
        self.head = torch.nn.Linear(shape.hidden, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # [B, L, 1] -> [B, L, hidden]
        return self.head(out[:, -1])  # [B, hidden] -> [B, H]


def train_bare(
    data: WindowedData, shape: Shape, epochs: int, forecast: bool = True, device: str = "cpu"
) -> EntryResult:
    """nn.LSTM/nn.GRU + linear head, Adam, MSE; every training window materialised and shuffled BEFORE the clock
    starts, batches are contiguous slices: nothing but the network's own work is timed.

    `device="cuda"`: the windows are moved to the GPU before the clock starts and batches are sliced from the
    device tensors; the forward runs under bf16 autocast (cuDNN's RNN; float32 where the probe says cuDNN has no
    bf16 RNN), the loss in float32, Adam fused."""
    pin_threads()
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    L, H = data.lookback, data.horizon
    index = data.train_starts[:, None] + np.arange(L + H)
    rng = np.random.default_rng(0)
    block = torch.from_numpy(data.scaled[index[rng.permutation(len(index))]])  # [N, L + H], shuffled once
    x_all = block[:, :L, None].contiguous()  # [N, L, 1]
    y_all = block[:, L:].contiguous()  # [N, H]
    n = len(block)
    use_bf16 = bf16_rnn_supported(shape.cell, dev)
    seen: dict[str, Any] = {}
    if cuda:
        x_all, y_all = x_all.to(dev), y_all.to(dev)  # [N, L, 1], [N, H] on the GPU, before the clock
    with peak_memory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        torch.manual_seed(0)
        net = _BareNet(shape, H).to(dev)
        if cuda:
            watch_rnn_dtype(net, seen)
        optimizer = torch.optim.Adam(net.parameters(), lr=shape.learning_rate, fused=True if cuda else None)
        loop_start = time.perf_counter()
        for _ in range(epochs):
            for i in range(0, n, shape.batch):
                if use_bf16:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        pred = net(x_all[i : i + shape.batch])  # [B, L, 1] -> [B, H], bf16
                    pred = pred.float()
                else:
                    pred = net(x_all[i : i + shape.batch])  # [B, L, 1] -> [B, H]
                loss = torch.nn.functional.mse_loss(pred, y_all[i : i + shape.batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        loss.item()
        sync(device)
        end = time.perf_counter()
    predicted = None
    if forecast:
        net.eval()
        with torch.inference_mode():
            predicted = unscale(data, net(test_inputs(data).to(dev)).float().cpu().numpy())
    settings: dict[str, Any] = {
        "optimizer": "Adam",
        "loss": "mse",
        "batch_size": shape.batch,
        "lr": shape.learning_rate,
    }
    if cuda:
        settings.update(fused=True, autocast="bfloat16" if use_bf16 else None)
    return EntryResult(
        tool="bare",
        cell=shape.cell,
        windows=epochs * n,
        wall_s=end - t0,
        loop_s=end - loop_start,
        peak_rss_mib=mem.delta_mib,
        memory_method=mem.method,
        predicted=predicted,
        settings=settings,
        device=device,
        gpu_peak_mib=mem.gpu_delta_mib,
        bf16_autocast=use_bf16 if cuda else None,
        rnn_dtype=seen.get("rnn_dtype"),
    )


def warm_up(data: WindowedData, shape: Shape, device: str = "cpu") -> None:
    """Pay the process's one-off costs before any entry is timed: the oneDNN RNN primitives for every batch shape
    the entries will use (full batches, the last partial batch, validation and test inference), and the first
    optimizer's import of torch._dynamo (about 1.5 s, once per process). `device="cuda"`: the CUDA context, the
    cuDNN RNN plans (bf16 autocast) and the fused optimizer's kernels instead."""
    pin_threads()
    L, H = data.lookback, data.horizon
    if device == "cuda":
        _warm_up_cuda(data, shape)
        return
    torch.manual_seed(0)
    net = _BareNet(shape, H)
    optimizer = torch.optim.AdamW(net.parameters())
    sizes = {min(shape.batch, len(data.train_starts)), len(data.train_starts) % shape.batch} - {0}
    for b in sorted(sizes):
        x = torch.zeros(b, L, 1)
        net(x).sum().backward()
        optimizer.step()
    net.eval()
    with torch.inference_mode():
        for n in {len(data.val_starts) % 8192, min(len(data.val_starts), 8192), len(data.test_starts)} - {0}:
            net(torch.zeros(n, L, 1))


def _warm_up_cuda(data: WindowedData, shape: Shape) -> None:
    dev = torch.device("cuda")
    L, H = data.lookback, data.horizon
    use_bf16 = bf16_rnn_supported(shape.cell, dev)
    with torch.random.fork_rng(devices=[]):
        net = _BareNet(shape, H).to(dev)
    for fused_cls in (torch.optim.AdamW, torch.optim.Adam):
        optimizer = fused_cls(net.parameters(), fused=True)
        sizes = {min(shape.batch, len(data.train_starts)), len(data.train_starts) % shape.batch} - {0}
        for b in sorted(sizes):
            x = torch.zeros(b, L, 1, device=dev)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                out = net(x)  # [b, L, 1] -> [b, H]
            out.float().sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    net.eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        for n in {len(data.val_starts) % 8192, min(len(data.val_starts), 8192), len(data.test_starts)} - {0}:
            net(torch.zeros(n, L, 1, device=dev))
    torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# Lightning callbacks shared by the peers


def _timing_callback(marks: dict[str, float], device: str = "cpu") -> Any:
    import pytorch_lightning as pl

    class _Marks(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if "first_batch" not in marks:
                sync(device)
                marks["first_batch"] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            marks["batches"] = marks.get("batches", 0) + 1

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            marks["epochs"] = marks.get("epochs", 0) + 1

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            sync(device)
            marks["train_end"] = time.perf_counter()

    return _Marks()


def _device_callback(seen: dict[str, Any]) -> Any:
    """Records Lightning's precision and the dtype the module's RNN really produced (device="cuda" only)."""
    import pytorch_lightning as pl

    class _Device(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen["precision"] = str(trainer.precision)
            watch_rnn_dtype(pl_module, seen)

    return _Device()


# Lightning's own names (pytorch_lightning.Trainer: accelerator, devices, precision); Darts passes
# pl_trainer_kwargs and NeuralForecast its **trainer_kwargs straight to the Trainer.
CUDA_TRAINER = {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}


def _trainer_kwargs(callbacks: list[Any], device: str = "cpu") -> dict[str, Any]:
    hardware: dict[str, Any] = dict(CUDA_TRAINER) if device == "cuda" else {"accelerator": "cpu", "devices": 1}
    return {
        **hardware,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "callbacks": callbacks,
    }


# ---------------------------------------------------------------------------------------------------------------
# Darts


def darts_forecast(module: Any, x: torch.Tensor) -> np.ndarray:
    """Darts' block RNN module on inputs `[N, L, 1]` (the tool's units) -> `[N, H]`."""
    from darts.utils.data.torch_datasets.utils import PLModuleInput

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            x = x.to(device=next(module.parameters()).device, dtype=module.dtype)
            out = module(PLModuleInput(past_target=x)).prediction  # [N, H, 1, 1]
    finally:
        module.train(was_training)
    return out[:, :, 0, 0].float().cpu().numpy()


def train_darts(
    data: WindowedData,
    shape: Shape | None,
    epochs: int,
    curve: Curve | None = None,
    forecast: bool = True,
    max_samples_per_ts: int | None = None,
    device: str = "cpu",
) -> EntryResult:
    """Darts BlockRNNModel. With a `shape`: the shared shape on seqcast's scaled values (no scaler of Darts'
    own). With `shape=None`: Darts' own defaults (hidden 25, 1 layer, batch 32, Adam 1e-3, MSE) with
    model="LSTM" (Darts' default is a vanilla RNN) and Darts' Scaler (min-max, fit on the training part).
    `device="cuda"`: pl_trainer_kwargs accelerator="gpu", devices=1, precision="bf16-mixed"."""
    pin_threads()
    from darts import TimeSeries
    from darts.models import BlockRNNModel

    L, H = data.lookback, data.horizon
    defaults = shape is None
    cell = "lstm" if shape is None else shape.cell
    marks: dict[str, float] = {}
    seen: dict[str, Any] = {}
    callbacks = [_timing_callback(marks, device)]
    if device == "cuda":
        callbacks.append(_device_callback(seen))
    per_series = [len(p) - L - H + 1 for p in train_part(data, data.scaled)]
    if max_samples_per_ts is not None:
        per_series = [min(n, max_samples_per_ts) for n in per_series]
    n_train = int(sum(max(n, 0) for n in per_series))  # Darts' samples per epoch
    lo = hi = None
    if defaults:
        parts = train_part(data, data.panel.values)
        lo = np.array([p.min() for p in parts])
        hi = np.array([p.max() for p in parts])
    x_test = test_inputs(data) if not defaults else _minmax_test_inputs(data, lo, hi)

    def to_original(out: np.ndarray) -> np.ndarray:
        if not defaults:
            return unscale(data, out)
        assert lo is not None and hi is not None  # set above whenever `defaults`
        k = test_series(data)
        return out * (hi[k] - lo[k])[:, None] + lo[k][:, None]

    if curve is not None:
        import pytorch_lightning as pl

        tracked = curve  # the callback's own reference, known not to be None

        class _EpochEval(pl.Callback):
            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                windows = (trainer.current_epoch + 1) * n_train
                if tracked.record(windows, lambda: to_original(darts_forecast(pl_module, x_test))):
                    trainer.should_stop = True

        callbacks.append(_EpochEval())

    kwargs: dict[str, Any] = {
        "input_chunk_length": L,
        "output_chunk_length": H,
        "model": cell.upper(),
        "n_epochs": epochs,
        "random_state": 0,
        "pl_trainer_kwargs": _trainer_kwargs(callbacks, device),
    }
    if not defaults:
        assert shape is not None
        kwargs.update(
            hidden_dim=shape.hidden,
            n_rnn_layers=shape.layers,
            batch_size=shape.batch,
            optimizer_kwargs={"lr": shape.learning_rate},
        )
    with tempfile.TemporaryDirectory() as work_dir, quiet():
        clock = curve.clock if curve is not None else Stopwatch()
        with peak_memory(device) as mem:
            sync(device)
            clock.start()
            if defaults:
                from darts.dataprocessing.transformers import Scaler

                raw = [TimeSeries.from_values(p.astype(np.float32)) for p in train_part(data, data.panel.values)]
                series = Scaler().fit_transform(raw)
            else:
                series = [TimeSeries.from_values(p.astype(np.float32)) for p in train_part(data, data.scaled)]
            model = BlockRNNModel(work_dir=work_dir, **kwargs)
            model.fit(series, verbose=False, max_samples_per_ts=max_samples_per_ts)
            sync(device)
            wall = clock.pause()
        module = model.model
        epochs_run = int(marks.get("epochs", epochs))
        predicted = to_original(darts_forecast(module, x_test)) if forecast else None
    loop_s = marks["train_end"] - marks["first_batch"] if "first_batch" in marks and "train_end" in marks else None
    settings = {k: v for k, v in kwargs.items() if k != "pl_trainer_kwargs"}
    if device == "cuda":
        settings["pl_trainer_kwargs"] = dict(CUDA_TRAINER)
    if defaults:
        settings.update(hidden_dim=25, n_rnn_layers=1, batch_size=32, scaler="darts Scaler (min-max)")
    return EntryResult(
        tool="darts",
        cell=cell,
        windows=epochs_run * n_train,
        wall_s=wall,
        loop_s=loop_s,
        peak_rss_mib=mem.delta_mib,
        memory_method=mem.method,
        predicted=predicted,
        settings=settings,
        curve=curve.points if curve else [],
        device=device,
        gpu_peak_mib=mem.gpu_delta_mib,
        bf16_autocast=seen["precision"] == "bf16-mixed" if "precision" in seen else None,
        rnn_dtype=seen.get("rnn_dtype"),
    )


def _minmax_test_inputs(data: WindowedData, lo: np.ndarray | None, hi: np.ndarray | None) -> torch.Tensor:
    assert lo is not None and hi is not None
    k = test_series(data)
    raw = test_inputs(data, data.panel.values.astype(np.float64)).double()
    scaled = (raw - torch.from_numpy(lo[k])[:, None, None]) / torch.from_numpy(hi[k] - lo[k])[:, None, None]
    return scaled.float()


# ---------------------------------------------------------------------------------------------------------------
# NeuralForecast


def nf_forecast(model: Any, x: torch.Tensor, robust: bool) -> np.ndarray:
    """A NeuralForecast LSTM/GRU on inputs `[N, L, 1]` -> `[N, H]`; `robust` applies its per-window robust scaler
    (median / mean absolute deviation of the inputs) as NeuralForecast does for scaler_type="robust"."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = x.to(next(model.parameters()).device)
            mask = torch.ones_like(x)
            if robust:
                from neuralforecast.common._scalers import robust_statistics

                shift, scale = robust_statistics(x, mask, dim=1)  # [N, 1, 1] each
                x = (x - shift) / scale
            batch = {"insample_y": x, "insample_mask": mask, "futr_exog": None, "hist_exog": None, "stat_exog": None}
            out = model.loss.domain_map(model(batch))  # [N, H, 1] or [N, H]
            out = out.reshape(x.shape[0], -1)  # [N, H]
            if robust:
                out = out * scale[:, :, 0] + shift[:, :, 0]
    finally:
        model.train(was_training)
    return out.float().cpu().numpy()


def train_neuralforecast(
    data: WindowedData,
    shape: Shape | None,
    windows: int,
    curve: Curve | None = None,
    every_steps: int = 10,
    forecast: bool = True,
    device: str = "cpu",
) -> EntryResult:
    """NeuralForecast LSTM / GRU (direct, recurrent=False). With a `shape`: encoder layers x hidden as shared, a
    one-layer (linear) decoder, MSE, windows_batch_size = the shared batch, scaler_type="identity" on seqcast's
    scaled values, max_steps = windows / batch. With `shape=None`: its own defaults (encoder 2 x 128, MLP decoder
    2 x 128, MAE loss, robust scaler, 128 windows a step, Adam 1e-3) on original units.

    What differs by design: NeuralForecast maps each of the last H hidden states through the decoder to one
    output each (seq2seq-style), where seqcast maps the last hidden state to all H outputs; and it samples
    `windows_batch_size` windows per step from `batch_size` series instead of walking epochs.

    `device="cuda"`: trainer kwargs accelerator="gpu", devices=1, precision="bf16-mixed"."""
    pin_threads()
    import pandas as pd
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MSE
    from neuralforecast.models import GRU, LSTM

    L, H = data.lookback, data.horizon
    defaults = shape is None
    cell = "lstm" if shape is None else shape.cell
    batch = 128 if shape is None else shape.batch
    per_step = batch
    steps = max(1, math.ceil(windows / batch))
    marks: dict[str, float] = {}
    seen: dict[str, Any] = {}
    callbacks = [_timing_callback(marks, device)]
    if device == "cuda":
        callbacks.append(_device_callback(seen))
    values = data.panel.values if defaults else data.scaled
    x_test = test_inputs(data, values.astype(np.float32) if defaults else None)

    def to_original(out: np.ndarray) -> np.ndarray:
        return out.astype(np.float64) if defaults else unscale(data, out)

    if curve is not None:
        import pytorch_lightning as pl

        tracked = curve  # the callback's own reference, known not to be None

        class _StepEval(pl.Callback):
            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
                step = trainer.global_step
                due = step % every_steps == 0 or step >= steps
                if due and tracked.record(
                    step * per_step, lambda: to_original(nf_forecast(pl_module, x_test, defaults))
                ):
                    trainer.should_stop = True

        callbacks.append(_StepEval())

    parts = train_part(data, values)
    n_series = len(parts)
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat([f"s{k}" for k in range(n_series)], [len(p) for p in parts]),
            "ds": np.concatenate([np.arange(len(p)) for p in parts]),
            "y": np.concatenate(parts).astype(np.float32),
        }
    )
    model_cls = LSTM if cell == "lstm" else GRU
    kwargs: dict[str, Any] = {
        "h": H,
        "input_size": L,
        "max_steps": steps,
        "random_seed": 0,
        "val_check_steps": steps + 1,
        **_trainer_kwargs(callbacks, device),
    }
    if not defaults:
        assert shape is not None
        kwargs.update(
            encoder_n_layers=shape.layers,
            encoder_hidden_size=shape.hidden,
            decoder_layers=1,
            decoder_hidden_size=shape.hidden,
            loss=MSE(),
            scaler_type="identity",
            batch_size=min(n_series, 32),  # series per step (NeuralForecast's default 32, or all when fewer)
            windows_batch_size=shape.batch,
            learning_rate=shape.learning_rate,
        )
    with quiet():
        clock = curve.clock if curve is not None else Stopwatch()
        with peak_memory(device) as mem:
            sync(device)
            clock.start()
            model = model_cls(**kwargs)
            nf = NeuralForecast(models=[model], freq=1)
            nf.fit(df=frame)
            sync(device)
            wall = clock.pause()
        fitted = nf.models[0]
        predicted = to_original(nf_forecast(fitted, x_test, defaults)) if forecast else None
        steps_run = int(marks.get("batches", steps))
    loop_s = marks["train_end"] - marks["first_batch"] if "first_batch" in marks and "train_end" in marks else None
    settings = {
        k: (type(v).__name__ if k == "loss" else v)
        for k, v in kwargs.items()
        if k not in {"callbacks", "logger", "enable_progress_bar", "enable_model_summary", "enable_checkpointing"}
    }
    if defaults:
        settings.update(
            encoder_n_layers=2,
            encoder_hidden_size=128 if cell == "lstm" else 200,
            decoder_layers=2,
            decoder_hidden_size=128,
            loss="MAE",
            scaler_type="robust",
            batch_size=32,
            windows_batch_size=128,
        )
    return EntryResult(
        tool="neuralforecast",
        cell=cell,
        windows=steps_run * batch,
        wall_s=wall,
        loop_s=loop_s,
        peak_rss_mib=mem.delta_mib,
        memory_method=mem.method,
        predicted=predicted,
        settings=settings,
        curve=curve.points if curve else [],
        device=device,
        gpu_peak_mib=mem.gpu_delta_mib,
        bf16_autocast=seen["precision"] == "bf16-mixed" if "precision" in seen else None,
        rnn_dtype=seen.get("rnn_dtype"),
    )


def memory_note(mem: PeakMemory) -> str:
    return mem.method
