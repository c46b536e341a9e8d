"""A target database per test: SQLite (embedded default) or this module's PostgreSQL database."""

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from etl_pipelines.resources.database import TargetDatabase


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch, tmp_path) -> Iterator[sa.Engine]:
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'etl.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    clean_env.setenv("ETL_DATABASE_URL", url)
    clean_env.setenv("ETL_RETRY_DELAYS", "0,0")
    engine = TargetDatabase().engine()
    if engine.dialect.name == "postgresql":
        # The module's database is shared by its tests: start each from an empty auth schema.
        with engine.begin() as connection:
            connection.execute(sa.text("DROP SCHEMA IF EXISTS auth CASCADE"))
            connection.execute(sa.text("CREATE SCHEMA auth"))
    yield engine
