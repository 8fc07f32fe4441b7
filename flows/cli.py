"""The `seqcast` command line.

Only click is imported here: pandas, torch, prefect, mlflow and great_expectations are imported inside the command
that needs them, and pydantic with the run spec (tasks/spec.py, whose fields are the options of `train` and `demo`)
when those commands are first parsed, so `seqcast --help` and a mistyped option answer in well under a second.

To fill in a command, give its function options with click decorators and import its flow inside the body.
Expected errors end the command with exit code 1 and one message on stderr (no traceback; set SEQCAST_DEBUG=1
to see one); usage errors exit with 2, as click does.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Sequence
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, cast, get_args, get_origin

import click
from click.core import ParameterSource

from flows.prefect_server import start_temporary_prefect_api
from flows.warm import COMMAND_ENV_DEFAULTS, run_warm, runs_warm

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic.fields import FieldInfo

    from tasks.spec import RunSpec

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="seqcast", prog_name="seqcast")
def cli() -> None:
    """seqcast: LSTM/GRU forecasting pipeline (Prefect flows, MLflow registry, forecasts in SQL).

    Settings come from SEQCAST_* environment variables (SEQCAST_HOME, SEQCAST_DATABASE_URL, ...).
    """


@cli.command("ingest", short_help="Validate a source and upsert it into the observations table.")
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
    help="Refuse a series with missing steps or NaN values, or fill runs of up to --max-gap-steps of them "
    "by linear interpolation (a NaN first or last value is still refused).",
)
@click.option(
    "--max-gap-steps",
    type=click.IntRange(min=1),
    metavar="N",
    help="Longest run of missing steps and NaN values that --gap-policy fill may fill.",
)
@click.option(
    "--outlier-policy",
    type=click.Choice(["fail", "warn", "clip"]),
    default="fail",
    show_default=True,
    help="Values more than 10 MADs from their series' rolling median (49 points): refuse the batch, keep them "
    "(logged and listed in the validation report), or clip them to the edge of that band.",
)
@click.option(
    "--calendar",
    metavar="MARKET",
    help="Daily series on this exchange's trading days, e.g. NYSE, XNYS, XLON: its weekends and holidays are no "
    "gaps (frequency B-MARKET). Without it, a weekday series missing exactly on a market's holidays is detected.",
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
    outlier_policy: str,
    calendar: str | None,
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
        calendar=calendar,
        outlier_policy=cast(Literal["fail", "warn", "clip"], outlier_policy),
    )
    rows = len(result.summary.series)
    outliers = result.report.outliers
    click.echo(
        f"ingested {result.source} into {result.database}: {result.new} new, {result.updated} updated, "
        f"{result.unchanged} unchanged ({rows} series"
        + (f", {result.report.filled_points} points filled" if result.report.filled_points else "")
        + (f" ({result.report.filled_nan} of them NaN values)" if result.report.filled_nan else "")
        + (f", {result.report.calendar} trading days" if result.report.calendar else "")
        + (f", {outliers} outliers {'clipped' if result.report.clipped_points else 'kept'}" if outliers else "")
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


# `seqcast train` and `seqcast demo` take one option per field of the run spec (tasks/spec.py): its type, choices,
# default and help come from the field, so a new setting is a new field there. Options are `--field-name` unless
# named here (names from before the spec; repeatable options take one value each, so their names are singular).
SPEC_OPTION_NAMES = {"cells": "--cell", "num_layers": "--layers", "max_epochs": "--epochs", "seasons": "--season"}


@functools.cache
def spec_fields() -> tuple[tuple[str, str, FieldInfo], ...]:
    """(part, field name, field) of every setting of the run spec, in the spec's order."""
    from pydantic import BaseModel

    from tasks.spec import RunSpec

    fields: list[tuple[str, str, FieldInfo]] = []
    for part, part_field in RunSpec.model_fields.items():
        model = part_field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), part
        fields += [(part, name, info) for name, info in model.model_fields.items()]
    return tuple(fields)


