"""What a user sees in the Prefect dashboard: run forms that explain every field, deployments named for what they do,
schedules that say their time zone, task runs named one way.

A deployment's form (Run -> Custom run) is its parameter schema, which Prefect builds from the flow's signature and
the Args section of its docstring; the deployments are built here as `seqcast deploy` builds them (no server). The
dashboard draws a field whose opening value is null as a "None" tab reading `Property is type "None"`, so what each
form opens with is checked too: the deployment's parameter if it sets one, else the schema's default.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import ROOT

from flows import deploy

TIMEZONE = "Europe/London"  # not the default, so a lost time zone shows
TASK_NAME = re.compile(r"^[a-z]+(-[a-z0-9]+)*$")
# The first word of every task name: what the task does.
VERBS = {
    "aggregate",
    "apply",
    "calibrate",
    "compare",
    "configure",
    "emit",
    "end",
    "evaluate",
    "find",
    "finish",
    "forecast",
    "load",
    "log",
    "make",
    "pin",
    "plan",
    "plot",
    "publish",
    "read",
    "register",
    "resolve",
    "score",
    "start",
    "train",
    "upsert",
    "validate",
    "write",
}
# Fields whose form opens on None, because None means "the run decides" and no other value says so; each
# description says what None does. Everything else opens on a value (a text box, a list, a date).
OPENS_ON_NONE = {
    ("seqcast-train/nightly-retrain", "series"),  # the train flow reads None as every series (an empty list: none)
    ("seqcast-train/nightly-retrain", "as_of"),  # None: the run's scheduled start
    ("seqcast-forecast/nightly-forecast", "as_of"),
    ("seqcast-monitor/nightly-monitor", "model_version"),  # None: every version with forecasts
    ("seqcast-monitor/nightly-monitor", "as_of"),
}


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """{full name: the RunnerDeployment `seqcast deploy` would register}, schedules in TIMEZONE."""
    crons = {"train": deploy.CRON_TRAIN, "forecast": deploy.CRON_FORECAST, "monitor": deploy.CRON_MONITOR}
    return {
        spec.full_name: deploy.build_deployment(
            spec, ROOT, deploy.WORK_POOL, crons[spec.schedule] if spec.schedule else None, TIMEZONE
        )
        for spec in deploy.DEPLOYMENTS
    }


def _schema(deployment: Any) -> dict[str, Any]:
    """What `apply` sends to the server as the deployment's parameter_openapi_schema."""
    schema: dict[str, Any] = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
    return schema


def _types(prop: dict[str, Any]) -> set[str | None]:
    return {branch.get("type", "$ref" if "$ref" in branch else None) for branch in prop.get("anyOf", [prop])}


# ------------------------------------------------------------------------------------------ the forms


def test_every_parameter_of_every_deployed_flow_has_a_description(built: dict[str, Any]) -> None:
    from prefect.flows import load_flow_from_entrypoint

    for spec in deploy.DEPLOYMENTS:
        schema = _schema(built[spec.full_name])
        flow = load_flow_from_entrypoint(f"{ROOT / spec.entrypoint.split(':')[0]}:{spec.entrypoint.split(':')[1]}")
        assert list(schema["properties"]) == list(inspect.signature(flow.fn).parameters), spec.full_name
        short = {name: p.get("description") for name, p in schema["properties"].items()}
        short = {name: text for name, text in short.items() if not text or len(text.split()) < 4}
        assert short == {}, f"{spec.full_name}: parameters without a description (a sentence): {short}"
        definitions = schema.get("definitions", {})
        for model, definition in definitions.items():
            assert definition.get("description"), f"{spec.full_name}: {model} has no description"
            undescribed = [name for name, p in definition.get("properties", {}).items() if not _described(p, schema)]
            assert undescribed == [], f"{spec.full_name}: {model} fields without a description: {undescribed}"


