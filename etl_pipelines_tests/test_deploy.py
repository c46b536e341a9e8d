"""The deployment's trust boundaries: docker-compose.yml read as configuration (Docker does not run
in the tests), and its init SQL run against the local PostgreSQL in a database of this module's."""

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from etl_pipelines.store import JobStatus
from etl_pipelines_tests.harness import REPO

INIT_SQL = REPO / "deploy" / "postgres-init" / "10-etl-jobs-role.sql"


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_publishes_on_loopback_only() -> None:
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {
        "webserver": ["127.0.0.1:3000:3000"],
        "metrics": ["127.0.0.1:9464:9464"],
        "prometheus": ["127.0.0.1:9090:9090"],
        "grafana": ["127.0.0.1:3001:3000"],
    }


MONITORING = {"prometheus", "grafana"}


def test_compose_monitoring_is_optional_pinned_and_loads_the_repositorys_files() -> None:
    """Prometheus and Grafana start only with `--profile monitoring`, from pinned images, with the
    repository's configuration mounted read-only where each reads it."""
    config = compose()
    services = config["services"]
    assert {name for name, s in services.items() if "profiles" in s} == MONITORING
    for name in MONITORING:
        service = services[name]
        assert service["profiles"] == ["monitoring"], name
        image, _, tag = service["image"].rpartition(":")
        assert image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a release, not {tag!r}"
        binds = [v.split(":") for v in service["volumes"] if v.startswith("./")]
        assert binds, name
        for source, _target, *mode in binds:
            assert mode == ["ro"], f"{name}: {source} must be mounted read-only"
            assert (REPO / source).exists(), f"{name}: {source} is not in the repository"
        named = [v.split(":")[0] for v in service["volumes"] if not v.startswith("./")]
        assert all(volume in config["volumes"] for volume in named), name
    prometheus, grafana = services["prometheus"], services["grafana"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in prometheus["volumes"])}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert mounts["/etc/prometheus/rules"] == "./deploy/prometheus/rules"
    # What Prometheus scrapes is the metrics service on the port it serves.
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == "etl_jobs"
    metrics = services["metrics"]["command"]
    assert job["static_configs"][0]["targets"] == [f"metrics:{metrics[metrics.index('--port') + 1]}"]
    assert scrape["rule_files"] == ["rules/*.rules.yml"]  # relative: /etc/prometheus/rules/
    assert list((REPO / "deploy/prometheus/rules").glob("*.rules.yml"))
    # Grafana reads the data source and the dashboard provider, which reads the dashboards.
    mounts = {target: source for source, target, *_ in (v.split(":") for v in grafana["volumes"])}
    for kind in ("datasources", "dashboards"):
        assert mounts[f"/etc/grafana/provisioning/{kind}"] == f"./deploy/grafana/provisioning/{kind}"
    provisioning = REPO / "deploy/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards/etl_pipelines.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert list((REPO / "deploy/grafana/dashboards").glob("*.json"))
    assert "GF_SECURITY_ADMIN_PASSWORD" in grafana["environment"]


def test_compose_jobs_use_their_own_role() -> None:
    services = compose()["services"]
    postgres = services["postgres"]
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    assert (REPO / "deploy" / "postgres-init").is_dir()
    worker = services["worker"]["environment"]
    # Dagster's storage and the job table keep the owner; the jobs' target is the jobs role's.
    assert sa.make_url(worker["ETL_DATABASE_URL"]).username == postgres["environment"]["POSTGRES_USER"]
    assert sa.make_url(worker["ETL_TARGET_DATABASE_URL"]).username == "etl_jobs"
    assert worker["ETL_ALLOWED_SCHEMAS"] == postgres["environment"]["ETL_ALLOWED_SCHEMAS"]
    assert postgres["environment"]["ETL_JOBS_PASSWORD"] in worker["ETL_TARGET_DATABASE_URL"]


