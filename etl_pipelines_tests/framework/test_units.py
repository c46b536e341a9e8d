"""Unit tests for the framework's logic: names, parameters, queues, identifiers, settings."""

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from etl_pipelines.errors import UnknownJobTypeError, UnknownQueueError
from etl_pipelines.framework.base import JobInputError, snake_case
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.identifiers import IdentifierError, TableName, check_identifier
from etl_pipelines.jobs.data_aggregation import DataAggregation
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.jobs.truncate_table import TruncateTable
from etl_pipelines.lifecycle.queues import check_queue, priority
from etl_pipelines.settings import DEFAULT_QUEUES, Settings, SettingsError, parse_delays


@pytest.mark.parametrize(
    ("cls_name", "expected"),
    [
        ("Fibonacci", "fibonacci"),
        ("FailedJob", "failed_job"),
        ("TruncateTable", "truncate_table"),
        ("ETLImport", "etl_import"),
        ("Vacuum2Analyze", "vacuum2_analyze"),
    ],
)
def test_snake_case(cls_name: str, expected: str) -> None:
    assert snake_case(cls_name) == expected


def test_queue_priorities_follow_configured_order() -> None:
    assert [priority(q, DEFAULT_QUEUES) for q in DEFAULT_QUEUES] == [3, 2, 1, 0]
    assert priority("b", ("a", "b")) == 0
    with pytest.raises(UnknownQueueError, match="unknown queue 'urgent'; configured queues"):
        check_queue("urgent", DEFAULT_QUEUES)


def test_from_params_names_what_is_wrong() -> None:
    assert Fibonacci.from_params({"n": "10"}).n == 10
    with pytest.raises(JobInputError, match="unknown parameter"):
        Fibonacci.from_params({"n": 1, "x": 2})
    with pytest.raises(JobInputError, match="missing required parameter"):
        Fibonacci.from_params({})
    with pytest.raises(JobInputError, match="valid integer"):
        Fibonacci.from_params({"n": "ten"})
    with pytest.raises(JobInputError, match="greater than or equal to 0"):
        Fibonacci.from_params({"n": -1})
    with pytest.raises(UnknownJobTypeError, match="known job types: archive_old_rows, data_aggregation"):
        get_job_type("nope")


@pytest.mark.parametrize(
    "bad",
    [
        "users; DROP TABLE x",
        'auth."users"',
        "auth.users.extra",
        "1users",
        "",
        "auth.",
        "a" * 64,
        "us ers",
        "users--",
        "auth.users\x00",
    ],
)
def test_bad_identifiers_are_refused(bad: str) -> None:
    with pytest.raises(IdentifierError):
        TableName.parse(bad)


def test_identifiers_are_quoted_by_the_dialect() -> None:
    table = TableName.parse("auth.Users")
    assert table.quoted(postgresql.dialect()) == 'auth."Users"'
    assert table.quoted(sqlite.dialect()) == 'auth."Users"'
    assert TableName.parse("auth.select").quoted(postgresql.dialect()) == 'auth."select"'
    assert TableName.parse("users").quoted(postgresql.dialect()) == "users"
    assert check_identifier("_x1") == "_x1"


def test_destructive_jobs_need_an_allowed_schema(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env()
    TruncateTable(table="auth.users").validate_input(settings)
    for table in ("users", "public.users", "pg_catalog.pg_class"):
        with pytest.raises(IdentifierError, match="not in an allowed schema"):
            TruncateTable(table=table).validate_input(settings)
    clean_env.setenv("ETL_ALLOWED_SCHEMAS", "staging, auth")
    TruncateTable(table="staging.t").validate_input(Settings.from_env())
    with pytest.raises(IdentifierError, match="invalid column name"):
        DataAggregation(group_by="a b").validate_input(settings)


def test_settings_defaults_and_errors(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    settings = Settings.from_env()
    assert settings.database_url == f"sqlite:///{tmp_path / 'etl.sqlite'}"
    assert settings.target_database_url == settings.database_url
    assert settings.queues == ("high", "medium", "low", "default")
    assert settings.retry_delays is None  # unset: each job type's RetryPolicy applies
    assert settings.allowed_schemas == ("auth",)
    clean_env.setenv("ETL_QUEUES", "critical,bulk")
    clean_env.setenv("ETL_RETRY_DELAYS", "")
    assert Settings.from_env().queues == ("critical", "bulk")
    assert Settings.from_env().retry_delays == ()
    assert parse_delays("1, 2.5,3") == (1.0, 2.5, 3.0)
    with pytest.raises(SettingsError, match="comma-separated seconds"):
        parse_delays("1,two")
    with pytest.raises(SettingsError, match="negative"):
        parse_delays("-1")
    clean_env.setenv("ETL_QUEUES", "a,a")
    with pytest.raises(SettingsError, match="twice"):
        Settings.from_env()


def test_sqlalchemy_is_2_x() -> None:
    assert sa.__version__.startswith("2.")


def test_the_embedded_home_gets_the_current_instance_yaml(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    """An older version's embedded dagster.yaml (ours) is replaced; a file someone wrote is kept."""
    from etl_pipelines.framework.instance import EMBEDDED_HEADER, ensure_dagster_home

    clean_env.chdir(tmp_path)
    # The shape of an older version's file: a coordinator config this version no longer accepts.
    old = (
        f"{EMBEDDED_HEADER} (copied into ./.dagster_home when DAGSTER_HOME is unset):\n"
        "run_coordinator:\n  module: etl_pipelines.framework.coordinator\n  class: EtlRunCoordinator\n"
        "  config:\n    max_concurrent_runs: 4\n"
    )
    (tmp_path / ".dagster_home").mkdir()
    config = tmp_path / ".dagster_home" / "dagster.yaml"
    config.write_text(old)
    assert ensure_dagster_home() == tmp_path / ".dagster_home"
    assert "max_concurrent_runs" not in config.read_text() and config.read_text().startswith(EMBEDDED_HEADER)

    clean_env.delenv("DAGSTER_HOME")
    config.write_text("telemetry:\n  enabled: false\n")
    ensure_dagster_home()
    assert config.read_text() == "telemetry:\n  enabled: false\n"


def test_a_log_line_that_cannot_be_written_never_fails_the_job(caplog: pytest.LogCaptureFixture) -> None:
    """Dagster's logger raises when its event storage is unreachable; a job logs after its commit,
    and an attempt failing there would run its committed work again."""
    from etl_pipelines.framework.attempt import JobLog

    class Unreachable:
        def info(self, message: str) -> None:
            raise sa.exc.OperationalError("INSERT INTO event_logs", {}, Exception("connection refused"))

    seen: list[str] = []

    class Working:
        def info(self, message: str) -> None:
            seen.append(message)

    JobLog(Unreachable()).info("loaded 150000 rows")  # no error
    assert "could not write a log line to the Dagster run: loaded 150000 rows" in caplog.text
    JobLog(Working()).info("fine")
    assert seen == ["fine"]
