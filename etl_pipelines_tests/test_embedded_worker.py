"""The embedded default (`make run`: SQLite everywhere, no Redis) runs jobs on a warm worker.

`etl-jobs worker` takes runs from a Celery broker that is a SQLite file in DAGSTER_HOME (kombu's
SQLAlchemy transport, framework/celery/app.py) and executes them in its pool process: one
process for every job, none started per run. The broker's rules first, without a worker.
"""

import os
import statistics
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from kombu import Exchange, Queue

from etl_pipelines.framework._dagster_internal import WorkerStatus
from etl_pipelines.framework.celery.app import make_celery
from etl_pipelines.framework.celery.launcher import EmbeddedCeleryRunLauncher, EtlCeleryRunLauncher
from etl_pipelines.framework.celery.task import EXECUTE_RUN_TASK
from etl_pipelines.framework.dispatch import dispatch
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import EMBEDDED_YAML
from etl_pipelines_tests.harness import Deployment, poll, run_finished

JOBS = 20


def test_embedded_launcher_uses_the_workers_settings(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(EMBEDDED_YAML.read_text())
    clean_env.setenv("DAGSTER_HOME", str(home))
    clean_env.setenv("ETL_QUEUES", "urgent,bulk")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
    assert isinstance(launcher, EmbeddedCeleryRunLauncher)
    assert launcher.broker_url == f"sqla+sqlite:///{home / 'broker.sqlite'}"
    assert launcher.job_database_url == f"sqlite:///{home / 'etl.sqlite'}"
    assert launcher.redis_url is None and launcher.default_queue == "bulk"
    conf = launcher.app.conf
    assert conf.broker_url == f"sqlite:///{home / 'broker.sqlite'}"
    assert conf.result_backend == f"db+sqlite:///{home / 'broker.sqlite'}"
    # With ETL_REDIS_URL the workers use Redis, and so does the launcher.
    clean_env.setenv("ETL_REDIS_URL", "redis://redis.example:6379/3")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_launcher.redis_url == "redis://redis.example:6379/3"


def test_sqlite_broker_takes_the_queues_strictly_in_order(tmp_path: Path) -> None:
    app = make_celery(f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}", default_queue="default")
    for round_ in range(2):
        for name in ("low", "default", "medium", "high"):
            app.send_task(EXECUTE_RUN_TASK, args=[f"{name}{round_}"], queue=name)
    taken: list[str] = []

    def take(body: tuple, message: object) -> None:
        taken.append(body[0][0])
        message.ack()  # type: ignore[attr-defined]

    # The worker's queues in priority order, as `etl-jobs worker` consumes them.
    queues = [Queue(name, Exchange(name), routing_key=name) for name in ("high", "medium", "low", "default")]
    with app.connection_for_read() as connection, connection.Consumer(queues, callbacks=[take]) as consumer:
        consumer.qos(prefetch_count=1)
        while len(taken) < 8:
            connection.drain_events(timeout=5)
    # kombu's own SQL transport would interleave them (round-robin over the queues).
    assert taken == ["high0", "high1", "medium0", "medium1", "low0", "low1", "default0", "default1"]


def test_sqlite_broker_finds_and_withdraws_a_waiting_task(tmp_path: Path) -> None:
    launcher = EtlCeleryRunLauncher(
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
        job_database_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}",
        default_queue="low",
    )
    waiting = dg.DagsterRun(job_name="fibonacci", run_id=str(uuid.uuid4()))
    elsewhere = dg.DagsterRun(job_name="fibonacci", run_id=str(uuid.uuid4()), tags={"etl/queue": "high"})
    assert not launcher.task_in_broker(waiting)  # nothing sent yet: no tables either
    launcher.enqueue(waiting)
    assert launcher.task_in_broker(waiting)
    assert not launcher.task_in_broker(elsewhere)
    # Waiting, unknown to the result backend, no attempt beats in the job table.
    assert launcher.check_run_worker_health(waiting).status == WorkerStatus.UNKNOWN
    assert launcher.withdraw(waiting)
    assert not launcher.task_in_broker(waiting)
    assert not launcher.withdraw(waiting)


