"""Operations with real processes, killed for real: durable retries, recovery after a Redis flush and
a kill -9, a stack restart, manual retry and resolution from the CLI, UI/GraphQL re-execution."""

import json
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import redis

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.jobs.failed_job import FailedJob
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.jobs.slow_query import SlowQuery
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import PRODUCTION_YAML, production_deployment
from etl_pipelines_tests.harness import REPO, Deployment, graphql, instance_yaml, poll, wait_for_jobs

pytestmark = pytest.mark.e2e


@pytest.fixture
def ops_deployment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> Iterator[Deployment]:
    """Production yaml (PostgreSQL, Celery), fast heartbeats and a short recovery grace."""
    with production_deployment(
        clean_env,
        tmp_path / "dagster_home",
        pg_url,
        redis_url,
        redis_prefix,
        instance_yaml(PRODUCTION_YAML),
        ETL_HEARTBEAT_SECONDS="1",
        ETL_RECOVERY_GRACE_SECONDS="3",
    ) as deployment:
        yield deployment


def set_env(deployment: Deployment, monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """For this test's processes and for the deployment's."""
    for key, value in values.items():
        monkeypatch.setenv(key, value)
        deployment.env[key] = value


def actions(store: JobStore, job_id: str) -> list[str]:
    return [event.action for event in store.history(job_id)]


def op_executions(job_id: str, store: JobStore) -> int:
    """How many times the job's op began, over all its runs (Dagster's event log)."""
    instance = get_instance()
    return sum(
        1
        for run_id in store.require(job_id).run_ids
        for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    )


def runs_in(status: dg.DagsterRunStatus) -> list[dg.DagsterRun]:
    return list(get_instance().get_runs(dg.RunsFilter(statuses=[status])))


def test_redis_flush_loses_nothing_and_runs_nothing_twice(
    ops_deployment: Deployment, redis_url: str, redis_prefix: str
) -> None:
    deployment = ops_deployment
    store = JobStore(deployment.database_url)
    # This test is about `etl-jobs recover`: the sensor doing the same every 30 s is stopped, as
    # an operator would stop it (the kill -9 test below relies on the sensor).
    workspace = str(REPO / "workspace.yaml")
    stopped = deployment.dagster("sensor", "stop", "job_recovery", "-w", workspace)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    try:
        flush_and_recover(deployment, store, redis_url, redis_prefix)
    finally:  # sensor states live in the module's database, shared with the next test
        started = deployment.dagster("sensor", "start", "job_recovery", "-w", workspace)
        assert started.returncode == 0, started.stdout + started.stderr


def flush_and_recover(deployment: Deployment, store: JobStore, redis_url: str, redis_prefix: str) -> None:
    with deployment.daemon(workers=0), deployment.worker(concurrency=2):
        # Long enough to keep both slots busy through the flush and the recovery, even under load.
        running = [SlowQuery.dispatch(duration=20, queue="high") for _ in range(2)]
        poll(lambda: all(h.status() == JobStatus.STARTED for h in running), 60, 0.2, "2 slow jobs to start")
        queued = [Fibonacci.dispatch(n=5) for _ in range(20)]
        # Both slots busy: all 20 wait in Celery's low queue, QUEUED in Dagster.
        client = redis.Redis.from_url(redis_url)
        assert client.llen(f"{redis_prefix}low") == 20
        assert {get_instance().get_run_by_id(h.id).status for h in queued} == {dg.DagsterRunStatus.QUEUED}

        keys = list(client.scan_iter(match=f"{redis_prefix}*"))
        assert any(key.decode().endswith(":low") for key in keys), keys
        # The tasks waiting in Celery now are the ones the broker is about to lose.
        waiting = {json.loads(raw)["headers"]["id"] for raw in client.lrange(f"{redis_prefix}low", 0, -1)}
        client.delete(*keys)  # the broker loses the waiting tasks (and its result backend)
        assert waiting == {h.id for h in queued}

        recovered: list[str] = []
        outputs: list[str] = []

        def recover() -> bool:
            result = deployment.cli("recover", "--since", "1h")
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout + result.stderr)
            recovered.extend(line for line in result.stdout.splitlines() if "resent" in line)
            return len(recovered) >= len(waiting)

        try:
            poll(recover, 90, 1.0, "etl-jobs recover to send the 20 lost tasks again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nrecover printed:\n{''.join(outputs)}") from None
        assert all("its task is gone" in line for line in recovered), recovered
        assert {line.split()[0] for line in recovered} == waiting  # job id = first run id here
        wait_for_jobs(store, [h.id for h in running + queued], 240)

    for handle in running + queued:
        record = handle.record()
        assert record.status == JobStatus.COMPLETED, record.to_dict()
        history = [(e.action, e.actor, e.reason) for e in store.history(handle.id)]
        assert op_executions(handle.id, store) == 1, "\n".join(map(str, [record.run_ids, *history]))
        assert actions(store, handle.id).count("started") == 1
    # Each lost job ran as the run it always had: the task was sent again, no attempt charged.
    for handle in queued:
        record = handle.record()
        assert record.run_ids == [handle.id] and record.retry_count == 0
        assert "recovered" in actions(store, handle.id)


