"""dispatch() through the real dagster-daemon, on the embedded default and on PostgreSQL."""

import dagster as dg
import pytest

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.jobs.failed_job import FailedJob
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.harness import Deployment, poll, run_finished

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
    # The step's output was captured for the UI by our manager (no per-step `tail` processes): in
    # files on the embedded default's one host, in the database in production (any host).
    manager = get_instance().compute_log_manager
    expected = "FileComputeLogManager" if "sqlite" in deployment.database_url else "DatabaseComputeLogManager"
    assert type(manager).__name__ == expected
    (captured,) = get_instance().all_logs(handle.id, of_type=dg.DagsterEventType.LOGS_CAPTURED)
    log_key = [handle.id, "compute_logs", captured.dagster_event.event_specific_data.file_key]
    assert manager.is_capture_complete(log_key)
    assert "fibonacci_op" in manager.get_log_data(log_key).stderr.decode()


def test_failed_job_retries_on_schedule_then_fails(deployment: Deployment) -> None:
    """Each retry is a re-execution started once its time has come: by its timer on the Celery
    workers, else by the due_retries sensor."""
    handle = FailedJob.dispatch(message="boom")
    seen_waiting = []
    with deployment.daemon():

        def done() -> bool:
            record = handle.record()
            if record.status == JobStatus.WAITING_RETRY:
                seen_waiting.append(record)
            return record.status.is_final and all(run_finished(r) for r in record.run_ids)

        poll(done, 240, 0.1, "failed_job to end")
    record = handle.record()
    assert record.status == JobStatus.FAILED
    assert record.retry_count == 3 and record.max_retries == 3
    assert record.error == "FailedJobError: boom"
    assert "Traceback (most recent call last)" in record.traceback
    assert "raise FailedJobError(self.message)" in record.traceback
    assert record.next_retry_at is None
    # While waiting, the record said so and when the retry was due.
    assert seen_waiting and all(r.next_retry_at is not None for r in seen_waiting)

    # Four runs, one attempt each, linked as re-executions of the first.
    instance = get_instance()
    assert len(record.run_ids) == 4 and record.run_ids[0] == handle.id
    runs = [instance.get_run_by_id(run_id) for run_id in record.run_ids]
    assert all(run.status == dg.DagsterRunStatus.FAILURE for run in runs)
    assert [run.parent_run_id for run in runs] == [None, *record.run_ids[:3]]
    assert all(run.root_run_id == handle.id for run in runs[1:])

    # Each retry was queued after its delay (ETL_RETRY_DELAYS=1,2,3): by its timer within a second
    # or so where workers hold timers, else within the sensor's 5 s interval plus a tick of slack.
    history = JobStore(deployment.database_url).history(handle.id)
    failures = [e.at for e in history if e.action == "waiting_retry"]
    retries = [e.at for e in history if e.action == "retry"]
    assert len(failures) == len(retries) == 3
    for failed_at, retried_at, delay in zip(failures, retries, (1, 2, 3), strict=True):
        waited = (retried_at - failed_at).total_seconds()
        # `waited` starts a few ms after the due time was computed: allow that much early.
        assert delay - 0.5 <= waited <= delay + (2 if deployment.celery else 12), (delay, waited)
