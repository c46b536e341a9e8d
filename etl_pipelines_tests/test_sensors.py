"""Sensors evaluated directly (build_sensor_context / build_run_status_sensor_context), as Dagster's
own examples test theirs: an embedded-default instance and job table in a temporary DAGSTER_HOME,
no daemon, no services. The daemon-driven paths are in test_operations and test_safety_and_sensors.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from etl_pipelines.definitions import defs
from etl_pipelines.framework.dispatch import dispatch
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.recovery import RECOVERY_PREFIX
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.lifecycle import RetrySchedule, events
from etl_pipelines.resources import JobStoreResource
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import EMBEDDED_YAML
from etl_pipelines_tests.harness import instance_yaml


@pytest.fixture
def home(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[JobStore]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(EMBEDDED_YAML))
    clean_env.setenv("DAGSTER_HOME", str(home))
    clean_env.setenv("ETL_DATABASE_URL", f"sqlite:///{home / 'etl.sqlite'}")
    clean_env.setenv("ETL_RETRY_DELAYS", "0,0")
    yield JobStore(Settings.from_env().database_url)
    get_instance().dispose()


def tick(name: str) -> None:
    sensor = defs.resolve_sensor_def(name)
    sensor(dg.build_sensor_context(instance=get_instance(), resources={"job_store": JobStoreResource()}))


def run_status_tick(name: str, run: dg.DagsterRun, event_type: dg.DagsterEventType) -> None:
    instance = get_instance()
    (event,) = instance.all_logs(run.run_id, of_type=event_type)
    context = dg.build_run_status_sensor_context(
        sensor_name=name,
        dagster_event=event.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        resources={"job_store": JobStoreResource()},
    )
    sensor = defs.resolve_sensor_def(name)
    sensor(context.for_run_failure() if event_type == dg.DagsterEventType.RUN_FAILURE else context)


def test_a_due_retry_is_queued_once_as_a_reexecution(home: JobStore) -> None:
    handle = dispatch("failed_job", queue="low")
    instance = get_instance()
    assert instance.get_run_by_id(handle.id).status == dg.DagsterRunStatus.QUEUED  # no daemon here
    # Its attempt ran and failed (as the op would record it), and the run ended.
    events.started(home, handle.id, handle.id)
    schedule = get_job_type("failed_job").retry_schedule(Settings.from_env())
    assert schedule == RetrySchedule.explicit((0.0, 0.0))
    events.attempt_failed(
        home, home.require(handle.id), handle.id, error="FailedJobError: x", traceback=None, schedule=schedule
    )
    instance.report_run_failed(instance.get_run_by_id(handle.id), message="op failed")

    tick("due_retries")
    record = home.require(handle.id)
    assert record.status == JobStatus.QUEUED and record.retry_count == 1
    assert len(record.run_ids) == 2 and record.run_ids[0] == handle.id
    retry = instance.get_run_by_id(record.run_id)
    assert retry.parent_run_id == handle.id and retry.root_run_id == handle.id
    assert retry.tags["etl/job_id"] == handle.id and retry.tags["etl/queue"] == "low"
    assert retry.tags["dagster/priority"] == "1" and retry.status == dg.DagsterRunStatus.QUEUED

    tick("due_retries")  # nothing is due any more: no second run
    assert home.require(handle.id).run_ids == record.run_ids
    assert [e.action for e in home.history(handle.id)].count("retry") == 1


def test_a_run_failing_outside_its_op_is_an_attempt(home: JobStore) -> None:
    handle = dispatch("fibonacci", queue="high", n=5)
    instance = get_instance()
    run = instance.get_run_by_id(handle.id)
    instance.report_run_failed(run, message="launch failed: broker unreachable")
    run_status_tick("job_failures", run, dg.DagsterEventType.RUN_FAILURE)
    record = home.require(handle.id)
    assert record.status == JobStatus.WAITING_RETRY and record.retry_count == 0
    assert record.error == "RunFailure: launch failed: broker unreachable"
    run_status_tick("job_failures", run, dg.DagsterEventType.RUN_FAILURE)  # seen again: no change
    assert home.require(handle.id).updated_at == record.updated_at


def test_a_run_failed_by_recovery_is_left_to_recovery(home: JobStore) -> None:
    handle = dispatch("fibonacci", queue="high", n=5)
    instance = get_instance()
    run = instance.get_run_by_id(handle.id)
    instance.report_run_failed(run, message=RECOVERY_PREFIX + "run was sent to Celery but its task is gone")
    before = home.require(handle.id)
    run_status_tick("job_failures", run, dg.DagsterEventType.RUN_FAILURE)
    after = home.require(handle.id)
    assert (after.status, after.updated_at) == (JobStatus.QUEUED, before.updated_at)


def test_a_cancelled_run_cancels_its_job(home: JobStore) -> None:
    handle = dispatch("slow_query", queue="medium", duration=1)
    instance = get_instance()
    run = instance.get_run_by_id(handle.id)
    instance.report_run_canceled(run, message="cancelled by alice")
    run_status_tick("job_cancellations", run, dg.DagsterEventType.RUN_CANCELED)
    assert home.require(handle.id).status == JobStatus.CANCELLED
