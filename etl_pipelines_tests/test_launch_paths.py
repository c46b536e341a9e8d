"""Runs launched without dispatch(): GraphQL launchRun, `dagster job launch`, `dagster job execute`."""

import json

import dagster as dg
import pytest

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.store import JobRecord, JobStatus, JobStore
from etl_pipelines_tests.harness import Deployment, graphql, wait_for_jobs

pytestmark = pytest.mark.e2e

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status tags { key value } } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def launch_params(job_name: str, config: dict, tags: dict[str, str]) -> dict:
    return {
        "selector": {
            "repositoryLocationName": "etl_pipelines",
            "repositoryName": "__repository__",
            "jobName": job_name,
        },
        "runConfigData": {"ops": {f"{job_name}_op": {"config": config}}},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }


def wait_final(store: JobStore, job_id: str, timeout: float = 120) -> JobRecord:
    wait_for_jobs(store, [job_id], timeout)
    return store.require(job_id)


def test_graphql_launch_run_gets_a_record(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.webserver() as url:
        data = graphql(
            url,
            LAUNCH_RUN,
            {"params": launch_params("fibonacci", {"n": 10}, {"etl/queue": "high"})},
        )
        result = data["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        run_id = result["run"]["runId"]
        tags = {t["key"]: t["value"] for t in result["run"]["tags"]}
        # The coordinator, running in the webserver, recorded it and set its priority from its queue.
        assert tags["etl/job_id"] == run_id and tags["dagster/priority"] == "3"
        record = store.require(run_id)
        assert record.status == JobStatus.QUEUED and record.queue == "high"
        assert record.payload == {"n": 10} and record.run_ids == [run_id]

        # A malicious identifier from the launchpad fails the job before any SQL, without retries.
        bad = graphql(
            url,
            LAUNCH_RUN,
            {"params": launch_params("truncate_table", {"table": "auth.users; DROP TABLE x"}, {})},
        )["launchRun"]
        assert bad["__typename"] == "LaunchRunSuccess", bad
        bad_id = bad["run"]["runId"]
        # Checked when submitted, as dispatch() checks it: failed before any worker saw it.
        assert store.require(bad_id).status == JobStatus.FAILED
        assert store.require(bad_id).started_at is None
        with pg_deployment.daemon():
            record = wait_final(store, run_id)
            bad_record = wait_final(store, bad_id)
    assert record.status == JobStatus.COMPLETED and record.result == 55
    assert record.started_at is not None and record.finished_at is not None
    assert bad_record.status == JobStatus.FAILED and bad_record.retry_count == 0
    assert bad_record.error.startswith("IdentifierError: invalid table name 'users; DROP TABLE x'")


def test_graphql_launch_with_unknown_queue_fails_the_run(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.webserver() as url:
        result = graphql(
            url,
            LAUNCH_RUN,
            {"params": launch_params("fibonacci", {"n": 3}, {"etl/queue": "urgent"})},
        )["launchRun"]
    run_id = result["run"]["runId"]
    record = store.require(run_id)
    assert record.status == JobStatus.FAILED
    assert "unknown queue 'urgent'" in record.error
    run = get_instance().get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE


def test_dagster_job_launch_and_execute_get_records(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    config = json.dumps({"ops": {"fibonacci_op": {"config": {"n": 12}}}})
    launched = pg_deployment.dagster(
        "job",
        "launch",
        "-w",
        "workspace.yaml",
        "-j",
        "fibonacci",
        "--config-json",
        config,
        "--tags",
        json.dumps({"etl/queue": "medium"}),
    )
    assert launched.returncode == 0, launched.stderr
    (record,) = [r for r in store.list(job_type="fibonacci") if r.payload == {"n": 12}]
    assert record.status == JobStatus.QUEUED and record.queue == "medium"
    with pg_deployment.daemon():
        record = wait_final(store, record.id)
    assert record.status == JobStatus.COMPLETED and record.result == 144

    # `dagster job execute` runs in the calling process, bypassing the run queue: the op records it.
    config_file = pg_deployment.home / "fibonacci7.yaml"
    config_file.write_text(json.dumps({"ops": {"fibonacci_op": {"config": {"n": 7}}}}))
    executed = pg_deployment.dagster(
        "job",
        "execute",
        "-m",
        "etl_pipelines.definitions",
        "-j",
        "fibonacci",
        "-c",
        str(config_file),
    )
    assert executed.returncode == 0, executed.stderr
    (record,) = [r for r in store.list(job_type="fibonacci") if r.payload == {"n": 7}]
    assert record.status == JobStatus.COMPLETED and record.result == 13
    assert record.queue == "low"  # the job type's own queue


def test_bad_launch_writes_nothing(pg_deployment: Deployment) -> None:
    """A launch whose config does not match the schema is refused by Dagster; no record appears."""
    store = JobStore(pg_deployment.database_url)
    before = {r.id for r in store.list(limit=10_000)}
    runs_before = get_instance().get_runs_count()
    config = json.dumps({"ops": {"fibonacci_op": {"config": {"n": "ten"}}}})
    launched = pg_deployment.dagster(
        "job", "launch", "-w", "workspace.yaml", "-j", "fibonacci", "--config-json", config
    )
    assert launched.returncode != 0
    assert "n" in launched.stderr and "ten" in launched.stderr  # Dagster names the bad value
    assert {r.id for r in store.list(limit=10_000)} == before
    assert get_instance().get_runs_count() == runs_before
