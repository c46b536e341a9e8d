"""The etl-jobs command, run as a user runs it, against the embedded default and PostgreSQL."""

import json
import os
import re
import signal
import subprocess
import sys
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
    (
        ["dispatch", "truncate_table", "--confirm", "-p", "table=auth.users; DROP TABLE x"],
        "invalid table name",
    ),
    (["dispatch", "truncate_table", "--confirm"], "missing required parameter(s) table"),
    (["dispatch", "truncate_table", "--confirm", "-p", "table=public.users"], "not in an allowed schema"),
    (["dispatch", "drop_table", "--confirm", "-p", "table=users"], "not in an allowed schema"),
    # A destructive job type without --confirm, however valid its parameters.
    (["dispatch", "truncate_table", "-p", "table=auth.users"], "add --confirm to dispatch it"),
    (["dispatch", "drop_table", "-p", "table=auth.users", "-p", "if_exists=true"], "--confirm"),
    (["dispatch", "data_aggregation", "-p", "group_by=department;--"], "invalid column name"),
    (["status", "00000000-0000-0000-0000-000000000000"], "no job with id"),
    (["list", "--type", "no_such_job"], "unknown job type"),
    (
        ["list-failed-jobs", "--type", "no_such_job"],
        "unknown job type 'no_such_job'; known job types: archive_old_rows, data_aggregation,",
    ),
    (["retry-job", "--all", "--type", "no_such_job", "--dry-run"], "unknown job type 'no_such_job'"),
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


DESTRUCTIVE = {
    "archive_old_rows",
    "data_import",
    "drop_table",
    "populate_records",
    "sync_table",
    "truncate_table",
}


def test_destructive_job_types_need_confirm(pg_deployment: Deployment) -> None:
    store = JobStore(pg_deployment.database_url)
    before = {r.id for r in store.list(limit=10_000)}
    runs_before = get_instance().get_runs_count()
    refused = pg_deployment.cli("dispatch", "truncate_table", "-p", "table=auth.users")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == "Error: truncate_table destroys data: add --confirm to dispatch it\n"
    assert {r.id for r in store.list(limit=10_000)} == before  # no record, no run
    assert get_instance().get_runs_count() == runs_before

    queued = pg_deployment.cli("dispatch", "truncate_table", "--confirm", "-p", "table=auth.users", "--json")
    assert queued.returncode == 0, queued.stderr
    record = json.loads(queued.stdout)
    assert record["job_type"] == "truncate_table" and record["payload"] == {"table": "auth.users"}
    assert store.require(record["id"]).status == JobStatus.QUEUED
    assert get_instance().get_run_by_id(record["id"]) is not None

    listed = json.loads(pg_deployment.cli("job-types", "--json").stdout)
    assert {t["job_type"]: t["destructive"] for t in listed} == {
        t["job_type"]: t["job_type"] in DESTRUCTIVE for t in listed
    }
    text = pg_deployment.cli("job-types").stdout
    heads = [
        re.match(r"(\w+)  \(queue \w+(, destructive: dispatch needs --confirm)?\)  ", line)
        for line in text.splitlines()
        if not line.startswith(" ")
    ]
    assert all(heads), text
    assert {h.group(1) for h in heads if h.group(2)} == DESTRUCTIVE
    assert len(heads) == len(listed)


# Runs etl-jobs commands in one process, each as click runs it, and reports after each which of the
# modules a reading command must not need are loaded (cumulative: the first offender shows).
LIGHT_CHECK = """
import contextlib, io, json, sys
import click
from etl_pipelines.cli import cli

HEAVY = {"dagster", "dagster_postgres", "dagster_celery", "dagster_shared", "celery", "kombu", "pandas"}
report = []
for args in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = cli.main(args, prog_name="etl-jobs", standalone_mode=False)
        except click.ClickException as exc:
            code = exc.exit_code
    top = {name.split(".")[0] for name in sys.modules}
    report.append({"args": args, "code": code, "out": out.getvalue(), "heavy": sorted(top & HEAVY),
                   "sqlalchemy": "sqlalchemy" in top, "rich": "rich" in top})
import etl_pipelines.metrics  # what `etl-jobs metrics` loads before it serves
top = {name.split(".")[0] for name in sys.modules}
report.append({"args": ["(metrics)"], "heavy": sorted(top & HEAVY)})
print(json.dumps(report))
"""


