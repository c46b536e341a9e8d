"""Invariants over every job type, checked on the real Definitions."""

import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from etl_pipelines.definitions import defs
from etl_pipelines.framework.base import DEFAULT_RETRY_POLICY
from etl_pipelines.framework.op import op_name
from etl_pipelines.framework.registry import job_types
from etl_pipelines.settings import DEFAULT_QUEUES, Settings
from etl_pipelines.stack import WORKSPACE_YAML
from etl_pipelines_tests.harness import BIN, REPO

SAMPLE_JOB_TYPES = {
    "populate_records",
    "slow_query",
    "data_aggregation",
    "truncate_table",
    "drop_table",
    "fibonacci",
    "failed_job",
}
JOB_TYPES = sorted(job_types())


@pytest.mark.slow  # runs `dagster definitions validate` in a subprocess
def test_dagster_definitions_validate(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    out = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr


def test_every_sample_job_type_is_collected() -> None:
    assert set(JOB_TYPES) >= SAMPLE_JOB_TYPES
    assert {job.name for job in defs.resolve_all_job_defs()} == set(JOB_TYPES)


@pytest.mark.parametrize("name", JOB_TYPES)
def test_job_type_is_a_described_one_op_job_with_typed_config(name: str) -> None:
    job_cls = job_types()[name]
    job = defs.resolve_job_def(name)
    assert job.description and job.description == job_cls.description()
    (node,) = job.nodes
    assert node.definition.name == op_name(job_cls)
    assert node.definition.description == job.description
    assert job.tags["etl/job_type"] == name
    assert job.tags["etl/queue"] in DEFAULT_QUEUES
    schema = node.definition.config_schema.config_type
    assert set(schema.fields) == set(job_cls.model_fields)
    for field_name, info in job_cls.model_fields.items():
        assert info.description, f"{name}.{field_name} needs a description (the launchpad shows it)"
        assert schema.fields[field_name].description == info.description
    # The name is the snake_case of the class and the module's name.
    assert job_cls.__module__ == f"etl_pipelines.jobs.{name}"


@pytest.mark.parametrize("name", JOB_TYPES)
def test_retries_are_a_dagster_retry_policy(name: str, clean_env: pytest.MonkeyPatch) -> None:
    """Every job type declares its retries as a RetryPolicy (default: 3, exponential from 60 s, so
    1, 3 and 7 minutes), interpreted durably; the op itself carries none (test_retry.py)."""
    job_cls = job_types()[name]
    assert isinstance(job_cls.retry_policy, dg.RetryPolicy)
    schedule = job_cls.retry_schedule(Settings.from_env())
    if name == "demo_batch":  # queueing a batch twice is worse than waiting for the next one
        assert schedule.max_retries == 0
    else:
        assert job_cls.retry_policy == DEFAULT_RETRY_POLICY
        assert [schedule.wait_before(n) for n in (1, 2, 3, 4)] == [60.0, 180.0, 420.0, None]
    clean_env.setenv("ETL_RETRY_DELAYS", "60,300,900")  # the old system's schedule, one setting away
    waits = [job_cls.retry_schedule(Settings.from_env()).wait_before(n) for n in (1, 2, 3)]
    assert waits == ([None] * 3 if name == "demo_batch" else [60, 300, 900])


def test_executor_runs_the_op_in_the_run_process() -> None:
    for job in defs.resolve_all_job_defs():
        assert job.executor_def.name == dg.in_process_executor.name


def test_workspace_files_agree() -> None:
    assert yaml.safe_load((REPO / "workspace.yaml").read_text()) == yaml.safe_load(WORKSPACE_YAML)


def test_sensors_are_on_by_default() -> None:
    names = ("job_failures", "failure_alerts", "job_cancellations", "aggregate_after_import")
    assert all(defs.resolve_sensor_def(n).default_status == dg.DefaultSensorStatus.RUNNING for n in names)


def test_schedules_have_an_explicit_timezone_and_a_description() -> None:
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {
        "demo_batch",
        "nightly_data_import",
        "nightly_vacuum_analyze",
        "weekly_reindex",
        "daily_archive_old_rows",
    }
    for schedule in schedules.values():
        assert schedule.execution_timezone == "UTC"
        assert schedule.description
    assert schedules["demo_batch"].default_status == dg.DefaultScheduleStatus.STOPPED
