"""The etl-jobs command, run as a user runs it, against the embedded default and PostgreSQL."""

import json
import os
import signal
import subprocess
import uuid

import pytest
import sqlalchemy as sa

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.harness import BIN, Deployment, free_port, poll, run_finished


def test_dispatch_status_and_list(pg_deployment: Deployment) -> None:
    out = pg_deployment.cli("dispatch", "fibonacci", "--queue", "high", "--param", "n=10")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    uuid.UUID(job_id)  # prints the id and nothing else

    status = pg_deployment.cli("status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    assert record["id"] == job_id and record["status"] == "queued" and record["queue"] == "high"
    assert record["payload"] == {"n": 10} and record["job_type"] == "fibonacci"
    assert set(record) >= {
        "id",
        "job_type",
        "job_class",
        "queue",
        "status",
        "payload",
        "result",
        "error",
        "traceback",
        "retry_count",
        "run_id",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    }

    human = pg_deployment.cli("status", job_id)
    assert human.returncode == 0
    fields = dict(line.split(None, 1) for line in human.stdout.splitlines())
    assert fields["id"] == job_id and fields["status"] == "queued" and fields["payload"] == '{"n": 10}'

    dispatched = pg_deployment.cli("dispatch", "slow_query", "-p", "duration=0.5", "--json")
    assert dispatched.returncode == 0, dispatched.stderr
    slow = json.loads(dispatched.stdout)
    assert slow["queue"] == "medium" and slow["payload"] == {"duration": 0.5, "table": None}

    listed = json.loads(pg_deployment.cli("list", "--json").stdout)
    assert {job_id, slow["id"]} <= {r["id"] for r in listed}
    only_high = json.loads(pg_deployment.cli("list", "--queue", "high", "--json").stdout)
    assert [r["id"] for r in only_high] == [job_id]
    only_slow = json.loads(pg_deployment.cli("list", "--type", "slow_query", "--json").stdout)
    assert [r["id"] for r in only_slow] == [slow["id"]]
    assert json.loads(pg_deployment.cli("list", "--status", "completed", "--json").stdout) == []
    limited = json.loads(pg_deployment.cli("list", "--limit", "1", "--json").stdout)
    assert [r["id"] for r in limited] == [slow["id"]]  # newest first

    table = pg_deployment.cli("list")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "ID",
        "JOB_TYPE",
        "QUEUE",
        "STATUS",
        "RETRY_COUNT",
        "CREATED_AT",
        "FINISHED_AT",
    ]
    assert any(row.startswith(job_id) for row in rows)


BAD_INPUT = [
    (["dispatch", "no_such_job"], "unknown job type 'no_such_job'"),
    (["dispatch", "fibonacci", "--queue", "urgent", "-p", "n=1"], "unknown queue 'urgent'"),
    (["dispatch", "fibonacci", "-p", "n=abc"], "n: Input should be a valid integer"),
    (["dispatch", "fibonacci", "-p", "n=1", "-p", "m=2"], "unknown parameter(s) m"),
    (["dispatch", "fibonacci"], "missing required parameter(s) n"),
    (["dispatch", "fibonacci", "-p", "n"], "--param takes key=value"),
    (["dispatch", "truncate_table", "-p", "table=auth.users; DROP TABLE x"], "invalid table name"),
    (["dispatch", "truncate_table"], "missing required parameter(s) table"),
    (["dispatch", "truncate_table", "-p", "table=public.users"], "not in an allowed schema"),
    (["dispatch", "drop_table", "-p", "table=users"], "not in an allowed schema"),
    (["dispatch", "data_aggregation", "-p", "group_by=department;--"], "invalid column name"),
    (["status", "00000000-0000-0000-0000-000000000000"], "no job with id"),
    (["list", "--type", "no_such_job"], "unknown job type"),
]


