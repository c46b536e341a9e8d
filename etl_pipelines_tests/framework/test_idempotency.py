"""dispatch(..., idempotency_key=...): a repeated call finds the job the first one made.

On the embedded default (SQLite instance and job table); no worker is needed: the job only has to
be queued once.
"""

from typing import Any

import dagster as dg
import pytest

from etl_pipelines.errors import JobInputError
from etl_pipelines.framework._dagster_internal import RunSubmitter
from etl_pipelines.framework.dispatch import dispatch, job_id_for_key
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.registry import RESERVED_NAMES
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.harness import Deployment


def test_the_key_is_reserved_and_names_one_job_per_type() -> None:
    assert "idempotency_key" in RESERVED_NAMES
    first = job_id_for_key("fibonacci", "nightly-2026-12-02")
    assert first == job_id_for_key("fibonacci", "nightly-2026-12-02")  # in any process, at any time
    assert first != job_id_for_key("slow_query", "nightly-2026-12-02")
    assert first != job_id_for_key("fibonacci", "nightly-2026-12-03")


def test_a_repeated_dispatch_returns_the_first_job(sqlite_deployment: Deployment) -> None:
    store = JobStore(sqlite_deployment.database_url)
    instance = get_instance()
    first = dispatch("fibonacci", idempotency_key="order-17", n=10)
    again = dispatch("fibonacci", idempotency_key="order-17", n=10)
    assert again.id == first.id == job_id_for_key("fibonacci", "order-17")
    assert (again.queue, again.job_type) == ("low", "fibonacci")
    assert [r.id for r in store.list(limit=100)] == [first.id]
    assert instance.get_runs_count() == 1
    record = store.require(first.id)
    assert (record.status, record.run_ids, record.payload) == (JobStatus.QUEUED, [first.id], {"n": 10})
    assert [e.action for e in store.history(first.id)] == ["queued"]

    # The same key for other parameters or another queue is a mistake, said so; nothing is made.
    with pytest.raises(JobInputError, match=r"'order-17' was used for job .* with other parameters"):
        dispatch("fibonacci", idempotency_key="order-17", n=11)
    with pytest.raises(JobInputError, match="other parameters"):
        dispatch("fibonacci", queue="high", idempotency_key="order-17", n=10)
    with pytest.raises(JobInputError, match="non-empty"):
        dispatch("fibonacci", idempotency_key=" ", n=10)
    # Another key, or none, is another job.
    other = dispatch("fibonacci", idempotency_key="order-18", n=10)
    plain = dispatch("fibonacci", n=10)
    assert len({first.id, other.id, plain.id}) == 3
    assert instance.get_runs_count() == 3 and len(store.list(limit=100)) == 3


def test_a_retry_after_an_error_raised_once_the_run_was_queued(
    sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call queued the run, then raised (a timeout on its way back, say): the caller's
    retry with the same key gets that job, not a second one."""
    store = JobStore(sqlite_deployment.database_url)
    instance = get_instance()
    submit = RunSubmitter.submit

    def submit_then_fail(self: RunSubmitter, *args: Any, **kwargs: Any) -> dg.DagsterRun:
        submit(self, *args, **kwargs)
        raise TimeoutError("the answer was lost")

    monkeypatch.setattr(RunSubmitter, "submit", submit_then_fail)
    with pytest.raises(TimeoutError):
        dispatch("fibonacci", idempotency_key="order-19", n=5)
    monkeypatch.setattr(RunSubmitter, "submit", submit)
    job_id = job_id_for_key("fibonacci", "order-19")
    run = instance.get_run_by_id(job_id)
    assert run is not None and run.status == dg.DagsterRunStatus.QUEUED
    assert store.require(job_id).status == JobStatus.QUEUED

    handle = dispatch("fibonacci", idempotency_key="order-19", n=5)
    assert handle.id == job_id
    assert instance.get_runs_count() == 1 and [r.id for r in store.list(limit=100)] == [job_id]

    # A first call that failed before its run existed keeps its record (another call with the key
    # may hold its handle already): the retry submits that job's run, and no second job is made.
    def fail(self: RunSubmitter, *args: Any, **kwargs: Any) -> dg.DagsterRun:
        raise ConnectionError("Dagster is down")

    monkeypatch.setattr(RunSubmitter, "submit", fail)
    with pytest.raises(ConnectionError):
        dispatch("fibonacci", idempotency_key="order-20", n=6)
    monkeypatch.setattr(RunSubmitter, "submit", submit)
    order_20 = job_id_for_key("fibonacci", "order-20")
    assert store.require(order_20).status == JobStatus.QUEUED and instance.get_run_by_id(order_20) is None
    made = dispatch("fibonacci", idempotency_key="order-20", n=6)
    assert made.id == order_20 and made.status() == JobStatus.QUEUED
    run = instance.get_run_by_id(order_20)
    assert run is not None and run.status == dg.DagsterRunStatus.QUEUED
    assert dispatch("fibonacci", idempotency_key="order-20", n=6).id == order_20
    assert instance.get_runs_count() == 2
