"""Trust boundaries, end to end: jobs run in process against PostgreSQL (and SQLite where the
refusal does not depend on PostgreSQL) refuse tables outside the allowed schemas and loads that
would destroy data, leaving every table as it was."""

from pathlib import Path

import pytest
import sqlalchemy as sa

from etl_pipelines.store import JobStatus
from etl_pipelines_tests.jobs.helpers import count, execute

# Executes whole Dagster runs: the full suite, not `make test-fast`.
pytestmark = pytest.mark.slow

postgres_only = pytest.mark.parametrize("target", ["postgres"], indirect=True)


def refused(record, error: str) -> None:
    assert record.status == JobStatus.FAILED and record.retry_count == 0, record.error
    assert error in record.error


def last_vacuum(engine: sa.Engine, schema: str, table: str) -> tuple:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT last_vacuum, last_analyze, vacuum_count FROM pg_stat_user_tables "
                "WHERE schemaname = :s AND relname = :t"
            ),
            {"s": schema, "t": table},
        ).one()


@postgres_only
def test_catalogs_and_dagster_tables_are_refused_even_if_listed(
    target: sa.Engine, clean_env: pytest.MonkeyPatch
) -> None:
    # An operator who lists the catalogs' and Dagster's schemas still gets none of them.
    clean_env.setenv("ETL_ALLOWED_SCHEMAS", "auth,public,pg_catalog")
    record, _ = execute(
        "data_aggregation", table="pg_catalog.pg_authid", group_by="rolname", value_column="oid"
    )
    refused(record, "IdentifierError: table pg_catalog.pg_authid is not in an allowed schema")
    assert "rolpassword" not in str(record.result)

    before = last_vacuum(target, "public", "event_logs")
    for table in ("event_logs", "public.event_logs"):
        record, _ = execute("vacuum_analyze", table=table, full=True)
        refused(record, f"IdentifierError: table {table} is not in an allowed schema")
    # No table: every table of the allowed schemas, and not one of Dagster's or the job table's.
    execute("populate_records", rows=3)
    record, _ = execute("vacuum_analyze")
    assert record.status == JobStatus.COMPLETED, record.error
    assert "auth.users" in record.result["tables"]
    assert not [t for t in record.result["tables"] if not t.startswith("auth.")]
    assert last_vacuum(target, "public", "event_logs") == before
    assert last_vacuum(target, "auth", "users")[0] is not None


@postgres_only
def test_integrity_check_skips_parents_outside_the_allowed_schemas(target: sa.Engine) -> None:
    with target.begin() as connection:
        connection.execute(sa.text("CREATE TABLE public.secrets (id INTEGER PRIMARY KEY)"))
        connection.execute(
            sa.text("CREATE TABLE auth.child (id INTEGER PRIMARY KEY, s INTEGER REFERENCES public.secrets)")
        )
    record, _ = execute("integrity_check", table="auth.child")
    assert record.status == JobStatus.COMPLETED, record.error
    assert record.result["checks"] == [] and record.result["skipped"][0]["parent"] == "public.secrets"
    record, _ = execute("integrity_check", table="auth.child", references=["s->public.secrets.id"])
    refused(record, "not in an allowed schema")
    with target.begin() as connection:
        connection.execute(sa.text("DROP TABLE auth.child, public.secrets"))


def make_events(engine: sa.Engine, key: str = "id INTEGER PRIMARY KEY") -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE auth.events ({key}, created_at TIMESTAMP)"))
        connection.execute(
            sa.text("INSERT INTO auth.events VALUES (1, '2001-01-01'), (1, '2999-01-01'), (2, '2001-01-01')")
            if "PRIMARY" not in key
            else sa.text("INSERT INTO auth.events VALUES (1, '2001-01-01'), (2, '2999-01-01')")
        )


def rows(engine: sa.Engine, table: str) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2"))]


def test_archive_into_itself_is_refused(target: sa.Engine) -> None:
    make_events(target)
    before = rows(target, "auth.events")
    record, _ = execute(
        "archive_old_rows", table="auth.events", archive_table="auth.events", older_than_days=1
    )
    refused(record, "JobInputError: archive_table auth.events is the table archived from")
    assert rows(target, "auth.events") == before


def test_archive_by_a_key_that_is_not_unique_moves_nothing(target: sa.Engine) -> None:
    make_events(target, key="id INTEGER")
    before = rows(target, "auth.events")
    record, _ = execute("archive_old_rows", table="auth.events", older_than_days=1)
    refused(record, "JobInputError: key_column 'id' is not unique in auth.events")
    assert rows(target, "auth.events") == before
    assert not sa.inspect(target).has_table("events_archive", schema="auth")


STAFF = "id,name\n1,Ada\n2,Bob\n"


@pytest.fixture
def import_dir(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "imports"
    directory.mkdir()
    clean_env.setenv("ETL_IMPORT_DIR", str(directory))
    return directory


def test_data_import_refuses_loads_that_would_destroy_the_table(target: sa.Engine, import_dir: Path) -> None:
    columns = {"id": "int", "name": "str"}
    (import_dir / "staff.csv").write_text(STAFF)
    record, _ = execute("data_import", source_csv="staff.csv", target_table="auth.staff", columns=columns)
    assert record.status == JobStatus.COMPLETED and count(target, "auth.staff") == 2

    # A header-only file with replace=True would empty the table.
    (import_dir / "empty.csv").write_text("id,name\n")
    params = dict(target_table="auth.staff", columns=columns, replace=True)
    record, _ = execute("data_import", source_csv="empty.csv", **params)
    refused(record, "JobInputError: replace=True with no rows to load (0 read, 0 rejected)")
    assert rows(target, "auth.staff") == [(1, "Ada"), (2, "Bob")]

    # Mostly rejected (a file of another layout): more than the default 10%.
    (import_dir / "shifted.csv").write_text("id,name\nAda,1\nBob,2\n3,Cy\n")
    record, _ = execute("data_import", source_csv="shifted.csv", **params)
    refused(record, "JobInputError: 2 of 3 rows rejected (67%), more than max_rejected_share 10%")
    assert rows(target, "auth.staff") == [(1, "Ada"), (2, "Bob")]
    record, _ = execute("data_import", source_csv="shifted.csv", max_rejected_share=0.7, **params)
    assert record.status == JobStatus.COMPLETED, record.error
    assert rows(target, "auth.staff") == [(3, "Cy")]