@functools.cache
def spec_options() -> dict[str, str]:
    """The option of every run-spec field, by field name (names are unique across the spec's parts)."""
    options = {name: SPEC_OPTION_NAMES.get(name, "--" + name.replace("_", "-")) for _, name, _ in spec_fields()}
    assert len(options) == len(spec_fields()), "run spec field names must be unique across its parts"
    return options


class JsonMappingFile(click.ParamType):
    """A JSON file holding one object, read into the dict a mapping field of the run spec takes
    (`--partition-groups groups.json`: {"group": ["series id", ...], ...})."""

    name = "json_file"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "FILE.json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import json

        if isinstance(value, dict):
            return value
        try:
            with open(value, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except (OSError, ValueError) as exc:
            self.fail(f"cannot read {value!r} as JSON: {exc}", param, ctx)
        if not isinstance(loaded, dict):
            self.fail(f"{value!r} holds a JSON {type(loaded).__name__}; it needs an object", param, ctx)
        return loaded


def _click_type(annotation: Any) -> tuple[click.ParamType, bool]:
    """The click type of a spec field's annotation, and whether the option repeats (list fields); a mapping field
    is read from a JSON file."""
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is dict:
        return JsonMappingFile(), False
    multiple = get_origin(annotation) is list
    if multiple:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return click.Choice([str(arg) for arg in get_args(annotation)]), multiple
    plain: dict[Any, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}
    return plain[annotation], multiple


def _option_help(text: str | None) -> str:
    """A field's description with the spec's names of other settings (gap_policy) written as options."""
    names = "|".join(name for name in spec_options() if "_" in name)
    return re.sub(rf"\b({names})\b", lambda m: spec_options()[m.group(1)], text or "")


def _spec_params() -> list[click.Parameter]:
    """An option for every field of the run spec, its default the spec's."""
    from tasks.spec import RunSpec

    defaults = RunSpec()
    params: list[click.Parameter] = []
    for part, name, info in spec_fields():
        default = getattr(getattr(defaults, part), name)
        if info.annotation is bool:  # a switch, e.g. `--register-rejected`
            help_text = _option_help(info.description)
            params.append(click.Option([spec_options()[name], name], is_flag=True, default=default, help=help_text))
            continue
        kind, multiple = _click_type(info.annotation)
        params.append(
            click.Option(
                [spec_options()[name], name],
                type=kind,
                multiple=multiple,
                default=tuple(default) if isinstance(default, list) else default,
                show_default=default is not None,
                help=_option_help(info.description) + (" Repeatable." if multiple else ""),
            )
        )
    return params


class SpecCommand(click.Command):
    """A command with an option per run-spec setting (before its own), added on first use, so that `seqcast
    --help` and the other commands do not import pydantic; the callback reads them back with `_run_spec`."""

    _spec_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._spec_added:
            self.params[:0] = _spec_params()
            self._spec_added = True
        return super().get_params(ctx)


def _run_spec(ctx: click.Context) -> RunSpec:
    """The run spec of the options given on the command line (the spec's defaults for the others).

    A value the spec refuses is a usage error (exit code 2) that names the option.
    """
    from pydantic import ValidationError

    from tasks.spec import RunSpec

    given: dict[str, dict[str, Any]] = {}
    for part, name, _ in spec_fields():
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            value = ctx.params[name]
            given.setdefault(part, {})[name] = list(value) if isinstance(value, tuple) else value
    try:
        return RunSpec.model_validate(given)
    except ValidationError as exc:
        raise _spec_error(ctx, exc) from None


def _spec_error(ctx: click.Context, exc: ValidationError) -> click.UsageError:
    """The run spec's validation errors as one usage error, each naming its option."""
    options = spec_options()
    messages = []
    param = None
    for error in exc.errors():
        loc = error["loc"]
        text = error["msg"].removeprefix("Value error, ")
        for name, option in options.items():
            text = text.replace(f"`{name}`", option)
        if len(loc) >= 2 and loc[1] in options:
            option = options[str(loc[1])]
            param = param or next(p for p in ctx.command.params if p.name == loc[1])
            messages.append((option, f"{error['input']!r} ({text})"))
        else:
            messages.append(("", text))
    if len(messages) == 1 and messages[0][0]:
        return click.BadParameter(messages[0][1], ctx=ctx, param=param)
    return click.UsageError("; ".join(f"{option}: {text}" if option else text for option, text in messages), ctx=ctx)


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


# `--as-of` means the same in every command that reads observations: the rows with ts <= this time.
AS_OF_HELP = "Use only the observations up to this time (UTC unless it has an offset; default now)."


def _flow_console() -> Any:
    """Start the temporary Prefect API (a server that dies with this command, flows/prefect_server.py) and give the
    console that a flow runs under: Prefect's state lines dropped, progress bars on a terminal (flows/console.py).
    Called after the command's options are checked, right before its flow."""
    from flows.console import flow_console

    return flow_console(temporary_api=start_temporary_prefect_api() is not None)


@cli.command("train", cls=SpecCommand, short_help="Train LSTM and GRU candidates; promote the best if it wins.")
@click.option("--series", multiple=True, metavar="ID", help="Train on these series only (repeatable; default all).")
@click.option("--as-of", type=_DATETIME, metavar="TIME", help=AS_OF_HELP)
@click.pass_context
def train_command(ctx: click.Context, series: tuple[str, ...], as_of: Any, **_: Any) -> None:
    """Train LSTM and GRU candidates, evaluate them against baselines and the champion, register the better.

    Settings left out follow the data: lookback, horizon, evaluation stride and seasons come from its frequency.
    """
    spec = _run_spec(ctx)
    _require_observations(list(series) or None)
    from flows.train import train_flow
    from tasks.runners import task_runner_for

    with _flow_console():
        flow = train_flow.with_options(task_runner=task_runner_for(spec))  # --task-runner, --ray-address
        summary = flow(spec=spec, series=list(series) or None, as_of=as_of)
    _print_training(summary)


@cli.command("tune", cls=SpecCommand, short_help="Search the network and training settings; save the best spec.")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    metavar="N",
    help="Trials to run, added to the study's earlier ones (default: 20, or no limit with --minutes).",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    metavar="M",
    help="Start no trial after M minutes; the running ones finish or are pruned (default: no limit).",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    metavar="N",
    help="Trials side by side (default: what the task runner runs at once: the cores, or the Ray cluster's CPUs).",
)
@click.option(
    "--trial-epochs",
    type=click.IntRange(min=1),
    metavar="N",
    help="Most epochs of each trial (default: --epochs); the saved spec keeps --epochs.",
)
@click.option("--series", multiple=True, metavar="ID", help="Tune on these series only (repeatable; default all).")
@click.option("--as-of", type=_DATETIME, metavar="TIME", help=AS_OF_HELP)
@click.pass_context
def tune_command(
    ctx: click.Context,
    trials: int | None,
    minutes: float | None,
    parallel: int | None,
    trial_epochs: int | None,
    series: tuple[str, ...],
    as_of: Any,
    **_: Any,
) -> None:
    """Search lookback, cell, hidden size, layers, dropout, scaling, learning rate and batch size on the validation
    windows (Optuna: TPE, median pruning), each trial an MLflow child run; save the best spec in the database, where
    the nightly training takes it (`seqcast deploy`, and the nightly deployment's parameters when it is deployed).

    The spec's options are where every trial starts; the study (`seqcast-tune-<model>`) keeps its trials, so running
    it again adds to them.
    """
    spec = _run_spec(ctx)
    from tasks.tune import TuneBudget

    budget = TuneBudget(trials=trials, minutes=minutes, parallel=parallel, trial_epochs=trial_epochs)
    _require_observations(list(series) or None)
    from flows.tune import tune_flow
    from tasks.runners import task_runner_for

    with _flow_console():
        flow = tune_flow.with_options(task_runner=task_runner_for(spec))  # --task-runner, --ray-address
        summary = flow(spec=spec, budget=budget, series=list(series) or None, as_of=as_of)
    _print_tuning(summary)


