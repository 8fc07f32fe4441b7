"""The training stage: fit one LSTM or GRU forecaster on windowed data, fast, seeded, with early stopping.

Hot loop rules (what makes it at least as fast as a bare PyTorch loop): the scaled values and the window
starts go to the device once; each epoch shuffles the starts with one `torch.randperm` and slices batches
from it; each batch is one gather (`models.windows.gather_windows`); losses accumulate on the device and are
read once per epoch. No DataLoader, no per-sample Python, no per-step `.item()`.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from models.choices import AUTO_SCALINGS, Cell, Scaling, ScalingChoice
from models.errors import SeqcastError
from models.forecaster import (
    ForecasterConfig,
    RecurrentForecaster,
    bf16_autocast_supported,
    resolve_device,
)
from models.windows import gather_windows
from tasks import progress
from tasks.run_context import run_logger
from tasks.spec import ModelSpec, TrainingSpec
from tasks.windowing import WindowedData

EpochCallback = Callable[[dict[str, float]], None]


class TrainingDivergedError(SeqcastError, RuntimeError):
    """The loss became NaN, infinite or exploded; nothing trained in this run should be registered."""


class TrainingInterruptedError(SeqcastError, RuntimeError):
    """Training was stopped on request (Ctrl-C); nothing trained in this run is registered."""


_STOP = threading.Event()  # set by Ctrl-C under `stop_training_on_interrupt`: every fit ends at its next batch


@contextmanager
def stop_training_on_interrupt() -> Iterator[None]:
    """While inside (main thread only): Ctrl-C also stops every fit of this process at its next batch. Fits in
    worker threads (candidates and scalings side by side) would otherwise train on to their last epoch while the
    interrupted main thread waits for them."""
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(signum: int, frame: Any) -> None:
        _STOP.set()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _STOP.clear()


# Windows per optimizer step when `batch_size` is None. oneDNN's fused LSTM is fastest at 32 (a 1x32 step costs
# 4.9 ms at batch 32 and 15 ms at 64); PyTorch's CPU GRU runs op by op, so batch 64 costs little more than 32 and
# reached the same test MAE in 60 % of the time (electricity, 3 seeds; docs/benchmarks.md).
DEFAULT_BATCH_SIZE = {"lstm": 32, "gru": 64}


# The run spec (tasks/spec.py) holds the one set of defaults; the training stage takes its own from there.
_MODEL, _TRAINING = ModelSpec(), TrainingSpec()


class TrainConfig(BaseModel):
    """Training hyperparameters (the network's shape is here too; lookback/horizon come from the windows).

    - `cell`, `hidden_size`, `num_layers`, `dropout`, `head`: the network (see `RecurrentForecaster`); head
      "auto" is per_step when lookback >= horizon, else last.
    - `batch_size` (None: `DEFAULT_BATCH_SIZE` of the cell), `max_epochs`, `learning_rate`, `weight_decay`
      (AdamW; 0 = Adam).
    - `loss`: "mse" or "huber" (with `huber_delta`, in scaled units).
    - `grad_clip`: max global gradient norm, None to disable.
    - `patience`, `min_delta`: stop after `patience` epochs without a validation-loss gain of `min_delta`;
      the best epoch's weights are restored.
    - `lr_schedule`: "plateau" halves the rate after `patience // 2` flat epochs, "cosine" anneals to 0 over
      `max_epochs`, "none" keeps it.
    - `seed`: initial weights and shuffling (same seed, same weights on CPU).
    - `device`: "auto" (CUDA when present), "cpu" or "cuda"; `num_threads`: CPU threads (None = automatic, see
      `training_threads`).
    - `eval_batch_size`: windows per batch when computing validation loss.
    - `max_windows_per_epoch`: the per-epoch window budget (None: every window, every epoch). Each epoch trains
      on that many training windows drawn afresh from all of them (one seeded `randperm`, sliced), and early
      stopping watches a fixed seeded sample of that many validation windows, so an epoch's cost does not grow
      with the number of series.
    - `max_loss`: an epoch loss above this (scaled units; sane losses are about 1) counts as diverged.

    The defaults are the fastest to a given accuracy in the benchmark sweep (docs/benchmarks.md): a small network
    and small batches with a high learning rate buy many more optimizer steps per second than 2x64 at batch 256.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell: Cell = _MODEL.cells[0]
    hidden_size: int = Field(default=_MODEL.hidden_size, ge=1, le=4096)
    num_layers: int = Field(default=_MODEL.num_layers, ge=1, le=16)
    dropout: float = Field(default=_MODEL.dropout, ge=0.0, lt=1.0)
    head: Literal["auto", "last", "per_step"] = _MODEL.head
    scaling: ScalingChoice = _MODEL.scaling
    batch_size: int | None = Field(default=_TRAINING.batch_size, ge=1, le=1_000_000)
    max_epochs: int = Field(default=_TRAINING.max_epochs, ge=1, le=100_000)
    learning_rate: float = Field(default=_TRAINING.learning_rate, gt=0.0, le=10.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    loss: Literal["mse", "huber"] = _TRAINING.loss
    huber_delta: float = Field(default=1.0, gt=0.0)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    patience: int = Field(default=_TRAINING.patience, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)
    lr_schedule: Literal["none", "plateau", "cosine"] = "plateau"
    seed: int = Field(default=_TRAINING.seed, ge=0)
    device: Literal["auto", "cpu", "cuda"] = _TRAINING.device
    num_threads: int | None = Field(default=None, ge=1)
    eval_batch_size: int = Field(default=1024, ge=1)
    max_windows_per_epoch: int | None = Field(default=_TRAINING.max_windows_per_epoch, ge=1)
    max_loss: float = Field(default=1e6, gt=0.0)

    @property
    def effective_batch_size(self) -> int:
        """`batch_size`, or the cell's default when it is None."""
        return self.batch_size or DEFAULT_BATCH_SIZE[self.cell]

    def forecaster_config(self, lookback: int, horizon: int) -> ForecasterConfig:
        if self.scaling == "auto":
            raise ValueError("scaling 'auto' trains one network per scaling; build each with a concrete scaling")
        return ForecasterConfig(
            cell=self.cell,
            lookback=lookback,
            horizon=horizon,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            dropout=self.dropout,
            head=self.resolved_head(lookback, horizon),
            scaling=self.scaling,
        )

    def resolved_head(self, lookback: int, horizon: int) -> Literal["last", "per_step"]:
        """Head "auto" is per_step (the more accurate) when the window holds `horizon` hidden states, else last."""
        if self.head != "auto":
            return self.head
        return "per_step" if lookback >= horizon else "last"


@dataclass
class FitResult:
    """A trained model (CPU, eval mode, best epoch's weights) and how training went."""

    model: RecurrentForecaster
    config: ForecasterConfig
    train_config: TrainConfig
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_loss, seconds, learning_rate
    best_epoch: int
    best_val_loss: float
    device: str
    windows_per_second: float  # training windows per second of training-loop time (validation excluded)
    seconds: float
    stopped_early: bool
    bf16: bool
    extra: dict[str, Any] = field(default_factory=dict)


SMALL_STEP_WORK = 32_768
_INIT_LOCK = threading.RLock()  # seeded init; held for a whole fit with dropout (see `_fit`)
# The cores this thread's fits may use (`cpu_budget`); None: the whole machine, as torch's own default.
_CORES: contextvars.ContextVar[int | None] = contextvars.ContextVar("seqcast_training_cores", default=None)


@contextmanager
def cpu_budget(cores: int | None) -> Iterator[None]:
    """Train and predict in this block on at most `cores` CPU cores (None: no limit): one candidate's share when
    candidates train side by side (tasks/runners.py).

    How the share is spent: a large network trains on `cores` threads; a small one on 1 (`training_threads`), and
    the two tries of scaling "auto" then go side by side, 1 thread each, whatever the share. So the threads never
    outnumber the cores more than twice (the threads runner runs at most one candidate per core): on 2 cores, LSTM
    and GRU at once are 4 one-thread fits on 2 cores. Measured on the demo's data (docs/benchmarks.md), this keeps
    both cores busy to the end, where 1 core per candidate with its tries one after the other left one idle once
    the faster candidate was done (228 s against 199 s one candidate at a time; this rule: 232 s against 288 s,
    on a busier machine). Torch's thread count is per OS thread (OpenMP), so the shares of candidates in other
    threads do not disturb each other.
    """
    token = _CORES.set(cores)
    try:
        with _cpu_threads(cores):
            yield
    finally:
        _CORES.reset(token)


def training_threads(config: TrainConfig, device: torch.device) -> int | None:
    """CPU threads for training: `num_threads` when set; else 1 when each time step's GEMM is small, else the
    `cpu_budget` (None without one: torch's default, every core).

    An RNN runs L small GEMMs in sequence; when each has fewer than 32k outputs (batch x gates x hidden),
    OpenMP's fork/join per step costs more than a second thread saves (1x32 at batch 32: 4,861 windows/s on
    1 thread against 2,173 on 2, docs/benchmarks.md).
    """
    if config.num_threads is not None or device.type != "cpu":
        return config.num_threads
    return 1 if _small_steps(config) else _CORES.get()


def _small_steps(config: TrainConfig) -> bool:
    """Whether each time step's GEMM has fewer than SMALL_STEP_WORK outputs (batch x gates x hidden)."""
    gates = 4 if config.cell == "lstm" else 3
    return config.effective_batch_size * gates * config.hidden_size < SMALL_STEP_WORK


@contextmanager
def _cpu_threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _window_loss(pred: torch.Tensor, target: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Per-window loss `[B]`: mean over the horizon of squared or Huber error."""
    if config.loss == "mse":
        return (pred - target).square().mean(dim=1)  # [B, H] -> [B]
    return F.huber_loss(pred, target, reduction="none", delta=config.huber_delta).mean(dim=1)  # [B, H] -> [B]


def _validation_loss(
    model: RecurrentForecaster,
    values: torch.Tensor,
    starts: torch.Tensor,
    config: TrainConfig,
    use_bf16: bool,
) -> torch.Tensor:
    """Mean per-window loss over `starts`, on the device (no sync)."""
    lookback, horizon = model.config.lookback, model.config.horizon
    total = torch.zeros((), device=values.device)
    model.eval()
    with torch.inference_mode(), torch.autocast(values.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        for i in range(0, len(starts), config.eval_batch_size):
            batch = starts[i : i + config.eval_batch_size]  # [B]
            x, y = gather_windows(values, batch, lookback, horizon)  # [B] -> [B, L, 1], [B, H]
            total += _window_loss(model(x).float(), y, config).sum()  # [B, H] -> scalar
    return total / max(len(starts), 1)


def sample_validation_starts(starts: torch.Tensor, budget: int | None, seed: int) -> torch.Tensor:
    """The validation windows early stopping watches: all of `starts [N_val]`, or a fixed sample of `budget` of
    them (in ascending order) drawn with its own generator seeded with `seed`, so the training shuffles are those
    of an unbounded run."""
    if budget is None or len(starts) <= budget:
        return starts
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    chosen = torch.randperm(len(starts), generator=generator)[:budget].sort().values  # [budget]
    return starts[chosen.to(starts.device)]


def _diverged(loss: float, limit: float) -> bool:
    return not math.isfinite(loss) or loss > limit


def fit_forecaster(
    data: WindowedData,
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
    level: int = logging.INFO,
) -> FitResult:
    """Train a forecaster on `data.train_starts`, early-stopping on `data.val_starts`; returns it on CPU.

    `initial_state`: start from these weights (a warm start from the champion's network, tasks/warm_start.py)
    instead of seeded random ones; the config must then name the network's own concrete scaling and shape.

    `on_epoch(record)` is called after every epoch with {epoch, train_loss, val_loss, seconds, learning_rate}
    (e.g. `tasks.registry.epoch_logger(run_id)` logs them to MLflow); each epoch is also a DEBUG log line and a
    `tasks.progress.EpochProgress` event (the CLI's progress bar), and each network one line when it starts and
    one when it ends, at `level` (DEBUG for one try of several, tasks/partitions.py). Raises
    `TrainingDivergedError` on a NaN, infinite or exploding loss. With scaling "auto" see `fit_auto_scaling`.
    """
    if initial_state is not None:
        if config.scaling == "auto":
            raise ValueError("a warm start continues one network: give its concrete scaling, not 'auto'")
        return _fit(data, config, on_epoch, level, initial_state)
    if config.scaling == "auto":
        return fit_auto_scaling(data, config, on_epoch)
    return _fit(data, config, on_epoch, level)


def fit_auto_scaling(data: WindowedData, config: TrainConfig, on_epoch: EpochCallback | None = None) -> FitResult:
    """Train one network per scaling in `AUTO_SCALINGS` (same seed) and keep the one with the lower best
    validation loss; validation windows lie after the training part, so a series that trends away from its
    training range picks a scaling that follows it, with no look at the test part.

    Each try's epochs reach `on_epoch` with its scaling as a suffix (`val_loss_last`); the winner's are then
    replayed under the plain names, so a run's `train_loss` / `val_loss` curves are the model it keeps.
    Small networks on the CPU train the tries side by side, one thread each (the results are those of training
    them one after the other: weights are initialised under a lock from the seed, batches are shuffled by each
    fit's own generator, and without dropout nothing else draws random numbers). Candidates training side by side
    (tasks/candidate.py, `cpu_budget`) rely on the same three facts.
    """

    def fit_one(scaling: Scaling) -> FitResult:
        def tagged(record: dict[str, float]) -> None:
            if on_epoch is not None:
                on_epoch(tag_record(record, scaling))

        return _fit(data, config.model_copy(update={"scaling": scaling}), tagged, level=logging.DEBUG)

    started = time.perf_counter()
    device = resolve_device(config.device)
    one_thread = config.num_threads == 1 or (config.num_threads is None and _small_steps(config))
    side_by_side = device.type == "cpu" and config.dropout == 0.0 and one_thread  # whatever the `cpu_budget`
    how = "side by side (1 thread each)" if side_by_side else "one after the other"
    announce_tries(data, config, AUTO_SCALINGS, how)
    if side_by_side:  # one thread each on their own core: the second try costs little wall time
        with _cpu_threads(1), ThreadPoolExecutor(len(AUTO_SCALINGS), thread_name_prefix="seqcast-fit") as pool:
            futures = {s: pool.submit(contextvars.copy_context().run, fit_one, s) for s in AUTO_SCALINGS}
            fits: dict[str, FitResult] = {s: future.result() for s, future in futures.items()}
    else:
        fits = {s: fit_one(s) for s in AUTO_SCALINGS}
    best = choose_scaling(fits, on_epoch)
    best.seconds = time.perf_counter() - started
    return best


def announce_tries(data: WindowedData, config: TrainConfig, tries: Sequence[str], how: str) -> None:
    """The one INFO line for a network trained with several scalings (each try's own lines are DEBUG)."""
    run_logger(__name__).info(
        "training %s %dx%d on %s, scalings %s %s: %d train / %d validation windows, batch %d",
        config.cell,
        config.num_layers,
        config.hidden_size,
        resolve_device(config.device),
        " and ".join(tries),
        how,
        len(data.train_starts),
        len(data.val_starts),
        config.effective_batch_size,
    )


def scaling_tries(config: TrainConfig) -> tuple[Scaling, ...]:
    """The concrete scalings a config trains: each of `AUTO_SCALINGS` for "auto", else its own."""
    return AUTO_SCALINGS if config.scaling == "auto" else (config.scaling,)


def tag_record(record: dict[str, float], scaling: str) -> dict[str, float]:
    """An epoch record of one scaling's try with the scaling appended to its names (`val_loss_last`)."""
    return {"epoch": record["epoch"], **{f"{k}_{scaling}": v for k, v in record.items() if k != "epoch"}}


def choose_scaling(fits: Mapping[str, FitResult], on_epoch: EpochCallback | None = None) -> FitResult:
    """Of one network's tries with different scalings, the one with the lower best validation loss (the tries'
    losses kept in `extra["scaling_val_loss"]`); its epochs are replayed to `on_epoch` under the plain names."""
    chosen = min(fits, key=lambda s: fits[s].best_val_loss)
    best = fits[chosen]
    if len(fits) == 1:
        return best
    if on_epoch is not None:
        for record in best.history:
            on_epoch(dict(record))
    best.extra["scaling_val_loss"] = {s: fit.best_val_loss for s, fit in fits.items()}
    losses = ", ".join(f"{s} {fit.best_val_loss:.5f}" for s, fit in fits.items())
    run_logger(__name__).info(
        "%s: scaling %s (best validation loss %s); %s", best.train_config.cell, chosen, losses, _outcome(best)
    )
    return best


def _outcome(fit: FitResult) -> str:
    """How a fit went, for its one log line: best epoch, stop, loss, speed, time."""
    stop = "stopped early" if fit.stopped_early else "no early stop"
    return (
        f"best epoch {fit.best_epoch} of {len(fit.history)} ({stop}), validation loss {fit.best_val_loss:.5f}, "
        f"{fit.windows_per_second:,.0f} windows/s, {fit.seconds:.1f} s on {fit.device}"
    )


def _fit(
    data: WindowedData,
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    level: int = logging.INFO,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """One network with one concrete scaling (see `fit_forecaster`); its first and last log lines at `level`.

    Dropout draws its masks from torch's one global generator, so a fit with dropout holds the init lock from
    start to end: fits in other threads (candidates side by side) neither seed nor draw from it meanwhile, and
    they wait; results stay those of a serial run."""
    if config.dropout > 0.0:
        with _INIT_LOCK:
            return _fit_one(data, config, on_epoch, level, initial_state)
    return _fit_one(data, config, on_epoch, level, initial_state)


def _fit_one(
    data: WindowedData,
    config: TrainConfig,
    on_epoch: EpochCallback | None,
    level: int,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    if len(data.train_starts) == 0:
        raise ValueError("no training windows; the series are too short for lookback + horizon")
    if len(data.val_starts) == 0:
        raise ValueError("no validation windows; early stopping needs a validation part of at least `horizon`")
    log = run_logger(__name__)
    device = resolve_device(config.device)
    lookback, horizon = data.lookback, data.horizon
    with _cpu_threads(training_threads(config, device)):
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):  # seeded init, safe beside a fit in another thread
            torch.manual_seed(config.seed)
            model = RecurrentForecaster(config.forecaster_config(lookback, horizon))
        if initial_state is not None:
            model.load_state_dict(initial_state)  # raises when the shapes differ from the config's
        model = model.to(device)
        if config.dropout > 0.0:
            torch.manual_seed(config.seed)  # dropout masks draw from the global generator
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        use_bf16 = bf16_autocast_supported(model, device)

        values = torch.from_numpy(data.scaled).to(device=device, dtype=torch.float32)  # [total], once
        train_starts = torch.from_numpy(data.train_starts).to(device)  # [N_train], once
        val_starts = sample_validation_starts(  # [N_val] or [budget], once
            torch.from_numpy(data.val_starts).to(device), config.max_windows_per_epoch, config.seed
        )
        n_all = len(data.train_starts)
        n_train = n_all if config.max_windows_per_epoch is None else min(config.max_windows_per_epoch, n_all)

        params = list(model.parameters())
        optimizer = torch.optim.AdamW(
            params,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            fused=device.type == "cuda",
        )
        scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if config.lr_schedule == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.5, patience=max(config.patience // 2, 1)
            )
        elif config.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_epochs)

        history: list[dict[str, float]] = []
        best_val = math.inf
        best_epoch = 0
        best_state = copy.deepcopy(model.state_dict())
        bad_epochs = 0
        train_seconds = 0.0
        windows_seen = 0
        stopped_early = False
        started = time.perf_counter()
        log.log(
            level,
            "training %s %dx%d on %s (bf16=%s, %d threads): %d of %d train / %d of %d validation windows per "
            "epoch, batch %d",
            config.cell,
            config.num_layers,
            config.hidden_size,
            device,
            use_bf16,
            torch.get_num_threads(),
            n_train,
            n_all,
            len(val_starts),
            len(data.val_starts),
            config.effective_batch_size,
        )
        scaling = str(config.scaling)
        progress.report(progress.EpochProgress(config.cell, scaling, 0, config.max_epochs, math.nan, math.nan, 0.0))
        for epoch in range(1, config.max_epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            order = torch.randperm(n_all, device=device, generator=generator)  # [N_train]
            shuffled = train_starts[order if n_train == n_all else order[:n_train]]  # [n_train], the epoch's budget
            total = torch.zeros((), device=device)
            batch_size = config.effective_batch_size
            for i in range(0, n_train, batch_size):
                if _STOP.is_set():
                    raise TrainingInterruptedError(f"training {config.cell} stopped: interrupted")
                batch = shuffled[i : i + batch_size]  # [B]
                x, y = gather_windows(values, batch, lookback, horizon)  # [B] -> [B, L, 1], [B, H]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    pred = model(x)  # [B, L, 1] -> [B, H]
                loss = _window_loss(pred.float(), y, config).mean()  # [B, H] -> scalar
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                total += loss.detach() * batch.shape[0]
            train_loss = float((total / n_train).item())  # the one sync of the epoch's training loop
            loop_seconds = time.perf_counter() - epoch_start
            train_seconds += loop_seconds
            windows_seen += n_train

            val_loss = float(_validation_loss(model, values, val_starts, config, use_bf16).item())
            seconds = time.perf_counter() - epoch_start
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "seconds": seconds,
                "learning_rate": lr,
            }
            history.append(record)
            log.debug(  # per epoch: DEBUG, MLflow (`on_epoch`) and the CLI's progress bar; never the INFO console
                "%s epoch %d/%d: train_loss %.5f val_loss %.5f lr %.2e (%.1fs, %.0f windows/s)",
                config.cell,
                epoch,
                config.max_epochs,
                train_loss,
                val_loss,
                lr,
                seconds,
                n_train / max(seconds, 1e-9),
            )
            if on_epoch is not None:
                on_epoch(dict(record))
            if _diverged(train_loss, config.max_loss) or _diverged(val_loss, config.max_loss):
                raise TrainingDivergedError(
                    f"{config.cell} training diverged at epoch {epoch}: train loss {train_loss}, validation loss "
                    f"{val_loss} (limit {config.max_loss:g}, learning_rate {config.learning_rate:g}). Lower "
                    "`learning_rate`, set `grad_clip`, or check the input for extreme or corrupt values."
                )
            if val_loss < best_val - config.min_delta:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
            else:
                bad_epochs += 1
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            elif scheduler is not None:
                scheduler.step()
            stopped_early = bad_epochs >= config.patience
            progress.report(
                progress.EpochProgress(
                    config.cell,
                    scaling,
                    epoch,
                    config.max_epochs,
                    train_loss,
                    val_loss,
                    n_train / max(loop_seconds, 1e-9),
                    done=stopped_early or epoch == config.max_epochs,
                )
            )
            if stopped_early:
                log.debug(
                    "%s early stop after epoch %d: no validation gain for %d epochs; best epoch %d (val_loss %.5f)",
                    config.cell,
                    epoch,
                    config.patience,
                    best_epoch,
                    best_val,
                )
                break

        model.load_state_dict(best_state)
        model = model.to("cpu").eval()
    fit = FitResult(
        model=model,
        config=model.config,
        train_config=config,
        history=history,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        device=str(device),
        windows_per_second=windows_seen / max(train_seconds, 1e-9),
        seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
        bf16=use_bf16,
    )
    log.log(level, "%s (%s scaling): %s", config.cell, scaling, _outcome(fit))
    return fit


@task(name="train-candidate", cache_policy=NO_CACHE, task_run_name="train-{config.cell}")
def train_candidate_task(
    data: WindowedData,
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """Prefect wrapper of `fit_forecaster`; not retried (a diverged or bad run fails the same way again)."""
    return fit_forecaster(data, config, on_epoch, initial_state)