def test_reading_commands_import_no_dagster_celery_or_pandas(pg_deployment: Deployment) -> None:
    """Operators run these in loops: they read or change the job table and load nothing else."""
    job_id = pg_deployment.cli("dispatch", "fibonacci", "-p", "n=3").stdout.strip()
    commands = [
        ["--help"],
        ["status", "--help"],
        ["status", job_id],
        ["status", job_id, "--json"],
        ["list"],
        ["list", "--type", "fibonacci", "--status", "queued", "--json"],
        ["list-failed-jobs", "--type", "fibonacci"],
        ["history", job_id],
        ["stats", "--json"],
        ["mark-completed", "--job-id", job_id, "--reason", "not failed: refused"],
        ["status", "no-such-job"],
    ]
    out = subprocess.run(
        [sys.executable, "-c", LIGHT_CHECK, json.dumps(commands)],
        env=pg_deployment.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["args"] for r in report] == [*commands, ["(metrics)"]]
    for step in report:
        assert step["heavy"] == [], step
    help_, status_help = report[0], report[1]
    assert "Dispatch database and ETL jobs" in help_["out"] and help_["code"] == 0
    assert not help_["sqlalchemy"] and not help_["rich"], "--help must not import SQLAlchemy or rich"
    assert "Show one job's record." in status_help["out"] and not status_help["sqlalchemy"]
    fields = dict(line.split(None, 1) for line in report[2]["out"].splitlines())
    assert report[2]["code"] is None and fields["id"] == job_id and fields["status"] == "queued"
    assert json.loads(report[3]["out"])["id"] == job_id
    assert job_id in [r["id"] for r in json.loads(report[5]["out"])]
    assert report[9]["code"] == 1 and report[10]["code"] == 1  # refused: not failed; no such job

    as_module = subprocess.run(
        [sys.executable, "-m", "etl_pipelines.cli", "status", job_id, "--json"],
        env=pg_deployment.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_module.returncode == 0, as_module.stderr
    assert json.loads(as_module.stdout)["status"] == "queued"


def test_status_choices_are_the_job_statuses() -> None:
    from etl_pipelines.cli.commands import STATUSES

    assert list(STATUSES) == [status.value for status in JobStatus]


def test_job_type_names_are_the_registry_names() -> None:
    from etl_pipelines import jobs
    from etl_pipelines.framework.registry import job_types

    assert jobs.names() == list(job_types())


def test_unreachable_job_table_is_a_clear_error(pg_deployment: Deployment) -> None:
    env = {
        **pg_deployment.env,
        "ETL_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere",
    }
    out = subprocess.run([str(BIN / "etl-jobs"), "list"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: job table unreachable:"), out.stderr


def test_a_worker_on_redis_without_dagster_home_is_refused(pg_deployment: Deployment) -> None:
    """It would open the embedded default's SQLite instance and drop every run Redis sends it."""
    env = {k: v for k, v in pg_deployment.env.items() if k != "DAGSTER_HOME"}
    out = subprocess.run(
        [str(BIN / "etl-jobs"), "worker"], env=env, capture_output=True, text=True, timeout=60, cwd="/tmp"
    )
    assert out.returncode == 2 and "DAGSTER_HOME is not set" in out.stderr, out.stderr


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


# -- paging, idempotency keys, defaults: in-process on a SQLite job table (fast tier) -------------


@pytest.fixture
def sqlite_jobs(clean_env: pytest.MonkeyPatch, tmp_path) -> JobStore:
    """Five jobs (j0 oldest) in a SQLite job table that ETL_DATABASE_URL names; j0 has 4 events."""
    from etl_pipelines.lifecycle import NewJob, RetrySchedule, events

    url = f"sqlite:///{tmp_path / 'etl.sqlite'}"
    clean_env.setenv("ETL_DATABASE_URL", url)
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    store = JobStore(url)
    for n in range(5):
        job = NewJob(
            id=f"j{n}",
            job_type="fibonacci",
            job_class="x.Fibonacci",
            queue="low",
            payload={"n": n},
            schedule=RetrySchedule.explicit(()),
        )
        events.bootstrap(store, job, f"j{n}")
    for n in range(3):
        store.record_event("j0", f"note{n}", reason=f"note {n}")
    return store


def _run(*args: str):
    from click.testing import CliRunner

    from etl_pipelines.cli import cli

    return CliRunner().invoke(cli, list(args), prog_name="etl-jobs")


def test_list_pages_and_says_how_many_more(sqlite_jobs: JobStore) -> None:
    first = _run("list", "--limit", "2", "--json")
    assert first.exit_code == 0, first.output
    assert [r["id"] for r in json.loads(first.stdout)] == ["j4", "j3"]
    assert first.stderr == "1-2 of 5 jobs; 3 more: --offset 2\n"
    last = _run("list", "--limit", "2", "--offset", "4", "--json")
    assert [r["id"] for r in json.loads(last.stdout)] == ["j0"] and last.stderr == ""
    past = _run("list", "--offset", "10", "--json")
    assert json.loads(past.stdout) == [] and "nothing past --offset 10: 5 jobs in all" in past.stderr
    table = _run("list", "--limit", "3", "--offset", "1")
    assert [line.split()[0] for line in table.stdout.splitlines()[2:]] == ["j3", "j2", "j1"]
    assert table.stderr == "2-4 of 5 jobs; 1 more: --offset 4\n"
    whole = _run("list", "--json")  # the default page holds them all: nothing more to say
    assert len(json.loads(whole.stdout)) == 5 and whole.stderr == ""
    failed = _run("list-failed-jobs", "--offset", "1", "--json")
    assert json.loads(failed.stdout) == [] and failed.stderr == ""  # none failed: nothing past


def test_history_pages(sqlite_jobs: JobStore) -> None:
    page = _run("history", "j0", "--limit", "2", "--offset", "1", "--json")
    assert page.exit_code == 0, page.output
    assert [e["action"] for e in json.loads(page.stdout)] == ["note0", "note1"]
    assert page.stderr == "2-3 of 4 events; 1 more: --offset 3\n"
    assert [e["action"] for e in json.loads(_run("history", "j0", "--json").stdout)] == [
        "queued",
        "note0",
        "note1",
        "note2",
    ]
    assert _run("history", "nope").exit_code == 1


def test_dispatch_passes_the_idempotency_key(sqlite_jobs: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    # The module (etl_pipelines.framework exports its function under the same name).
    dispatch_module = importlib.import_module("etl_pipelines.framework.dispatch")
    calls: list[dict] = []

    class Handle:
        id = "j4"

        def record(self):
            return sqlite_jobs.require("j4")

    def fake_dispatch(job_cls, **kwargs):
        calls.append(kwargs)
        return Handle()

    monkeypatch.setattr(dispatch_module, "dispatch", fake_dispatch)
    out = _run("dispatch", "fibonacci", "-p", "n=4", "--idempotency-key", "nightly-2026-12-02")
    assert out.exit_code == 0, out.output
    assert out.stdout == "j4\n"
    assert calls == [{"queue": None, "idempotency_key": "nightly-2026-12-02", "n": "4"}]
    _run("dispatch", "fibonacci", "-p", "n=4")
    assert calls[-1]["idempotency_key"] is None


def test_metrics_listens_on_localhost_unless_told() -> None:
    from etl_pipelines.cli.commands import metrics

    (host,) = [p for p in metrics.params if p.name == "host"]
    assert host.default == "127.0.0.1"
