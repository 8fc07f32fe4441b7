"""Shared helpers: the machine (and GPU), matmul peak, LSTM/GRU FLOP counts, peak-memory meter, data sets, clocks."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tasks" / "samples"
THREADS = 2  # every entry runs with torch.set_num_threads(THREADS)


# ---------------------------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked or half-installed counts as missing
        return False


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    import torch

    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_family": _cpuinfo_field("cpu family"),
        "cpu_mhz": _cpuinfo_field("cpu MHz"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd": sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": THREADS,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)"),
        "blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "mkldnn": torch.backends.mkldnn.is_available(),
        "versions": {
            name: version_of(name)
            for name in ("seqcast", "numpy", "pandas", "sqlalchemy", "darts", "neuralforecast", "pytorch-lightning")
        },
    }


def gpu_info() -> dict[str, Any]:
    """The CUDA device torch uses (device 0), and the CUDA / cuDNN builds torch runs with."""
    import torch

    props = torch.cuda.get_device_properties(0)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "name": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "driver": _nvidia_smi("driver_version"),
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(cudnn),
        "cudnn_raw": cudnn,
        "bf16_supported": bool(torch.cuda.is_bf16_supported()),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def _cudnn_version(raw: int | None) -> str | None:
    """torch.backends.cudnn.version() -> "9.13.0" (cuDNN 9 packs major*10000 + minor*100 + patch; 8: *1000)."""
    if raw is None:
        return None
    if raw >= 90000:
        return f"{raw // 10000}.{raw % 10000 // 100}.{raw % 100}"
    return f"{raw // 1000}.{raw % 1000 // 100}.{raw % 100}"


def _nvidia_smi(field_name: str) -> str | None:
    import subprocess

    try:
        proc = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


def sync(device: str) -> None:
    """Wait for the device's queued work before a clock is read (no-op on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def matmul_peak_gflops(n: int = 2048, seconds: float = 1.5, device: str = "cpu") -> float:
    """Best-of float32 matmul GFLOP/s in this process with THREADS threads: the practical compute ceiling.

    With device="cuda": best-of bf16 matmul GFLOP/s on the GPU instead (`cuda_bf16_matmul_peak_gflops`)."""
    import torch

    if device == "cuda":
        return cuda_bf16_matmul_peak_gflops(seconds=seconds)

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def cuda_bf16_matmul_peak_gflops(n: int = 8192, seconds: float = 1.5, reps: int = 10) -> float:
    """Best-of bf16 matmul GFLOP/s on the GPU in this process, measured like the CPU's float32 peak: the same
    product repeated until `seconds` pass, best timing kept. Each timing covers `reps` products between two
    synchronizations, so launch and sync latency do not count."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b, out=out)
    torch.cuda.synchronize()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        torch.cuda.synchronize()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    del a, b, out
    torch.cuda.empty_cache()
    return best


# ---------------------------------------------------------------------------------------------------------------
# FLOPs


def rnn_flops_per_window(cell: str, lookback: int, hidden: int, layers: int, horizon: int, inputs: int = 1) -> float:
    """Multiply-add FLOPs to train on one window (forward x 3 for forward + backward), analytic.

    Per layer and time step: gates x 2 x (in + hidden) x hidden, with 4 gates for an LSTM and 3 for a GRU;
    plus the linear head 2 x hidden x horizon. Elementwise gate maths is left out (it is a few percent).
    """
    gates = 4 if cell == "lstm" else 3
    forward = 0.0
    for layer in range(layers):
        width_in = inputs if layer == 0 else hidden
        forward += gates * 2 * (width_in + hidden) * hidden * lookback
    forward += 2 * hidden * horizon
    return 3 * forward


# ---------------------------------------------------------------------------------------------------------------
# memory


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM:")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak resident memory reached inside a `with` block, above the resident memory at its start."""

    method: str = ""
    start_mib: float = 0.0
    peak_mib: float = 0.0
    gpu_start_mib: float | None = None  # device="cuda" only: torch.cuda.memory_allocated at the start
    gpu_peak_mib: float | None = None  # and torch.cuda.max_memory_allocated at the end

    @property
    def delta_mib(self) -> float:
        return max(self.peak_mib - self.start_mib, 0.0)

    @property
    def gpu_delta_mib(self) -> float | None:
        if self.gpu_start_mib is None or self.gpu_peak_mib is None:
            return None
        return max(self.gpu_peak_mib - self.gpu_start_mib, 0.0)


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc `malloc_trim`), so memory an earlier entry
    freed is not silently reused by the next one, which would hide the next one's peak."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if "pyarrow" in sys.modules:  # pandas' default string dtype keeps its buffers in pyarrow's own pool
        with contextlib.suppress(Exception):
            sys.modules["pyarrow"].default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


