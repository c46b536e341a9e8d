"""The one rule for the tables a job touches (identifiers.allowed_table), for every job type: fast
tier, no services (validate_input is pure Python)."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from etl_pipelines.errors import JobInputError
from etl_pipelines.framework.base import BaseJob
from etl_pipelines.framework.registry import get_job_type, job_types
from etl_pipelines.identifiers import (
    DAGSTER_TABLES,
    RESERVED_TABLES,
    IdentifierError,
    TableName,
    allowed_table,
    check_source_table,
)
from etl_pipelines.settings import Settings

# Refused whatever ETL_ALLOWED_SCHEMAS says: system catalogs, Dagster's storage, the job table.
NEVER = [
    "pg_catalog.pg_authid",
    "pg_catalog.pg_class",
    "pg_toast.pg_toast_1262",
    "information_schema.x",
    "PG_CATALOG.pg_authid",
    "public.event_logs",
    "public.runs",
    "public.etl_jobs",
    "public.etl_table_claims",
    "main.etl_jobs",  # SQLite's unqualified schema
    "auth.sqlite_master",  # SQLite's catalog, in every attached file
]
# Refused under the default ETL_ALLOWED_SCHEMAS (auth): unqualified, or in another schema.
OUTSIDE = ["users", "event_logs", "public.users", "staging.t", "AUTH.users"]
# Settings that list the catalogs' and Dagster's schemas, as a careless operator might.
PERMISSIVE = ("auth", "public", "main", "pg_catalog", "pg_toast", "information_schema")


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    return Settings.from_env()


def test_the_rule(settings: Settings) -> None:
    assert settings.allowed_schemas == ("auth",)
    assert allowed_table("auth.users", ("auth",)) == TableName("auth", "users")
    for table in NEVER:
        with pytest.raises(IdentifierError, match="not in an allowed schema: it is"):
            allowed_table(table, PERMISSIVE)
    for table in OUTSIDE:
        with pytest.raises(IdentifierError, match="not in an allowed schema"):
            allowed_table(table, ("auth",))
    # A user table named like Dagster's, in an allowed schema of its own, is the user's.
    assert allowed_table("auth.runs", ("auth",)) == TableName("auth", "runs")
    assert allowed_table("public.users", PERMISSIVE) == TableName("public", "users")
    # check_schema is the same rule.
    with pytest.raises(IdentifierError, match="system catalog"):
        TableName.parse("pg_catalog.pg_authid").check_schema(PERMISSIVE)


def test_source_tables_in_other_databases_are_never_catalogs() -> None:
    for table in (
        "pg_catalog.pg_authid",
        "information_schema.tables",
        "pg_authid",
        "pg_shadow",
        "sqlite_master",
    ):
        with pytest.raises(IdentifierError, match="system catalog"):
            check_source_table(table)
    assert check_source_table("items") == TableName(None, "items")
    assert check_source_table("src.items") == TableName("src", "items")


def test_dagster_tables_are_all_listed() -> None:
    """The rule keeps Dagster's table names without importing Dagster: check them against its metadata."""
    from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
    from dagster._core.storage.runs.schema import RunStorageSqlMetadata
    from dagster._core.storage.schedules.schema import ScheduleStorageSqlMetadata

    dagster = set()
    for metadata in (RunStorageSqlMetadata, SqlEventLogStorageMetadata, ScheduleStorageSqlMetadata):
        dagster |= set(metadata.tables)
    assert dagster <= DAGSTER_TABLES
    assert {"etl_jobs", "etl_job_events", "etl_table_claims"} <= RESERVED_TABLES


# Every table parameter of every job type, as a job with `table` in that parameter.
CASES: dict[str, Callable[[str], dict[str, Any]]] = {
    "data_aggregation.table": lambda t: {"table": t},
    "integrity_check.table": lambda t: {"table": t},
    "integrity_check.references": lambda t: {"table": "auth.c", "references": [f"p_id->{t}.id"]},
    "vacuum_analyze.table": lambda t: {"table": t},
    "reindex.table": lambda t: {"table": t},
    "slow_query.table": lambda t: {"table": t},
    "truncate_table.table": lambda t: {"table": t},
    "drop_table.table": lambda t: {"table": t},
    "archive_old_rows.table": lambda t: {"table": t},
    "archive_old_rows.archive_table": lambda t: {"table": "auth.events", "archive_table": t},
    "data_import.target_table": lambda t: {"source_csv": "a.csv", "target_table": t, "columns": {"a": "str"}},
    "data_import.reject_table": lambda t: {
        "source_csv": "a.csv",
        "target_table": "auth.t",
        "reject_table": t,
        "columns": {"a": "str"},
    },
    "sync_table.target_table": lambda t: {"source_database": "w", "source_table": "s.t", "target_table": t},
}
# Tables read from another named database: any schema there, never a catalog.
SOURCE_CASES: dict[str, Callable[[str], dict[str, Any]]] = {
    "data_import.source_table": lambda t: {
        "source_database": "w",
        "source_table": t,
        "target_table": "auth.t",
        "columns": {"a": "str"},
    },
    "sync_table.source_table": lambda t: {
        "source_database": "w",
        "source_table": t,
        "target_table": "auth.t",
    },
}


