"""What a `seqcast` command shows on its console while a flow runs: the flow's own lines, a progress bar on a
terminal, and none of Prefect's bookkeeping.

- Prefect's per-run state lines ("Beginning flow run", "Finished in state Completed()", hook lines, a "View at"
  link to the temporary server, which has no UI and stops with the command) are dropped from the console handler
  only: the Prefect API handler is a separate handler on `prefect.flow_runs` / `prefect.task_runs`, so the UI
  keeps every line. What the flows log themselves (what is trained, the gate's decision, rows written) stays.
- Our own errors (any SeqcastError) lose their traceback everywhere (`ExpectedErrors`, a logger filter), and on
  the console the engine's lines about them go too: the command prints the message once, as `error: ...`.
- On a terminal (stdout a TTY), training epochs and backfill writes draw a progress bar from the events of
  `tasks.progress`; elsewhere (CI, workers, pipes) nothing is drawn and the stages log one line per candidate.

Importing this module imports only the standard library (the CLI imports it for `--help` too); rich and prefect
are imported when a flow command runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from tasks.progress import Event

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
ENGINE_LOGGER = "prefect.engine"  # where Prefect logs that a flow's state hooks run
# Prefect's engine lines (INFO) that only say a run changed state, as their messages start.
STATE_LINES = (
    "Beginning flow run",
    "Beginning subflow run",
    "Created task run",
    "Finished in state Completed",
    "Running hook ",
    "Hook '",
)


class ExpectedErrors(logging.Filter):
    """A logger filter for Prefect's run loggers: a record about one of our own errors (a SeqcastError: its message
    is what the user needs) keeps its line but loses its traceback, and is marked for `ConsoleNoise`."""

    def filter(self, record: logging.LogRecord) -> bool:
        from models.errors import SeqcastError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SeqcastError):
            record.exc_info = None
            record.exc_text = None
            record.seqcast_error = type(error).__name__
        return True


class ConsoleNoise(logging.Filter):
    """A console-handler filter: drops Prefect's state lines, the link to a temporary server, and the engine's
    lines about our own errors (which the command prints once itself); every other record passes."""

    def __init__(self, temporary_api: bool) -> None:
        super().__init__()
        self.temporary_api = temporary_api

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ENGINE_LOGGER and record.levelno == logging.INFO:
            return not record.getMessage().startswith(STATE_LINES)
        if record.name not in RUN_LOGGERS:
            # Prefect's event and log workers warn once at exit while they send their last items
            return not (record.name.endswith("Worker") and record.getMessage().startswith("Still processing items"))
        if getattr(record, "seqcast_error", None):
            return False
        message = record.getMessage()
        if message.startswith("Finished in state Failed("):  # the state line of a run that failed with our error
            # (Prefect logs a failed task's state line before the error itself, so match the names of all our errors)
            return not any(f" {name}: " in message for name in _seqcast_error_names())
        if record.levelno == logging.INFO:
            return not (message.startswith(STATE_LINES) or (self.temporary_api and message.startswith("View at ")))
        return True


def _seqcast_error_names() -> set[str]:
    """Names of SeqcastError and every subclass of it defined so far."""
    from models.errors import SeqcastError

    names, pending = set(), [SeqcastError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending += cls.__subclasses__()
    return names


def quiet_expected_errors() -> None:
    """Install `ExpectedErrors` on Prefect's run loggers (idempotent; before or after Prefect configures logging,
    whose dictConfig keeps a logger's filters)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedErrors) for f in logger.filters):
            logger.addFilter(ExpectedErrors())


def quiet_worker_console(flow: Any, flow_run: Any, state: Any) -> None:
    """An `on_running` hook of the deployed flows: in a flow run a Prefect worker started (PREFECT__FLOW_RUN_ID is
    set; its console is the worker's log), the console filters of a command; the Prefect UI keeps every line.
    Commands set their own console up (`flow_console`); SEQCAST_DEBUG=1 keeps everything."""
    if os.environ.get("PREFECT__FLOW_RUN_ID") and not os.environ.get("SEQCAST_DEBUG"):
        quiet_expected_errors()
        quiet_console(temporary_api=False)


