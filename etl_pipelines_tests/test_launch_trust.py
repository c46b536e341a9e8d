"""What a launch carries is checked: launches through Dagster's own GraphQL client, against one
production stack (PostgreSQL, Redis, a webserver whose run coordinator admits the runs, a worker).

A launch may not point a resource at another database, take over a job by naming it in
etl/job_id, choose its own target, priority or time limit, nor run with parameters that fail
validation: each is refused, or overwritten, when the run is submitted.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg
import pytest
import redis
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.store import JobRecord, JobStatus, JobStore
from etl_pipelines_tests.conftest import _ETL_VARS, production_deployment
from etl_pipelines_tests.harness import Deployment, poll, run_finished

pytestmark = [
    pytest.mark.e2e,
    # dagster_graphql calls gql the way gql 4 deprecates; nothing of ours.
    pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning"),
]


@dataclass
class Stack:
    deployment: Deployment
    client: DagsterGraphQLClient
    store: JobStore
    tmp: Path

    def launch(self, config: dict[str, Any], tags: dict[str, str] | None = None, **run_config: Any) -> str:
        """Launch a fibonacci run as any GraphQL user can; its run id."""
        return self.client.submit_job_execution(
            "fibonacci",
            repository_location_name="etl_pipelines",
            repository_name="__repository__",
            run_config={"ops": {"fibonacci_op": {"config": config}}, **run_config},
            tags=tags or {},
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str) -> Iterator[Stack]:
    """One stack for the module. ETL_JOB_TIMEOUT=0: fibonacci has no time limit of its own, so a
    launch's own dagster/max_runtime would survive if nothing overwrote it."""
    prefix = f"etl-test-{uuid.uuid4().hex[:10]}:"
    tmp = tmp_path_factory.mktemp("launch_trust")
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            for name in _ETL_VARS:
                monkeypatch.delenv(name, raising=False)
            with (
                production_deployment(
                    monkeypatch, tmp / "dagster_home", pg_url, redis_url, prefix, ETL_JOB_TIMEOUT="0"
                ) as deployment,
                deployment.webserver() as url,
                deployment.worker(concurrency=2),
            ):
                port = urlparse(url).port
                client = DagsterGraphQLClient("127.0.0.1", port_number=port)
                yield Stack(deployment, client, JobStore(deployment.database_url), tmp)
    finally:
        client_redis = redis.Redis.from_url(redis_url)
        keys = list(client_redis.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client_redis.delete(*keys)


@pytest.fixture(scope="module")
def victim(stack: Stack) -> str:
    """A fibonacci job launched from GraphQL and completed: the job forged launches name."""
    run_id = stack.launch({"n": 10})
    poll(
        lambda: stack.store.require(run_id).status.is_final and run_finished(run_id),
        120,
        0.2,
        "the victim job to complete",
    )
    assert stack.store.require(run_id).status == JobStatus.COMPLETED
    return run_id


def snapshot(store: JobStore, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole record and its whole history."""
    return store.require(job_id).to_dict(), [event.to_dict() for event in store.history(job_id)]


def failed_run(run_id: str) -> dg.DagsterRun:
    run = get_instance().get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE, run
    return run


def test_a_resource_override_is_refused(stack: Stack) -> None:
    """(a) The job table's URL is not run config: a launch cannot send a job's record elsewhere."""
    elsewhere = stack.tmp / "elsewhere.sqlite"
    runs_before = get_instance().get_runs_count()
    with pytest.raises(DagsterGraphQLClientError) as raised:
        stack.launch(
            {"n": 3},
            resources={"job_store": {"config": {"database_url": f"sqlite:///{elsewhere}"}}},
        )
    assert "RunConfigValidationInvalid" in str(raised.value.args), raised.value.args
    assert not elsewhere.exists()
    assert get_instance().get_runs_count() == runs_before


def test_a_forged_job_id_leaves_the_job_it_names_alone(stack: Stack, victim: str) -> None:
    """(b) A fresh launch tagged with a completed job's id is refused; the job is untouched."""
    before = snapshot(stack.store, victim)
    run_id = stack.launch({"n": 7}, {"etl/job_id": victim})
    run = failed_run(run_id)
    assert snapshot(stack.store, victim) == before
    assert stack.store.get(run_id) is None
    # Not listed among the job's runs (found by their etl/job_id tag); the reason names both.
    assert run.tags["etl/job_id"] == run_id
    (failure,) = get_instance().all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"etl/job_id={victim} names an existing job" in (failure.message or "")
    assert not get_instance().all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)


LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def test_a_forged_parent_run_cannot_change_what_the_job_does(stack: Stack, victim: str) -> None:
    """GraphQL lets a caller name any parent run: a launch naming the job's run as its parent, with
    other parameters, is refused and the job is untouched (a re-execution runs the job as it was)."""
    before = snapshot(stack.store, victim)
    params = {
        "selector": {
            "repositoryLocationName": "etl_pipelines",
            "repositoryName": "__repository__",
            "jobName": "fibonacci",
        },
        "runConfigData": {"ops": {"fibonacci_op": {"config": {"n": 7}}}},
        "executionMetadata": {
            "parentRunId": victim,
            "rootRunId": victim,
            "tags": [{"key": "etl/job_id", "value": victim}],
        },
    }
    answer = stack.client._execute(LAUNCH_RUN, {"params": params})
    assert answer["launchRun"]["__typename"] == "LaunchRunSuccess", answer
    run_id = answer["launchRun"]["run"]["runId"]
    failed_run(run_id)
    assert snapshot(stack.store, victim) == before
    assert not get_instance().all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)


