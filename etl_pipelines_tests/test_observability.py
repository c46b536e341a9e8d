"""What operators look at: `etl-jobs stats`, the Prometheus endpoint, `dispatch --wait`."""

import json
import subprocess
import urllib.request
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from etl_pipelines.stats import quantile
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines.store.models import utcnow
from etl_pipelines_tests.harness import BIN, Deployment, free_port, poll
from etl_pipelines_tests.test_stats import job as job_row


def prepare(store: JobStore) -> dict[str, dict]:
    """A known state: per queue, jobs waiting, running, waiting to retry, done and failed.

    Written as rows, timestamps and all: the numbers read only the table, whichever path made it.
    """
    with store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM etl_jobs"))
    now = utcnow()
    rows = []

    def job(job_id: str, queue: str, age: float, status: JobStatus = JobStatus.QUEUED, **fields) -> None:
        rows.append(job_row(job_id, queue, status, now, age, **fields))

    for i, age in enumerate((300, 120, 60)):
        job(f"hq{i}", "high", age)  # 3 waiting in high, the oldest 300 s
    job("lq0", "low", 30)  # 1 waiting in low
    # Started 10..40 s after their dispatch: one completed, one failed, one waiting to retry, one running.
    job("hr0", "high", 10, JobStatus.COMPLETED, started_at=now, finished_at=now, result=1)
    job("hr1", "high", 20, JobStatus.FAILED, started_at=now, finished_at=now, error="E")
    retry_at = now + timedelta(minutes=5)
    job("hr2", "high", 30, JobStatus.WAITING_RETRY, started_at=now, error="E", next_retry_at=retry_at)
    job("hr3", "high", 40, JobStatus.STARTED, started_at=now, heartbeat_at=now)
    job("mr0", "medium", 5, JobStatus.STARTED, started_at=now, heartbeat_at=now)  # running in medium
    with Session(store.engine) as session, session.begin():
        session.add_all(rows)
    return {
        "high": {"waiting": 3, "running": 1, "retries_pending": 1, "completed": 1, "failed": 1, "started": 4},
        "medium": {
            "waiting": 0,
            "running": 1,
            "retries_pending": 0,
            "completed": 0,
            "failed": 0,
            "started": 1,
        },
        "low": {"waiting": 1, "running": 0, "retries_pending": 0, "completed": 0, "failed": 0, "started": 0},
        "default": {
            "waiting": 0,
            "running": 0,
            "retries_pending": 0,
            "completed": 0,
            "failed": 0,
            "started": 0,
        },
    }


