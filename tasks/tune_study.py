"""Where a tuning study lives: one Optuna study per registered model, in the project's database, and the best run
spec saved with it for the nightly training to pick up.

The study is stored by Optuna's RDBStorage in the seqcast database itself (SEQCAST_DATABASE_URL: SQLite or
PostgreSQL), in Optuna's own tables (`studies`, `trials`, ...; its Alembic table is `alembic_version`, seqcast's
is `seqcast_alembic_version`). Every process that runs trials (a thread of the flow, a Ray worker on another
machine) opens it from the URL, so parallel trials share one study, and a later `seqcast tune` adds trials to it.

The best spec is the study's user attribute `best_spec` (a RunSpec as JSON), beside `best_trial` and
`best_value`: no seqcast table, so no migration. `load_best_spec` reads it without creating anything, so
`seqcast deploy` can look for it on any database.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import SeqcastError
from tasks.settings import get_settings, redact_url

if TYPE_CHECKING:
    import optuna

    from tasks.spec import RunSpec

STUDY_PREFIX = "seqcast-tune-"
BEST_SPEC_ATTR = "best_spec"
BEST_TRIAL_ATTR = "best_trial"
BEST_VALUE_ATTR = "best_value"
START_SPEC_ATTR = "start_spec"  # the spec a new study started from: what is saved when no trial is clearly better
DECISION_ATTR = "best_decision"  # why the saved spec is the one it is
OBJECTIVE_ATTR = "objective"
OBJECTIVE = "mean per-series MASE on the validation windows"


class StudyUnavailableError(SeqcastError, RuntimeError):
    """The tuning study cannot be opened or read (database down, a study of another kind under the name)."""


def study_name(model_name: str) -> str:
    """The study of a registered model: `seqcast-tune-<name>`, so each model's tuning resumes where it stopped."""
    return f"{STUDY_PREFIX}{model_name}"


def _engine_kwargs(url: str) -> dict[str, Any]:
    """Bounded waits as the seqcast engine has them: SQLite waits for a lock, PostgreSQL for a connection."""
    settings = get_settings()
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": settings.db_lock_timeout}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": max(1, round(settings.db_connect_timeout))}, "pool_pre_ping": True}
    return {}