def _print_tuning(summary: Any, limit: int = 10) -> None:
    """The best trials of the study, the best spec's tuned settings, and where it went."""
    import json

    from tasks.tune_report import TRIAL_COLUMNS, shown

    counts = summary.this_run
    click.echo(
        f"tuned {summary.study_name}: {sum(counts.values())} trials this run ({counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed) in {summary.seconds:.0f} s; the study holds "
        f"{len(summary.trials)} finished trials ({summary.storage})"
    )
    rows = [[shown(row[c]) for c in TRIAL_COLUMNS] for row in summary.trials[:limit]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(TRIAL_COLUMNS)]
    click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(TRIAL_COLUMNS, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if len(summary.trials) > limit:
        click.echo(f"  ... and {len(summary.trials) - limit} more trials (all of them in the study)")
    click.echo("  (val MASE: mean over series of the validation windows' MAE / the in-sample seasonal-naive MAE)")
    if summary.best_trial is None:
        click.echo("no trial has completed yet, so no spec was saved; run more trials (or more --trial-epochs)")
    else:
        if summary.kept_defaults:
            saved = f"the spec's own settings kept (their best trial {summary.best_trial}, validation MASE "
            saved += f"{summary.best_value:.4f}) and saved in the study: {summary.decision}"
        else:
            saved = f"best trial {summary.best_trial} (validation MASE {summary.best_value:.4f}), its spec saved in "
            saved += f"the study ({summary.decision})" if summary.decision else "the study"
        click.echo(f"{saved}; {summary.nightly}")
        settings = " ".join(
            f"{name}={'/'.join(map(str, value)) if isinstance(value, list) else shown(value)}"
            for name, value in summary.best_settings.items()
        )
        click.echo(f"best spec: {settings}")
    click.echo(f"best spec (JSON): {json.dumps(summary.best_spec)}")
    if summary.run_url:
        click.echo(f"  MLflow: {summary.run_url}")
    else:
        click.echo(f"  MLflow: tuning run {summary.parent_run_id} (experiment {summary.experiment_id})")


def _require_observations(series: list[str] | None) -> None:
    """Fail at once, before Prefect starts, when the store holds no observations (of these series) to train on."""
    from models.errors import SeqcastError
    from tasks.forecast import describe_ids, observation_span
    from tasks.settings import get_settings, redact_url
    from tasks.store import get_engine

    url = get_settings().db_url
    if observation_span(get_engine(url), series) is None:
        which = "" if series is None else f" of series {describe_ids(series)}"
        raise SeqcastError(
            f"no observations{which} in {redact_url(url)} to train on; run `seqcast ingest --source ...` first "
            "(e.g. --source sample:electricity)"
        )


@cli.command("demo", cls=SpecCommand, short_help="The whole pipeline on a sample: ingest, train, forecast.")
@click.option("--source", default="sample:electricity", show_default=True, help="What to ingest first.")
@click.pass_context
def demo_command(ctx: click.Context, source: str, **_: Any) -> None:
    """Run the whole pipeline on the embedded stores with sample:electricity (ingest, train, forecast)."""
    spec = _run_spec(ctx)
    from flows.demo import DemoSummary, demo_flow

    with _flow_console():
        summary = cast("DemoSummary", demo_flow(source=source, spec=spec))
    _print_training(summary.training)
    click.echo("")
    for line in summary.next_steps:
        click.echo(line)


def _print_training(summary: Any) -> None:
    from flows.train import method_scores

    click.echo(f"training as of {summary.as_of} (MLflow parent run {summary.parent_run_id})")
    rows = method_scores(summary)
    width = max(len(name) for name, _ in rows)
    click.echo(f"  {'method':<{width}}  {'test MAE':>10}  {'MASE':>7}")
    for name, scores in rows:
        click.echo(f"  {name:<{width}}  {scores['mae']:>10.4g}  {scores['mase']:>7.3f}")
    if summary.champion_mase is not None:
        click.echo(f"  previous champion, as it serves, on the same windows: MASE {summary.champion_mase:.3f}")
    click.echo("  (MASE: mean over series of MAE / the in-sample seasonal-naive MAE of the training part)")
    if len(summary.series) > 1:
        _print_series(summary.series)
    if summary.run_url:
        click.echo(f"  MLflow: {summary.run_url}")
    click.echo(summary.outcome())  # registered as champion/challenger, or not registered and what keeps serving


def _print_series(series: list[dict[str, Any]], limit: int = 20) -> None:
    """The gate's per-series table: how the best network does on each series against its best baseline."""
    width = max(6, *(len(_printable(str(row["series_id"]))) for row in series[:limit]))
    click.echo(f"  {'series':<{width}}  {'model MASE':>10}  {'best baseline':<22} {'its MASE':>8}  served")
    for row in series[:limit]:
        click.echo(
            f"  {_printable(str(row['series_id'])):<{width}}  {row['model_mase']:>10.3f}  "
            f"{row['best_baseline']:<22} {row['best_baseline_mase']:>8.3f}  {row['served']}"
        )
    if len(series) > limit:
        click.echo(f"  ... and {len(series) - limit} more series (the full table is the run's gate_series.csv)")


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


@cli.command("forecast", short_help="Write the champion's forecasts to the forecasts table.")
@_model_options
@click.option(
    "--as-of",
    type=_DATETIME,
    metavar="TIME",
    help=AS_OF_HELP,
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

    with _flow_console():
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
    if summary.realised is not None and summary.realised.rows:
        click.echo(f"  where actuals exist: {summary.realised.describe()}")
    _print_skipped(summary.skipped, counts=False)
    click.echo("read them with:")
    click.echo(f"  {summary.command}")


@cli.command("backfill", short_help="Forecasts as made at each past origin of a date range.")
@click.option("--start", type=_DATETIME, required=True, metavar="TIME", help="First origin time (UTC unless offset).")
@click.option("--end", type=_DATETIME, required=True, metavar="TIME", help="Last origin time (UTC unless offset).")
@click.option(
    "--every",
    metavar="ALIAS",
    default="1D",
    help="Time between two origins, a pandas offset alias such as 6h, 30min or 1W (default: 1D, one origin a day).",
)
@_model_options
def backfill_command(
    start: Any, end: Any, every: str | None, model_alias: str, model_version: str | None, series: tuple[str, ...]
) -> None:
    """Forecasts that would have been made at each past origin in a date range, from the data known then."""
    from flows.backfill import backfill_flow
    from tasks.forecast import check_backfill_range

    check_backfill_range(start, end, every)  # a reversed range or a bad --every fails before Prefect starts
    with _flow_console():
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
    if summary.realised is not None:
        click.echo(f"  where actuals exist: {summary.realised.describe()}")
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


@cli.command("monitor", short_help="Score past forecasts; flag degraded or drifting series.")
@click.option(
    "--model", "registered_model", metavar="NAME", help="Registered model (default: SEQCAST_REGISTERED_MODEL)."
)
@click.option("--version", "model_version", metavar="N", help="Monitor this version only (default: every version).")
@click.option("--series", multiple=True, metavar="ID", help="Monitor these series only (repeatable; default all).")
@click.option(
    "--days", type=click.IntRange(1, 3660), default=7, show_default=True, help="Trailing window in nights (origins)."
)
@click.option(
    "--nights",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Consecutive bad nights before a series counts as degraded (at most --days).",
)
@click.option(
    "--factor",
    type=click.FloatRange(min=1.0),
    default=1.5,
    show_default=True,
    help="A night is bad when its realised MASE exceeds this factor x the test MASE.",
)
@click.option(
    "--as-of", type=_DATETIME, metavar="TIME", help="Score with observations up to this time (UTC; default now)."
)
def monitor_command(
    registered_model: str | None,
    model_version: str | None,
    series: tuple[str, ...],
    days: int,
    nights: int,
    factor: float,
    as_of: Any,
) -> None:
    """Score past forecasts against their actuals, compare with the model's test figures, flag degradation and
    drift (and emit seqcast.forecast.degraded)."""
    from flows.monitor import monitor_flow
    from tasks.monitor import make_config

    config = make_config(days=days, degraded_nights=nights, mase_factor=factor)
    with _flow_console():
        summary = monitor_flow(
            config=config,
            model_version=model_version,
            series=list(series) or None,
            registered_model=registered_model,
            as_of=as_of,
        )
    click.echo(
        f"monitored {_printable(summary.model_name)} as of {summary.as_of}, nights {summary.nights[0]} .. "
        f"{summary.nights[-1]}: scores {summary.scores_new} new, {summary.scores_updated} updated, "
        f"{summary.scores_unchanged} unchanged ({summary.database})"
    )
    if not summary.versions:
        click.echo("  no forecasts of this model in the window: nothing to monitor")
        return
    click.echo(
        f"  {'version':<8} {'status':<13} {'scores':>7}  {'MAE (test)':<20} {'MASE (test)':<18} coverage (level)"
    )
    for v in summary.versions:
        status = v.status + ("" if v.current or v.status == "no scores" else "*")
        click.echo(
            f"  {'v' + v.version:<8} {status:<13} {v.rows:>7}  {_pair(v.mae, v.test_mae):<20} "
            f"{_pair(v.mase, v.test_mase):<18} {_pair(v.coverage, v.level, 3)}"
        )
    if any(not v.current and v.status != "no scores" for v in summary.versions):
        click.echo("  * replaced: no longer forecasting, so it raises no event")
    _print_monitor_series(summary.series)
    for v in summary.versions:
        for finding in v.degraded:
            click.echo(f"degraded: v{v.version} {_printable(finding.series_id)}: {'; '.join(finding.reasons)}")
        for finding in v.drifted:
            click.echo(f"drift: v{v.version} {_printable(finding.series_id)}: {'; '.join(finding.reasons)}")
    for event_id in summary.events:
        click.echo(f"event seqcast.forecast.degraded emitted ({event_id})")
    for version, run_id in summary.mlflow_runs.items():
        click.echo(f"MLflow: v{version} realised error over nights in run {run_id} (experiment {summary.experiment})")


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _pair(value: float | None, reference: float | None, digits: int = 4) -> str:
    """`realised (reference)` with dashes for what is missing."""
    return f"{_num(value, digits)} ({_num(reference, digits)})"


def _print_monitor_series(rows: list[dict[str, Any]], limit: int = 50) -> None:
    if not rows:
        return
    width = max([6, *(len(_printable(str(r["series_id"]), 40)) for r in rows[:limit])])
    click.echo(
        f"  {'version':<8} {'series':<{width}} {'scores':>7}  {'MAE':>9}  {'MASE (test)':<18} {'bad nights':>10}  "
        "coverage (level)  status"
    )
    for r in rows[:limit]:
        bad = f"{r['nights_bad']}/{r['nights']}"
        click.echo(
            f"  {'v' + str(r['model_version']):<8} {_printable(str(r['series_id']), 40):<{width}} {r['rows']:>7}  "
            f"{_num(r['mae']):>9}  {_pair(r['mase'], r['test_mase']):<18} {bad:>10}  "
            f"{_pair(r['coverage'], r['level'], 3):<17} {r['status']}{' (drift)' if r['drift'] else ''}"
        )
    if len(rows) > limit:
        click.echo(f"  ... {len(rows) - limit} more series (all of them in the Prefect artifact monitor-series)")


@cli.command("deploy", short_help="Register the deployments and the retraining automation.")
@click.option("--work-pool", metavar="NAME", help="Process work pool to use (default: SEQCAST_WORK_POOL or seqcast).")
@click.option(
    "--train-cron", metavar="CRON", help="Nightly training schedule (default: SEQCAST_TRAIN_CRON or 0 2 * * *)."
)
@click.option(
    "--forecast-cron", metavar="CRON", help="Forecast schedule (default: SEQCAST_FORECAST_CRON or 0 3 * * *)."
)
@click.option(
    "--monitor-cron", metavar="CRON", help="Monitoring schedule (default: SEQCAST_MONITOR_CRON or 0 1 * * *)."
)
@click.option(
    "--retrain-cooldown-hours",
    type=click.FloatRange(min=0, min_open=True),
    metavar="H",
    help="Least hours between two retrainings the degradation event starts, per model (default: "
    "SEQCAST_RETRAIN_COOLDOWN_HOURS or 72).",
)
@click.option("--timezone", metavar="ZONE", help="Time zone of the schedules (default: SEQCAST_TIMEZONE or UTC).")
def deploy_command(
    work_pool: str | None,
    train_cron: str | None,
    forecast_cron: str | None,
    monitor_cron: str | None,
    retrain_cooldown_hours: float | None,
    timezone: str | None,
) -> None:
    """Register the deployments on the Prefect API (nightly training, scheduled forecasts, on-demand backfill,
    nightly monitoring) and the automation that retrains when the monitor finds a model degraded."""
    from flows.deploy import deploy_command as deploy

    deploy(
        work_pool=work_pool,
        train_cron=train_cron,
        forecast_cron=forecast_cron,
        timezone=timezone,
        monitor_cron=monitor_cron,
        retrain_cooldown_hours=retrain_cooldown_hours,
    )


def _printable(text: str, limit: int = 80) -> str:
    """A series id safe for a terminal: control characters escaped, long ids cut."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return shown if len(shown) <= limit else f"{shown[: limit - 3]}..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqcast` console script; returns the exit code."""
    for name, value in COMMAND_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if argv is None and runs_warm(sys.argv[1:]):  # the console script: run it in a warm process (flows/warm.py)
        warm_code = run_warm(sys.argv[1:])
        if warm_code is not None:
            return warm_code
    if not os.environ.get("SEQCAST_DEBUG"):
        _quiet_expected_errors()
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="seqcast", standalone_mode=False)
    except click.ClickException as exc:  # usage errors: click's own message and exit code 2
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)  # click turns Ctrl-C into Abort (no command prompts)
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


