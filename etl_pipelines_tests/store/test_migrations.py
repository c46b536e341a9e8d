"""The job table's migrations (store/schema.py, store/migrations): a fresh database, an upgrade in
place of a table made by the last release before migrations, the version check every process
makes, two upgrades at once, and Dagster's own Alembic storage in the same PostgreSQL database.

The fast tier (no marker) runs the rules on SQLite; the rest is marked slow by conftest (pg_url,
pg_template) or by hand (subprocesses of an old release, the etl-jobs CLI).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from etl_pipelines.lifecycle import events
from etl_pipelines.lifecycle.retry import RetrySchedule
from etl_pipelines.store import JobStatus, JobStore, SchemaVersionError
from etl_pipelines.store import schema as schema_module
from etl_pipelines.store.engine import create_engine
from etl_pipelines.store.models import Base
from etl_pipelines.store.schema import HEAD, REVISIONS, VERSION_TABLE
from etl_pipelines.store.store import create_schema
from etl_pipelines_tests.conftest import PG_ADMIN_URL
from etl_pipelines_tests.harness import REPO

# The last release before migrations, and the one before it (its etl_job_events has no token).
RELEASE = "3601def"
RELEASE_WITHOUT_TOKEN = "1a55b51"
ETL_JOBS = Path(sys.executable).parent / "etl-jobs"


# -- helpers -------------------------------------------------------------------------------------


def differences(engine: sa.Engine) -> list[Any]:
    """What Alembic's autogenerate finds between the database and models.Base (empty: the same)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": VERSION_TABLE,
                "include_name": schema_module.include_name,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(context, Base.metadata))


def described(engine: sa.Engine) -> dict[str, Any]:
    """The job tables as the inspector sees them: columns, types, nullability, indexes, keys."""
    inspector = sa.inspect(engine)
    tables: dict[str, Any] = {}
    for name in sorted(schema_module.TABLES | {VERSION_TABLE}):
        tables[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"), c.get("autoincrement"))
                for c in inspector.get_columns(name)
            ],
            "pk": inspector.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]), _options(i))
                for i in inspector.get_indexes(name)
            ),
        }
    return tables


def _options(index: Any) -> str:
    """An index's dialect options (a partial index's WHERE) as text."""
    options = index.get("dialect_options", {})
    return repr(sorted((key, str(getattr(value, "text", value))) for key, value in options.items()))


def migrate_step_by_step(engine: sa.Engine) -> None:
    """Every migration in turn from nothing (the route a fresh database does not take)."""
    from alembic import command

    with engine.connect() as connection:
        command.upgrade(schema_module.alembic_config(connection), HEAD)
        connection.commit()


@pytest.fixture
def new_pg_database() -> Iterator[Callable[[], str]]:
    """Makes empty PostgreSQL databases of this test's own (no template: nothing in them), dropped after."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    names: list[str] = []

    def new() -> str:
        names.append(f"etl_mig_{uuid.uuid4().hex[:10]}")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{names[-1]}"'))
        return sa.make_url(PG_ADMIN_URL).set(database=names[-1]).render_as_string(hide_password=False)

    try:
        yield new
    finally:
        from etl_pipelines.store.engine import engines

        engines.clear()
        with admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_database(new_pg_database: Callable[[], str]) -> str:
    """One empty PostgreSQL database of this test's own."""
    return new_pg_database()


def sqlite_url(tmp_path: Path, name: str = "jobs") -> str:
    return f"sqlite:///{tmp_path / f'{name}.sqlite'}"


# -- fast tier: the rules, on SQLite -------------------------------------------------------------


def test_revisions_listed_in_schema_are_the_migrations_in_order() -> None:
    scripts = schema_module.script_directory()
    chain = [script.revision for script in scripts.walk_revisions("base", "heads")]
    assert list(reversed(chain)) == list(REVISIONS)
    assert scripts.get_heads() == [HEAD]


def test_a_fresh_database_gets_the_models_schema_and_is_stamped_head() -> None:
    store = JobStore.in_memory()
    assert schema_module.state(store.engine) == schema_module.SchemaState(revision=HEAD, has_tables=True)
    assert differences(store.engine) == []


