"""Progress of the long stages (training epochs, backfill writes) for whoever wants to show it.

Tasks only report events here; nothing is drawn or logged unless a process attaches an observer with `observe`
(the `seqcast` command does, on a terminal, and draws a progress bar from them: flows/console.py). So task code
stays free of terminal code, and a worker or a test that attaches nothing pays one empty-list check per event.

Observers are per process, not per flow run: training runs in the process that calls the flow (the CLI), and the
auto-scaling tries report from their own threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class EpochProgress:
    """One epoch of one fit done (`epoch` 0: the fit starts; `done`: its last epoch, early stop or not)."""

    cell: str
    scaling: str
    epoch: int
    max_epochs: int
    train_loss: float
    val_loss: float
    windows_per_second: float  # training windows per second of this epoch's training loop
    done: bool = False


@dataclass(frozen=True)
class WriteProgress:
    """Rows written so far by a chunked write (a backfill); `chunks_done` 0: the write starts."""

    description: str
    rows_done: int
    rows_total: int
    chunks_done: int
    chunks_total: int | None


Event = EpochProgress | WriteProgress
Observer = Callable[[Event], None]

_observers: list[Observer] = []
_lock = threading.Lock()


@contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Send every progress event of this process to `observer` while the block runs."""
    with _lock:
        _observers.append(observer)
    try:
        yield
    finally:
        with _lock:
            _observers.remove(observer)


def observed() -> bool:
    """Whether anyone shows progress now (a task may then log its per-step lines at DEBUG only)."""
    return bool(_observers)


def report(event: Event) -> None:
    """Hand `event` to every observer; an observer that fails is logged and never fails the work it watches."""
    for observer in list(_observers):
        try:
            observer(event)
        except Exception:
            logging.getLogger(__name__).debug("progress observer %r failed", observer, exc_info=True)
