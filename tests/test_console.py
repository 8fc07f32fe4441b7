"""What `seqcast` prints (issue 11): one clean message per bad input, a quiet training on a non-terminal, command
help with whole summaries and help for every option, and a progress bar on a terminal only.

Real `seqcast` processes (the console script, as a user runs it) with their own temporary Prefect server, on stores
in a temp folder; nothing is mocked.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest

from flows.cli import cli, main
from flows.warm import command_argv
from tasks import progress

DEAD_PREFECT = "http://127.0.0.1:1/api"  # nothing listens: a command that reaches Prefect fails on it
# The options of a tiny training run on the electricity sample: seconds of training, every stage run for real.
TINY_TRAIN = ["--lookback", "48", "--horizon", "12", "--hidden-size", "8", "--layers", "1", "--epochs", "2"]
TINY_TRAIN += ["--batch-size", "256", "--cell", "lstm"]


def _env(home: Path, prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQCAST_", "MLFLOW_", "PREFECT_"))}
    env.update({"SEQCAST_HOME": str(home), "PREFECT_HOME": str(prefect_home), "COLUMNS": "80", **extra})
    env.setdefault("SEQCAST_WARM_IDLE", "0")  # a cold command (tests/conftest.py says why)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 280) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command_argv(), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=env["SEQCAST_HOME"]
    )


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prefect's home for this module's commands (each starts its own temporary server on its database)."""
    return tmp_path_factory.mktemp("prefect-home")


def _ingest(home: Path, source: str, monkeypatch: pytest.MonkeyPatch, *options: str) -> None:
    from tasks.settings import get_settings
    from tasks.store import dispose_engines

    monkeypatch.setenv("SEQCAST_HOME", str(home))
    monkeypatch.delenv("SEQCAST_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["ingest", "--source", source, *options]) == 0
    finally:
        dispose_engines()
        get_settings.cache_clear()


def _assert_one_message(done: subprocess.CompletedProcess[str], message: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert done.stderr.startswith("error: ") and message in done.stderr, output
    assert len(output.strip().splitlines()) <= 2, f"more than the message:\n{output}"


# --- bad input: one message, no traceback ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2000-08-20", "--end", "2000-08-19"], "backfill range is reversed: start 2000-08-20"),
        (["--start", "2000-08-20", "--end", "2000-08-21", "--every", "banana"], "`every` ('banana') is not a pandas"),
    ],
)
def test_bad_backfill_parameters_fail_before_prefect_starts(
    tmp_path: Path, prefect_home: Path, args: list[str], message: str
) -> None:
    """Checked before any server or flow run: with a Prefect API that cannot be reached, the message is still the
    parameter's, not a connection error."""
    home = tmp_path / "home"
    home.mkdir()
    done = _run(["backfill", *args], _env(home, prefect_home, PREFECT_API_URL=DEAD_PREFECT))
    _assert_one_message(done, message)