def test_create_all_and_every_migration_give_the_same_schema_on_sqlite(tmp_path: Path) -> None:
    by_models = create_engine(sqlite_url(tmp_path, "models"))
    create_schema(by_models)
    by_migrations = create_engine(sqlite_url(tmp_path, "migrations"))
    migrate_step_by_step(by_migrations)
    assert described(by_models) == described(by_migrations)
    assert differences(by_models) == [] and differences(by_migrations) == []
    assert schema_module.state(by_migrations).revision == HEAD


def test_version_table_is_not_alembic_default() -> None:
    # Dagster's storage keeps `alembic_version` in the same PostgreSQL database.
    assert VERSION_TABLE != "alembic_version"


def _at(engine: sa.Engine, revision: str | None) -> None:
    with engine.begin() as connection:
        if revision is None:
            connection.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
        else:
            connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision})


@pytest.mark.parametrize(
    ("revision", "says"),
    [
        ("0001", ["revision 0001, older", "etl-jobs db upgrade"]),
        (None, ["not versioned", "etl-jobs db upgrade"]),
        ("0099", ["newer than this etl_pipelines", "upgrade etl_pipelines"]),
    ],
)
def test_a_process_refuses_a_table_older_or_newer_than_its_code(
    tmp_path: Path, revision: str | None, says: list[str]
) -> None:
    url = sqlite_url(tmp_path)
    engine = create_engine(url)
    create_schema(engine)
    _at(engine, revision)
    other = create_engine(url)  # another process's engine: nothing cached for it
    with pytest.raises(SchemaVersionError) as refused:
        JobStore(url, engine=other)
    for words in says:
        assert words in str(refused.value)
    if revision == "0099":
        with pytest.raises(SchemaVersionError, match="newer"):
            create_schema(other)  # an upgrade refuses it too, and changes nothing
        assert schema_module.state(other).revision == "0099"