def test_bad_input_is_refused_and_changes_nothing(pg_deployment: Deployment) -> None:
    engine = sa.create_engine(pg_deployment.database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS auth"))
        connection.execute(sa.text("CREATE TABLE IF NOT EXISTS auth.users (id int)"))
        connection.execute(sa.text("CREATE TABLE IF NOT EXISTS public.users (id int)"))
        connection.execute(sa.text("INSERT INTO auth.users VALUES (1), (2)"))
    store = JobStore(pg_deployment.database_url)
    records_before = len(store.list(limit=10_000))
    runs_before = get_instance().get_runs_count()
    for args, message in BAD_INPUT:
        out = pg_deployment.cli(*args)
        assert out.returncode != 0, (args, out.stdout)
        assert message in out.stderr, (args, out.stderr)
        assert out.stdout == "", (args, out.stdout)
    assert len(store.list(limit=10_000)) == records_before
    assert get_instance().get_runs_count() == runs_before
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM auth.users")).scalar_one() == 2
        assert connection.execute(sa.text("SELECT count(*) FROM public.users")).scalar_one() == 0
    engine.dispose()


def test_unreachable_job_table_is_a_clear_error(pg_deployment: Deployment) -> None:
    env = {
        **pg_deployment.env,
        "ETL_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere",
    }
    out = subprocess.run([str(BIN / "etl-jobs"), "list"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: job table unreachable:"), out.stderr


@pytest.mark.e2e
def test_list_failed_jobs(sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    sqlite_deployment.env["ETL_RETRY_DELAYS"] = ""  # fail at the first error
    failed = sqlite_deployment.cli("dispatch", "failed_job", "-p", "message=disk full").stdout.strip()
    ok = sqlite_deployment.cli("dispatch", "fibonacci", "-p", "n=3").stdout.strip()
    store = JobStore(sqlite_deployment.database_url)
    with sqlite_deployment.daemon():
        poll(
            lambda: all(store.require(i).status.is_final and run_finished(i) for i in (failed, ok)),
            120,
            0.2,
            "both jobs to end",
        )
    listed = json.loads(sqlite_deployment.cli("list-failed-jobs", "--json").stdout)
    assert [r["id"] for r in listed] == [failed]
    assert listed[0]["error"] == "FailedJobError: disk full" and listed[0]["retry_count"] == 0
    assert listed[0]["max_retries"] == 0
    human = sqlite_deployment.cli("list-failed-jobs")
    assert failed in human.stdout and ok not in human.stdout
    assert json.loads(sqlite_deployment.cli("list-failed-jobs", "--type", "fibonacci", "--json").stdout) == []


def _processes_mentioning(home: str) -> list[str]:
    """Processes started for the deployment in `home`: its DAGSTER_HOME in their environment or
    command line (code servers and run workers inherit the environment)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if home in cmdline or f"DAGSTER_HOME={home}".encode() in environ:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.mark.e2e
def test_stack_runs_demo_batch_and_stops_cleanly(sqlite_deployment: Deployment) -> None:
    """`etl-jobs stack --demo` (the README's run command) on the embedded default."""
    port = free_port()
    stack = sqlite_deployment.start("stack", [str(BIN / "etl-jobs"), "stack", "--demo", "--port", str(port)])
    store = JobStore(sqlite_deployment.database_url)
    try:
        records = poll(lambda: len(store.list()) == 7 and store.list(), 120, 0.5, "the demo batch")
        assert sorted((r.job_type, r.queue) for r in records) == [
            ("data_aggregation", "medium"),
            ("drop_table", "low"),
            ("failed_job", "default"),
            ("fibonacci", "low"),
            ("populate_records", "high"),
            ("slow_query", "medium"),
            ("truncate_table", "low"),
        ]
        poll(
            lambda: all(r.status.is_final and run_finished(r.id) for r in store.list()),
            180,
            0.5,
            f"the demo batch to end; stack log:\n{stack.output()[-3000:]}",
        )
        ends = {r.job_type: r.status for r in store.list()}
        assert ends.pop("failed_job") == JobStatus.FAILED
        assert set(ends.values()) == {JobStatus.COMPLETED}, ends
        assert f"Dagster UI: http://127.0.0.1:{port}" in stack.output()

        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(timeout=60) == 0
        home = str(sqlite_deployment.home)
        leftovers = poll(lambda: not _processes_mentioning(home), 30, 0.5, "no process left")
        assert leftovers
    finally:
        stack.stop()
