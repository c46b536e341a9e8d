"""Celery over Redis: the launcher's configuration, strict queue priority at the workers, routing,
scaling out, the stack command."""

import signal
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import redis
import yaml

from etl_pipelines.framework._dagster_internal import WorkerStatus
from etl_pipelines.framework.celery.launcher import EtlCeleryRunLauncher
from etl_pipelines.framework.celery.task import EXECUTE_RUN_TASK
from etl_pipelines.framework.dispatch import dispatch
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import PRODUCTION_YAML
from etl_pipelines_tests.harness import (
    BIN,
    Deployment,
    free_port,
    poll,
    wait_for_jobs,
)


def launcher_of(home: Path, launcher_config: dict[str, Any] | None = None) -> EtlCeleryRunLauncher:
    """The run launcher Dagster builds from the repository's dagster.yaml (or `launcher_config`).

    Dagster's storage is left at its SQLite default in `home`: only the launcher is looked at.
    """
    config = yaml.safe_load(PRODUCTION_YAML.read_text())
    del config["storage"]
    if launcher_config is not None:
        config["run_launcher"]["config"] = launcher_config
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
    assert isinstance(launcher, EtlCeleryRunLauncher)
    return launcher


def test_repository_yaml_needs_only_the_database_and_redis_urls(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("ETL_REDIS_URL", "redis://redis.example:6379/3")
    clean_env.setenv("ETL_DATABASE_URL", "postgresql+psycopg2://etl@db.example/etl")
    launcher = launcher_of(tmp_path / "home")
    assert launcher.redis_url == "redis://redis.example:6379/3"
    assert launcher.job_database_url == "postgresql+psycopg2://etl@db.example/etl"
    # The defaults are the settings' defaults: no key prefix, the last of the default queues, 10 s beats.
    assert (launcher.redis_key_prefix, launcher.default_queue, launcher.heartbeat_seconds) == (
        "",
        "default",
        10,
    )
    conf = launcher.app.conf
    assert conf.broker_url == conf.result_backend == "redis://redis.example:6379/3"
    assert conf.task_default_queue == "default"
    assert "global_keyprefix" not in conf.broker_transport_options
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"


def test_launcher_takes_every_setting_from_its_config(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("MY_PREFIX", "team-a:")
    launcher = launcher_of(
        tmp_path / "home",
        {
            "redis_url": "redis://127.0.0.1:6379/5",
            "job_database_url": "sqlite:///jobs.sqlite",
            "redis_key_prefix": {"env": "MY_PREFIX"},
            "default_queue": "bulk",
            "heartbeat_seconds": 2,
        },
    )
    assert launcher.redis_url == "redis://127.0.0.1:6379/5"
    assert launcher.job_database_url == "sqlite:///jobs.sqlite"
    assert (launcher.redis_key_prefix, launcher.default_queue, launcher.heartbeat_seconds) == (
        "team-a:",
        "bulk",
        2,
    )
    conf = launcher.app.conf
    assert conf.broker_transport_options["global_keyprefix"] == "team-a:"
    assert conf.result_backend_transport_options["global_keyprefix"] == "team-a:"
    assert conf.task_default_queue == "bulk"


def test_a_missing_launcher_setting_is_a_config_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ETL_DATABASE_URL", "sqlite:///jobs.sqlite")
    with pytest.raises(
        dg.DagsterInvalidConfigError, match='environment variable "ETL_REDIS_URL" which is not set'
    ):
        launcher_of(tmp_path / "unset")
    with pytest.raises(
        dg.DagsterInvalidConfigError, match='Missing required config entry "job_database_url"'
    ):
        launcher_of(tmp_path / "missing", {"redis_url": "redis://127.0.0.1:6379/5"})


# Celery's Redis result backend still calls redis-py's setex.
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_broker_and_health_checks_use_the_configured_prefix_queue_and_job_table(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """No daemon, no worker: a task sent to the configured default queue, seen where it is."""
    job_table = tmp_path / "jobs.sqlite"
    launcher = EtlCeleryRunLauncher(
        redis_url=redis_url,
        job_database_url=f"sqlite:///{job_table}",
        redis_key_prefix=redis_prefix,
        default_queue="low",
    )
    untagged = dg.DagsterRun(job_name="fibonacci", run_id=str(uuid.uuid4()))
    elsewhere = dg.DagsterRun(job_name="fibonacci", run_id=str(uuid.uuid4()), tags={"etl/queue": "high"})
    # What launch_run sends for a run without an etl/queue tag.
    launcher.app.send_task(EXECUTE_RUN_TASK, args=[untagged.run_id], queue="low", task_id=untagged.run_id)
    client = redis.Redis.from_url(redis_url)
    assert client.llen(f"{redis_prefix}low") == 1
    assert launcher.task_in_broker(untagged)
    assert not launcher.task_in_broker(elsewhere)

    # Waiting, unknown to the result backend: the job table has no attempt that beats.
    assert launcher.check_run_worker_health(untagged).status == WorkerStatus.UNKNOWN
    assert job_table.exists()
    # Its result, where the configured prefix puts it.
    launcher.app.backend.store_result(untagged.run_id, "success", "SUCCESS")
    assert client.exists(f"{redis_prefix}celery-task-meta-{untagged.run_id}")
    assert launcher.check_run_worker_health(untagged).status == WorkerStatus.SUCCESS


def run_status(run_id: str) -> dg.DagsterRunStatus:
    run = get_instance().get_run_by_id(run_id)
    assert run is not None
    return run.status


def waiting_in_celery(run_id: str) -> bool:
    """QUEUED (not STARTING: run monitoring's start timeout does not apply) with its task in the broker."""
    instance = get_instance()
    run = instance.get_run_by_id(run_id)
    return (
        run is not None
        and run.status == dg.DagsterRunStatus.QUEUED
        and instance.run_launcher.task_in_broker(run)
    )


@pytest.mark.e2e
def test_backlog_in_celery_runs_strictly_by_queue(pg_deployment: Deployment) -> None:
    """No daemon, no worker: 30 runs wait in Celery from the moment they are dispatched; one worker
    with one slot takes high, then medium, then low."""
    handles = [dispatch("fibonacci", n=5, queue=q) for _ in range(10) for q in ("low", "medium", "high")]
    store = JobStore(pg_deployment.database_url)
    assert all(waiting_in_celery(h.id) for h in handles)
    with pg_deployment.worker(concurrency=1):
        wait_for_jobs(store, [h.id for h in handles])
    records = sorted((store.require(h.id) for h in handles), key=lambda r: r.started_at)
    assert [r.queue for r in records] == ["high"] * 10 + ["medium"] * 10 + ["low"] * 10
    assert {r.status for r in records} == {JobStatus.COMPLETED}


@pytest.mark.e2e
def test_high_job_goes_next_on_a_busy_worker(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.worker(concurrency=1):
        slow = dispatch("slow_query", duration=4, queue="low")
        poll(lambda: store.require(slow.id).status == JobStatus.STARTED, 60, 0.1, "the long low job to start")
        waiting = [dispatch("fibonacci", n=3, queue="low") for _ in range(3)]
        assert all(waiting_in_celery(h.id) for h in waiting)
        urgent = dispatch("fibonacci", n=3, queue="high")
        wait_for_jobs(store, [slow.id, urgent.id, *(h.id for h in waiting)])
    first_after_slow = min((store.require(h.id) for h in [urgent, *waiting]), key=lambda r: r.started_at)
    assert first_after_slow.id == urgent.id
    assert store.require(urgent.id).started_at >= store.require(slow.id).finished_at


@pytest.mark.e2e
def test_high_job_behind_a_thousand_low_ones_starts_first(pg_deployment: Deployment) -> None:
    """1,000 low jobs waiting in Celery, then one high: the worker's first job is the high one."""
    store = JobStore(pg_deployment.database_url)
    low = [dispatch("fibonacci", n=1, queue="low") for _ in range(1000)]
    urgent = dispatch("fibonacci", n=1, queue="high")
    with pg_deployment.worker(concurrency=1):
        wait_for_jobs(store, [urgent.id])
    started = [r for r in (store.require(h.id) for h in low) if r.started_at is not None]
    assert all(r.started_at > store.require(urgent.id).started_at for r in started)


@pytest.mark.e2e
def test_two_workers_run_two_jobs_at_once(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.worker(concurrency=1), pg_deployment.worker(concurrency=1):
        jobs = [dispatch("slow_query", duration=3, queue="medium") for _ in range(2)]
        wait_for_jobs(store, [j.id for j in jobs])
    a, b = (store.require(j.id) for j in jobs)
    assert a.status == b.status == JobStatus.COMPLETED
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # they overlapped


@pytest.mark.e2e
def test_each_queue_is_served_only_by_its_workers(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    handles = {q: dispatch("fibonacci", n=7, queue=q) for q in ("high", "medium", "low", "default")}
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


@pytest.mark.e2e
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