def _quiet_expected_errors() -> None:
    """In a terminal, a store that is down or hung ends in one message: no Prefect traceback of our own errors
    (flows/console.py), no urllib3 line per MLflow retry (the message counts the tries). SEQCAST_DEBUG=1 keeps both."""
    from flows.console import quiet_expected_errors

    quiet_expected_errors()
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _error_message(exc: BaseException) -> str:
    """One message for an error: ours (any SeqcastError) as written, database and MLflow errors that no boundary
    converted as their first line without SQL or passwords, others with their type."""
    from models.errors import SeqcastError

    if isinstance(exc, SeqcastError):
        return str(exc)
    if type(exc).__module__.startswith("sqlalchemy"):
        orig = getattr(exc, "orig", None)
        detail = str(orig if orig is not None else exc).strip().splitlines()
        return f"database error ({type(exc).__name__}): {detail[0] if detail else exc!r}"
    if type(exc).__module__.startswith("mlflow"):
        detail = str(getattr(exc, "message", exc)).strip().splitlines()
        return f"MLflow error ({type(exc).__name__}): {detail[0] if detail else exc!r}"
    if isinstance(exc, OSError | ValueError):
        return str(exc) or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {exc} (set SEQCAST_DEBUG=1 to see the traceback)"


if __name__ == "__main__":
    sys.exit(main())
