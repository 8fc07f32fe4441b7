"""What a tuning run reports: the summary the CLI prints, the Prefect markdown artifact, and the tuning parent run's
params, metrics, plot and note in MLflow."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import registry
from tasks.tune import TrialOutcome, tuned_settings

if TYPE_CHECKING:
    import optuna

    from tasks.spec import RunSpec

ARTIFACT_KEY = "tuning-summary"
TRIAL_COLUMNS = (
    "trial",
    "state",
    "val MASE",
    "epochs",
    "seconds",
    "cell",
    "lookback",
    "hidden",
    "layers",
    "dropout",
    "scaling",
    "lr",
    "batch",
)


@dataclass
class TuneSummary:
    """What a tuning run did; the CLI prints it and the flow publishes it as a Prefect artifact."""

    study_name: str
    storage: str  # the database URL, without password
    model_name: str
    parent_run_id: str
    experiment_id: str
    as_of: str
    trials: list[dict[str, Any]] = field(default_factory=list)  # every trial of the study, best first (`trial_rows`)
    this_run: dict[str, int] = field(default_factory=dict)  # state -> trials of this run
    best_spec: dict[str, Any] | None = None  # the saved best spec (RunSpec as JSON); None: no trial completed yet
    best_trial: int | None = None
    best_value: float | None = None
    best_settings: dict[str, Any] = field(default_factory=dict)  # the tuned settings of the best spec
    kept_defaults: bool = False  # no trial was clearly better than the spec's own settings: the spec is saved as given
    decision: str = ""  # why the saved spec is the one it is (tasks/tune_study.py `save_best_spec`)
    nightly: str = ""  # what happened to the nightly training deployment's spec
    run_url: str | None = None
    seconds: float = 0.0

    def outcome(self) -> str:
        """One line: the best trial and where its spec went."""
        counts = ", ".join(f"{n} {state.lower()}" for state, n in self.this_run.items() if n) or "no trials"
        if self.best_trial is None:
            return f"{self.study_name}: {counts}; no trial has completed yet, so no spec was saved"
        if self.kept_defaults:
            saved = (
                f"the spec's own settings kept (their best trial {self.best_trial}, validation MASE "
                f"{self.best_value:.4f}) and saved in the study ({self.storage})"
            )
        else:
            saved = (
                f"best trial {self.best_trial} (validation MASE {self.best_value:.4f}), its spec saved in the study "
                f"({self.storage})"
            )
        why = f" ({self.decision})" if self.decision else ""
        return f"{self.study_name}: {counts} in {self.seconds:.0f} s; {saved}{why}; {self.nightly}"


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every finished trial of the study as a row (`TRIAL_COLUMNS`): complete ones by validation MASE, then pruned
    and failed ones by number."""
    import optuna

    from tasks.spec import RunSpec

    rank = {optuna.trial.TrialState.COMPLETE: 0, optuna.trial.TrialState.PRUNED: 1, optuna.trial.TrialState.FAIL: 2}
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in rank]
    finished.sort(key=lambda t: (rank[t.state], t.value if t.value is not None else math.inf, t.number))
    rows = []
    for t in finished:
        spec = RunSpec.model_validate(t.user_attrs["spec"]) if "spec" in t.user_attrs else None
        settings = tuned_settings(spec) if spec is not None else {}
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "val MASE": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                "epochs": t.user_attrs.get("epochs"),
                "seconds": t.user_attrs.get("seconds"),
                "cell": "/".join(settings.get("model.cells", [])),
                "lookback": settings.get("window.lookback"),
                "hidden": settings.get("model.hidden_size"),
                "layers": settings.get("model.num_layers"),
                "dropout": settings.get("model.dropout"),
                "scaling": settings.get("model.scaling"),
                "lr": settings.get("training.learning_rate"),
                "batch": settings.get("training.batch_size"),
                "run_id": t.user_attrs.get("mlflow_run_id"),
                "error": t.user_attrs.get("error"),
            }
        )
    return rows


