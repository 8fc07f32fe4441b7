"""flows/deploy.py and deployments/prefect.yaml describe the same deployments; deploy options fail clearly.

No server here: tests/integration/test_deployments.py registers the deployments on a real Prefect server.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import ROOT

from flows import deploy

PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PREFECT_YAML.read_text())
    return data


def _yaml_deployment(prefect_yaml: dict[str, Any], spec: deploy.DeploymentSpec) -> dict[str, Any]:
    found = [d for d in prefect_yaml["deployments"] if d["entrypoint"] == spec.entrypoint]
    assert len(found) == 1, f"prefect.yaml should have one deployment of {spec.entrypoint}"
    return found[0]


def test_prefect_yaml_is_valid_for_prefect_deploy(prefect_yaml: dict[str, Any]) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert len(model.deployments) == len(deploy.DEPLOYMENTS) == 4


def test_prefect_yaml_shares_pool_and_schedules_through_anchors() -> None:
    text = PREFECT_YAML.read_text()
    assert text.count("*seqcast_pool") == 4 and "&seqcast_pool" in text
    assert "&nightly_retrain" in text and "*nightly_retrain" in text
    assert "&nightly_forecast" in text and "*nightly_forecast" in text
    assert "&nightly_monitor" in text and "*nightly_monitor" in text


@pytest.mark.parametrize("spec", deploy.DEPLOYMENTS, ids=lambda s: s.full_name)
def test_prefect_yaml_matches_deploy_py(prefect_yaml: dict[str, Any], spec: deploy.DeploymentSpec) -> None:
    entry = _yaml_deployment(prefect_yaml, spec)
    assert entry["name"] == spec.name
    assert entry["work_pool"]["name"] == deploy.WORK_POOL
    assert entry["work_pool"]["job_variables"] == {"env": deploy.FLOW_RUN_ENV}
    assert entry["parameters"] == spec.parameters
    assert entry["tags"] == list(spec.tags)
    assert entry.get("enforce_parameter_schema") is True

    crons = {"train": deploy.CRON_TRAIN, "forecast": deploy.CRON_FORECAST, "monitor": deploy.CRON_MONITOR}
    if spec.schedule is None:
        assert entry["schedules"] == []
    else:
        [schedule] = entry["schedules"]
        assert schedule["cron"] == crons[spec.schedule]
        assert schedule["timezone"] == TIMEZONE_STEP_OUTPUT  # SEQCAST_TIMEZONE, else UTC
        assert schedule["slug"] == spec.schedule_slug
        assert schedule.get("active", True) is True
        assert schedule.get("parameters", {}) == spec.schedule_parameters

    limit = entry.get("concurrency_limit")
    if spec.concurrency_limit is None:
        assert limit is None
    else:
        assert limit == {"limit": spec.concurrency_limit, "collision_strategy": "ENQUEUE"}

    # the same description, with the time zone the build step reads
    cron = crons[spec.schedule] if spec.schedule else None
    assert entry["description"].replace(TIMEZONE_STEP_OUTPUT, "Europe/London") == spec.description(
        cron, "Europe/London"
    )


TIMEZONE_STEP_OUTPUT = "{{ timezone.stdout }}"


@pytest.mark.parametrize(
    ("environment", "expected"), [({}, deploy.TIMEZONE), ({"SEQCAST_TIMEZONE": "Asia/Tokyo"}, "Asia/Tokyo")]
)
def test_prefect_yaml_reads_the_time_zone_with_a_default(
    prefect_yaml: dict[str, Any], monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str
) -> None:
    """A bare "{{ $SEQCAST_TIMEZONE }}" in a schedule registers an empty time zone when the variable is unset (the
    dashboard then shows none); the build step gives the schedules SEQCAST_TIMEZONE, or UTC."""
    import asyncio

    from prefect.deployments.steps.utility import run_shell_script

    [step] = prefect_yaml["build"]
    options = dict(step["prefect.deployments.steps.run_shell_script"])
    assert options.pop("id") == "timezone" and deploy.ENV_TIMEZONE in options["script"]
    monkeypatch.delenv(deploy.ENV_TIMEZONE, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert asyncio.run(run_shell_script(**options))["stdout"] == expected


def _assert_the_form_describes_the_run_spec(schema: dict[str, Any]) -> None:
    """A flow's parameter schema (the dashboard's form): every parameter, every part of the run spec and every
    setting in it has a description, and the form starts from the spec's defaults."""
    from tasks.spec import RunSpec

    properties = schema["properties"]
    assert [name for name, p in properties.items() if not p.get("description")] == []
    assert properties["spec"]["default"] == RunSpec().model_dump(mode="json")
    assert "spec" not in schema.get("required", []), "a schedule starts the run with the spec's defaults"
    definitions = schema["definitions"]
    assert definitions["RunSpec"].get("description")
    for part, field in RunSpec.model_fields.items():
        model = field.annotation
        assert model is not None
        definition = definitions[model.__name__]
        assert definition.get("description"), part
        assert set(definition["properties"]) == set(model.model_fields), part
        undescribed = [name for name, p in definition["properties"].items() if not p.get("description")]
        assert undescribed == [], f"{part}: {undescribed} have no description"