@pytest.fixture
def jobs_role(pg_url: str) -> Iterator[str]:
    """The init SQL run on this module's database (Dagster's tables and the job table in public,
    as in production) for a role of this test's own, dropped afterwards."""
    psql = shutil.which("psql")
    assert psql, "psql (PostgreSQL's client) is needed to run the init SQL as the postgres image does"
    role = f"etl_jobs_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(pg_url)
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA auth"))
        connection.execute(sa.text("CREATE TABLE auth.before (id INTEGER)"))  # made by the owner
    env = {**os.environ, "ETL_JOBS_PASSWORD": "secret", "ETL_JOBS_ROLE": role, "ETL_ALLOWED_SCHEMAS": "auth"}
    command = [psql, "-X", "-q", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)]
    command += ["-U", url.username or "postgres", "-d", url.database or "", "-f", str(INIT_SQL)]
    try:
        for _ in range(2):  # re-runnable, as on an existing database
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=60)
        bad = {**env, "ETL_ALLOWED_SCHEMAS": "auth,pg_catalog"}
        refused = subprocess.run(command, env=bad, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "ETL_ALLOWED_SCHEMAS lists pg_catalog" in refused.stderr
        yield url.set(username=role, password="secret").render_as_string(hide_password=False)
    finally:
        from etl_pipelines_tests.conftest import _dispose_all

        _dispose_all()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
            connection.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def denied(engine: sa.Engine, statement: str) -> bool:
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement))
    except sa.exc.ProgrammingError as exc:
        return "permission denied" in str(exc.orig)
    return False


def test_jobs_role_owns_the_allowed_schemas_and_nothing_else(jobs_role: str) -> None:
    engine = sa.create_engine(jobs_role, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE auth.t (id INTEGER PRIMARY KEY)"))
        connection.execute(sa.text("INSERT INTO auth.t VALUES (1), (2)"))
        assert connection.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 2  # search_path
        connection.execute(sa.text("TRUNCATE auth.before"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE auth.before"))
        connection.execute(sa.text("REINDEX TABLE CONCURRENTLY auth.t"))
    assert denied(engine, "SELECT rolpassword FROM pg_catalog.pg_authid")
    assert denied(engine, "SELECT count(*) FROM public.event_logs")  # Dagster's
    assert denied(engine, "SELECT count(*) FROM public.etl_jobs")  # the job table
    assert denied(engine, "CREATE TABLE public.x (id INTEGER)")
    assert denied(engine, "CREATE SCHEMA other")
    assert denied(engine, "CREATE TEMPORARY TABLE tmp (id INTEGER)")
    with engine.connect() as connection:
        role = connection.execute(
            sa.text("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        ).one()
    assert tuple(role) == (False, False, False)
    engine.dispose()


def test_jobs_run_as_the_jobs_role(
    jobs_role: str, pg_url: str, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The job types work under the role: the job table as the owner, the target as etl_jobs."""
    from etl_pipelines_tests.jobs.helpers import execute

    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    clean_env.setenv("ETL_DATABASE_URL", pg_url)
    clean_env.setenv("ETL_TARGET_DATABASE_URL", jobs_role)
    clean_env.setenv("ETL_RETRY_DELAYS", "")
    record, _ = execute("populate_records", rows=5)
    assert record.status == JobStatus.COMPLETED, record.error
    record, _ = execute("vacuum_analyze")
    assert record.status == JobStatus.COMPLETED, record.error
    assert sorted(record.result["tables"]) == ["auth.before", "auth.users"]
    # Imports and syncs stage their rows beside the target, in its schema: no TEMPORARY privilege.
    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "staff.csv").write_text("id,name\n1,Ada\n2,Bob\n2,Bob again\nx,Cy\n")
    clean_env.setenv("ETL_IMPORT_DIR", str(imports))
    params = dict(target_table="auth.staff", columns={"id": "int", "name": "str"}, key_columns=["id"])
    record, _ = execute("data_import", source_csv="staff.csv", max_rejected_share=0.5, **params)
    assert record.status == JobStatus.COMPLETED, record.error
    assert (record.result["rows_written"], record.result["rows_rejected"]) == (2, 1)
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA src"))
        connection.execute(
            sa.text("CREATE TABLE src.items (id INTEGER PRIMARY KEY, name TEXT, updated_at TIMESTAMP)")
        )
        connection.execute(
            sa.text("INSERT INTO src.items VALUES (1, 'a', '2026-01-01'), (2, 'b', '2026-01-02')")
        )
    clean_env.setenv("ETL_DATABASE_URL_OWNER", pg_url)
    record, _ = execute(
        "sync_table", source_database="owner", source_table="src.items", target_table="auth.items"
    )
    assert record.status == JobStatus.COMPLETED, record.error
    assert record.result["rows_inserted"] == 2
    with admin.begin() as connection:
        # Nothing of the stages is left in the schema.
        tables = connection.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'auth'")
        ).scalars()
        assert sorted(tables) == ["before", "items", "staff", "staff_rejects", "users"]
        connection.execute(sa.text("DROP SCHEMA src CASCADE"))
    admin.dispose()
