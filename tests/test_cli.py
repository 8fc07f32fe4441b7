"""The `seqcast` command: fast help, clean usage errors, ingest on SQLite and PostgreSQL, one message per error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main
from flows.warm import command_argv
from tasks import store

COMMANDS = ("ingest", "train", "demo", "forecast", "backfill", "monitor", "deploy")


def _run(args: list[str], env_home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEQCAST_HOME": str(env_home)}
    env.pop("SEQCAST_DATABASE_URL", None)
    env.pop("SEQCAST_DEBUG", None)
    return subprocess.run(
        [*command_argv(), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=env_home.parent
    )


def test_help_is_fast_and_lists_the_commands(tmp_path: Path) -> None:
    _run(["--help"], tmp_path / "home")  # warm the file cache
    start = time.perf_counter()
    done = _run(["--help"], tmp_path / "home")
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert elapsed < 1.5, f"seqcast --help took {elapsed:.2f}s"
    for command in COMMANDS:
        assert command in done.stdout


def test_importing_the_cli_imports_nothing_heavy() -> None:
    """Not even pydantic: the train and demo options, built from the run spec, are added when first parsed."""
    heavy = ("pydantic", "numpy", "pandas", "torch", "prefect", "mlflow", "great_expectations")
    code = f"import sys, flows.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["train", "demo"])
def test_train_and_demo_help_is_fast_and_lists_every_setting(tmp_path: Path, command: str) -> None:
    _run([command, "--help"], tmp_path / "home")  # warm the file cache
    start = time.perf_counter()
    done = _run([command, "--help"], tmp_path / "home")
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert elapsed < 1.5, f"seqcast {command} --help took {elapsed:.2f}s"
    for option in ("--cell", "--lookback", "--horizon", "--epochs", "--hidden-size", "--layers", "--batch-size"):
        assert option in done.stdout
    for option in ("--device", "--seed", "--test-fraction", "--eval-stride", "--learning-rate", "--season"):
        assert option in done.stdout


def test_a_value_the_run_spec_refuses_is_a_clean_usage_error(tmp_path: Path) -> None:
    start = time.perf_counter()
    done = _run(["train", "--test-fraction", "1.5"], tmp_path / "home")
    assert time.perf_counter() - start < 1.5
    assert done.returncode == 2
    assert "Invalid value for '--test-fraction': 1.5" in done.stderr
    assert "Traceback" not in done.stderr


def test_ingest_help_lists_its_options(tmp_path: Path) -> None:
    done = _run(["ingest", "--help"], tmp_path / "home")
    assert done.returncode == 0
    for option in ("--source", "--time-col", "--value-col", "--series-col", "--series-id", "--tz", "--query"):
        assert option in done.stdout
    for option in ("--gap-policy", "--max-gap-steps", "--outlier-policy", "--database-url"):
        assert option in done.stdout


def test_mistyped_option_is_a_clean_usage_error(tmp_path: Path) -> None:
    start = time.perf_counter()
    done = _run(["ingest", "--sorce", "sample:electricity"], tmp_path / "home")
    assert time.perf_counter() - start < 1.5
    assert done.returncode == 2
    assert "No such option '--sorce'. Did you mean '--source'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_file_exits_1_with_one_message_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,value\n2024-01-01,1\n2024-01-02,lots\n")
    done = _run(["ingest", "--source", str(bad)], tmp_path / "home")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: validation of ")
    assert done.stderr.count("error:") == 1
    assert "1 of 2 values are not numbers in series 'bad' (1): row 2" in done.stderr
    assert done.stdout == ""


def _table_rows(url: str) -> int:
    return len(store.read_observations(store.get_engine(url)))


def test_ingest_sample_then_again_changes_nothing(
    db_url: str, seqcast_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", "--source", "sample:electricity", "--database-url", db_url]) == 0
    out = capsys.readouterr().out
    assert ": 4032 new, 0 updated, 0 unchanged (1 series)" in out
    assert "england_wales_demand" in out and "2000-06-05T00:00:00+00:00" in out and "2000-08-27T23:30:00+00:00" in out
    assert "validation report: " in out
    assert main(["ingest", "--source", "sample:electricity", "--database-url", db_url]) == 0
    assert ": 0 new, 0 updated, 4032 unchanged" in capsys.readouterr().out
    assert _table_rows(db_url) == 4032


def test_ingest_csv_with_a_changed_value_reports_one_update(
    db_url: str, seqcast_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "readings.csv"
    path.write_text("when,kw\n2024-01-01 00:00,1\n2024-01-01 00:30,2\n")
    args = ["ingest", "--source", str(path), "--time-col", "when", "--value-col", "kw", "--series-id", "meter-1"]
    assert main([*args, "--database-url", db_url]) == 0
    assert ": 2 new, 0 updated, 0 unchanged" in capsys.readouterr().out
    path.write_text("when,kw\n2024-01-01 00:00,1\n2024-01-01 00:30,2.5\n")
    assert main([*args, "--database-url", db_url]) == 0
    out = capsys.readouterr().out
    assert ": 0 new, 1 updated, 1 unchanged" in out and "meter-1" in out


def test_ingest_from_a_query(
    db_url: str, seqcast_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    source_db = tmp_path / "source.db"
    with sqlite3.connect(source_db) as conn:
        conn.execute("create table prices (ticker text, day text, close real)")
        conn.executemany(
            "insert into prices values (?, ?, ?)",
            [("ACME", f"2024-01-0{d}", 10.0 + d) for d in (1, 2, 3, 4, 5)],  # Mon..Fri
        )
    code = main(
        [
            "ingest",
            "--source",
            f"sqlite:///{source_db}",
            "--query",
            "select ticker, day, close from prices",
            "--series-col",
            "ticker",
            "--database-url",
            db_url,
        ]
    )
    assert code == 0
    assert ": 5 new, 0 updated, 0 unchanged" in capsys.readouterr().out


def test_gap_fill_from_the_command_line(
    db_url: str, seqcast_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gappy.csv"
    path.write_text("ts,value\n2024-01-01 00:00,0\n2024-01-01 01:00,1\n2024-01-01 03:00,3\n")
    assert main(["ingest", "--source", str(path), "--database-url", db_url]) == 1
    assert "--gap-policy fill --max-gap-steps 1" in capsys.readouterr().err
    assert (
        main(
            ["ingest", "--source", str(path), "--gap-policy", "fill", "--max-gap-steps", "1", "--database-url", db_url]
        )
        == 0
    )
    assert ": 4 new, 0 updated, 0 unchanged (1 series, 1 points filled)" in capsys.readouterr().out


def test_outlier_policy_from_the_command_line(
    db_url: str, seqcast_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "load.csv"
    rows = "".join(
        f"2024-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z,{'1e12' if h == 40 else 30000 + (0, 100, -100)[h % 3]}\n"
        for h in range(72)
    )
    path.write_text("ts,value\n" + rows)
    assert main(["ingest", "--source", str(path), "--database-url", db_url]) == 1
    err = capsys.readouterr().err
    assert "value='1e12' (rolling median 30000, band 29000 to 31000)" in err and "--outlier-policy clip / warn" in err
    assert _table_rows(db_url) == 0
    assert main(["ingest", "--source", str(path), "--outlier-policy", "clip", "--database-url", db_url]) == 0
    assert ": 72 new, 0 updated, 0 unchanged (1 series, 1 outliers clipped)" in capsys.readouterr().out
    assert main(["ingest", "--source", str(path), "--outlier-policy", "warn", "--database-url", db_url]) == 0
    assert ": 0 new, 1 updated, 71 unchanged (1 series, 1 outliers kept)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ("series_id,ts\na,2024-01-01\n", "required column 'value' is missing"),
        ('series_id,ts,value\n"a\x00",2024-01-01,1\n', "NUL byte"),
    ],
)
def test_bad_input_from_the_command_line_writes_nothing(
    db_url: str,
    seqcast_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    phrase: str,
) -> None:
    assert main(["ingest", "--source", "sample:electricity", "--database-url", db_url]) == 0
    capsys.readouterr()
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["ingest", "--source", str(path), "--database-url", db_url]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: validation of ") and phrase in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert _table_rows(db_url) == 4032


def test_missing_source_and_file_are_one_line_errors(seqcast_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest"]) == 2
    assert "give --source" in capsys.readouterr().err
    assert main(["ingest", "--source", "nowhere.csv"]) == 1
    err = capsys.readouterr().err
    assert err == "error: source file 'nowhere.csv' does not exist; give a file, a folder, a glob or sample:NAME\n"


def test_unreachable_database_is_one_message_without_the_password(
    seqcast_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/nothing?connect_timeout=2"
    assert main(["ingest", "--source", "sample:electricity", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach database postgresql+psycopg://someone:***@127.0.0.1:1/nothing")
    assert "Connection refused" in err and err.count("\n") == 1 and "hunter2" not in err


def test_deploy_without_a_prefect_server_is_one_clear_error() -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    done = subprocess.run(
        [*command_argv(), "deploy"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the Prefect API at http://127.0.0.1:1/api")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_training_summary_prints_mae_and_mase_of_every_method_and_the_series_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.cli import _print_training
    from flows.train import CandidateSummary, TrainSummary

    def scores(mae: float, mase: float) -> dict[str, float]:
        return {"mae": mae, "rmse": mae, "smape": 1.0, "mase": mase}

    summary = TrainSummary(
        parent_run_id="run1",
        experiment_id="1",
        model_name="seqcast",
        version="3",
        alias="challenger",
        reason="lstm mean per-series MASE 1.2000 does not beat naive 1.1000",
        best_cell="lstm",
        champion_mase=None,
        as_of="2026-11-30T00:00:00+00:00",
        candidates=[
            CandidateSummary("lstm", "r1", "uri1", {f"test_{k}": v for k, v in scores(12.5, 1.2).items()}),
            CandidateSummary("gru", "r2", "uri2", {f"test_{k}": v for k, v in scores(14.0, 1.4).items()}),
        ],
        baselines={"naive": scores(11.0, 1.1), "seasonal_naive_7": scores(20.0, 2.0)},
        served=scores(10.5, 1.05),
        series=[
            {
                "series_id": "spx",
                "model_mase": 1.5,
                "best_baseline": "naive",
                "best_baseline_mase": 1.0,
                "served": "naive",
            },
            {
                "series_id": "temp",
                "model_mase": 0.5,
                "best_baseline": "seasonal_naive_7",
                "best_baseline_mase": 0.9,
                "served": "lstm",
            },
        ],
    )
    _print_training(summary)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["method", "test", "MAE", "MASE"]
    assert lines[2].split() == ["lstm", "12.5", "1.200"] and lines[3].split() == ["gru", "14", "1.400"]
    assert lines[4].split() == ["served", "(lstm", "+", "fallback)", "10.5", "1.050"]
    assert lines[5].split() == ["naive", "11", "1.100"] and lines[6].split() == [
        "seasonal",
        "naive",
        "7",
        "20",
        "2.000",
    ]
    assert "MASE: mean over series" in out and "nan" not in out.lower()
    assert "spx" in out and "temp" in out  # the per-series table, for a run of more than one series
    row = next(line for line in lines if line.strip().startswith("spx"))
    assert row.split() == ["spx", "1.500", "naive", "1.000", "naive"]
    assert lines[-1].startswith("registered seqcast v3 (lstm) as 'challenger': lstm mean per-series MASE 1.2000")