def test_train_deployment_form_describes_every_setting_of_the_run_spec() -> None:
    train = deploy.DEPLOYMENTS[0]
    deployment = deploy.build_deployment(train, ROOT, deploy.WORK_POOL, None, deploy.TIMEZONE)
    # what `apply` sends to the server as the deployment's parameter_openapi_schema
    _assert_the_form_describes_the_run_spec(deployment._parameter_openapi_schema.model_dump(exclude_unset=True))
    assert "spec" not in train.parameters, "the flow's default spec applies, so the two files never restate it"


def test_demo_flow_form_describes_every_setting_of_the_run_spec() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.demo import demo_flow

    _assert_the_form_describes_the_run_spec(parameter_schema(demo_flow.fn).model_dump_for_openapi())


def test_prefect_yaml_pull_step_enters_the_project(prefect_yaml: dict[str, Any]) -> None:
    assert prefect_yaml["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $" + deploy.ENV_PROJECT_DIR + " }}"}}
    ]
    assert prefect_yaml.get("push") is None
    # the one build step reads the time zone: nothing is built
    assert [next(iter(step)) for step in prefect_yaml["build"]] == ["prefect.deployments.steps.run_shell_script"]


def test_deployment_names_and_entrypoints_follow_the_flow_contract() -> None:
    assert [s.full_name for s in deploy.DEPLOYMENTS] == [
        "seqcast-train/nightly-retrain",
        "seqcast-forecast/nightly-forecast",
        "seqcast-backfill/on-demand",
        "seqcast-monitor/nightly-monitor",
    ]
    for spec in deploy.DEPLOYMENTS:
        path, function = spec.entrypoint.split(":")
        assert path.startswith("flows/") and function.endswith("_flow")
    train = deploy.DEPLOYMENTS[0]
    assert train.concurrency_limit == 1 and train.schedule == "train"
    assert train.schedule_parameters == {"trigger": "schedule"}
    assert deploy.DEPLOYMENTS[2].schedule is None, "backfill runs on demand only"
    assert deploy.DEPLOYMENTS[3].schedule == "monitor"


def test_monitor_deployment_form_describes_every_monitoring_setting() -> None:
    from tasks.monitor import MonitorConfig

    monitor = deploy.DEPLOYMENTS[3]
    deployment = deploy.build_deployment(monitor, ROOT, deploy.WORK_POOL, deploy.CRON_MONITOR, deploy.TIMEZONE)
    schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
    properties = schema["properties"]
    assert [name for name, p in properties.items() if not p.get("description")] == []
    assert properties["config"]["default"] == MonitorConfig().model_dump(mode="json")
    assert not schema.get("required"), "a schedule starts the run with the defaults"
    definition = schema["definitions"]["MonitorConfig"]
    assert definition.get("description")
    assert [name for name, p in definition["properties"].items() if not p.get("description")] == []


def test_monitor_runs_after_the_days_actuals_and_before_training() -> None:
    hour = {cron: int(cron.split()[1]) for cron in (deploy.CRON_MONITOR, deploy.CRON_TRAIN, deploy.CRON_FORECAST)}
    assert hour[deploy.CRON_MONITOR] < hour[deploy.CRON_TRAIN] < hour[deploy.CRON_FORECAST]


def test_the_retraining_automation_runs_training_on_degradation_with_a_cool_down() -> None:
    from datetime import timedelta

    from tasks.monitor_publish import DEGRADED_EVENT, event_resource

    automation = deploy.retrain_automation("6f1b1b5e-0000-4000-8000-000000000001", 72)
    assert automation.name == deploy.RETRAIN_AUTOMATION and automation.enabled
    trigger = automation.trigger
    assert trigger.expect == {DEGRADED_EVENT} and trigger.posture == "Reactive" and trigger.threshold == 1
    assert trigger.within == timedelta(hours=72)  # the cool-down: later events of the model are ignored that long
    assert trigger.for_each == {"seqcast.model.name"}  # one cool-down per registered model
    from prefect.events.schemas.events import Resource

    assert trigger.match.matches(Resource(event_resource("seqcast", "3")))  # what the monitor emits
    assert not trigger.match.matches(Resource({"prefect.resource.id": "prefect.flow-run.1"}))
    [action] = automation.actions
    assert action.type == "run-deployment" and action.source == "selected"
    assert str(action.deployment_id) == "6f1b1b5e-0000-4000-8000-000000000001" and action.parameters is None


def test_a_cool_down_of_zero_is_refused() -> None:
    with pytest.raises(deploy.DeployError, match=r"^`retrain_cooldown_hours` \(0\) must be more than 0"):
        deploy.deploy_all(api_url="http://127.0.0.1:9/api", retrain_cooldown_hours=0)