def test_train_on_an_empty_store_says_to_ingest_first(tmp_path: Path, prefect_home: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = _run(["train"], _env(home, prefect_home, PREFECT_API_URL=DEAD_PREFECT))
    _assert_one_message(done, "no observations in sqlite:///")
    assert "run `seqcast ingest --source ...` first" in done.stderr


@pytest.mark.integration
def test_a_series_too_short_for_the_window_is_one_message(
    tmp_path: Path, prefect_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caught inside the train flow (it needs the data): Prefect's lines about the failure stay off the console."""
    home = tmp_path / "home"
    short = tmp_path / "short.csv"
    ts = pd.date_range("2024-01-01", periods=100, freq="h")
    pd.DataFrame({"ts": ts, "value": np.sin(np.arange(100) / 4.0)}).to_csv(short, index=False)
    _ingest(home, str(short), monkeypatch)
    done = _run(["train"], _env(home, prefect_home))
    _assert_one_message(done, "series too short for the window (h data): series 'short' has 100 observations")


@pytest.mark.integration
def test_series_of_different_frequencies_are_one_message(
    tmp_path: Path, prefect_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hourly and a daily series in one store cannot share windows: one error line naming both frequencies."""
    home = tmp_path / "home"
    mixed = tmp_path / "mixed.csv"
    n = 400
    parts = [
        pd.DataFrame({"series_id": sid, "ts": pd.date_range("2024-01-01", periods=n, freq=freq), "value": np.arange(n)})
        for sid, freq in (("hourly", "h"), ("daily", "D"))
    ]
    pd.concat(parts).to_csv(mixed, index=False)
    _ingest(home, str(mixed), monkeypatch, "--series-col", "series_id")
    done = _run(["train", "--lookback", "24", "--horizon", "6"], _env(home, prefect_home))
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output
    # found when windowing, after validation's own progress line: the error is the last line, and the only one
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == [done.stderr.strip().splitlines()[-1]], output
    assert "series have different frequencies" in errors[0] and "'hourly': 'h'" in errors[0], output
    assert "'daily': '24h'" in errors[0]


# --- a training run on a non-terminal: the flow's own lines only ----------------------------------------------


@pytest.mark.integration
def test_train_output_off_a_terminal_has_no_epochs_bars_or_library_noise(
    tmp_path: Path, prefect_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    _ingest(home, "sample:electricity", monkeypatch)
    done = _run(["train", *TINY_TRAIN], _env(home, prefect_home))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for noise in (
        "epoch 1/",  # per epoch: MLflow and the DEBUG log only
        "Downloading artifacts",  # MLflow's tqdm bars
        "Finished in state",  # Prefect's per-run state lines
        "Beginning flow run",
        "CloudPickle",
        "interpreted in multiple ways",  # MLflow's guess at a dataset source
        "Integer columns",  # MLflow's schema hint
        "Started a temporary Prefect server",
        "Creating initial MLflow database tables",
        "Traceback",
        "━",  # no progress bar off a terminal
    ):
        assert noise not in output, f"{noise!r} in:\n{output}"
    lines = output.strip().splitlines()
    assert sum("training lstm 1x8 on cpu" in line for line in lines) == 1, output  # what is trained
    assert sum(re.search(r"lstm: scaling \w+ .*best epoch \d of 2", line) is not None for line in lines) == 1, output
    assert any("gate: " in line for line in lines), output  # the decision
    assert done.stdout.startswith("training as of "), output  # the summary, on stdout
    assert len(lines) <= 20, f"{len(lines)} lines:\n{output}"


def test_fits_report_epochs_as_events_and_log_them_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    from tasks.train import TrainConfig, fit_forecaster
    from tasks.windowing import WindowConfig, prepare_windows

    t = np.arange(300)
    frame = pd.DataFrame(
        {"series_id": "s", "ts": pd.date_range("2024-01-01", periods=300, freq="h", tz="UTC"), "value": np.sin(t / 4)}
    )
    data = prepare_windows(frame, WindowConfig(lookback=24, horizon=6, test_size=12, val_size=24))
    config = TrainConfig(hidden_size=4, max_epochs=3, batch_size=64, device="cpu", num_threads=1, scaling="auto")
    events: list[progress.Event] = []
    with caplog.at_level(logging.DEBUG, logger="tasks.train"), progress.observe(events.append):
        fit_forecaster(data, config)
    assert not progress.observed()
    for scaling in ("series", "last"):
        epochs = [e for e in events if isinstance(e, progress.EpochProgress) and e.scaling == scaling]
        assert [e.epoch for e in epochs] == [0, 1, 2, 3] and [e.done for e in epochs] == [False, False, False, True]
        assert all(e.cell == "lstm" and e.max_epochs == 3 and e.windows_per_second > 0 for e in epochs[1:])
    records = [r for r in caplog.records if r.name == "tasks.train"]
    assert all(r.levelno == logging.DEBUG for r in records if " epoch " in r.getMessage() and "/3:" in r.getMessage())
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(info) == 2, info  # one line when the candidate starts, one when it ends
    assert info[0].startswith("training lstm 1x4 on cpu, scalings series and last")
    assert info[1].startswith("lstm: scaling ") and "best epoch" in info[1] and "windows/s" in info[1]


# --- help -----------------------------------------------------------------------------------------------------


def test_command_list_shows_whole_summaries(tmp_path: Path, prefect_home: Path) -> None:
    done = _run(["--help"], _env(tmp_path, prefect_home), timeout=60)
    assert done.returncode == 0, done.stderr
    listing = done.stdout.split("Commands:\n", 1)[1].splitlines()
    assert sorted(line.split()[0] for line in listing) == sorted(cli.commands), done.stdout  # one line each
    for line in listing:
        assert not line.rstrip().endswith("..."), f"cut summary: {line!r}"
        assert line.rstrip().endswith("."), f"summary is not a whole sentence: {line!r}"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_has_help(name: str) -> None:
    command = cli.commands[name]
    params = command.get_params(click.Context(command, info_name=name))
    missing = [p.name for p in params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == [], f"seqcast {name}: options without help: {missing}"


def test_as_of_reads_the_same_in_train_and_forecast() -> None:
    def as_of(name: str) -> click.Option:
        command = cli.commands[name]
        params = command.get_params(click.Context(command, info_name=name))
        return next(p for p in params if isinstance(p, click.Option) and p.name == "as_of")

    train, forecast = as_of("train"), as_of("forecast")
    assert train.help == forecast.help and train.metavar == forecast.metavar == "TIME"
    assert isinstance(train.type, click.DateTime) and train.type.formats == forecast.type.formats  # type: ignore[attr-defined]


# --- the progress bar: on a terminal only ---------------------------------------------------------------------

BARS = """
import logging, time
import prefect  # its console handler, on stderr, as in a flow command
from flows.console import flow_console
from tasks import progress
from tasks.progress import EpochProgress, WriteProgress

with flow_console(temporary_api=True):
    for epoch in range(4):
        progress.report(EpochProgress("lstm", "series", epoch, 3, 0.5, 0.25, 1234.0, done=epoch == 3))
        time.sleep(0.6)
    logging.getLogger("prefect.task_runs").info("Finished in state Completed()", extra={"send_to_api": False})
    logging.getLogger("seqcast").warning("a line above the bar")
    progress.report(WriteProgress("backfill 2000-01-01 .. 2000-01-02", 0, 2000, 0, None))
    time.sleep(0.6)
    progress.report(WriteProgress("backfill", 1000, 2000, 1, 2))
    time.sleep(0.6)
print("done")
"""


def _in_a_terminal(code: str, timeout: float = 120) -> str:
    """Run `code` in a Python process whose stdin, stdout and stderr are a pseudo-terminal; all it wrote."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
    finally:
        process.kill()
        process.wait()
        os.close(controller)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode("utf-8", "replace"))  # without colours and moves


@pytest.fixture
def no_seqcast_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEQCAST_DEBUG", raising=False)


def test_progress_bar_draws_on_a_terminal(no_seqcast_debug: None) -> None:
    shown = _in_a_terminal(BARS)
    assert "done" in shown, shown
    assert re.search(r"lstm series .*epoch 2/3 train 0\.5000  val 0\.2500  1,234 windows/s ETA", shown), shown
    assert re.search(r"backfill .*1,000/2,000 rows chunk 1/2", shown), shown
    assert "a line above the bar" in shown and "Finished in state" not in shown


def test_progress_bar_stays_off_a_pipe(no_seqcast_debug: None) -> None:
    done = subprocess.run([sys.executable, "-c", BARS], capture_output=True, text=True, timeout=120, check=True)
    output = done.stdout + done.stderr
    assert "epoch" not in output and "rows" not in output and "━" not in output, output
    assert "a line above the bar" in output and "Finished in state" not in output