def test_killed_worker_job_is_retried_not_left_started(ops_deployment: Deployment) -> None:
    deployment = ops_deployment
    store = JobStore(deployment.database_url)
    with deployment.daemon(workers=0):
        with deployment.worker(concurrency=1) as doomed:
            handle = SlowQuery.dispatch(duration=4)
            bystander = Fibonacci.dispatch(n=7)
            poll(lambda: handle.status() == JobStatus.STARTED, 60, 0.2, "the slow job to start")
            doomed.signal(signal.SIGKILL)
            poll(doomed.gone, 10, 0.1, "the worker to die")
        # No heartbeat for 3 s: the job_recovery sensor (every 30 s) fails the attempt; its retry
        # (ETL_RETRY_DELAYS 1 s) runs on a new worker.
        with deployment.worker(concurrency=1):
            wait_for_jobs(store, [handle.id, bystander.id], 180)
    record = handle.record()
    assert record.status == JobStatus.COMPLETED and record.retry_count == 1, record.to_dict()
    first, second = record.run_ids
    assert get_instance().get_run_by_id(first).status == dg.DagsterRunStatus.FAILURE
    assert get_instance().get_run_by_id(second).parent_run_id == first
    history = store.history(handle.id)
    lost = [e for e in history if e.action == "waiting_retry"]
    assert len(lost) == 1 and "WorkerLost: no heartbeat" in lost[0].reason
    assert [e.action for e in history].count("started") == 2
    assert bystander.record().status == JobStatus.COMPLETED
    assert op_executions(bystander.id, store) == 1