def job(case: str, table: str, cases: dict[str, Callable[[str], dict[str, Any]]] = CASES) -> BaseJob:
    return get_job_type(case.split(".")[0]).from_params(cases[case](table))


def test_every_table_parameter_is_covered() -> None:
    """A new job type, or a new table parameter, gets a row above."""
    named = {
        f"{name}.{field}"
        for name, cls in job_types().items()
        for field in cls.model_fields
        if "table" in field or field == "references"
    }
    assert named == set(CASES) | set(SOURCE_CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_job_type_refuses_tables_outside_the_rule(case: str, settings: Settings) -> None:
    job(case, "auth.fine").validate_input(settings)
    permissive = dataclasses.replace(settings, allowed_schemas=PERMISSIVE)
    for table in NEVER:
        with pytest.raises(IdentifierError, match="not in an allowed schema: it is"):
            job(case, table).validate_input(permissive)
    for table in OUTSIDE:
        with pytest.raises(IdentifierError, match="not in an allowed schema"):
            job(case, table).validate_input(settings)


@pytest.mark.parametrize("case", sorted(SOURCE_CASES))
def test_source_tables_refuse_catalogs(case: str, settings: Settings) -> None:
    job(case, "src.items", SOURCE_CASES).validate_input(settings)
    job(case, "items", SOURCE_CASES).validate_input(settings)
    for table in ("pg_catalog.pg_authid", "information_schema.columns", "pg_authid"):
        with pytest.raises(IdentifierError, match="system catalog"):
            job(case, table, SOURCE_CASES).validate_input(settings)


def test_fixed_targets_follow_the_rule_too(settings: Settings) -> None:
    populate = get_job_type("populate_records").from_params({})
    populate.validate_input(settings)
    with pytest.raises(IdentifierError, match="not in an allowed schema"):
        populate.validate_input(dataclasses.replace(settings, allowed_schemas=("staging",)))
    # No table: vacuum_analyze works on the allowed schemas' tables, chosen when it runs.
    get_job_type("vacuum_analyze").from_params({}).validate_input(settings)


def test_archive_into_itself_is_refused(settings: Settings) -> None:
    archive = get_job_type("archive_old_rows")
    archive.from_params({"table": "auth.events"}).validate_input(settings)  # into auth.events_archive
    with pytest.raises(JobInputError, match="is the table archived from"):
        archive.from_params({"table": "auth.events", "archive_table": "auth.events"}).validate_input(settings)
    # SQLite folds case: one table there, two on PostgreSQL (a capitalised name is quoted).
    folded = {"table": "auth.events", "archive_table": "auth.EVENTS"}
    archive.from_params(folded).validate_input(
        dataclasses.replace(settings, target_database_url="postgresql://h/db")
    )
    with pytest.raises(JobInputError, match="is the table archived from"):
        archive.from_params(folded).validate_input(settings)  # the embedded default: SQLite


def test_data_import_rejected_share_is_a_bounded_parameter() -> None:
    data_import = get_job_type("data_import")
    params = {"source_csv": "a.csv", "target_table": "auth.t", "columns": {"a": "str"}}
    assert data_import.from_params(params).max_rejected_share == 0.1  # type: ignore[attr-defined]
    for bad in (-0.1, 1.5):
        with pytest.raises(JobInputError, match="max_rejected_share"):
            data_import.from_params({**params, "max_rejected_share": bad})


def test_data_import_refuses_its_own_names_and_a_reject_table_it_cannot_name(settings: Settings) -> None:
    data_import = get_job_type("data_import")
    base = {"source_csv": "a.csv", "target_table": "auth.t"}
    for reserved in ("etl_line", "ETL_LINE", "etl_dup_first"):
        with pytest.raises(JobInputError, match="the import's own"):
            data_import.from_params({**base, "columns": {reserved: "int"}}).validate_input(settings)
    long = "t" * 60
    with pytest.raises(JobInputError, match="give reject_table"):
        data_import.from_params(
            {**base, "target_table": f"auth.{long}", "columns": {"a": "int"}}
        ).validate_input(settings)
    data_import.from_params(
        {**base, "target_table": f"auth.{long}", "reject_table": "auth.r", "columns": {"a": "int"}}
    ).validate_input(settings)
    with pytest.raises(JobInputError, match="is the target table"):
        data_import.from_params({**base, "reject_table": "auth.t", "columns": {"a": "int"}}).validate_input(
            settings
        )
    with pytest.raises(JobInputError, match="unknown encoding"):
        data_import.from_params({**base, "encoding": "klingon", "columns": {"a": "int"}}).validate_input(
            settings
        )
