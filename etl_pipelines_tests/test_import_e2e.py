"""Imports on the real stack (daemon, Celery worker, PostgreSQL target): a load that fails halfway
leaves the target as it was and its retry loads everything once; a large load reports its progress
in the job record while it runs and survives its worker being killed; and a CSV larger than the
memory its process may use imports completely."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl_pipelines.jobs.data_import import DataImport
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import production_deployment
from etl_pipelines_tests.harness import poll, pool_pid, wait_for_jobs

COLUMNS = {"id": "int", "name": "str", "amount": "float", "created_at": "datetime"}
TABLE = "auth.users"
EVENTS = "auth.events"


def write_users(path: Path, first: int, rows: int, pad: int = 0) -> None:
    """`rows` clean rows with ids from `first` (names `pad` characters longer), 100,000 at a time."""
    padding = "x" * pad
    with path.open("w") as out:
        out.write("id,name,amount,created_at\n")
        for start in range(first, first + rows, 100_000):
            out.write(
                "".join(
                    f'{i},"user {i}, the {i % 7}th{padding}",{i % 1000}.25,'
                    f"2024-01-{i % 28 + 1:02d}T10:00:00Z\n"
                    for i in range(start, min(start + 100_000, first + rows))
                )
            )


def snapshot(engine: sa.Engine) -> tuple[int, int, str]:
    """The target's rows as a whole: count, distinct ids, and a digest of every row's text."""
    with engine.connect() as connection:
        count, ids, digest = connection.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT id),"
                f" md5(coalesce(string_agg(u::text, '|' ORDER BY id), '')) FROM {TABLE} u"
            )
        ).one()
    return count, ids, digest


@pytest.mark.e2e
def test_imports_fail_cleanly_report_progress_and_survive_a_killed_worker(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    write_users(imports / "part.csv", 1, 200_000)
    big_rows = 1_500_000
    write_users(imports / "big.csv", 1_000_001, big_rows)
    engine = sa.create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS auth CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA auth"))
        connection.execute(
            sa.text(
                f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text, amount float8,"
                " created_at timestamptz)"
            )
        )
        connection.execute(
            sa.text(f"INSERT INTO {TABLE} VALUES (0, 'here before', 1.5, now()), (5, 'old', 2, now())")
        )
        connection.execute(
            sa.text(f"CREATE TABLE {EVENTS} (id bigint, name text, amount float8, created_at timestamptz)")
        )
        # A constraint the 150,000th row of part.csv breaks: the merge fails halfway through.
        connection.execute(sa.text(f"ALTER TABLE {TABLE} ADD CONSTRAINT not_that_row CHECK (id <> 150000)"))
    before = snapshot(engine)
    with production_deployment(
        clean_env,
        tmp_path / "dagster_home",
        pg_url,
        redis_url,
        redis_prefix,
        ETL_HEARTBEAT_SECONDS="1",
        ETL_RECOVERY_GRACE_SECONDS="2",
        ETL_RETRY_DELAYS="1",
        ETL_IMPORT_DIR=str(imports),
    ) as deployment:
        store = JobStore(deployment.database_url)
        with deployment.daemon(workers=1, concurrency=1):
            # 1. A constraint violated halfway: the job fails for good (bad data is not retried),
            # the target is exactly as it was; the operator fixes the table and retries it.
            part = DataImport.dispatch(
                source_csv="part.csv", target_table=TABLE, columns=COLUMNS, key_columns=["id"]
            )
            wait_for_jobs(store, [part.id], 120)
            failed = part.record()
            assert failed.status == JobStatus.FAILED and failed.retry_count == 0, failed.to_dict()
            assert "CheckViolation" in (failed.error or "") and "not_that_row" in (failed.error or "")
            assert snapshot(engine) == before
            with engine.begin() as connection:
                connection.execute(sa.text(f"ALTER TABLE {TABLE} DROP CONSTRAINT not_that_row"))
            assert deployment.cli("retry-job", "--job-id", part.id).returncode == 0
            poll(lambda: part.record().status == JobStatus.COMPLETED, 120, 0.5, "the retried import")
            loaded = snapshot(engine)
            # 200,000 rows, once; id 5 was upserted (replaced by the file's row), id 0 kept.
            assert loaded[:2] == (200_001, 200_001), loaded
            assert part.record().result["rows_written"] == 200_000

            # 2. A large import: its progress is in the job record (and `etl-jobs status`) while it
            # runs; its worker's pool process is killed mid-load; recovery retries it; it loads once.
            # An append (no keys) into a table without a key: a load run twice would show.
            big = DataImport.dispatch(source_csv="big.csv", target_table=EVENTS, columns=COLUMNS)
            progress = poll(
                lambda: (
                    (r := big.record()).status == JobStatus.STARTED
                    and (r.progress or {}).get("rows_read")
                    and r.progress
                ),
                120,
                0.1,
                "rows read in the job record while the import runs",
            )
            assert progress["phase"] == "reading" and 0 < progress["rows_read"] < big_rows, progress
            shown = deployment.cli("status", big.id).stdout
            assert "progress" in shown and " read" in shown, shown
            first = big.record().run_id
            assert first is not None
            os.kill(poll(lambda: pool_pid(first), 30, 0.1, "the pool process running it"), signal.SIGKILL)
            poll(
                lambda: deployment.cli("recover").returncode == 0 and big.record().run_id != first,
                90,
                1.0,
                "recovery to retry the killed attempt",
            )
            wait_for_jobs(store, [big.id], 240)
        record = big.record()
        assert record.status == JobStatus.COMPLETED and record.retry_count == 1, record.to_dict()
        assert record.result["rows_written"] == big_rows and record.result["rows_read"] == big_rows
        assert record.progress is not None and record.progress["rows_read"] == big_rows
        assert snapshot(engine) == loaded  # the other table untouched
        with engine.connect() as connection:
            count, ids, lo, hi = connection.execute(
                sa.text(f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {EVENTS}")
            ).one()
        assert (count, ids, lo, hi) == (big_rows, big_rows, 1_000_001, 1_000_000 + big_rows)
    engine.dispose()


# -- memory: a CSV larger than the memory limit of the process importing it ------------------------

LIMIT_MB = 300  # the bar for the process executing the import, Dagster and all
CHILD = """
import json, sys
from etl_pipelines_tests.jobs.helpers import execute
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}
print(json.dumps({"ready": rss()}), flush=True)
columns = json.loads(sys.argv[1])
record, _ = execute(
    "data_import", source_csv="huge.csv", target_table="auth.huge", columns=columns, key_columns=["id"]
)
done = {"status": record.status.value, "error": record.error, "result": record.result, "end": rss()}
print(json.dumps(done), flush=True)
"""


@pytest.mark.e2e
def test_a_csv_larger_than_the_memory_limit_imports_completely(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str
) -> None:
    """The import runs in a process of its own whose resident memory a watchdog samples every 20 ms,
    killing it past LIMIT_MB; the file is larger than that limit."""
    imports = tmp_path / "imports"
    imports.mkdir()
    rows = 1_600_000  # of ~210 bytes: fewer rows to type, as many bytes to hold
    write_users(imports / "huge.csv", 1, rows, pad=150)
    size_mb = (imports / "huge.csv").stat().st_size / 2**20
    assert size_mb > LIMIT_MB, size_mb
    env = {
        **os.environ,
        "ETL_DATABASE_URL": pg_url,
        "ETL_IMPORT_DIR": str(imports),
        "DAGSTER_HOME": str(tmp_path),
    }
    with sa.create_engine(pg_url).begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS auth.huge"))
        connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS auth"))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(COLUMNS)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    peak = [0]
    over = threading.Event()

    def watch() -> None:
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            try:
                lines = status.read_text().splitlines()
                rss = next(int(line.split()[1]) for line in lines if line.startswith("VmRSS"))
            except (OSError, StopIteration):
                return
            peak[0] = max(peak[0], rss // 1024)
            if rss // 1024 > LIMIT_MB:
                over.set()
                os.killpg(child.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    try:
        out, _ = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        watchdog.join(5)
    assert not over.is_set(), f"the import's process went past {LIMIT_MB} MB (peak {peak[0]} MB)"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ready, done = lines[0]["ready"], lines[-1]
    assert done["status"] == "completed", done
    assert done["result"]["rows_written"] == rows
    # The kernel's own high-water mark of the process, not only our samples.
    assert done["end"]["VmHWM"] <= LIMIT_MB, (ready, done["end"], size_mb)
    with sa.create_engine(pg_url).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM auth.huge")).scalar_one() == rows
