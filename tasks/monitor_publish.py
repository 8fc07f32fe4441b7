"""Publishing a monitor report: the Prefect artifacts, the MLflow record of the night, the degradation event.

- **Prefect.** A table artifact (`monitor-series`: one row per version and series, realised vs test, status and
  reasons) and a markdown artifact (`monitor-report`: the verdict per version, the degraded and drifted series, and
  realised vs expected MAE by horizon step with a text bar per step).
- **MLflow.** Each model version has one *monitor run* in the experiment `<SEQCAST_EXPERIMENT>-monitor`, found by
  its tags and resumed every night. Each night logs the version's figures as metrics with step = the night's
  ordinal (days since 1970-01-01) and timestamp = the night (midnight UTC), so the run's charts draw realised MAE,
  MASE and coverage over nights (x axis "Step" or "Wall time") beside the test figures; the night's tables,
  report and MAE-by-step plot go under `nights/<date>/`. One run per version (not one per night) keeps each
  version's history one line, and the versions of a model side by side in one chart. A rerun of the same night
  logs identical points, which MLflow keeps once, and replaces the files.
- **Event.** `seqcast.forecast.degraded` for each degraded version that is still forecasting; its resource is the
  model version (`seqcast.model.<name>.v<version>`, labels `seqcast.model.name` and `seqcast.model.version`), its
  payload the degraded series with their reasons and the drifted series. `seqcast deploy` creates the automation
  that retrains on it (flows/deploy.py).
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.monitor import MonitorReport, SeriesFinding, VersionVerdict, finite, is_transient
from tasks.run_context import run_logger

if TYPE_CHECKING:
    from tasks.scores import ScoreWriteSummary

DEGRADED_EVENT = "seqcast.forecast.degraded"
MONITOR_EXPERIMENT_SUFFIX = "-monitor"  # monitor runs live in "<experiment>-monitor", one run per model version
SHOWN = 100  # series listed in an event's payload before "and N more"


# --- what the report shows ----------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    number = finite(value) if value is not None and not isinstance(value, str) else None
    return "-" if number is None else f"{number:.{digits}g}"


def _md(text: str, limit: int = 80) -> str:
    from tasks.forecast import _md as markdown_cell

    return markdown_cell(text, limit)


def series_rows(report: MonitorReport) -> list[dict[str, Any]]:
    """The per-series table as plain rows (the Prefect table artifact, the CLI, the MLflow CSV)."""
    columns = [
        "model_version",
        "series_id",
        "method",
        "rows",
        "mae",
        "mase",
        "test_mase",
        "mase_ratio",
        "nights",
        "nights_bad",
        "coverage",
        "level",
        "bounded",
        "status",
    ]
    frame = report.series
    rows = []
    for record in frame[columns].to_dict("records") if len(frame) else []:
        row: dict[str, Any] = {
            str(k): (finite(v) if isinstance(v, float | np.floating) else v) for k, v in record.items()
        }
        row["rows"] = int(record["rows"])
        row["bounded"] = int(record["bounded"])
        row["nights"] = int(record["nights"]) if finite(record["nights"]) is not None else 0
        row["nights_bad"] = int(record["nights_bad"]) if finite(record["nights_bad"]) is not None else 0
        rows.append(row)
    for row, reasons, drifted in zip(rows, frame["reasons"], frame["drifted"], strict=True):
        row["drift"] = bool(drifted)
        row["reasons"] = "; ".join(reasons)
    return rows


def _bar(ratio: float | None, width: int = 20) -> str:
    """A text bar of realised / expected, the expected level marked with |."""
    if ratio is None:
        return ""
    filled = min(round(ratio * width / 2), width)
    bar = "█" * filled + "·" * (width - filled)
    mark = width // 2
    return bar[:mark] + "|" + bar[mark:] + (" +" if ratio > 2 else "")


def report_markdown(report: MonitorReport, limit: int = 200) -> str:
    """The report as the Prefect artifact shows it: verdict per version, degraded and drifted series, and realised
    vs expected MAE by horizon step (a bar per step: `|` marks the test MAE, the bar's end the realised one)."""
    lines = [
        f"# seqcast monitor: {_md(report.model_name)} as of {report.as_of}",
        "",
        f"Nights {report.window.nights[0]} .. {report.window.nights[-1]} ({len(report.window.nights)}); degraded "
        f"after {report.config.degraded_nights} nights over {report.config.mase_factor:g} x expected MASE, or "
        f"coverage below level - {report.config.coverage_tolerance:g}.",
        "",
    ]
    if not report.versions:
        lines.append("No forecasts of this model in the window: nothing to monitor.")
        return "\n".join(lines)
    lines += [
        "| version | status | rows | MAE | test MAE | MASE | test MASE | coverage | level |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report.versions:
        status = v.status + ("" if v.current or v.status == "no scores" else " (replaced)")
        lines.append(
            f"| v{_md(v.version)} | {status} | {v.rows} | {_fmt(v.mae)} | {_fmt(v.test_mae)} | {_fmt(v.mase)} | "
            f"{_fmt(v.test_mase)} | {_fmt(v.coverage, 3)} | {_fmt(v.level, 3)} |"
        )
    if any(v.degraded or v.drifted for v in report.versions):
        lines.append("")
    for v in report.versions:
        for finding in v.degraded[:limit]:
            lines.append(
                f"- **degraded** v{_md(v.version)} {_md(finding.series_id)}: {_md('; '.join(finding.reasons), 400)}"
            )
        for finding in v.drifted[:limit]:
            lines.append(f"- drift v{_md(v.version)} {_md(finding.series_id)}: {_md('; '.join(finding.reasons), 400)}")
    for version, part in report.steps.groupby("model_version", sort=True):
        lines += [
            "",
            f"**v{_md(str(version))}: realised vs expected (test) MAE by horizon step**",
            "",
            "| step | rows | MAE | test MAE | ratio | | coverage | test coverage |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in part.to_dict("records"):
            ratio = finite(row["mae"] / row["test_mae"]) if finite(row["test_mae"]) else None
            lines.append(
                f"| {int(row['step'])} | {int(row['rows'])} | {_fmt(row['mae'])} | {_fmt(row['test_mae'])} | "
                f"{_fmt(ratio, 3)} | `{_bar(ratio)}` | {_fmt(row['coverage'], 3)} | {_fmt(row['test_coverage'], 3)} |"
            )
    return "\n".join(lines)


@task(name="publish-monitor-report", cache_policy=NO_CACHE)
def publish_report_task(report: MonitorReport) -> None:
    """The per-series table and the markdown report as Prefect artifacts, and one log line per finding."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = series_rows(report)
    if rows:
        create_table_artifact(table=rows, key="monitor-series", description=f"seqcast monitor as of {report.as_of}")
    create_markdown_artifact(markdown=report_markdown(report), key="monitor-report", description="seqcast monitor")
    log = run_logger(__name__)
    for v in report.versions:
        log.info(
            "%s v%s: %s (MASE %s vs test %s, coverage %s vs level %s, %d scores)",
            report.model_name,
            v.version,
            v.status,
            _fmt(v.mase),
            _fmt(v.test_mase),
            _fmt(v.coverage, 3),
            _fmt(v.level, 3),
            v.rows,
        )
        for finding in v.degraded:
            log.warning("degraded: v%s %r: %s", v.version, finding.series_id, "; ".join(finding.reasons))
        for finding in v.drifted:
            log.warning("drift: v%s %r: %s", v.version, finding.series_id, "; ".join(finding.reasons))


# --- MLflow: one record per night per version ---------------------------------------------------------------------


def night_step(night: str) -> int:
    """The MLflow step of a night: days since 1970-01-01, so nights are evenly spaced and a rerun lands on the same
    step."""
    return (dt.date.fromisoformat(night) - dt.date(1970, 1, 1)).days


def night_metrics(verdict: VersionVerdict) -> dict[str, float]:
    """The version's figures of the night, as MLflow metrics (only finite ones)."""
    values = {
        "realised_mae": verdict.mae,
        "test_mae": verdict.test_mae,
        "realised_mase": verdict.mase,
        "test_mase": verdict.test_mase,
        "mase_ratio": None if not verdict.mase or not verdict.test_mase else verdict.mase / verdict.test_mase,
        "realised_coverage": verdict.coverage,
        "level": verdict.level,
        "scored_rows": float(verdict.rows),
        "degraded": float(verdict.status == "degraded"),
        "degraded_series": float(len(verdict.degraded)),
        "drifted_series": float(len(verdict.drifted)),
    }
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def monitor_run_id(experiment_id: str, model_name: str, version: str) -> str:
    """The version's monitor run (one per version, resumed every night), created on first use."""
    from tasks import registry

    client = registry.get_client()
    quoted = [value.replace("'", "''") for value in (model_name, version)]
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`seqcast.monitor.model` = '{quoted[0]}' and tags.`seqcast.monitor.version` = '{quoted[1]}'"
        ),
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        return str(found[0].info.run_id)
    tags = {"seqcast.monitor.model": model_name, "seqcast.monitor.version": version}
    return registry.start_run(experiment_id, f"monitor {model_name} v{version}", tags)


def log_night(tracking_uri: str, experiment: str, artifact_root: Path | None, report: MonitorReport) -> dict[str, str]:
    """For each version with scores: the night's metrics on its monitor run (step = night ordinal, timestamp = the
    night), and the night's tables, markdown and MAE-by-step plot under `nights/<date>/`. Returns {version: run id}.

    A rerun of the same night logs the same points (MLflow keeps one of identical points) and replaces the files.
    """
    from mlflow.entities import Metric

    from tasks import registry

    if not any(v.rows for v in report.versions):
        return {}
    experiment_id = registry.configure_mlflow(tracking_uri, experiment, artifact_root)
    client = registry.get_client()
    night = report.window.night
    stamp = int(pd.Timestamp(night, tz="UTC").timestamp() * 1000)
    runs = {}
    for verdict in report.versions:
        if not verdict.rows:
            continue
        run_id = monitor_run_id(experiment_id, report.model_name, verdict.version)
        metrics = [Metric(k, v, stamp, night_step(night)) for k, v in night_metrics(verdict).items()]
        client.log_batch(run_id, metrics=metrics)
        client.set_tag(run_id, "seqcast.monitor.last_night", night)
        client.set_tag(run_id, "seqcast.monitor.status", verdict.status)
        with tempfile.TemporaryDirectory(prefix="seqcast-monitor-") as tmp:
            folder = Path(tmp)
            files = _night_files(report, verdict.version, folder)
            registry.log_artifacts(run_id, files, f"nights/{night}")
        registry.end_run(run_id)
        runs[verdict.version] = run_id
    return runs


def _night_files(report: MonitorReport, version: str, folder: Path) -> list[Path]:
    """The night's files of one version: per series, per step, per series and step, per night, the report, a plot."""
    tables = {
        "series.csv": pd.DataFrame([r for r in series_rows(report) if r["model_version"] == version]),
        "steps.csv": report.steps[report.steps["model_version"] == version],
        "series_steps.csv": report.series_steps[report.series_steps["model_version"] == version],
        "nights.csv": report.nights[report.nights["model_version"] == version],
    }
    paths = []
    for name, table in tables.items():
        table.to_csv(folder / name, index=False)
        paths.append(folder / name)
    (folder / "report.md").write_text(report_markdown(report), encoding="utf-8")
    title = f"{report.model_name} v{version}, {report.window.night}"
    plot = plot_mae_by_step(tables["steps.csv"], folder / "mae_by_step.png", title)
    return [*paths, folder / "report.md", plot]


def plot_mae_by_step(steps: pd.DataFrame, path: Path, title: str) -> Path:
    """Realised vs test MAE by horizon step, one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)  # no pyplot: no global figure state shared between threads
    ax = fig.add_subplot()
    ax.plot(steps["step"], steps["mae"], marker="o", label="realised MAE")
    if steps["test_mae"].notna().any():
        ax.plot(steps["step"], steps["test_mae"], marker=".", linestyle="--", label="test MAE (expected)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("horizon step")
    ax.set_ylabel("MAE")
    ax.set_title("".join(ch if ch.isprintable() else "?" for ch in title)[:90])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


# --- the event ----------------------------------------------------------------------------------------------------


def event_resource(model_name: str, version: str) -> dict[str, str]:
    """The event's resource: the model version, with its name and version as labels (the automation's cool-down is
    kept per `seqcast.model.name`)."""
    return {
        "prefect.resource.id": f"seqcast.model.{model_name}.v{version}",
        "prefect.resource.name": f"{model_name} v{version}",
        "seqcast.model.name": model_name,
        "seqcast.model.version": version,
    }


def event_payload(report: MonitorReport, verdict: VersionVerdict, shown: int = SHOWN) -> dict[str, Any]:
    def listed(findings: list[SeriesFinding]) -> list[dict[str, Any]]:
        return [{"series_id": f.series_id, "reasons": f.reasons} for f in findings[:shown]]

    return {
        "model": report.model_name,
        "version": verdict.version,
        "as_of": report.as_of,
        "night": report.window.night,
        "nights": report.window.nights,
        "realised_mase": verdict.mase,
        "test_mase": verdict.test_mase,
        "realised_coverage": verdict.coverage,
        "level": verdict.level,
        "degraded_count": len(verdict.degraded),
        "degraded_series": listed(verdict.degraded),
        "drifted_count": len(verdict.drifted),
        "drifted_series": listed(verdict.drifted),
        "config": report.config.model_dump(),
    }


@task(name="emit-degraded", cache_policy=NO_CACHE)
def emit_degraded_task(report: MonitorReport) -> list[str]:
    """`seqcast.forecast.degraded` for every degraded version that is still forecasting; returns the event ids."""
    from prefect.events import emit_event

    ids = []
    for verdict in report.versions:
        if not verdict.emits:
            continue
        event = emit_event(
            DEGRADED_EVENT,
            resource=event_resource(report.model_name, verdict.version),
            payload=event_payload(report, verdict),
        )
        run_logger(__name__).warning(
            "%s v%s is degraded on %d series: emitted %s",
            report.model_name,
            verdict.version,
            len(verdict.degraded),
            DEGRADED_EVENT,
        )
        if event is not None:
            ids.append(str(event.id))
    return ids


# --- the summary the flow returns ---------------------------------------------------------------------------------


@dataclass
class MonitorSummary:
    """What a monitor run did and found; the CLI prints it."""

    model_name: str
    as_of: str
    nights: list[str]
    scores_new: int
    scores_updated: int
    scores_unchanged: int
    versions: list[VersionVerdict]
    series: list[dict[str, Any]]
    events: list[str]
    mlflow_runs: dict[str, str]
    experiment: str
    database: str

    @property
    def degraded(self) -> bool:
        return any(v.emits for v in self.versions)


def monitor_summary(
    report: MonitorReport,
    written: ScoreWriteSummary,
    runs: dict[str, str],
    events: list[str],
    experiment: str,
    url: str,
) -> MonitorSummary:
    from tasks.settings import redact_url

    return MonitorSummary(
        model_name=report.model_name,
        as_of=report.as_of,
        nights=report.window.nights,
        scores_new=written.new,
        scores_updated=written.updated,
        scores_unchanged=written.unchanged,
        versions=report.versions,
        series=series_rows(report),
        events=events,
        mlflow_runs=runs,
        experiment=experiment,
        database=redact_url(url),
    )


@task(
    name="log-monitor-night",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def log_night_task(
    tracking_uri: str, experiment: str, artifact_root: Path | None, report: MonitorReport
) -> dict[str, str]:
    return log_night(tracking_uri, experiment, artifact_root, report)