def test_stats_json_matches_a_prepared_state(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    expected = prepare(store)
    result = pg_deployment.cli("stats", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    generated = datetime.fromisoformat(data["generated_at"])
    assert data["window_seconds"] == 3600 and list(data["queues"]) == ["high", "medium", "low", "default"]
    records = {r.id: r for r in store.list(limit=100)}
    for queue, want in expected.items():
        got = data["queues"][queue]
        assert got["waiting"] == want["waiting"] and got["running"] == want["running"], queue
        assert got["retries_pending"] == want["retries_pending"], queue
        assert got["completed_last_window"] == want["completed"], queue
        assert got["failed_last_window"] == want["failed"], queue
        assert got["started_last_window"] == want["started"], queue
        waiting = [r for r in records.values() if r.queue == queue and r.status == JobStatus.QUEUED]
        if waiting:
            oldest = (generated - min(r.queued_at for r in waiting)).total_seconds()
            assert got["oldest_waiting_seconds"] == pytest.approx(oldest, abs=0.001)
        else:
            assert got["oldest_waiting_seconds"] is None
        waits = [
            (r.started_at - r.created_at).total_seconds()
            for r in records.values()
            if r.queue == queue and r.started_at is not None
        ]
        for q in ("0.5", "0.9", "0.99"):
            want_q = quantile(waits, float(q))
            assert got["time_to_start"][q] == (None if want_q is None else pytest.approx(want_q, abs=0.001))
    # The high queue's jobs started 10, 20, 30 and 40 s after their dispatch (plus milliseconds).
    assert data["queues"]["high"]["time_to_start"]["0.5"] == pytest.approx(20, abs=1)
    assert data["queues"]["high"]["oldest_waiting_seconds"] == pytest.approx(300, abs=5)

    table = pg_deployment.cli("stats")
    assert table.returncode == 0, table.stderr
    header, _rule, high, *_ = table.stdout.splitlines()
    assert header.split()[:3] == ["QUEUE", "WAITING", "OLDEST"]
    assert high.split()[:4] == ["high", "3", high.split()[2], "1"] and high.split()[2].startswith("5m")


def test_metrics_endpoint_serves_the_same_numbers(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    prepare(store)
    port = free_port()
    server = pg_deployment.start(
        "metrics", [str(BIN / "etl-jobs"), "metrics", "--host", "127.0.0.1", "--port", str(port)]
    )
    try:
        poll(lambda: "serving queue metrics" in server.output(), 30, 0.1, "the metrics server")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        stats = json.loads(pg_deployment.cli("stats", "--json").stdout)["queues"]
    finally:
        server.stop()
    assert server.gone()
    samples = {
        (sample.name, sample.labels.get("queue"), sample.labels.get("quantile")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for queue, got in stats.items():
        assert samples[("etl_jobs_waiting", queue, None)] == got["waiting"]
        assert samples[("etl_jobs_running", queue, None)] == got["running"]
        assert samples[("etl_jobs_retries_pending", queue, None)] == got["retries_pending"]
        assert samples[("etl_jobs_completed_recent", queue, None)] == got["completed_last_window"]
        assert samples[("etl_jobs_failed_recent", queue, None)] == got["failed_last_window"]
        oldest = samples.get(("etl_jobs_oldest_waiting_seconds", queue, None))
        if got["oldest_waiting_seconds"] is None:
            assert oldest is None
        else:  # read a moment apart
            assert oldest == pytest.approx(got["oldest_waiting_seconds"], abs=10)
        for q, value in got["time_to_start"].items():
            assert samples.get(("etl_jobs_time_to_start_seconds", queue, q)) == value


def test_dispatch_wait_shows_each_retry_and_exits_by_outcome(
    pg_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = pg_deployment
    deployment.env["ETL_RETRY_DELAYS_FAILED_JOB"] = "1,2"
    monkeypatch.setenv("ETL_RETRY_DELAYS_FAILED_JOB", "1,2")
    etl_jobs = str(BIN / "etl-jobs")
    with deployment.daemon():
        ok = subprocess.run(
            [etl_jobs, "dispatch", "fibonacci", "-p", "n=10", "--wait", "--timeout", "120"],
            env=deployment.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() and "completed: 55" in ok.stderr
        failing = subprocess.run(
            [etl_jobs, "dispatch", "failed_job", "-p", "message=boom", "--wait", "--timeout", "150"],
            env=deployment.env,
            capture_output=True,
            text=True,
            timeout=200,
        )
    assert failing.returncode == 1, failing.stderr
    lines = [line.split(" ", 1)[1] for line in failing.stderr.splitlines()]
    assert lines[0] == "queued"
    assert any(line.startswith("retry 1 of 2 in ") and "(FailedJobError: boom)" in line for line in lines)
    assert any(line.startswith("retry 2 of 2 in ") for line in lines)
    assert len(lines) == len(set(lines))  # one line per change
    assert lines[-1] == "failed (retry 2 of 2): FailedJobError: boom"
    job_id = failing.stdout.strip()
    # Each retry was queued again as a new run (started at its due time, it may be queued and
    # failed between two polls, so the audit trail says it, not the printed lines).
    assert [e.action for e in JobStore(deployment.database_url).history(job_id)].count("retry") == 2
    assert JobStore(deployment.database_url).require(job_id).status == JobStatus.FAILED


def test_dispatch_wait_gives_up_after_its_timeout(pg_deployment: Deployment) -> None:
    """No daemon: the job stays queued, and --wait says so after --timeout (the job stays queued)."""
    out = pg_deployment.cli("dispatch", "fibonacci", "-p", "n=3", "--wait", "--timeout", "0.5")
    assert out.returncode == 1
    job_id = out.stdout.strip()
    shown, error = out.stderr.splitlines()
    assert shown.split(" ", 1)[1] == "queued"
    assert error == f"Error: job {job_id} still queued after 0.5 s"
    assert JobStore(pg_deployment.database_url).require(job_id).status == JobStatus.QUEUED