def shown(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, '-' for nothing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_markdown(summary: TuneSummary, limit: int = 10) -> str:
    """The tuning run as Markdown: the outcome, the best trials and the best spec's tuned settings."""
    run = registry.markdown_link(summary.parent_run_id, summary.run_url)
    lines = [
        f"# seqcast tuning of {summary.model_name} as of {summary.as_of}",
        "",
        summary.outcome(),
        "",
        f"MLflow tuning run: {run} (experiment `{summary.experiment_id}`); objective: mean per-series MASE on the "
        "validation windows (the test part stays for the gate).",
        "",
        "| " + " | ".join(TRIAL_COLUMNS) + " |",
        "|" + "---|" * len(TRIAL_COLUMNS),
    ]
    for row in summary.trials[:limit]:
        lines.append("| " + " | ".join(shown(row[c]) for c in TRIAL_COLUMNS) + " |")
    if len(summary.trials) > limit:
        lines.append(f"\n... and {len(summary.trials) - limit} more trials (all of them in the study)")
    if summary.best_settings:
        lines += ["", "Best spec (tuned settings; the rest as given):", ""]
        lines += [f"- `{name}`: {shown(value)}" for name, value in summary.best_settings.items()]
    return "\n".join(lines)


def plot_trials(trials: list[dict[str, Any]], path: Path) -> Path:
    """`trials.png` in folder `path`: each complete trial's validation MASE by trial number, the best so far as a
    step line, and pruned trials as ticks on the bottom edge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    complete = sorted((r["trial"], r["val MASE"]) for r in trials if r["state"] == "complete")
    pruned = [r["trial"] for r in trials if r["state"] == "pruned"]
    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if complete:
        numbers = [n for n, _ in complete]
        values = [v for _, v in complete]
        best = [min(values[: i + 1]) for i in range(len(values))]
        ax.plot(numbers, values, "o", color="tab:blue", label="complete trial")
        ax.step(numbers, best, where="post", color="black", lw=1.5, label="best so far")
    if pruned:
        edge = ax.get_xaxis_transform()  # x in data units, y in axes units: 0 is the bottom edge
        ax.plot(pruned, [0.0] * len(pruned), "|", color="tab:red", ms=12, transform=edge, label="pruned")
    ax.set_xlabel("trial number")
    ax.set_ylabel("validation MASE (mean per series)")
    ax.set_title("tuning: validation MASE by trial (lower is better)", fontsize=10)
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="best", fontsize=8)
    path.mkdir(parents=True, exist_ok=True)
    target = path / "trials.png"
    fig.savefig(target, format="png", dpi=110)
    return target


def parent_params(spec: RunSpec, budget: Any, study_name: str, storage: str, space: dict[str, str]) -> dict[str, Any]:
    """The tuning run's params: the resolved spec it started from, the budget, the study and the search space."""
    params: dict[str, Any] = dict(spec.mlflow_params())
    params.update({f"budget.{name}": value for name, value in budget.model_dump().items() if value is not None})
    params.update({"study.name": study_name, "study.storage": storage, **space})
    return params


@registry.tracking_boundary
def log_tuning(summary: TuneSummary, outcomes: list[TrialOutcome]) -> None:
    """The tuning parent run's metrics (best validation MASE, trials by state), the trials plot and table, the best
    spec as `best_spec.json`, the summary as its note; then it ends."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    metrics = {f"trials_{state.lower()}": float(n) for state, n in summary.this_run.items()}
    metrics["study_trials"] = float(len(summary.trials))
    if summary.best_value is not None:
        metrics["best_val_mase"] = summary.best_value
    complete = [o.value for o in outcomes if o.value is not None]
    if complete:
        metrics["run_best_val_mase"] = min(complete)
    registry.log_metrics(summary.parent_run_id, metrics)
    markdown = summary_markdown(summary)
    client = registry.get_client()
    with tempfile.TemporaryDirectory(prefix="seqcast-tune-") as tmp:
        folder = Path(tmp)
        files = [plot_trials(summary.trials, folder / "plots")]
        registry.log_artifacts(summary.parent_run_id, files, "plots")
    client.log_dict(summary.parent_run_id, {"trials": summary.trials}, "trials.json")
    if summary.best_spec is not None:
        client.log_dict(summary.parent_run_id, summary.best_spec, "best_spec.json")
        client.set_tag(summary.parent_run_id, "seqcast.best_trial", str(summary.best_trial))
        client.set_tag(summary.parent_run_id, "seqcast.kept_defaults", str(summary.kept_defaults).lower())
    client.set_tag(summary.parent_run_id, MLFLOW_RUN_NOTE, markdown)
    client.log_text(summary.parent_run_id, markdown, "summary.md")
    registry.end_run(summary.parent_run_id)


@task(name="finish-tuning", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def finish_tuning_task(summary: TuneSummary, outcomes: list[TrialOutcome]) -> None:
    """Log the tuning run to MLflow and publish its summary as the `tuning-summary` Prefect artifact."""
    from prefect.artifacts import create_markdown_artifact

    log_tuning(summary, outcomes)
    create_markdown_artifact(markdown=summary_markdown(summary), key=ARTIFACT_KEY, description="seqcast tuning run")
