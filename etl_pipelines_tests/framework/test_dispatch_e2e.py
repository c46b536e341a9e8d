"""dispatch() through the real dagster-daemon, on the embedded default and on PostgreSQL."""

import itertools
from datetime import timedelta

import dagster as dg
import pytest

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.jobs.failed_job import FailedJob
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.harness import Deployment, instance_yaml, poll, run_finished

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", "postgres"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_deployment")


def test_fibonacci_runs_to_completion(deployment: Deployment) -> None:
    handle = Fibonacci.dispatch(n=10)
    queued = handle.record()
    assert queued.status == JobStatus.QUEUED
    assert queued.run_id == handle.id and queued.queue == "low"
    assert queued.payload == {"n": 10}
    statuses = set()
    with deployment.daemon() as daemon:

        def done() -> bool:
            record = handle.record()
            statuses.add(record.status)
            return record.status.is_final and run_finished(handle.id)

        poll(done, 120, 0.05, f"fibonacci to finish; daemon log:\n{daemon.output()[-3000:]}")
    record = handle.record()
    assert record.status == JobStatus.COMPLETED, record.to_dict()
    assert record.result == 55
    assert record.retry_count == 0 and record.error is None
    assert record.created_at <= record.started_at <= record.finished_at <= record.updated_at
    assert record.run_ids == [handle.id]
    run = get_instance().get_run_by_id(handle.id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["etl/job_id"] == handle.id and run.tags["dagster/priority"] == "1"
    # Only the states of a successful first attempt were ever seen.
    assert statuses <= {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.COMPLETED}


def test_failed_job_retries_on_schedule_then_fails(deployment: Deployment) -> None:
    handle = FailedJob.dispatch(message="boom")
    seen_waiting = []
    with deployment.daemon():

        def done() -> bool:
            record = handle.record()
            if record.status == JobStatus.WAITING_RETRY:
                seen_waiting.append(record)
            return record.status.is_final and run_finished(handle.id)

        poll(done, 180, 0.1, "failed_job to end")
    record = handle.record()
    assert record.status == JobStatus.FAILED
    assert record.retry_count == 3 and record.max_retries == 3
    assert record.error == "FailedJobError: boom"
    assert "Traceback (most recent call last)" in record.traceback
    assert "raise FailedJobError(self.message)" in record.traceback
    assert record.next_retry_at is None
    # While waiting, the record said so and when the retry was due.
    assert seen_waiting and all(r.next_retry_at is not None for r in seen_waiting)

    # Gaps between each failure and the next attempt follow ETL_RETRY_DELAYS=1,2,3 (within 1 s).
    instance = get_instance()
    events = [
        e
        for e in instance.all_logs(handle.id)
        if e.dagster_event_type in (dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_RESTARTED)
    ]
    kinds = [e.dagster_event_type for e in events]
    assert (
        kinds
        == [
            dg.DagsterEventType.STEP_UP_FOR_RETRY,
            dg.DagsterEventType.STEP_RESTARTED,
        ]
        * 3
    )
    gaps = [events[i + 1].timestamp - events[i].timestamp for i in range(0, 6, 2)]
    for gap, expected in zip(gaps, (1, 2, 3), strict=True):
        assert expected - 0.2 <= gap <= expected + 1.0, gaps


def test_run_queue_priority(pg_deployment: Deployment) -> None:
    """Daemon down: dispatch low/medium/high interleaved; one run at a time: high, then medium, then low."""
    from etl_pipelines_tests.conftest import PRODUCTION_YAML

    deployment = pg_deployment
    (deployment.home / "dagster.yaml").write_text(instance_yaml(PRODUCTION_YAML, max_concurrent_runs=1))
    handles = []
    for _ in range(3):
        for queue in ("low", "medium", "high"):
            handles.append(Fibonacci.dispatch(n=5, queue=queue))
    store = JobStore(deployment.database_url)
    with deployment.daemon():
        poll(
            lambda: all(store.require(h.id).status.is_final and run_finished(h.id) for h in handles),
            240,
            0.5,
            "nine runs to finish",
        )
    records = sorted((store.require(h.id) for h in handles), key=lambda r: r.started_at)
    assert all(r.status == JobStatus.COMPLETED for r in records)
    assert [r.queue for r in records] == ["high"] * 3 + ["medium"] * 3 + ["low"] * 3
    # One at a time: each started after the previous one finished.
    for earlier, later in itertools.pairwise(records):
        assert later.started_at >= earlier.finished_at - timedelta(seconds=0.5)
