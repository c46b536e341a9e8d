"""Per-target mutual exclusion, crash-safe archiving, the failure webhook and job chaining, for real."""

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl_pipelines.framework.dispatch import dispatch
from etl_pipelines.lifecycle import NewJob, RetrySchedule, events
from etl_pipelines.store import JobRecord, JobStatus, JobStore
from etl_pipelines_tests.harness import BIN, REPO, Deployment, free_port, poll, wait_for_jobs

pytestmark = pytest.mark.e2e


def overlap(a: JobRecord, b: JobRecord) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_jobs_on_the_same_table_never_overlap(pg_deployment: Deployment) -> None:
    first = dispatch("slow_query", duration=3, table="auth.accounts")
    second = dispatch("slow_query", duration=3, table="auth.accounts")
    other = dispatch("slow_query", duration=3, table="auth.orders")
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.daemon():
        wait_for_jobs(store, [first.id, second.id, other.id])
    a, b, c = (store.require(h.id) for h in (first, second, other))
    assert {a.status, b.status, c.status} == {JobStatus.COMPLETED}
    assert not overlap(a, b), (a.started_at, a.finished_at, b.started_at, b.finished_at)
    earlier = min(a, b, key=lambda r: r.started_at)
    assert overlap(earlier, c), (earlier.started_at, earlier.finished_at, c.started_at, c.finished_at)