GPU_MEMORY_METHOD = (
    "GPU: torch.cuda.max_memory_allocated minus memory_allocated at the start (reset_peak_memory_stats first)"
)


@contextmanager
def peak_memory(device: str = "cpu") -> Iterator[PeakMemory]:
    """Peak memory inside the block. On CPU the host's resident memory (`host_peak_memory`). With device="cuda"
    also the GPU's: the peak statistics are reset before the block, and the peak of torch's allocated memory
    after it (synchronized) minus what was allocated at the start is the GPU delta."""
    if device != "cuda":
        with host_peak_memory() as result:
            yield result
        return
    import torch

    with host_peak_memory() as result:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result.gpu_start_mib = torch.cuda.memory_allocated() / 2**20
        result.method = f"{GPU_MEMORY_METHOD}; host: {result.method}"
        try:
            yield result
        finally:
            torch.cuda.synchronize()
            result.gpu_peak_mib = torch.cuda.max_memory_allocated() / 2**20


@contextmanager
def host_peak_memory() -> Iterator[PeakMemory]:
    """Linux: reset the kernel's high-water mark (VmHWM via /proc/self/clear_refs) and read it after: exact.

    Elsewhere: psutil RSS sampled every 5 ms in a thread (can miss short spikes). Freed heap pages are handed back
    to the OS first (`release_freed_memory`).
    """
    release_freed_memory()
    result = PeakMemory()
    if _can_reset_hwm():
        result.method = (
            "RSS high-water mark minus RSS at start (VmHWM reset via /proc/self/clear_refs; gc + malloc_trim first)"
        )
        result.start_mib = _status_kib("VmRSS:") / 1024
        try:
            yield result
        finally:
            result.peak_mib = _status_kib("VmHWM:") / 1024
        return
    import psutil

    proc = psutil.Process()
    result.method = "psutil RSS sampled every 5 ms"
    result.start_mib = proc.memory_info().rss / 2**20
    peak = [result.start_mib]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.peak_mib = max(peak[0], proc.memory_info().rss / 2**20)


# ---------------------------------------------------------------------------------------------------------------
# clocks


@dataclass
class Stopwatch:
    """Wall clock that can be paused (to evaluate a checkpoint without charging the tool for it)."""

    elapsed: float = 0.0
    _since: float | None = None
    checkpoints: list[dict[str, float]] = field(default_factory=list)

    def start(self) -> Stopwatch:
        self._since = time.perf_counter()
        return self

    def pause(self) -> float:
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None
        return self.elapsed

    def resume(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def read(self) -> float:
        return self.elapsed + (time.perf_counter() - self._since if self._since is not None else 0.0)


# ---------------------------------------------------------------------------------------------------------------
# data


def load_sample(name: str) -> pd.DataFrame:
    """A bundled sample as the long frame `series_id, ts, value` (ts UTC)."""
    frame = pd.read_csv(SAMPLES / f"{name}.csv.gz")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def synthetic_frame(n_series: int, length: int, freq: str = "h", seed: int = 0) -> pd.DataFrame:
    """`n_series` series of `length` steps: level + daily and weekly cycles + AR(1)-ish noise, different per series."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    level = rng.uniform(10, 100, (n_series, 1))
    amp_d = rng.uniform(1, 10, (n_series, 1))
    amp_w = rng.uniform(0, 5, (n_series, 1))
    phase = rng.uniform(0, 2 * np.pi, (n_series, 1))
    noise = rng.normal(0, 1, (n_series, length)).cumsum(axis=1) * 0.05 + rng.normal(0, 0.5, (n_series, length))
    values = level + amp_d * np.sin(2 * np.pi * t / 24 + phase) + amp_w * np.sin(2 * np.pi * t / 168) + noise
    ts = pd.date_range("2024-01-01", periods=length, freq=freq, tz="UTC")
    width = len(str(n_series))
    ids = np.array([f"s{k:0{width}d}" for k in range(n_series)], dtype=object)
    return pd.DataFrame(
        {
            "series_id": np.repeat(ids, length),
            "ts": np.tile(ts.to_numpy(), n_series),
            "value": values.reshape(-1),
        }
    ).assign(ts=lambda f: pd.to_datetime(f["ts"], utc=True))


def mib(nbytes: float) -> float:
    return nbytes / 2**20