def step_pid(run_id: str) -> int:
    """The process that executed the run's op (Dagster records each event's pid)."""
    (start,) = get_instance().all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    assert start.dagster_event is not None
    return start.dagster_event.pid


@pytest.mark.e2e
def test_jobs_run_one_after_another_in_one_warm_worker_process(
    sqlite_deployment: Deployment, record_property: Callable[[str, object], None]
) -> None:
    deployment = sqlite_deployment
    assert "ETL_REDIS_URL" not in deployment.env
    store = JobStore(deployment.database_url)
    ids = []
    with deployment.worker(concurrency=1) as worker:
        for n in range(JOBS):
            handle = dispatch("fibonacci", n=n, queue="high")
            ids.append(handle.id)
            poll(
                lambda h=handle: h.record().status.is_final and run_finished(h.id),
                60,
                0.02,
                f"job {n} to end; worker log:\n{worker.output()[-3000:]}",
            )
        pids = {step_pid(job_id) for job_id in ids}
        # Every op ran in the same pool process of this worker: warm, not a process per run.
        assert len(pids) == 1, pids
        (pid,) = pids
        assert pid not in (os.getpid(), worker.process.pid)
        assert os.getpgid(pid) == worker.process.pid
    assert (deployment.home / "broker.sqlite").exists()
    records = [store.require(job_id) for job_id in ids]
    assert [r.status for r in records] == [JobStatus.COMPLETED] * JOBS
    assert [r.result for r in records][:8] == [0, 1, 1, 2, 3, 5, 8, 13]
    # Reported, not asserted: dispatch (record created) to start, on an idle worker.
    waits = sorted((r.started_at - r.created_at).total_seconds() * 1000 for r in records if r.started_at)
    median, p90 = statistics.median(waits), waits[int(0.9 * len(waits)) - 1]
    record_property(
        "dispatch_to_start_ms", {"median": round(median), "p90": round(p90), "max": round(waits[-1])}
    )
    print(
        f"embedded default, {JOBS} sequential jobs: dispatch → start median {median:.0f} ms, p90 {p90:.0f} ms"
    )


@pytest.mark.e2e
def test_terminating_a_running_job_reaches_its_worker(sqlite_deployment: Deployment) -> None:
    """Celery's revoke is a broadcast: the SQLite broker delivers it (kombu's own would drop it)."""
    with sqlite_deployment.worker() as worker:
        handle = dispatch("slow_query", duration=120)
        poll(lambda: handle.record().status == JobStatus.STARTED, 60, 0.1, "the job to start")
        instance = get_instance()
        assert instance.run_coordinator.cancel_run(handle.id)
        launcher = instance.run_launcher
        assert isinstance(launcher, EtlCeleryRunLauncher)
        # The worker got the revoke and stopped the task's process (the task's final state is a
        # race between the revoke and the interrupted task's own end: not asserted).
        poll(lambda: f"Terminating {handle.id}" in worker.output(), 30, 0.2, "the task revoked")
        poll(lambda: get_instance().get_run_by_id(handle.id).is_finished, 30, 0.2, "the run to end")
    # Its process was stopped: the run is over. (CANCELED, or FAILURE when the killed step's failure
    # is recorded after terminate's cancel: a race of terminate(), whatever the broker.) Its job is
    # cancelled, never failed and retried: nothing runs afterwards.
    run = instance.get_run_by_id(handle.id)
    assert run is not None and run.is_finished
    record = handle.record()
    assert record.status == JobStatus.CANCELLED and record.retry_count == 0 and record.run_ids == [handle.id]
    assert "waiting_retry" not in [
        e.action for e in JobStore(sqlite_deployment.database_url).history(handle.id)
    ]