def _console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers on the root logger (configured when prefect was imported)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    return [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]


def quiet_console(temporary_api: bool) -> None:
    """Put `ConsoleNoise` on Prefect's console handlers (replacing one put there before)."""
    for handler in _console_handlers():
        for old in [f for f in handler.filters if isinstance(f, ConsoleNoise)]:
            handler.removeFilter(old)
        handler.addFilter(ConsoleNoise(temporary_api))


class ProgressBars:
    """Draws `tasks.progress` events: a bar per training fit (epoch n/N, train and validation loss, windows/s,
    ETA), removed when the fit ends (its summary line is logged), and one for a backfill's writes (rows, chunks).
    Thread-safe: the auto-scaling tries report from their own threads."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress: Progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[detail]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            refresh_per_second=4,
        )
        self._bars: dict[tuple[str, ...], TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> ProgressBars:
        from rich.default_styles import DEFAULT_STYLES
        from rich.theme import Theme

        # Prefect's console has a theme of its own log styles only; the bar's styles go on top while it shows
        styles = {name: style for name, style in DEFAULT_STYLES.items() if name.startswith(("bar.", "progress."))}
        self.progress.console.push_theme(Theme(styles))
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
        self.progress.console.pop_theme()

    def __call__(self, event: Event) -> None:
        from tasks.progress import EpochProgress

        with self._lock:
            if isinstance(event, EpochProgress):
                self._epoch(event)
            else:
                self._write(event.description, event.rows_done, event.rows_total, event.chunks_done, event.chunks_total)

    def _epoch(self, event: Any) -> None:
        key = ("fit", event.cell, event.scaling)
        if event.epoch == 0 or key not in self._bars:
            if key in self._bars:
                self.progress.remove_task(self._bars.pop(key))
            self._bars[key] = self.progress.add_task(
                f"{event.cell} {event.scaling}", total=event.max_epochs, count="", detail="starting"
            )
        bar = self._bars[key]
        if event.epoch > 0:
            speed = f"{event.windows_per_second:,.0f} windows/s"
            detail = f"train {_loss(event.train_loss)}  val {_loss(event.val_loss)}  {speed}"
            self.progress.update(
                bar, completed=event.epoch, count=f"epoch {event.epoch}/{event.max_epochs}", detail=detail
            )
        if event.done:
            self.progress.remove_task(self._bars.pop(key))

    def _write(self, description: str, done: int, total: int, chunks: int, chunks_total: int | None) -> None:
        key = ("write",)
        if chunks == 0 or key not in self._bars:
            if key in self._bars:
                self.progress.remove_task(self._bars.pop(key))
            self._bars[key] = self.progress.add_task(
                description.split(" ")[0], total=max(total, 1), count="", detail=""
            )
        of = f"/{chunks_total}" if chunks_total else ""
        self.progress.update(
            self._bars[key],
            completed=done,
            count=f"{done:,}/{total:,} rows",
            detail=f"chunk {chunks}{of}" if chunks else "writing",
        )


def _loss(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4f}"


def terminal_console() -> Console | None:
    """Where to draw progress bars: None unless stdout is a terminal; then the console Prefect logs to, when that is
    the terminal too (its lines then print above the bar), else one on stdout."""
    if not _isatty(sys.stdout):
        return None
    from rich.console import Console

    for handler in _console_handlers():
        console = getattr(handler, "console", None)
        if isinstance(console, Console) and _isatty(getattr(handler, "stream", None)):
            return console
    return Console(file=sys.stdout)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


@contextmanager
def flow_console(temporary_api: bool) -> Iterator[None]:
    """The console of a command while its flow runs in this process: Prefect's noise dropped (unless
    SEQCAST_DEBUG is set), progress bars on a terminal, and Ctrl-C stopping training in every thread."""
    from tasks import progress
    from tasks.train import stop_training_on_interrupt

    if not os.environ.get("SEQCAST_DEBUG"):
        quiet_console(temporary_api)
    console = terminal_console()
    with stop_training_on_interrupt():
        if console is None:
            yield
            return
        with ProgressBars(console) as bars, progress.observe(bars):
            yield
