"""Where a flow's independent tasks run: the task runner chosen from the run spec, and each task's share of it.

One place decides, for the CLI, the demo and the deployments alike (`task_runner_for`, passed at call time as
`train_flow.with_options(task_runner=...)`; a deployment's flow run gets the default the worker's environment
names, SEQCAST_RAY_ADDRESS):

- serial: one task at a time in the flow's process, each on every core;
- threads (the default): side by side in the flow's process, at most two per core (`TASKS_PER_CORE`), each on its
  share of the cores (`cores_per_task`; tasks/train.py `cpu_budget` says how a share is spent);
- ray: tasks of a Ray cluster (prefect-ray's RayTaskRunner, the `ray` extra), one CPU each (Ray's default), plus a
  GPU each when the cluster has GPUs (`training_resources`).

Results do not depend on the runner: each task trains from its own seed with its own generator (tasks/train.py).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from models.errors import SeqcastError

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture
    from prefect.task_runners import TaskRunner

    from tasks.spec import RunSpec

RAY_ADDRESS_ENV = "SEQCAST_RAY_ADDRESS"
RunnerName = Literal["serial", "threads", "ray"]
# The threads runner's tasks per core. Fits end at different times (a GRU try may take four times an LSTM's): with
# two per core, a core whose first fit ends early shares the others' instead of idling until they end.
TASKS_PER_CORE = 2
R = TypeVar("R")


class RunnerUnavailableError(SeqcastError, RuntimeError):
    """The task runner asked for cannot be used here (Ray without the `ray` extra installed)."""


def ray_address(spec: RunSpec | None = None) -> str | None:
    """The Ray cluster's address: the spec's `execution.ray_address`, else SEQCAST_RAY_ADDRESS, else None."""
    given = spec.execution.ray_address if spec is not None else None
    return given or os.environ.get(RAY_ADDRESS_ENV) or None


def runner_name(spec: RunSpec | None = None) -> RunnerName:
    """The runner the spec asks for, "auto" resolved: ray when a Ray address is set, else threads."""
    asked = spec.execution.task_runner if spec is not None else "auto"
    if asked != "auto":
        return asked
    return "ray" if ray_address(spec) else "threads"


def machine_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def task_runner_for(spec: RunSpec | None = None) -> TaskRunner[Any]:
    """A new task runner for a flow run of `spec` (None: the defaults, with SEQCAST_RAY_ADDRESS from the
    environment). RunnerUnavailableError for ray without prefect-ray installed."""
    from prefect.task_runners import ThreadPoolTaskRunner

    name = runner_name(spec)
    if name == "serial":
        return ThreadPoolTaskRunner(max_workers=1)
    if name == "threads":
        return ThreadPoolTaskRunner(max_workers=TASKS_PER_CORE * machine_cores())
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise RunnerUnavailableError(
            f"task runner 'ray' needs prefect-ray and ray: pip install 'seqcast[ray]' ({exc})"
        ) from None
    return RayTaskRunner(address=ray_address(spec))


def _current_runner() -> Any:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return None if context is None else context.task_runner


def _is_ray(runner: Any) -> bool:
    return type(runner).__name__ == "RayTaskRunner"


def current_runner_name() -> str:
    """What the running flow submits to, for its MLflow tags: serial, threads (N workers), ray (address)."""
    runner = _current_runner()
    if runner is None:
        return "none"
    if _is_ray(runner):
        return f"ray ({getattr(runner, 'address', None) or 'local'})"
    workers = getattr(runner, "_max_workers", None)
    if workers == 1:
        return "serial"
    return type(runner).__name__ if workers is None else f"threads ({workers} workers)"


def cores_per_task(tasks: int) -> int | None:
    """Each task's share of the cores when the running flow submits `tasks` tasks at once: every core when they
    run one at a time, else the cores split evenly among those running together (at least 1). None on Ray: a task
    takes the CPUs Ray assigned it (`worker_cores`)."""
    runner = _current_runner()
    if _is_ray(runner):
        return None
    workers = getattr(runner, "_max_workers", None) or tasks
    return max(1, machine_cores() // max(1, min(tasks, workers)))


def worker_cores() -> int:
    """The CPUs a task given no share may use: those Ray assigned it in a Ray worker, else every core."""
    ray_worker = ray_worker_context()
    if ray_worker is not None:
        return max(1, int(ray_worker.get_assigned_resources().get("CPU", 1)))
    return machine_cores()


def ray_worker_context() -> Any:
    """Ray's runtime context when this process is a Ray worker, else None. Imports Ray: call it only for tasks
    submitted to Ray (those given no share of the cores)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return context if context.worker.mode == ray.WORKER_MODE else None


def worker_identity(on_ray: bool = False) -> dict[str, str]:
    """Where this task runs, for its MLflow tags: `seqcast.worker` host:pid and thread, and with `on_ray` the Ray
    node id `seqcast.ray_node`."""
    tags = {"seqcast.worker": f"{socket.gethostname()}:{os.getpid()} {threading.current_thread().name}"}
    ray_worker = ray_worker_context() if on_ray else None
    if ray_worker is not None:
        tags["seqcast.ray_node"] = str(ray_worker.get_node_id())
    return tags


@contextmanager
def training_resources() -> Iterator[None]:
    """Tasks submitted in this block ask a Ray cluster for a GPU each when it has GPUs; no-op elsewhere."""
    if not _is_ray(_current_runner()):
        yield
        return
    import ray
    from prefect_ray.context import remote_options

    gpus = ray.cluster_resources().get("GPU", 0)
    with remote_options(num_gpus=1) if gpus > 0 else _nothing():
        yield


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def results_in_order(futures: Sequence[PrefectFuture[R]]) -> list[R]:
    """Wait for every future, then their results in submission order; the first failure (in that order) is
    raised only once all have finished, so no task is left running."""
    from prefect.futures import wait

    wait(list(futures))
    return [future.result() for future in futures]


def outcomes_in_order(futures: Sequence[PrefectFuture[R]]) -> list[R | Exception]:
    """Wait for every future, then each one's result, or the exception it failed with, in submission order."""
    from prefect.futures import wait

    wait(list(futures))
    outcomes: list[R | Exception] = []
    for future in futures:
        try:
            outcomes.append(future.result())
        except Exception as exc:  # the caller decides what a failed task stops
            outcomes.append(exc)
    return outcomes