def test_defaults() -> None:
    assert (deploy.WORK_POOL, deploy.CRON_TRAIN, deploy.CRON_FORECAST, deploy.TIMEZONE) == (
        "seqcast",
        "0 2 * * *",
        "0 3 * * *",
        "UTC",
    )
    assert (deploy.CRON_MONITOR, deploy.RETRAIN_COOLDOWN_HOURS) == ("0 1 * * *", 72.0)


# ------------------------------------------------------------------------------------------ options and errors


def test_bad_timezone_names_the_option_before_anything_is_registered() -> None:
    with pytest.raises(deploy.DeployError) as info:
        deploy.deploy_all(api_url="http://127.0.0.1:9/api", timezone="Europe/Londn")
    assert str(info.value) == (
        "`timezone` ('Europe/Londn') is not an IANA time zone; use a name such as 'UTC' or 'Europe/London'"
    )


def test_bad_cron_names_the_option() -> None:
    with pytest.raises(deploy.DeployError, match=r"^`cron_forecast` \('0 25 \* \* \*'\) is not a cron string"):
        deploy.deploy_all(api_url="http://127.0.0.1:9/api", cron_forecast="0 25 * * *")


def test_project_without_the_flows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(deploy.DeployError, match=r"has no flows/train.py, flows/forecast.py, flows/backfill.py"):
        deploy.deploy_all(api_url="http://127.0.0.1:9/api", project_dir=tmp_path)


def test_unreachable_api_is_a_clear_error(tmp_path: Path) -> None:
    for spec in deploy.DEPLOYMENTS:
        target = tmp_path / spec.entrypoint.split(":")[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("")
    with pytest.raises(deploy.DeployError, match=r"^cannot reach the Prefect API at http://127.0.0.1:9/api"):
        deploy.deploy_all(api_url="http://127.0.0.1:9/api", project_dir=tmp_path)


def test_deploy_command_reads_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_deploy_all(**kwargs: Any) -> dict[str, str]:
        seen.update(kwargs)
        return {spec.full_name: f"id-{i}" for i, spec in enumerate(deploy.DEPLOYMENTS)}

    monkeypatch.setattr(deploy, "deploy_all", fake_deploy_all)
    monkeypatch.setenv(deploy.ENV_TIMEZONE, "Europe/London")
    monkeypatch.setenv(deploy.ENV_WORK_POOL, "nightly-pool")
    monkeypatch.delenv(deploy.ENV_TRAIN_CRON, raising=False)
    monkeypatch.delenv(deploy.ENV_FORECAST_CRON, raising=False)
    monkeypatch.setenv(deploy.ENV_MONITOR_CRON, "30 0 * * *")
    monkeypatch.setenv(deploy.ENV_RETRAIN_COOLDOWN, "48")
    ids = deploy.deploy_command(forecast_cron="0 4 * * *")
    assert seen == {
        "api_url": None,
        "work_pool": "nightly-pool",
        "cron_train": deploy.CRON_TRAIN,
        "cron_forecast": "0 4 * * *",
        "timezone": "Europe/London",
        "project_dir": None,
        "cron_monitor": "30 0 * * *",
        "retrain_cooldown_hours": 48.0,
    }
    assert ids["seqcast-backfill/on-demand"] == "id-2"
    monkeypatch.setenv(deploy.ENV_RETRAIN_COOLDOWN, "three days")
    with pytest.raises(deploy.DeployError, match=r"^SEQCAST_RETRAIN_COOLDOWN_HOURS \('three days'\) is not a number"):
        deploy.deploy_command()


def test_main_reports_errors_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy.main(["--timezone", "Mars/Olympus", "--api-url", "http://127.0.0.1:9/api"]) == 1
    assert "seqcast deploy: `timezone` ('Mars/Olympus') is not an IANA time zone" in capsys.readouterr().err


def test_importing_deploy_does_not_import_prefect() -> None:
    """`seqcast --help` must stay fast: the deploy module imports Prefect only when it deploys."""
    code = "import sys, flows.deploy; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def _project(tmp_path: Path, train_source: str) -> Path:
    for spec in deploy.DEPLOYMENTS:
        target = tmp_path / spec.entrypoint.split(":")[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("")
    (tmp_path / "flows" / "train.py").write_text(train_source)
    return tmp_path


def test_flow_that_fails_to_import_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "_check_api", lambda: "test")
    project = _project(tmp_path, "raise ImportError('torch is missing')\n")
    with pytest.raises(deploy.DeployError, match=r"^cannot load flows/train.py:train_flow from .*torch is missing"):
        deploy.deploy_all(project_dir=project)


def test_flow_with_another_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "_check_api", lambda: "test")
    pools: list[str] = []
    monkeypatch.setattr(deploy, "ensure_work_pool", pools.append)
    project = _project(
        tmp_path, "from prefect import flow\n\n@flow(name='train')\ndef train_flow() -> None:\n    pass\n"
    )
    with pytest.raises(deploy.DeployError, match=r"defines a flow named 'train'; seqcast expects 'seqcast-train'"):
        deploy.deploy_all(project_dir=project)
    assert pools == [], "nothing is registered, not even the pool, when one deployment cannot be built"
