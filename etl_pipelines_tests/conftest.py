"""Real-service fixtures: PostgreSQL databases per module, temporary DAGSTER_HOMEs, the env to use them.

A test that needs PostgreSQL fails loudly when it is down; it never skips.
"""

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from etl_pipelines.store import JobStore
from etl_pipelines_tests.harness import REPO, Deployment, instance_yaml

PG_ADMIN_URL = os.environ.get(
    "ETL_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
EMBEDDED_YAML = REPO / "etl_pipelines" / "embedded_dagster.yaml"
PRODUCTION_YAML = REPO / "dagster.yaml"
# Seconds, so retry tests take seconds; the default schedule is asserted in test_definitions.
TEST_RETRY_DELAYS = "1,2,3"

# Environment variables that must not leak from the developer's shell into tests.
_ETL_VARS = [name for name in os.environ if name.startswith("ETL_")] + ["DAGSTER_HOME"]


# Fixtures that reach a real service (PostgreSQL, Redis) or start real processes: a test using one,
# or marked e2e, is marked slow; the rest is the fast tier (`make test-fast`: no services, seconds).
SERVICE_FIXTURES = {
    "pg_template",
    "pg_url",
    "redis_url",
    "redis_prefix",
    "pg_deployment",
    "sqlite_deployment",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        # Fixtures parametrized over backends ask for PostgreSQL at run time (getfixturevalue).
        params = getattr(getattr(item, "callspec", None), "params", {})
        if fixtures & SERVICE_FIXTURES or item.get_closest_marker("e2e") or "postgres" in params.values():
            item.add_marker(pytest.mark.slow)


def _admin_engine() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A template database holding Dagster's schema and the job table, created once per session."""
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_URL} and is not reachable: {exc.orig}")
    name = f"etl_tmpl_{uuid.uuid4().hex[:10]}"
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        import dagster as dg
        from dagster_postgres import DagsterPostgresStorage  # noqa: F401 (schema below)

        # Creating Dagster's tables takes seconds; every module's database copies them instead.
        home = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(
            PRODUCTION_YAML.read_text().replace(
                "postgres_url:\n        env: ETL_DATABASE_URL", f"postgres_url: {url}"
            )
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.get_runs_count()
        shutil.rmtree(home)
        JobStore(url).engine.dispose()
        _dispose_all()
        yield url
    finally:
        _dispose_all()
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _dispose_all() -> None:
    """Close the pooled connections this process holds (job table, targets, Dagster instances)."""
    from etl_pipelines.framework._dagster_internal import submitters
    from etl_pipelines.framework.instance import instances
    from etl_pipelines.resources.database import engines as target_engines
    from etl_pipelines.store.engine import engines

    for cache in (submitters, instances, target_engines, engines):
        cache.clear()


@pytest.fixture(scope="module")
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, copied from the template."""
    engine = _admin_engine()
    name = f"etl_test_{uuid.uuid4().hex[:10]}"
    template = sa.make_url(pg_template).database
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _dispose_all()
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ETL_* or DAGSTER_HOME from the outside world."""
    for name in _ETL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def make_deployment(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    database_url: str,
    dagster_yaml: str,
    **env: str,
) -> Deployment:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_yaml)
    values = {
        "DAGSTER_HOME": str(home),
        "ETL_DATABASE_URL": database_url,
        "ETL_RETRY_DELAYS": TEST_RETRY_DELAYS,
        **env,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    full_env = {k: v for k, v in os.environ.items() if k not in _ETL_VARS or k in values}
    return Deployment(home=home, database_url=database_url, env=full_env)


@pytest.fixture
def sqlite_deployment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Deployment]:
    """The embedded default (SQLite instance, job table and Celery broker, no Redis) in a temporary
    DAGSTER_HOME; `daemon()` and `worker()` start warm `etl-jobs worker`s on its broker."""
    home = tmp_path / "dagster_home"
    deployment = make_deployment(
        clean_env, home, f"sqlite:///{home / 'etl.sqlite'}", instance_yaml(EMBEDDED_YAML)
    )
    try:
        yield deployment
    finally:
        deployment.stop_all()


REDIS_URL = os.environ.get("ETL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for Celery; the tests fail loudly when it is down."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} and is not reachable: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own: its Celery queues and results, deleted afterwards."""
    import redis

    prefix = f"etl-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@contextlib.contextmanager
def production_deployment(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    pg_url: str,
    redis_url: str,
    redis_prefix: str,
    dagster_yaml: str | None = None,
    **env: str,
) -> Iterator[Deployment]:
    """A deployment on the production dagster.yaml (or `dagster_yaml`), its processes stopped after."""
    dagster_yaml = dagster_yaml or instance_yaml(PRODUCTION_YAML)
    config = yaml.safe_load(dagster_yaml)
    launcher = config.get("run_launcher") or {}
    if "ETL_HEARTBEAT_SECONDS" in env and launcher.get("class") == "EtlCeleryRunLauncher":
        # The launcher's health check judges heartbeats by the interval the workers beat at.
        launcher["config"]["heartbeat_seconds"] = float(env["ETL_HEARTBEAT_SECONDS"])
        dagster_yaml = yaml.safe_dump(config)
    deployment = make_deployment(
        monkeypatch,
        home,
        pg_url,
        dagster_yaml,
        ETL_REDIS_URL=redis_url,
        ETL_REDIS_KEY_PREFIX=redis_prefix,
        **env,
    )
    try:
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture
def pg_deployment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> Iterator[Deployment]:
    """The repository's production dagster.yaml: PostgreSQL storage, Celery over Redis workers."""
    with production_deployment(clean_env, tmp_path / "dagster_home", pg_url, redis_url, redis_prefix) as d:
        yield d