@functools.cache
def study_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage on the database at `url`, one per URL and process (its sessions are per thread)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO line per trial repeats what seqcast logs
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:
        raise StudyUnavailableError(
            f"cannot open the tuning study's storage at {redact_url(url)}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        ) from exc


def open_study(
    url: str,
    name: str,
    pruner: optuna.pruners.BasePruner | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """The study `name` at `url` (created on first use, minimising), with this run's sampler and pruner."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=study_storage(url),
            study_name=name,
            direction="minimize",
            load_if_exists=True,
            sampler=sampler,
            pruner=pruner,
        )
    if study.user_attrs.get(OBJECTIVE_ATTR) != OBJECTIVE:
        study.set_user_attr(OBJECTIVE_ATTR, OBJECTIVE)
    return study


@dataclass(frozen=True)
class BestSpec:
    """The spec tuning saves: the best trial's when it is clearly better than the spec's own settings on the
    validation windows, else the spec the study started from (`kept_defaults`)."""

    spec: RunSpec
    trial: int  # the best trial; with kept_defaults: the best of the spec's own settings' trials
    value: float  # that trial's validation MASE
    kept_defaults: bool = False
    decision: str = ""  # one sentence: why


def save_best_spec(study: optuna.Study, alpha: float | None = None) -> BestSpec | None:
    """Choose and save the study's best spec as its `best_spec`, or None while no trial has completed.

    The best complete trial (lowest validation MASE) replaces the spec's own settings only when it is clearly better
    than the best of them (the trials `start_from_spec` queued) on the validation windows, window by window
    (`tasks.tune.clearly_better`: a one-sided sign test at `alpha`, default `SWITCH_ALPHA`, divided by the sampled
    trials it is the best of); otherwise the spec the
    study started from is saved unchanged (both cells and scaling "auto" as the nightly training runs them). A study
    without those trials or their per-window errors (one made before this rule) saves its best trial's spec."""
    import optuna

    from tasks.spec import RunSpec
    from tasks.tune import SWITCH_ALPHA, WINDOW_MASE_ATTR, clearly_better, is_start_point

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    with_spec = [t for t in complete if t.value is not None and "spec" in t.user_attrs]
    if not with_spec:
        return None
    best = min(with_spec, key=lambda t: (float(t.value or 0.0), t.number))
    chosen = BestSpec(RunSpec.model_validate(best.user_attrs["spec"]), best.number, float(best.value or 0.0))
    starts = [t for t in with_spec if is_start_point(t)]
    start_spec = study.user_attrs.get(START_SPEC_ATTR)
    if starts and start_spec is not None:
        reference = min(starts, key=lambda t: (float(t.value or 0.0), t.number))
        kept = BestSpec(
            RunSpec.model_validate(start_spec), reference.number, float(reference.value or 0.0), kept_defaults=True
        )
        if is_start_point(best):
            chosen = replace(kept, decision=f"the best trial, {best.number}, is one of the spec's own settings")
        elif WINDOW_MASE_ATTR in best.user_attrs and WINDOW_MASE_ATTR in reference.user_attrs:
            test = clearly_better(
                best.user_attrs[WINDOW_MASE_ATTR],
                reference.user_attrs[WINDOW_MASE_ATTR],
                SWITCH_ALPHA if alpha is None else alpha,
                compared=len(with_spec) - len(starts),
            )
            decision = f"trial {best.number} is {test.reason}; the best of them: trial {reference.number}"
            chosen = replace(chosen, decision=decision) if test.switch else replace(kept, decision=decision)
    if (
        study.user_attrs.get(BEST_TRIAL_ATTR) != chosen.trial
        or study.user_attrs.get(DECISION_ATTR) != chosen.decision
        or study.user_attrs.get(BEST_SPEC_ATTR) != chosen.spec.model_dump(mode="json")
    ):
        study.set_user_attr(BEST_SPEC_ATTR, chosen.spec.model_dump(mode="json"))
        study.set_user_attr(BEST_TRIAL_ATTR, chosen.trial)
        study.set_user_attr(BEST_VALUE_ATTR, chosen.value)
        study.set_user_attr(DECISION_ATTR, chosen.decision)
    return chosen


def load_best_spec(url: str, model_name: str) -> tuple[RunSpec, int, float] | None:
    """The best spec saved by tuning `model_name` on the database at `url`, with its trial number and validation
    MASE; None when there is none. Reads only: a missing SQLite file or a database without Optuna's tables is left
    as it is. StudyUnavailableError when the database cannot be read or the saved spec is no longer valid."""
    import sqlalchemy as sa
    from pydantic import ValidationError

    from tasks.spec import RunSpec

    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and (not parsed.database or not Path(parsed.database).exists()):
        return None
    engine = sa.create_engine(url, **_engine_kwargs(url))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("studies"):
                return None
        attrs = _study_attrs(url, study_name(model_name))
    except (sa.exc.SQLAlchemyError, RuntimeError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StudyUnavailableError(
            f"cannot read the tuning study of {model_name!r} at {redact_url(url)}: {detail[0] if detail else exc!r}"
        ) from exc
    finally:
        engine.dispose()
    if attrs is None or BEST_SPEC_ATTR not in attrs:
        return None
    try:
        spec = RunSpec.model_validate(attrs[BEST_SPEC_ATTR])
    except ValidationError as exc:
        raise StudyUnavailableError(
            f"the best spec saved in study {study_name(model_name)!r} is not a valid run spec any more "
            f"({exc.errors()[0]['msg']}); run `seqcast tune` again"
        ) from exc
    return spec, int(attrs.get(BEST_TRIAL_ATTR, -1)), float(attrs.get(BEST_VALUE_ATTR, float("nan")))


def _study_attrs(url: str, name: str) -> dict[str, Any] | None:
    """The user attributes of study `name` through Optuna's own storage, creating no table; None without it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), skip_table_creation=True)
    try:
        return dict(storage.get_study_user_attrs(storage.get_study_id_from_name(name)))
    except KeyError:
        return None
    finally:
        storage.remove_session()
        storage.engine.dispose()
