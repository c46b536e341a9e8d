"""Celery over Redis: strict queue priority at the workers, routing, scaling out, the stack command."""

import signal

import dagster as dg
import pytest

from etl_pipelines.framework.dispatch import dispatch
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import PRODUCTION_YAML
from etl_pipelines_tests.harness import (
    BIN,
    Deployment,
    free_port,
    instance_yaml,
    poll,
    wait_for_jobs,
)

pytestmark = pytest.mark.e2e


def allow_runs_into_celery(deployment: Deployment, count: int) -> None:
    (deployment.home / "dagster.yaml").write_text(instance_yaml(PRODUCTION_YAML, max_concurrent_runs=count))


def run_status(run_id: str) -> dg.DagsterRunStatus:
    run = get_instance().get_run_by_id(run_id)
    assert run is not None
    return run.status


def test_backlog_in_celery_runs_strictly_by_queue(pg_deployment: Deployment) -> None:
    """Workers down, 30 runs waiting in Celery; one worker with one slot takes high, then medium, then low."""
    allow_runs_into_celery(pg_deployment, 30)
    handles = [dispatch("fibonacci", n=5, queue=q) for _ in range(10) for q in ("low", "medium", "high")]
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.daemon(workers=0):
        # The daemon lets all 30 into Celery (STARTING): the order is now Celery's alone.
        poll(
            lambda: all(run_status(h.id) == dg.DagsterRunStatus.STARTING for h in handles),
            60,
            0.3,
            "all runs sent to Celery",
        )
        with pg_deployment.worker(concurrency=1):
            wait_for_jobs(store, [h.id for h in handles])
    records = sorted((store.require(h.id) for h in handles), key=lambda r: r.started_at)
    assert [r.queue for r in records] == ["high"] * 10 + ["medium"] * 10 + ["low"] * 10
    assert {r.status for r in records} == {JobStatus.COMPLETED}


def test_high_job_goes_next_on_a_busy_worker(pg_deployment: Deployment) -> None:
    allow_runs_into_celery(pg_deployment, 10)
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.daemon(workers=0), pg_deployment.worker(concurrency=1):
        slow = dispatch("slow_query", duration=4, queue="low")
        poll(lambda: store.require(slow.id).status == JobStatus.STARTED, 60, 0.1, "the long low job to start")
        waiting = [dispatch("fibonacci", n=3, queue="low") for _ in range(3)]
        poll(
            lambda: all(run_status(h.id) == dg.DagsterRunStatus.STARTING for h in waiting),
            30,
            0.1,
            "low jobs waiting in Celery",
        )
        urgent = dispatch("fibonacci", n=3, queue="high")
        wait_for_jobs(store, [slow.id, urgent.id, *(h.id for h in waiting)])
    first_after_slow = min((store.require(h.id) for h in [urgent, *waiting]), key=lambda r: r.started_at)
    assert first_after_slow.id == urgent.id
    assert store.require(urgent.id).started_at >= store.require(slow.id).finished_at


def test_two_workers_run_two_jobs_at_once(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    with (
        pg_deployment.daemon(workers=0),
        pg_deployment.worker(concurrency=1),
        pg_deployment.worker(concurrency=1),
    ):
        jobs = [dispatch("slow_query", duration=3, queue="medium") for _ in range(2)]
        wait_for_jobs(store, [j.id for j in jobs])
    a, b = (store.require(j.id) for j in jobs)
    assert a.status == b.status == JobStatus.COMPLETED
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # they overlapped


def test_each_queue_is_served_only_by_its_workers(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    handles = {q: dispatch("fibonacci", n=7, queue=q) for q in ("high", "medium", "low", "default")}
    with pg_deployment.daemon(workers=0):
        done: set[str] = set()
        for queue in ("default", "low", "medium", "high"):
            with pg_deployment.worker(concurrency=1, queues=queue):
                wait_for_jobs(store, [handles[queue].id], timeout=60)
                done.add(queue)
                # Jobs of queues no worker consumes yet are still waiting.
                for other, handle in handles.items():
                    if other not in done:
                        assert not store.require(handle.id).status.is_final, other
    for queue, handle in handles.items():
        record = store.require(handle.id)
        assert record.status == JobStatus.COMPLETED and record.result == 13 and record.queue == queue


def test_stack_with_two_workers(pg_deployment: Deployment) -> None:
    port = free_port()
    stack = pg_deployment.start(
        "stack", [str(BIN / "etl-jobs"), "stack", "--workers", "2", "--concurrency", "1", "--port", str(port)]
    )
    try:
        poll(lambda: "Dagster UI:" in stack.output(), 120, 0.5, "the stack to be up")
        assert "2 worker(s)" in stack.output()
        out = pg_deployment.cli("dispatch", "fibonacci", "-p", "n=20", "--queue", "high")
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.strip()
        store = JobStore(pg_deployment.database_url)
        wait_for_jobs(store, [job_id], timeout=120)
        assert store.require(job_id).result == 6765
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(timeout=60) == 0
        poll(lambda: not _leftovers(str(pg_deployment.home)), 30, 0.5, "no process left")
    finally:
        stack.stop()


def _leftovers(text: str) -> list[str]:
    from etl_pipelines_tests.test_cli import _processes_mentioning

    return _processes_mentioning(text)
