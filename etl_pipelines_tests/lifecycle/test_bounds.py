"""What the job table keeps of an outcome: results, errors, tracebacks bounded and scrubbed (no services)."""

import json

import pytest
import sqlalchemy as sa

from etl_pipelines.lifecycle.bounds import (
    ERROR_LIMIT_BYTES,
    PREVIEW_BYTES,
    TRACEBACK_LIMIT_BYTES,
    bound_text,
    bounded_result,
    is_truncated,
    json_size,
    scrub_error,
    scrub_traceback,
)
from etl_pipelines.settings import DEFAULT_MAX_RESULT_BYTES, Settings, SettingsError
from etl_pipelines.store.engine import create_engine

# What SQLAlchemy and psycopg2 render for a failed INSERT of an import's row.
PG_ERROR = (
    "IntegrityError: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "
    '"users_email_key"\n'
    "DETAIL:  Key (email)=(bob@example.com) already exists.\n\n"
    "[SQL: INSERT INTO users (email, password) VALUES (%(email)s, %(password)s)]\n"
    "[parameters: {'email': 'bob@example.com', 'password': 's3cr3t]]'}]\n"
    "(Background on this error at: https://sqlalche.me/e/20/gkpj)"
)


def test_a_result_within_the_limit_is_kept_as_it_is() -> None:
    value = {"rows": [1, 2, 3], "name": "é"}
    assert bounded_result(value, json_size(value)) is value
    assert bounded_result(None, 10) is None


def test_an_oversized_result_becomes_a_small_summary() -> None:
    value = {"rows": ["x" * 100] * 1000}
    size = json_size(value)
    summary = bounded_result(value, 10_000)
    assert summary["truncated"] is True and is_truncated(summary)
    assert summary["size_bytes"] == size and summary["limit_bytes"] == 10_000
    assert json.dumps(value, separators=(",", ":")).startswith(summary["preview"])
    assert len(summary["preview"].encode()) == PREVIEW_BYTES
    assert "ETL_MAX_RESULT_BYTES" in summary["note"]
    assert json_size(summary) < 2 * PREVIEW_BYTES
    assert bounded_result(summary, 10) is summary  # bounding twice changes nothing


def test_a_preview_never_splits_a_character() -> None:
    summary = bounded_result(["é" * 5000], 100)
    assert len(summary["preview"].encode()) <= 50
    summary["preview"].encode().decode()


def test_scrub_removes_parameters_and_row_values() -> None:
    scrubbed = scrub_error(PG_ERROR)
    assert "bob@example.com" not in scrubbed and "s3cr3t" not in scrubbed
    assert "[parameters hidden]" in scrubbed
    assert "DETAIL:  Key (email)=(...) already exists." in scrubbed
    assert "[SQL: INSERT INTO users (email, password)" in scrubbed  # the statement stays
    assert scrubbed.endswith("(Background on this error at: https://sqlalche.me/e/20/gkpj)")
    assert scrub_error(scrubbed) == scrubbed


@pytest.mark.parametrize(
    ("detail", "kept"),
    [
        ("DETAIL:  Failing row contains (7, bob, s3cr3t).", "DETAIL:  Failing row contains (...)."),
        (
            'DETAIL:  Key (team_id)=(s3cr3t) is not present in table "teams".',
            'DETAIL:  Key (team_id)=(...) is not present in table "teams".',
        ),
        (
            "DETAIL:  Key (room, during)=(1, s3cr3t) conflicts with existing key (room, during)=(1, x).",
            "DETAIL:  Key (room, during)=(...).",
        ),
    ],
)
def test_scrub_removes_row_values_from_every_detail(detail: str, kept: str) -> None:
    scrubbed = scrub_error(f"IntegrityError: violation\n{detail}\n")
    assert "s3cr3t" not in scrubbed and kept in scrubbed


def test_long_errors_and_tracebacks_are_cut_keeping_both_ends() -> None:
    error = "E: " + "a" * 3000 + "b" * 3000 + " THE END"
    cut = scrub_error(error)
    assert len(cut.encode()) <= ERROR_LIMIT_BYTES
    assert cut.startswith("E: aaa") and cut.endswith("THE END") and "bytes, cut to 4096" in cut
    frames = "".join(f'  File "x.py", line {n}, in f\n' for n in range(10_000)) + "ValueError: boom"
    tb = scrub_traceback("Traceback (most recent call last):\n" + frames)
    assert len(tb.encode()) <= TRACEBACK_LIMIT_BYTES
    assert tb.startswith("Traceback") and tb.endswith("ValueError: boom")
    assert tb.index("cut to") < TRACEBACK_LIMIT_BYTES // 3  # mostly the innermost frames kept
    assert scrub_traceback(tb) == tb
    assert bound_text("é" * 10, 5) == "éé"  # never half a character


def test_the_result_limit_is_a_setting(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().max_result_bytes == DEFAULT_MAX_RESULT_BYTES == 1024 * 1024
    assert Settings.from_env().outcome_retry_seconds == 120
    clean_env.setenv("ETL_MAX_RESULT_BYTES", "2048")
    clean_env.setenv("ETL_OUTCOME_RETRY_SECONDS", "45")
    settings = Settings.from_env()
    assert settings.max_result_bytes == 2048 and settings.outcome_retry_seconds == 45
    for bad in ("0", "1.5", "lots"):
        clean_env.setenv("ETL_MAX_RESULT_BYTES", bad)
        with pytest.raises(SettingsError, match="ETL_MAX_RESULT_BYTES"):
            Settings.from_env()


def test_engines_hide_sql_parameters(tmp_path) -> None:
    """Every engine etl_pipelines makes (job table, target database) keeps bound values out of errors."""
    engine = create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE users (email TEXT UNIQUE)"))
        connection.execute(sa.text("INSERT INTO users VALUES (:email)"), {"email": "bob@example.com"})
    with pytest.raises(sa.exc.IntegrityError) as raised, engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO users VALUES (:email)"), {"email": "bob@example.com"})
    assert "bob@example.com" not in str(raised.value)
    assert "parameters hidden" in str(raised.value)
    engine.dispose()
    pg = create_engine("postgresql+psycopg2://u@127.0.0.1:1/x")
    assert pg.hide_parameters
