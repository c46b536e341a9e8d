"""Admission at submission on the real stack: a backlog never trips the start timeout, one job per
table whoever launched it, cancelling work that waits (lifecycle/admission.py, coordinator.py)."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from etl_pipelines.framework.dispatch import dispatch
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.retries import run_due_retries
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines.store.models import utcnow
from etl_pipelines_tests.conftest import PRODUCTION_YAML, production_deployment
from etl_pipelines_tests.harness import Deployment, graphql, instance_yaml, poll, wait_for_jobs
from etl_pipelines_tests.test_launch_paths import LAUNCH_RUN, launch_params

pytestmark = pytest.mark.e2e

TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on PythonError { message } }
}
"""


@pytest.fixture
def short_start_timeout(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> Iterator[Deployment]:
    """The production yaml with run monitoring's start timeout at 5 s, checked every second."""
    config = yaml.safe_load(instance_yaml(PRODUCTION_YAML))
    config["run_monitoring"].update(start_timeout_seconds=5, poll_interval_seconds=1)
    with production_deployment(
        clean_env, tmp_path / "dagster_home", pg_url, redis_url, redis_prefix, yaml.safe_dump(config)
    ) as deployment:
        yield deployment


def runs_of(job_id: str) -> list[dg.DagsterRun]:
    return list(get_instance().get_runs(dg.RunsFilter(tags={"etl/job_id": job_id})))


def test_a_backlog_longer_than_the_start_timeout_fails_nothing(short_start_timeout: Deployment) -> None:
    """100 jobs of 0.2 s behind 2 worker slots wait ~10 s, twice the start timeout: every one
    completes on its first attempt, as its only run. (They wait QUEUED, not STARTING.)"""
    deployment = short_start_timeout
    store = JobStore(deployment.database_url)
    with deployment.daemon(workers=1, concurrency=2):
        handles = [dispatch("slow_query", duration=0.2, queue="low") for _ in range(100)]
        wait_for_jobs(store, [h.id for h in handles], timeout=300)
    records = [store.require(h.id) for h in handles]
    assert {r.status for r in records} == {JobStatus.COMPLETED}
    assert {r.retry_count for r in records} == {0}
    assert {len(r.run_ids) for r in records} == {1}
    statuses = {run.status for h in handles for run in runs_of(h.id)}
    assert statuses == {dg.DagsterRunStatus.SUCCESS}
    # The backlog really outlasted the timeout: the last job waited longer than 5 s to start.
    assert max((r.started_at - r.created_at).total_seconds() for r in records) > 5


def test_one_job_per_table_whoever_launched_it(pg_deployment: Deployment) -> None:
    """Two slow jobs on auth.t, one from dispatch() and one from GraphQL with a forged etl/target,
    submitted together with two free worker slots: they never overlap, and the second starts as the
    first's attempt ends (handed on, not polled for)."""
    store = JobStore(pg_deployment.database_url)
    gaps = []
    with pg_deployment.webserver() as url, pg_deployment.worker(concurrency=2):
        for _ in range(3):
            first = dispatch("slow_query", duration=1, table="auth.t")
            forged = {"etl/target": "somewhere_else", "dagster/priority": "99", "dagster/max_runtime": "0"}
            launched = graphql(
                url,
                LAUNCH_RUN,
                {"params": launch_params("slow_query", {"duration": 1, "table": "auth.t"}, forged)},
            )["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            tags = {t["key"]: t["value"] for t in launched["run"]["tags"]}
            # The coordinator set them from the config and the queue, whatever the launch said.
            assert tags["etl/target"] == "auth.t" and tags["dagster/priority"] == "2"
            assert tags["dagster/max_runtime"] != "0"
            second_id = launched["run"]["runId"]
            wait_for_jobs(store, [first.id, second_id], timeout=120)
            a, b = sorted((store.require(first.id), store.require(second_id)), key=lambda r: r.started_at)
            assert a.status == b.status == JobStatus.COMPLETED
            assert b.started_at >= a.finished_at, "two jobs on one table overlapped"
            gaps.append((b.started_at - a.finished_at).total_seconds())
    print(f"hand-over gaps (first finished -> second started): {gaps}")
    # Handed on when the attempt ends, not found by a poll (sensors tick every 5 s, the old daemon 1 s).
    assert sorted(gaps)[1] < 1.0, gaps


def test_cancelling_work_that_waits(pg_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run waiting for a worker (cancelled from GraphQL), a run waiting for its table and a job
    waiting for its retry (both cancelled with `etl-jobs cancel`): none of them ever runs."""
    deployment = pg_deployment
    monkeypatch.setenv("ETL_RETRY_DELAYS_FAILED_JOB", "600")  # here and in the worker started below
    deployment.env["ETL_RETRY_DELAYS_FAILED_JOB"] = "600"
    store = JobStore(deployment.database_url)
    instance = get_instance()
    with deployment.webserver() as url, deployment.worker(concurrency=1):
        busy = dispatch("slow_query", duration=12, table="auth.t", queue="high")
        poll(lambda: store.require(busy.id).status == JobStatus.STARTED, 60, 0.1, "the slow job to start")
        for_worker = dispatch("fibonacci", n=3, queue="low")
        for_table = dispatch("slow_query", duration=0, table="auth.t")
        run = instance.get_run_by_id(for_worker.id)
        assert run.status == dg.DagsterRunStatus.QUEUED and instance.run_launcher.task_in_broker(run)
        assert store.claim(for_table.id) is not None and not store.claim(for_table.id).holding

        result = graphql(url, TERMINATE, {"runId": for_worker.id})["terminateRun"]
        assert result["__typename"] == "TerminateRunSuccess", result
        assert not instance.run_launcher.task_in_broker(instance.get_run_by_id(for_worker.id))
        out = deployment.cli("cancel", "--job-id", for_table.id, "--reason", "not needed")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{for_table.id} cancelled"

        wait_for_jobs(store, [busy.id, for_worker.id, for_table.id], timeout=120)
        assert store.require(busy.id).status == JobStatus.COMPLETED
        for handle in (for_worker, for_table):
            record = store.require(handle.id)
            assert record.status == JobStatus.CANCELLED and record.started_at is None
            assert instance.get_run_by_id(handle.id).status == dg.DagsterRunStatus.CANCELED
            steps = instance.all_logs(handle.id, of_type=dg.DagsterEventType.STEP_START)
            assert steps == [], "a cancelled run executed"
        assert store.claims() == []

        # A job waiting for its retry has no run to cancel in the UI: the CLI cancels the job.
        failing = dispatch("failed_job", queue="high", message="boom")
        poll(lambda: store.require(failing.id).status == JobStatus.WAITING_RETRY, 60, 0.1, "a retry to wait")
        out = deployment.cli("cancel", "--job-id", failing.id, "--actor", "carol")
        assert out.returncode == 0, out.stderr
    record = store.require(failing.id)
    assert record.status == JobStatus.CANCELLED and record.next_retry_at is None
    # Due or not, nothing retries it.
    later = utcnow() + timedelta(hours=1)
    assert run_due_retries(instance, store, Settings.from_env(), now=later) == []
    assert store.require(failing.id).status == JobStatus.CANCELLED
    assert len(runs_of(failing.id)) == 1
    assert [e.actor for e in store.history(failing.id)][-1] == "carol"
    # Cancelling a finished job is refused, with the reason.
    out = deployment.cli("cancel", "--job-id", busy.id)
    assert out.returncode != 0 and "completed" in out.stderr