def test_a_forged_job_id_on_an_unknown_queue_leaves_the_job_alone(stack: Stack, victim: str) -> None:
    """(c) The job id is checked before the queue: nothing is written for the job it names, nor a
    record made under a made-up id."""
    before = snapshot(stack.store, victim)
    run_id = stack.launch({"n": 7}, {"etl/job_id": victim, "etl/queue": "urgent"})
    failed_run(run_id)
    assert snapshot(stack.store, victim) == before
    made_up = str(uuid.uuid4())
    other = stack.launch({"n": 7}, {"etl/job_id": made_up, "etl/queue": "urgent"})
    failed_run(other)
    assert stack.store.get(made_up) is None and stack.store.get(other) is None
    assert stack.store.get(run_id) is None


def test_forged_target_priority_and_time_limit_are_overwritten(stack: Stack) -> None:
    """(d) The run's tags are the ones computed from its config and queue, whatever it said."""
    run_id = stack.launch(
        {"n": 11},
        {
            "etl/queue": "high",
            "etl/target": "public.users",
            "dagster/priority": "99",
            "dagster/max_runtime": "1",
            "dagster/max_runtime_seconds": "1",
        },
    )
    run = get_instance().get_run_by_id(run_id)
    assert run is not None
    assert run.tags["etl/job_id"] == run_id
    assert run.tags["etl/queue"] == "high" and run.tags["dagster/priority"] == "3"
    assert run.tags["etl/target"] == ""  # fibonacci touches no table
    # No limit of its own (ETL_JOB_TIMEOUT=0): emptied, so the instance's default applies.
    assert run.tags["dagster/max_runtime"] == ""
    poll(lambda: stack.store.require(run_id).status.is_final and run_finished(run_id), 120, 0.2, "the run")
    record = stack.store.require(run_id)
    assert (record.status, record.result, record.queue) == (JobStatus.COMPLETED, 89, "high")


def test_parameters_out_of_range_fail_the_job_at_submission(stack: Stack) -> None:
    """(e) Dagster's config schema has no bounds; pydantic's Field(le=20000) is checked when the
    run is submitted: the job fails at once, without retries, and no op runs."""
    run_id = stack.launch({"n": 20_001})
    run = failed_run(run_id)
    record: JobRecord = stack.store.require(run_id)
    assert (record.status, record.retry_count) == (JobStatus.FAILED, 0)
    assert record.error.startswith("JobInputError: fibonacci: n: ")
    assert "less than or equal to 20000" in record.error and "20001" in record.error
    assert record.started_at is None and record.next_retry_at is None
    assert not get_instance().all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
    failure = get_instance().all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure and "less than or equal to 20000" in failure[0].message
