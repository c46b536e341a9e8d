"""Schedules: their times, the run requests they make, and a real daemon tick of the demo batch."""

import itertools
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator  # Dagster's own cron arithmetic

from etl_pipelines.definitions import defs
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.harness import BIN, REPO, Deployment, poll, run_finished


def fire_times(name: str, start: datetime, count: int) -> list[datetime]:
    schedule = defs.resolve_schedule_def(name)
    times = cron_string_iterator(start.timestamp(), schedule.cron_schedule, schedule.execution_timezone)
    return list(itertools.islice(times, count))


def evaluate(name: str, when: datetime) -> list[dg.RunRequest] | dg.SkipReason:
    schedule = defs.resolve_schedule_def(name)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        data = schedule.evaluate_tick(context)
    return data.run_requests if data.run_requests else dg.SkipReason(data.skip_message)


def config(request: dg.RunRequest) -> dict:
    ((op, body),) = request.run_config["ops"].items()
    return {"op": op, **body["config"]}


def test_fire_times() -> None:
    friday = datetime(2026, 11, 27, 0, 30, tzinfo=UTC)  # a Friday
    assert [t.strftime("%a %H:%M") for t in fire_times("nightly_data_import", friday, 3)] == [
        "Fri 01:00",
        "Mon 01:00",
        "Tue 01:00",
    ]
    assert [t.strftime("%a %H:%M") for t in fire_times("weekly_reindex", friday, 2)] == ["Sun 03:00"] * 2
    assert [t.strftime("%H:%M") for t in fire_times("nightly_vacuum_analyze", friday, 2)] == ["02:30"] * 2
    assert [t.strftime("%H:%M") for t in fire_times("daily_archive_old_rows", friday, 2)] == ["04:00"] * 2
    assert [t.strftime("%H:%M") for t in fire_times("demo_batch", friday, 3)] == [
        "00:30",
        "00:35",
        "00:40",
    ]  # 00:30 itself is a fire time


def test_run_requests(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ETL_IMPORT_DIR", str(tmp_path))
    night = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    skipped = evaluate("nightly_data_import", night)
    assert isinstance(skipped, dg.SkipReason) and "users.csv" in skipped.skip_message
    (tmp_path / "users.csv").write_text("id,name,email,department,salary\n")
    (request,) = evaluate("nightly_data_import", night)
    assert config(request)["op"] == "data_import_op"
    assert config(request)["target_table"] == "auth.users_import" and request.tags["etl/queue"] == "medium"

    (vacuum,) = evaluate("nightly_vacuum_analyze", night)
    assert config(vacuum) == {"op": "vacuum_analyze_op"}
    (reindex,) = evaluate("weekly_reindex", night)
    assert config(reindex) == {"op": "reindex_op", "table": "auth.users"}
    (archive,) = evaluate("daily_archive_old_rows", night)
    assert config(archive) == {
        "op": "archive_old_rows_op",
        "table": "auth.users",
        "older_than_days": 365,
        "timestamp_column": "created_at",
    }
    (demo,) = evaluate("demo_batch", night)
    assert demo.tags["etl/queue"] == "high"


@pytest.mark.e2e
def test_daemon_tick_launches_the_demo_batch(pg_deployment: Deployment) -> None:
    """The demo schedule, started from the CLI, ticks in a real daemon; all eight jobs end as expected."""
    pg_deployment.env["ETL_DEMO_CRON"] = "* * * * *"  # every minute, so the test waits < 60 s
    started = subprocess.run(
        [str(BIN / "dagster"), "schedule", "start", "demo_batch", "-w", "workspace.yaml"],
        env=pg_deployment.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    store = JobStore(pg_deployment.database_url)
    with pg_deployment.daemon() as daemon:
        batch = poll(
            lambda: store.list(job_type="demo_batch"), 150, 1, f"a demo_batch tick\n{daemon.output()[-2000:]}"
        )[0]
        poll(lambda: store.require(batch.id).status.is_final, 60, 0.5, "the demo_batch job")
        queued = store.require(batch.id).result
        assert [q["job_type"] for q in queued] == [
            "populate_records",
            "slow_query",
            "data_aggregation",
            "truncate_table",
            "drop_table",
            "fibonacci",
            "failed_job",
        ]
        ids = [q["id"] for q in queued]
        poll(
            lambda: all(store.require(i).status.is_final and run_finished(i) for i in ids),
            180,
            1,
            "the seven demo jobs to end",
        )
        subprocess.run(
            [str(BIN / "dagster"), "schedule", "stop", "demo_batch", "-w", "workspace.yaml"],
            env=pg_deployment.env,
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=True,
        )
    ends = {store.require(i).job_type: store.require(i) for i in ids}
    assert ends.pop("failed_job").status == JobStatus.FAILED
    assert {r.status for r in ends.values()} == {JobStatus.COMPLETED}, {k: r.error for k, r in ends.items()}
    assert {r.queue for r in ends.values()} == {"high", "medium", "low"}
    # The batch job queued them while it ran: each record was created within its run.
    batch = store.require(batch.id)
    assert all(batch.started_at <= store.require(i).created_at <= batch.finished_at for i in ids)