def test_stack_restart_keeps_queued_jobs_and_the_retry_due_time(
    ops_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = ops_deployment
    set_env(deployment, monkeypatch, ETL_RETRY_DELAYS_FAILED_JOB="12")
    store = JobStore(deployment.database_url)
    with deployment.daemon(workers=1, concurrency=1):
        failing = FailedJob.dispatch(message="flaky")
        poll(lambda: failing.status() == JobStatus.WAITING_RETRY, 60, 0.2, "the first attempt to fail")
    due = failing.record().next_retry_at
    # Everything is down: jobs queued now wait in Dagster's run queue (PostgreSQL).
    queued = [Fibonacci.dispatch(n=6) for _ in range(3)]
    assert failing.status() == JobStatus.WAITING_RETRY
    with deployment.daemon(workers=1, concurrency=1):
        wait_for_jobs(store, [failing.id] + [h.id for h in queued], 120)
    for handle in queued:
        assert handle.record().status == JobStatus.COMPLETED
    record = failing.record()
    assert record.status == JobStatus.FAILED and record.retry_count == 1 and len(record.run_ids) == 2
    (retry,) = [e for e in store.history(failing.id) if e.action == "retry"]
    # At its due time, not before, and promptly (the due_retries sensor looks every 5 s).
    # Not before it was due; after it, within the restart and the sensor's first ticks.
    assert due <= retry.at <= due + timedelta(seconds=40), (due, retry.at)


def test_cli_retry_and_resolution(sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = sqlite_deployment
    set_env(deployment, monkeypatch, ETL_RETRY_DELAYS="")  # fail at once
    store = JobStore(deployment.database_url)
    with deployment.daemon():
        fib = Fibonacci.dispatch(n=3)
        failed = [FailedJob.dispatch(message=f"broken {i}") for i in range(3)]
        wait_for_jobs(store, [fib.id] + [h.id for h in failed], 180)
        assert [h.status() for h in failed] == [JobStatus.FAILED] * 3

        # Wrong states: a clear error, exit 1, nothing changed.
        before = (fib.record().to_dict(), actions(store, fib.id))
        result = deployment.cli("retry-job", "--job-id", fib.id)
        assert result.returncode == 1 and f"job {fib.id} is completed, not failed" in result.stderr
        result = deployment.cli("mark-completed", "--job-id", fib.id, "--reason", "x")
        assert result.returncode == 1 and "not failed" in result.stderr
        result = deployment.cli("retry-job", "--job-id", "no-such-job")
        assert result.returncode == 1 and "no job with id 'no-such-job'" in result.stderr
        assert (fib.record().to_dict(), actions(store, fib.id)) == before

        # One job: a re-execution recorded on the same job, by this actor.
        one = failed[0]
        result = deployment.cli(
            "retry-job", "--job-id", one.id, "--actor", "oncall", "--reason", "disk freed"
        )
        assert result.returncode == 0, result.stderr
        wait_for_jobs(store, [one.id], 120)
        record = one.record()
        assert record.status == JobStatus.FAILED and len(record.run_ids) == 2
        assert get_instance().get_run_by_id(record.run_ids[1]).root_run_id == one.id
        (manual,) = [e for e in store.history(one.id) if e.action == "manual_retry"]
        assert (manual.actor, manual.reason, manual.from_status) == ("oncall", "disk freed", "failed")

        # Bulk: the dry run lists and changes nothing; the real one retries each job once.
        runs_before = {h.id: len(h.record().run_ids) for h in failed}
        result = deployment.cli("retry-job", "--all", "--type", "failed_job", "--dry-run")
        assert result.returncode == 0, result.stderr
        assert sorted(line.split()[2] for line in result.stdout.splitlines()) == sorted(h.id for h in failed)
        assert "3 job(s) would be retried" in result.stderr
        assert {h.id: len(h.record().run_ids) for h in failed} == runs_before
        result = deployment.cli("retry-job", "--all", "--type", "failed_job", "--rate", "20")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("retried ") == 3 and "3 job(s) retried, 0 skipped" in result.stderr
        wait_for_jobs(store, [h.id for h in failed], 180)
        assert {h.id: len(h.record().run_ids) for h in failed} == {k: v + 1 for k, v in runs_before.items()}

    # Resolution by hand, with who and why.
    two = failed[1]
    result = deployment.cli(
        "mark-completed", "--job-id", two.id, "--reason", "rows fixed by hand", "--actor", "ann"
    )
    assert result.returncode == 0, result.stderr
    assert two.record().status == JobStatus.COMPLETED
    result = deployment.cli("history", two.id, "--json")
    events = json.loads(result.stdout)
    assert events[-1]["action"] == "marked_completed" and events[-1]["actor"] == "ann"
    assert events[-1]["reason"] == "rows fixed by hand"
    assert events[0]["action"] == "queued" and events[0]["actor"] == "etl_pipelines"
    text = deployment.cli("history", two.id).stdout
    assert "marked_completed" in text and "rows fixed by hand" in text
    result = deployment.cli("retry-job")
    assert result.returncode == 2 and "either --job-id ID or --all" in result.stderr


REEXECUTE = """
mutation($parent: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: ALL_STEPS}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def test_graphql_reexecution_updates_the_job(
    sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = sqlite_deployment
    set_env(deployment, monkeypatch, ETL_RETRY_DELAYS="")
    store = JobStore(deployment.database_url)
    with deployment.daemon(), deployment.webserver() as url:
        handle = FailedJob.dispatch(message="once")
        wait_for_jobs(store, [handle.id], 120)
        result = graphql(url, REEXECUTE, {"parent": handle.id})["launchRunReexecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        new_run = result["run"]["runId"]
        poll(lambda: new_run in handle.record().run_ids, 30, 0.2, "the record to take the new run")
        wait_for_jobs(store, [handle.id], 120)
    record = handle.record()
    assert record.run_ids == [handle.id, new_run] and record.run_id == new_run
    assert record.status == JobStatus.FAILED
    requeued = [e for e in store.history(handle.id) if e.action == "run_queued"]
    assert requeued and requeued[-1].reason == f"re-execution of run {handle.id}"
    assert actions(store, handle.id).count("started") == 2
