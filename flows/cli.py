"""The `seqcast` command line.

Only click is imported here: pandas, torch, prefect, mlflow and great_expectations are imported inside the command
that needs them, so `seqcast --help` and a mistyped option answer in well under a second.

To fill in a command, give its function options with click decorators and import its flow inside the body.
Expected errors end the command with exit code 1 and one message on stderr (no traceback; set SEQCAST_DEBUG=1
to see one); usage errors exit with 2, as click does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, cast

import click

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="seqcast", prog_name="seqcast")
def cli() -> None:
    """seqcast: LSTM/GRU forecasting pipeline (Prefect flows, MLflow registry, forecasts in SQL).

    Settings come from SEQCAST_* environment variables (SEQCAST_HOME, SEQCAST_DATABASE_URL, ...).
    """


@cli.command("ingest")
@click.option(
    "--source",
    metavar="SOURCE",
    help="A CSV/Parquet file, folder or quoted glob ('data/*.csv'), sample:electricity|temperature|msft, "
    "or with --query a SQLAlchemy URL (default for --query: the seqcast database).",
)
@click.option("--query", metavar="SQL", help="Read the rows of this SQL query from the --source URL.")
@click.option("--time-col", metavar="NAME", help="Time column (guessed: ts, timestamp, time, date, datetime, ...).")
@click.option("--value-col", metavar="NAME", help="Value column (guessed: value, y, target, load, price, close, ...).")
@click.option("--series-col", metavar="NAME", help="Series id column (guessed: series_id, series, unique_id, ...).")
@click.option("--series-id", metavar="ID", help="Series id for a source without a series column (default: file stem).")
@click.option("--tz", metavar="ZONE", help="Time zone of naive timestamps, e.g. Europe/London (default UTC).")
@click.option(
    "--gap-policy",
    type=click.Choice(["fail", "fill"]),
    default="fail",
    show_default=True,
    help="Refuse a series with missing steps, or fill gaps of up to --max-gap-steps by linear interpolation.",
)
@click.option(
    "--max-gap-steps",
    type=click.IntRange(min=1),
    metavar="N",
    help="Longest gap (missing steps) that --gap-policy fill may fill.",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="SQLAlchemy URL of the observations database (default: SEQCAST_DATABASE_URL, else SQLite in SEQCAST_HOME).",
)
def ingest_command(
    source: str | None,
    query: str | None,
    time_col: str | None,
    value_col: str | None,
    series_col: str | None,
    series_id: str | None,
    tz: str | None,
    gap_policy: str,
    max_gap_steps: int | None,
    database_url: str | None,
) -> None:
    """Validate a source and upsert it into the observations table (nothing is written if validation fails)."""
    if source is None and query is None:
        raise click.UsageError("give --source (a file, glob, or sample:NAME), or --query with a --source URL")
    from tasks.ingest import ingest
    from tasks.settings import get_settings

    result = ingest(
        source,
        database_url or get_settings().db_url,
        query=query,
        time_col=time_col,
        value_col=value_col,
        series_col=series_col,
        series_id=series_id,
        tz=tz,
        gap_policy="fill" if gap_policy == "fill" else "fail",
        max_gap_steps=max_gap_steps,
    )
    rows = len(result.summary.series)
    click.echo(
        f"ingested {result.source} into {result.database}: {result.new} new, {result.updated} updated, "
        f"{result.unchanged} unchanged ({rows} series"
        + (f", {result.report.filled_points} points filled" if result.report.filled_points else "")
        + ")"
    )
    width = max([6, *(len(_printable(s.series_id)) for s in result.summary.series)])
    click.echo(f"  {'series':<{width}}  {'new':>8}  {'updated':>8}  {'unchanged':>9}  {'from':<25}  to")
    for s in result.summary.series:
        click.echo(
            f"  {_printable(s.series_id):<{width}}  {s.new:>8}  {s.updated:>8}  {s.unchanged:>9}  "
            f"{s.start.isoformat():<25}  {s.end.isoformat()}"
        )
    click.echo(f"validation report: {result.report.json_path}")


def _train_options(function: Any) -> Any:
    """Options shared by `train` and `demo`."""
    options = [
        click.option(
            "--cell",
            "cells",
            type=click.Choice(["lstm", "gru"]),
            multiple=True,
            help="Cell type to train; repeat for both (default: lstm and gru).",
        ),
        click.option(
            "--lookback",
            type=click.IntRange(min=1),
            default=336,
            show_default=True,
            help="Input steps per window (336 = one week of half-hours).",
        ),
        click.option(
            "--horizon",
            type=click.IntRange(min=1),
            default=48,
            show_default=True,
            help="Steps forecast at once (48 = one day of half-hours).",
        ),
        click.option(
            "--epochs",
            "max_epochs",
            type=click.IntRange(min=1),
            default=60,
            show_default=True,
            help="Most epochs; early stopping on validation loss may stop sooner.",
        ),
        click.option("--hidden-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--layers", "num_layers", type=click.IntRange(min=1), default=1, show_default=True),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=None,
            help="Windows per optimizer step.  [default: 32 for the LSTM, 64 for the GRU]",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
            help="auto: CUDA when present, else CPU.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@cli.command("train")
@_train_options
@click.option("--series", multiple=True, metavar="ID", help="Train on these series only (repeatable; default all).")
@click.option("--as-of", type=click.DateTime(), help="Use observations up to this time (UTC; default now).")
def train_command(series: tuple[str, ...], as_of: Any, cells: tuple[str, ...], **options: Any) -> None:
    """Train LSTM and GRU candidates, evaluate them against baselines and the champion, register the better."""
    from flows.train import train_flow

    summary = train_flow(series=list(series) or None, cells=list(cells) or None, as_of=as_of, **options)
    _print_training(summary)


@cli.command("demo")
@_train_options
@click.option("--source", default="sample:electricity", show_default=True, help="What to ingest first.")
def demo_command(source: str, cells: tuple[str, ...], **options: Any) -> None:
    """Run the whole pipeline on the embedded stores with sample:electricity (ingest, train, forecast)."""
    from flows.demo import DemoSummary, demo_flow

    summary = cast("DemoSummary", demo_flow(source=source, cells=list(cells) or None, **options))
    _print_training(summary.training)
    click.echo("")
    for line in summary.next_steps:
        click.echo(line)


def _print_training(summary: Any) -> None:
    click.echo(f"training as of {summary.as_of} (MLflow parent run {summary.parent_run_id})")
    click.echo(
        f"  {'candidate':<10} {'test MAE':>10} {'MASE':>7} {'seasonal naive MASE':>20} {'weekly s.naive MASE':>20}"
    )
    for c in summary.candidates:
        m = c.metrics
        weekly = m.get("weekly_seasonal_naive_test_mase", float("nan"))
        click.echo(
            f"  {c.cell:<10} {m['test_mae']:>10.4g} {m['test_mase']:>7.3f} "
            f"{m['seasonal_naive_test_mase']:>20.3f} {weekly:>20.3f}"
        )
    click.echo(
        f"registered {summary.model_name} v{summary.version} ({summary.best_cell}) "
        f"as '{summary.alias}': {summary.reason}"
    )


_DATETIME = click.DateTime(
    formats=[
        "%Y-%m-%d",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%d %H:%M:%S%z",
    ]
)


def _model_options(function: Any) -> Any:
    """Options shared by `forecast` and `backfill`: which registered version to use."""
    options = [
        click.option(
            "--alias",
            "model_alias",
            default="champion",
            show_default=True,
            metavar="ALIAS",
            help="Registered-model alias to forecast with.",
        ),
        click.option(
            "--version",
            "model_version",
            metavar="N",
            help="Registered-model version to forecast with (wins over --alias).",
        ),
        click.option(
            "--series",
            multiple=True,
            metavar="ID",
            help="Forecast these series only (repeatable; default all).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@cli.command("forecast")
@_model_options
@click.option(
    "--as-of",
    type=_DATETIME,
    metavar="TIME",
    help="Forecast from the observations up to this time (UTC unless it has an offset; default now).",
)
@click.option(
    "--stale-policy",
    type=click.Choice(["skip", "fail"]),
    default="skip",
    show_default=True,
    help="A series that is stale, too short, gapped or unknown to the model: skip and list it, or fail the run.",
)
def forecast_command(
    model_alias: str, model_version: str | None, series: tuple[str, ...], as_of: Any, stale_policy: str
) -> None:
    """Write the champion's forecasts from each series' last observation to the forecasts table."""
    from flows.forecast import forecast_flow

    summary = forecast_flow(
        model_alias=model_alias,
        model_version=model_version,
        series=list(series) or None,
        as_of=as_of,
        stale_policy="fail" if stale_policy == "fail" else "skip",
    )
    click.echo(
        f"wrote {summary.rows_written} rows to {summary.table} ({summary.database}) with "
        f"{summary.model_name} v{summary.model_version} (MLflow run {summary.mlflow_run_id}), as of {summary.as_of}"
    )
    origins = sorted(set(summary.origins.values()))
    if len(origins) == 1:
        click.echo(f"  origin {origins[0]} for {len(summary.origins)} series")
    else:
        width = max([6, *(len(_printable(s)) for s in summary.origins)])
        for sid, origin in summary.origins.items():
            click.echo(f"  {_printable(sid):<{width}}  origin {origin}")
    _print_skipped(summary.skipped, counts=False)
    click.echo("read them with:")
    click.echo(f"  {summary.command}")


@cli.command("backfill")
@click.option("--start", type=_DATETIME, required=True, metavar="TIME", help="First origin time (UTC unless offset).")
@click.option("--end", type=_DATETIME, required=True, metavar="TIME", help="Last origin time (UTC unless offset).")
@click.option(
    "--every",
    metavar="ALIAS",
    help="Spacing of origins as a pandas offset alias, e.g. 1D, 6h, 30min (default: the series frequency).",
)
@_model_options
def backfill_command(
    start: Any, end: Any, every: str | None, model_alias: str, model_version: str | None, series: tuple[str, ...]
) -> None:
    """Forecasts that would have been made at each past origin in a date range, from the data known then."""
    from flows.backfill import backfill_flow

    summary = backfill_flow(
        start=start,
        end=end,
        every=every,
        model_alias=model_alias,
        model_version=model_version,
        series=list(series) or None,
    )
    click.echo(
        f"backfilled {summary.start} .. {summary.end} every {summary.every} with {summary.model_name} "
        f"v{summary.model_version} (MLflow run {summary.mlflow_run_id})"
    )
    click.echo(
        f"  {summary.origins_planned} origins over {len(summary.series)} series "
        f"({summary.first_origin} .. {summary.last_origin}): {summary.origins_written} forecast now, "
        f"{summary.origins_existing} already in {summary.table}"
    )
    click.echo(f"  wrote {summary.rows_written} rows in {summary.chunks} transactions to {summary.database}")
    _print_skipped(summary.skipped, counts=True)
    click.echo("read them with:")
    click.echo(f"  {summary.command}")


def _print_skipped(skipped: Sequence[Any], counts: bool) -> None:
    if not skipped:
        return
    click.echo(f"skipped {len(skipped)} series" if not counts else f"skipped origins of {len(skipped)} series")
    for s in skipped:
        count = f" ({s.origins} origins)" if counts else ""
        click.echo(f"  {_printable(s.series_id)}{count}: {s.reason}")


@cli.command("deploy")
@click.option("--work-pool", metavar="NAME", help="Process work pool to use (default: SEQCAST_WORK_POOL or seqcast).")
@click.option(
    "--train-cron", metavar="CRON", help="Nightly training schedule (default: SEQCAST_TRAIN_CRON or 0 2 * * *)."
)
@click.option(
    "--forecast-cron", metavar="CRON", help="Forecast schedule (default: SEQCAST_FORECAST_CRON or 0 3 * * *)."
)
@click.option("--timezone", metavar="ZONE", help="Time zone of both schedules (default: SEQCAST_TIMEZONE or UTC).")
def deploy_command(
    work_pool: str | None, train_cron: str | None, forecast_cron: str | None, timezone: str | None
) -> None:
    """Register the deployments on the Prefect API: nightly training, scheduled forecasts, on-demand backfill."""
    from flows.deploy import deploy_command as deploy

    deploy(work_pool=work_pool, train_cron=train_cron, forecast_cron=forecast_cron, timezone=timezone)


def _printable(text: str, limit: int = 80) -> str:
    """A series id safe for a terminal: control characters escaped, long ids cut."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return shown if len(shown) <= limit else f"{shown[: limit - 3]}..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqcast` console script; returns the exit code."""
    # Prefect's temporary local server would otherwise try to send usage analytics on every command.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # OpenMP threads that spin while waiting cut RNN training 3-10x when the cores are shared (docs/benchmarks.md);
    # this must be set before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="seqcast", standalone_mode=False)
    except click.ClickException as exc:  # usage errors: click's own message and exit code 2
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        if os.environ.get("SEQCAST_DEBUG"):
            raise
        click.echo(f"error: {_error_message(exc)}", err=True)
        return 1
    return code if isinstance(code, int) else 0


def _error_message(exc: BaseException) -> str:
    """One message for an error: ours as written, database errors without SQL or passwords, others with their type."""
    expected = {
        "DataValidationError",
        "SourceError",
        "SchemaVersionError",
        "RegistryError",
        "TrainingDivergedError",
        "ForecastInputError",
        "BackfillRangeError",
        "DeployError",
    }
    if type(exc).__name__ in expected:
        return str(exc)
    if type(exc).__module__.startswith("sqlalchemy"):
        orig = getattr(exc, "orig", None)
        detail = str(orig if orig is not None else exc).strip().splitlines()
        return f"database error ({type(exc).__name__}): {detail[0] if detail else exc!r}"
    if isinstance(exc, OSError | ValueError):
        return str(exc) or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {exc} (set SEQCAST_DEBUG=1 to see the traceback)"


if __name__ == "__main__":
    sys.exit(main())