def test_archive_killed_midway_loses_and_duplicates_nothing(pg_deployment: Deployment) -> None:
    engine = sa.create_engine(pg_deployment.database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS auth"))
        connection.execute(sa.text("DROP TABLE IF EXISTS auth.events, auth.events_archive"))
        connection.execute(sa.text("CREATE TABLE auth.events (id INTEGER PRIMARY KEY, created_at TIMESTAMP)"))
        connection.execute(
            sa.text(
                "INSERT INTO auth.events SELECT n, CASE WHEN n % 5 = 0 THEN now() "
                "ELSE now() - interval '2 years' END FROM generate_series(1, 5000) AS n"
            )
        )
    old = 4000
    config = pg_deployment.home / "archive.json"
    config.write_text(
        json.dumps(
            {
                "ops": {
                    "archive_old_rows_op": {
                        "config": {
                            "table": "auth.events",
                            "older_than_days": 365,
                            "batch_size": 40,
                            "pause_seconds": 0.05,
                        }
                    }
                }
            }
        )
    )
    argv = [
        str(BIN / "dagster"),
        "job",
        "execute",
        "-m",
        "etl_pipelines.definitions",
        "-j",
        "archive_old_rows",
    ]
    process = subprocess.Popen(
        [*argv, "-c", str(config)],
        env=pg_deployment.env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def archived() -> int:
        with engine.connect() as connection:
            exists = sa.inspect(connection).has_table("events_archive", schema="auth")
            return (
                connection.execute(sa.text("SELECT count(*) FROM auth.events_archive")).scalar_one()
                if exists
                else 0
            )

    try:
        poll(lambda: archived() >= 400, 120, 0.05, "some batches to be archived")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with engine.connect() as connection:
        moved = archived()
        remaining = connection.execute(sa.text("SELECT count(*) FROM auth.events")).scalar_one()
    assert 400 <= moved < old, "killed after the whole archive finished: make the job slower"
    assert moved + remaining == 5000 and moved % 40 == 0  # whole batches only

    rerun = subprocess.run(
        [*argv, "-c", str(config)], env=pg_deployment.env, cwd=REPO, capture_output=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with engine.connect() as connection:
        ids = connection.execute(sa.text("SELECT id FROM auth.events_archive")).scalars().all()
        kept = connection.execute(sa.text("SELECT id FROM auth.events")).scalars().all()
    engine.dispose()
    assert len(ids) == len(set(ids)) == old
    assert set(ids) == {n for n in range(1, 5001) if n % 5} and set(kept) == set(range(5, 5001, 5))


class Webhook:
    """A local HTTP server that records every JSON body POSTed to it."""

    def __init__(self, port: int | None = None) -> None:
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = port or free_port()
        self.server = HTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


def test_failure_webhook_once_per_failed_job_and_import_chains_an_aggregation(
    pg_deployment: Deployment, webhook: Webhook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "staff.csv").write_text("id,name,department,salary\n1,a,eng,10\n2,b,eng,20\n3,c,ops,5\n")
    for key, value in {
        "ETL_ALERT_WEBHOOK_URL": webhook.url,
        "ETL_RETRY_DELAYS": "",
        "ETL_IMPORT_DIR": str(imports),
    }.items():
        pg_deployment.env[key] = value
        monkeypatch.setenv(key, value)
    # Earlier tests of this module leave jobs behind (the archive killed midway is found lost and
    # fails, correctly, once a daemon runs): this test counts alerts from its own jobs only.
    with JobStore(pg_deployment.database_url).engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM etl_jobs"))
    failed = [dispatch("failed_job", message=f"broken {i}") for i in range(2)]
    ok = dispatch("fibonacci", n=5)
    imported = dispatch(
        "data_import",
        source_csv="staff.csv",
        target_table="auth.staff",
        columns={"id": "int", "name": "str", "department": "str", "salary": "float"},
        key_columns=["id"],
        replace=True,
        aggregate_by="department",
        aggregate_value="salary",
    )
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.daemon() as daemon:
        wait_for_jobs(store, [*(h.id for h in failed), ok.id, imported.id])
        poll(lambda: len(webhook.bodies) >= 2, 90, 0.2, f"two alerts\n{daemon.output()[-2000:]}")
        chained = poll(lambda: store.list(job_type="data_aggregation"), 90, 0.5, "the chained aggregation")
        wait_for_jobs(store, [chained[0].id])
        # Let the alert sensor tick twice more: a duplicate alert would show up by then.
        ticks = daemon.output().count("Checking for new runs for sensor: failure_alerts")
        poll(
            lambda: daemon.output().count("Checking for new runs for sensor: failure_alerts") >= ticks + 2,
            60,
            0.5,
            "two more sensor ticks",
        )
    assert sorted(b["job_id"] for b in webhook.bodies) == sorted(h.id for h in failed)
    assert {b["error"] for b in webhook.bodies} == {"FailedJobError: broken 0", "FailedJobError: broken 1"}
    assert all(b["event"] == "job_failed" and b["status"] == "failed" for b in webhook.bodies)

    (aggregation,) = store.list(job_type="data_aggregation")
    assert aggregation.status == JobStatus.COMPLETED and aggregation.queue == "medium"
    assert aggregation.payload == {"table": "auth.staff", "group_by": "department", "value_column": "salary"}
    assert [(g["department"], g["total"]) for g in aggregation.result["groups"]] == [
        ("eng", 30.0),
        ("ops", 5.0),
    ]


@pytest.mark.e2e
def test_alert_is_retried_until_the_webhook_answers(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str
) -> None:
    """A webhook that is down loses no alert: the job table remembers what was delivered."""
    import dagster as dg

    from etl_pipelines.definitions import defs

    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    clean_env.setenv("ETL_DATABASE_URL", pg_url)
    store = JobStore(pg_url)
    job_id = f"alert-{os.getpid()}-{tmp_path.name}"[:36]
    none = RetrySchedule.explicit(())
    events.bootstrap(store, NewJob(job_id, "failed_job", "x", "default", {}, none), job_id)
    events.started(store, job_id, job_id)
    events.attempt_failed(
        store, store.require(job_id), job_id, error="FailedJobError: x", traceback=None, schedule=none
    )
    sensor = defs.resolve_sensor_def("failure_alerts")
    port = free_port()
    clean_env.setenv("ETL_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{port}/alerts")

    def tick() -> None:
        with dg.instance_for_test() as instance:
            context = dg.build_sensor_context(
                instance=instance, resources={"job_store": defs.resources["job_store"]}
            )
            sensor(context)

    tick()  # nobody listens on the port
    assert store.require(job_id).alerted_at is None
    hook = Webhook(port=port)
    try:
        tick()
        tick()
    finally:
        hook.close()
    assert [b["job_id"] for b in hook.bodies] == [job_id]
    assert store.require(job_id).alerted_at is not None