def test_the_check_is_made_once_per_engine(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine = create_engine(url)
    JobStore(url, engine=engine)
    _at(engine, "0099")  # changed under a running process: it keeps the answer it had
    JobStore(url, engine=engine)
    with pytest.raises(SchemaVersionError):
        JobStore(url, engine=create_engine(url))


def test_upgrade_from_0001_adds_progress_and_keeps_rows(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine = create_engine(url)
    with engine.connect() as connection:
        from alembic import command

        command.upgrade(schema_module.alembic_config(connection), "0001")
        connection.commit()
        connection.execute(
            sa.text(
                "INSERT INTO etl_jobs (id, job_type, job_class, queue, status, payload, retry_count,"
                " max_retries, run_ids, created_at, updated_at) VALUES ('j1', 'fibonacci', 'x', 'low',"
                " 'failed', '{}', 3, 3, '[\"j1\"]', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
        connection.commit()
    assert schema_module.state(engine).revision == "0001"
    before, after = schema_module.upgrade(engine)
    assert (before.revision, after.revision) == ("0001", HEAD)
    store = JobStore(url, engine=create_engine(url))
    record = store.require("j1")
    assert record.status == JobStatus.FAILED and record.progress is None
    assert events.claim_manual_retry(store, "j1", actor="t", reason="r").status == JobStatus.QUEUED
    assert differences(engine) == []


def test_an_unversioned_table_without_token_is_baselined(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine = create_engine(url)
    create_schema(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE etl_job_events DROP COLUMN token"))
        connection.execute(sa.text("ALTER TABLE etl_jobs DROP COLUMN progress"))
        connection.execute(sa.text("DROP INDEX ix_etl_jobs_started"))
        connection.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
    before, after = schema_module.upgrade(engine)
    assert before.revision is None and before.has_tables and after.revision == HEAD
    assert differences(engine) == []


def test_an_unversioned_table_that_has_progress_already_is_upgraded(tmp_path: Path) -> None:
    # Made by the tree between 3601def and migrations, whose create_schema added `progress`.
    engine = create_engine(sqlite_url(tmp_path))
    create_schema(engine)
    _at(engine, None)
    before, after = schema_module.upgrade(engine)
    assert before.revision is None and after.revision == HEAD
    assert differences(engine) == []


def test_a_table_too_old_to_baseline_is_refused_with_the_reason(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("CREATE TABLE etl_jobs (id VARCHAR(36) PRIMARY KEY, job_type TEXT NOT NULL)")
        )
    with pytest.raises(
        SchemaVersionError, match=r"lacks job_class, queue, status.*cannot be upgraded in place"
    ):
        schema_module.upgrade(engine)
    assert schema_module.state(engine).revision is None  # nothing stamped, nothing half-done
    assert "etl_job_events" not in sa.inspect(engine).get_table_names()


def test_db_commands_upgrade_and_report_and_list_refuses_until_upgraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from etl_pipelines.cli import cli
    from etl_pipelines.store.engine import engines

    url = sqlite_url(tmp_path)
    monkeypatch.setenv("ETL_DATABASE_URL", url)
    runner = CliRunner()
    current = runner.invoke(cli, ["db", "current"])
    assert current.exit_code == 1 and current.stdout.startswith("no job table")
    upgraded = runner.invoke(cli, ["db", "upgrade"])
    assert (
        upgraded.exit_code == 0
        and upgraded.stdout == f"job table upgraded: no job table -> revision {HEAD} (head)\n"
    )
    assert runner.invoke(cli, ["db", "current"]).stdout == f"revision {HEAD} (head)\n"
    engine = create_engine(url)
    _at(engine, "0001")
    with engine.begin() as connection:  # as 0001 made it
        connection.execute(sa.text("ALTER TABLE etl_jobs DROP COLUMN progress"))
    engines.clear()  # as a new process: this one checked its engine already, and keeps the answer
    listed = runner.invoke(cli, ["list"])
    assert listed.exit_code == 1 and "Traceback" not in listed.output
    assert "older than this etl_pipelines" in listed.stderr and "`etl-jobs db upgrade`" in listed.stderr
    assert runner.invoke(cli, ["db", "upgrade"]).stdout == (
        f"job table upgraded: revision 0001 (head is {HEAD}) -> revision {HEAD} (head)\n"
    )
    assert runner.invoke(cli, ["list"]).exit_code == 0


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_create_all_and_every_migration_give_the_same_schema_on_postgresql(
    new_pg_database: Callable[[], str],
) -> None:
    by_migrations = create_engine(new_pg_database())
    migrate_step_by_step(by_migrations)
    assert differences(by_migrations) == []
    by_models = create_engine(new_pg_database())
    JobStore(str(by_models.url), engine=by_models)  # what every process does on an empty database
    assert schema_module.state(by_models).revision == HEAD
    assert differences(by_models) == []
    assert described(by_models) == described(by_migrations)
    columns = {c["name"]: c for c in sa.inspect(by_migrations).get_columns("etl_jobs")}
    assert str(columns["progress"]["type"]) == "JSONB" and columns["progress"]["nullable"]
    by_models.dispose()
    by_migrations.dispose()


@pytest.mark.slow
def test_dagster_storage_and_the_job_table_keep_separate_alembic_versions(
    pg_database: str, tmp_path: Path
) -> None:
    """Dagster's PostgreSQL storage stamps `alembic_version`; ours is `etl_alembic_version`: each
    side's migrations see only their own, in either order, and `dagster instance migrate` runs."""
    import dagster as dg

    create_schema(create_engine(pg_database))  # the job table first, then Dagster's storage
    # dagster-postgres's own storage, as dagster.yaml's PooledPostgresStorage builds on it.
    (tmp_path / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {pg_database}\n")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        instance.get_runs_count()
    migrate = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "instance", "migrate"],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert migrate.returncode == 0, migrate.stderr
    engine = create_engine(pg_database)
    with engine.connect() as connection:
        dagster_version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        ours = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    assert dagster_version and dagster_version not in REVISIONS
    assert ours == HEAD
    # Ours again, after Dagster's: nothing to do, and nothing of Dagster's reported or touched.
    before, after = schema_module.upgrade(engine)
    assert before == after and after.revision == HEAD
    assert differences(engine) == []
    with engine.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == dagster_version
        )
    assert "runs" in sa.inspect(engine).get_table_names()
    engine.dispose()


def _cli(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real etl-jobs in its own process group, stopped if it outlives `timeout`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_") and k != "DAGSTER_HOME"}
    process = subprocess.Popen(
        [str(ETL_JOBS), *args],
        env={**env, "ETL_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_two_upgrades_at_once_on_a_fresh_database_both_succeed(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_database") if backend == "postgres" else sqlite_url(tmp_path)
    processes = [
        subprocess.Popen(
            [str(ETL_JOBS), "db", "upgrade"],
            env={**os.environ, "ETL_DATABASE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert [p.returncode for p in processes] == [0, 0], outputs
    said = sorted(out for out, _ in outputs)
    assert said[0].startswith("job table already at revision 0002"), said  # waited, found it done
    assert said[1].startswith("job table upgraded: no job table -> revision 0002"), said
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1
    assert differences(engine) == []
    engine.dispose()


# -- an upgrade in place of a table made by the release before migrations ------------------------

# Run by the old release's own code (PYTHONPATH = an export of that commit): its JobStore and
# lifecycle events make one job in every status, each with its audit trail.
MAKE_JOBS = """
import json, sys, uuid
from etl_pipelines.lifecycle import events
from etl_pipelines.lifecycle.retry import RetrySchedule
from etl_pipelines.lifecycle.retry import RetrySchedule
from etl_pipelines.store import JobStore

import etl_pipelines
assert etl_pipelines.__file__.startswith(sys.argv[2]), etl_pipelines.__file__  # the old release's code
store = JobStore(sys.argv[1])
schedule = RetrySchedule.explicit((60.0,))
made = {}
for status in ("queued", "started", "waiting_retry", "completed", "failed", "cancelled"):
    job_id = run = str(uuid.uuid4())
    job = events.NewJob(id=job_id, job_type="fibonacci", job_class="etl_pipelines.jobs.fibonacci.Fibonacci",
                        queue="low", payload={"n": len(made) + 3}, schedule=schedule)
    record = events.bootstrap(store, job, run, must_be_new=True)
    if status != "queued":
        record = events.started(store, job_id, run)
    if status == "completed":
        record = events.completed(store, job_id, run, {"value": 42})
    if status in ("waiting_retry", "failed"):
        record = events.attempt_failed(store, record, run, error="boom", traceback="Traceback ...",
                                       schedule=schedule, retryable=status == "waiting_retry")
    if status == "cancelled":
        record = events.cancelled(store, job_id, run, reason="no longer needed")
    assert record.status.value == status, (status, record.status)
    made[status] = job_id
print(json.dumps(made))
"""


def export_release(commit: str, into: Path) -> Path:
    """The release's etl_pipelines package, as `git archive` has it (a clone with the history)."""
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"])
    assert found.returncode == 0, f"commit {commit} is not in this clone's history (shallow clone?): fetch it"
    archive = into / f"{commit}.tar"
    subprocess.run(
        ["git", "-C", str(REPO), "archive", "-o", str(archive), commit, "etl_pipelines"],
        check=True,
        timeout=60,
    )
    root = into / commit
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def make_old_jobs(commit: str, url: str, tmp_path: Path) -> dict[str, str]:
    root = export_release(commit, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_") and k != "DAGSTER_HOME"}
    out = subprocess.run(
        [sys.executable, "-c", MAKE_JOBS, url, str(root)],
        env={**env, "PYTHONPATH": str(root)},
        cwd=root,  # so that the old package is the one imported, not the working tree's
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return {
            table: [tuple(row) for row in connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in ("etl_jobs", "etl_job_events", "etl_table_claims")
        }


@pytest.mark.slow
@pytest.mark.parametrize("commit", [RELEASE, RELEASE_WITHOUT_TOKEN])
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_table_made_by_the_last_release_upgrades_in_place(
    backend: str, commit: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_database") if backend == "postgres" else sqlite_url(tmp_path)
    made = make_old_jobs(commit, url, tmp_path)
    engine = create_engine(url)
    with_token = "token" in {c["name"] for c in sa.inspect(engine).get_columns("etl_job_events")}
    assert with_token == (commit == RELEASE)
    before = snapshot(engine)
    assert schema_module.state(engine) == schema_module.SchemaState(revision=None, has_tables=True)

    # This release's processes refuse the old table, naming the command that fixes it.
    listed = _cli("list", url=url)
    assert listed.returncode == 1, listed
    assert "not versioned" in listed.stderr and "etl-jobs db upgrade" in listed.stderr, listed.stderr
    assert "Traceback" not in listed.stderr
    assert _cli("db", "current", url=url).returncode == 1
    if backend == "postgres":
        # dagster-daemon and dagster-webserver stop when they load the instance (its run
        # coordinator checks), not at their first submission or sensor tick.
        home = tmp_path / "home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
        env |= {
            "DAGSTER_HOME": str(home),
            "ETL_DATABASE_URL": url,
            "ETL_REDIS_URL": "redis://127.0.0.1:6379/15",
        }
        loaded = subprocess.run(
            [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get()"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loaded.returncode != 0, loaded.stdout
        assert "SchemaVersionError" in loaded.stderr and "etl-jobs db upgrade" in loaded.stderr, loaded.stderr

    upgraded = _cli("db", "upgrade", url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"-> revision {HEAD}" in upgraded.stdout
    current = _cli("db", "current", url=url)
    assert current.returncode == 0 and current.stdout.strip() == f"revision {HEAD} (head)"
    assert differences(engine) == []

    # Nothing lost: every row as it was, with the new columns empty.
    after = snapshot(engine)
    assert {t: len(rows) for t, rows in after.items()} == {t: len(rows) for t, rows in before.items()}
    assert len(after["etl_jobs"]) == 6 and len(after["etl_job_events"]) >= 10
    assert [row[: len(before["etl_jobs"][0])] for row in after["etl_jobs"]] == before["etl_jobs"]
    assert all(row[-1] is None for row in after["etl_jobs"])  # progress
    events_before = before["etl_job_events"]
    if with_token:
        assert after["etl_job_events"] == events_before
    else:
        assert [row[:-1] for row in after["etl_job_events"]] == events_before
    listed = _cli("list", "--json", url=url)
    assert listed.returncode == 0, listed.stderr
    assert {job["id"]: job["status"] for job in json.loads(listed.stdout)} == {v: k for k, v in made.items()}

    # Every job can still be retried or resolved through this release's lifecycle.
    store = JobStore(url, engine=create_engine(url))
    failed = made["failed"]
    assert store.require(failed).error == "boom"
    assert (
        events.mark_completed(store, failed, actor="t", reason="done by hand").status == JobStatus.COMPLETED
    )
    assert [e.action for e in store.history(failed)][-1] == "marked_completed"
    waiting = store.require(made["waiting_retry"])
    assert events.claim_due_retry(store, waiting).status == JobStatus.QUEUED
    for status in ("queued", "started"):
        record = store.require(made[status])
        assert (
            events.cancelled(store, record.id, record.run_id or "", reason="t").status == JobStatus.CANCELLED
        )
    assert events.started(store, made["waiting_retry"], waiting.run_id or "").status == JobStatus.STARTED
    record = store.require(made["waiting_retry"])
    schedule = RetrySchedule.explicit(())
    failed_again = events.attempt_failed(
        store, record, record.run_id, error="again", traceback=None, schedule=schedule
    )
    assert failed_again.status == JobStatus.FAILED
    retried = events.claim_manual_retry(store, failed_again.id, actor="t", reason="once more")
    assert retried.status == JobStatus.QUEUED and retried.retry_count == 0
    assert len(store.history(made["completed"])) == 3  # queued, started, completed: kept
    store.engine.dispose()
    engine.dispose()