def _described(prop: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A field says what it is: its own description, or that of the model it is (a part of the run spec)."""
    if prop.get("description"):
        return True
    ref = prop.get("$ref", "")
    return bool(ref) and bool(schema["definitions"][ref.rsplit("/", 1)[-1]].get("description"))


def test_no_field_is_only_none(built: dict[str, Any]) -> None:
    for name, deployment in built.items():
        for field, prop in _schema(deployment)["properties"].items():
            assert _types(prop) != {"null"}, f"{name}: {field} can only be None"


def test_forms_open_on_values_except_where_none_means_the_run_decides(built: dict[str, Any]) -> None:
    opens_on_none = set()
    for name, deployment in built.items():
        schema = _schema(deployment)
        for field, prop in schema["properties"].items():
            if field in schema.get("required", []):
                continue  # no opening value: the form asks for one
            opening = deployment.parameters.get(field, prop.get("default"))
            if opening is None:
                opens_on_none.add((name, field))
                assert "None" in prop["description"], f"{name}: {field}: say what None does"
            else:
                assert prop.get("default") is not None, f"{name}: {field} opens on a value but defaults to None"
    assert opens_on_none == OPENS_ON_NONE


def test_the_backfill_form_asks_for_a_date_range_and_opens_on_daily_origins(built: dict[str, Any]) -> None:
    from click.core import Option

    from flows.backfill import backfill_flow
    from flows.cli import backfill_command

    deployment = built["seqcast-backfill/on-demand"]
    schema = _schema(deployment)
    properties = schema["properties"]
    assert schema["required"] == ["start", "end"]
    for name in ("start", "end"):
        assert properties[name]["type"] == "string" and properties[name]["format"] == "date-time"  # date and time
    opening = {name: deployment.parameters.get(name, p.get("default")) for name, p in properties.items()}
    assert [name for name, value in opening.items() if value is None] == ["start", "end"]  # asked for, no default

    # one default spacing everywhere: the flow, its form, the deployment, prefect.yaml and the CLI
    every = inspect.signature(backfill_flow.fn).parameters["every"].default
    assert every == "1D" == properties["every"]["default"] == deployment.parameters["every"]
    [entry] = [d for d in yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
               if d["name"] == "on-demand"]  # fmt: skip
    assert entry["parameters"]["every"] == every
    [option] = [p for p in backfill_command.params if isinstance(p, Option) and p.name == "every"]
    assert option.default == every and "1D" in (option.help or "")


def test_deployment_parameters_pass_their_own_schema(built: dict[str, Any]) -> None:
    """enforce_parameter_schema: the server checks every run's parameters (the deployment's, a schedule's, the
    form's) against the schema; so does Prefect's own validator here."""
    from prefect.utilities.schema_tools import validate

    for name, deployment in built.items():
        schema = _schema(deployment)
        validate(dict(deployment.parameters), schema, raise_on_error=True, ignore_required=True)
        for schedule in deployment.schedules or []:
            validate({**deployment.parameters, **schedule.parameters}, schema, raise_on_error=True)
        assert deployment.enforce_parameter_schema, name
    backfill = built["seqcast-backfill/on-demand"]
    dates = {"start": "2000-08-01T00:00:00Z", "end": "2000-08-10T00:00:00Z"}
    validate({**backfill.parameters, **dates}, _schema(backfill), raise_on_error=True)


# ------------------------------------------------------------------------------------------ names and schedules


def test_deployment_names_are_unique_and_say_what_they_do() -> None:
    names = [spec.name for spec in deploy.DEPLOYMENTS]
    assert len(set(names)) == len(names), f"two deployments share a name: {names}"  # the dashboard lists names
    for spec in deploy.DEPLOYMENTS:
        action = spec.flow_name.removeprefix("seqcast-")  # train, forecast, backfill, monitor
        words = set(spec.name.split("-"))
        if spec.schedule is None:
            assert spec.name == "on-demand", spec.full_name  # started by hand: the flow's name says what it does
        else:
            assert "nightly" in words, spec.full_name
            assert words & {action, f"re{action}"}, f"{spec.full_name}: the name does not say it will {action}"
        assert spec.name not in spec.former_names
    assert deploy.TRAIN_DEPLOYMENT == "seqcast-train/nightly-retrain"
    automation = deploy.retrain_automation("6f1b1b5e-0000-4000-8000-000000000001", 72)
    assert deploy.TRAIN_DEPLOYMENT in automation.description


def test_schedules_carry_their_time_zone(built: dict[str, Any]) -> None:
    for spec in deploy.DEPLOYMENTS:
        deployment = built[spec.full_name]
        if spec.schedule is None:
            assert not deployment.schedules and "Schedule" not in (deployment.description or "")
            continue
        assert [s.schedule.timezone for s in deployment.schedules] == [TIMEZONE]
        # the dashboard's schedule badge shows the time only: the description says the zone
        assert deployment.description.endswith(f"Schedule: `{deployment.schedules[0].schedule.cron}` ({TIMEZONE}).")
    with pytest.raises(deploy.DeployError, match=r"^`timezone` is empty"):
        deploy.check_schedule(deploy.CRON_TRAIN, " ", "cron_train")


def test_former_deployments_are_deleted_and_other_ones_kept(prefect_harness: None) -> None:
    """An upgrade from `seqcast-train/nightly` to `nightly-retrain` must not leave both scheduled; a deployment a
    user made by hand under such a name (no `seqcast` tag) is not seqcast's to delete."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        ours = client.create_deployment(
            flow_id=client.create_flow_from_name("seqcast-train"), name="nightly", tags=["seqcast", "train"]
        )
        theirs = client.create_deployment(flow_id=client.create_flow_from_name("seqcast-forecast"), name="nightly")
        try:
            assert deploy.retire_former_deployments() == [("seqcast-train/nightly", "seqcast-train/nightly-retrain")]
            with pytest.raises(ObjectNotFound):
                client.read_deployment(ours)
            assert client.read_deployment_by_name("seqcast-forecast/nightly").id == theirs
            assert deploy.retire_former_deployments() == []
        finally:
            client.delete_deployment(theirs)


# ------------------------------------------------------------------------------------------ task runs


def _task_modules() -> list[Any]:
    import tasks

    return [importlib.import_module(f"tasks.{m.name}") for m in pkgutil.iter_modules(tasks.__path__)]


def test_every_task_has_an_explicit_kebab_case_verb_name() -> None:
    from prefect.tasks import Task

    found: dict[str, str] = {}
    for module in _task_modules():
        own = [t for t in vars(module).values() if isinstance(t, Task) and t.fn.__module__ == module.__name__]
        source = Path(inspect.getfile(module)).read_text()
        assert len(own) == len(re.findall(r"^@task\b", source, re.M)), f"{module.__name__}: a task escapes this test"
        for task in own:
            where = f"{module.__name__}.{task.fn.__name__}"
            assert task.name != task.fn.__name__, f"{where} has no name= (Prefect shows the function's name)"
            assert TASK_NAME.match(task.name), f"{where}: {task.name!r} is not kebab-case"
            assert task.name.split("-")[0] in VERBS, f"{where}: {task.name!r} does not start with a verb"
            assert task.name not in found, f"{where} and {found.get(task.name)} are both {task.name!r}"
            found[task.name] = where
            if task.task_run_name is not None:  # a run name template: the task's name, then which one
                assert isinstance(task.task_run_name, str) and task.task_run_name.startswith(task.name.split("-")[0])
    assert {"read-observations", "validate-observations", "make-windows", "train-candidate"} <= set(found)
    assert {"write-forecasts", "evaluate"} <= set(found)
