"""What the Docker image and a plain `pip install .` get: package data, and a compose file that agrees."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from etl_pipelines_tests.harness import REPO

# Executes whole Dagster runs (or builds the package): the full suite, not `make test-fast`.
pytestmark = pytest.mark.slow


def test_wheel_carries_the_package_data(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ beside the sources it builds.
    source = tmp_path / "src"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("etl_pipelines-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "etl_pipelines/embedded_dagster.yaml",
        "etl_pipelines/jobs/sql/populate_records.sql",
        "etl_pipelines/definitions.py",
    } <= names
    assert not any(name.startswith("etl_pipelines_tests/") for name in names)
    migrations = {
        "etl_pipelines/store/migrations/env.py",
        "etl_pipelines/store/migrations/script.py.mako",
        "etl_pipelines/store/migrations/versions/r0001_release_3601def.py",
        "etl_pipelines/store/migrations/versions/r0002_job_progress.py",
    }
    assert migrations <= names, migrations - names

    # Installed from the wheel alone (not this checkout), `etl-jobs db upgrade` finds its migrations.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    database = tmp_path / "jobs.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_") and k != "DAGSTER_HOME"}
    upgrade = subprocess.run(
        [sys.executable, "-m", "etl_pipelines.cli", "db", "upgrade"],
        env={**env, "PYTHONPATH": str(site), "ETL_DATABASE_URL": f"sqlite:///{database}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "-> revision" in upgrade.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import etl_pipelines.store.schema as s; print(s.MIGRATIONS)"],
        env={**env, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip() == str(site / "etl_pipelines" / "store" / "migrations"), where


def test_compose_agrees_with_the_image_and_the_instance() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    dockerfile = (REPO / "Dockerfile").read_text()
    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    home = re.search(r"^ENV DAGSTER_HOME=(\S+)$", dockerfile, re.M).group(1)
    assert f"COPY dagster.yaml {home}/dagster.yaml" in dockerfile
    storage = instance["storage"]["custom"]
    assert storage["class"] == "PooledPostgresStorage"
    assert storage["config"]["postgres_url"] == {"env": "ETL_DATABASE_URL"}
    services = compose["services"]
    for name in ("webserver", "daemon", "worker"):
        service = services[name]
        assert service["environment"]["DAGSTER_HOME"] == home
        assert service["environment"]["ETL_DATABASE_URL"].startswith("postgresql+psycopg2://")
        assert "workspace.yaml" in service["command"] or service["command"][:2] == ["etl-jobs", "worker"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["ETL_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        # Nothing shared but the databases: step logs live in PostgreSQL (a worker may be anywhere).
        assert not any(str(volume).endswith(f"{home}/storage") for volume in service["volumes"])
        assert "healthcheck" in service
    url = services["daemon"]["environment"]["ETL_DATABASE_URL"]
    postgres = services["postgres"]["environment"]
    assert url == (
        f"postgresql+psycopg2://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )


def test_compose_worker_healthcheck_pings_the_worker_by_name() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    name = worker["command"][worker["command"].index("--name") + 1]
    assert name == "worker@%h" and "'worker@' + socket.gethostname()" in worker["healthcheck"]["test"][-1]
    assert "scale" not in worker and "container_name" not in worker  # scales with --scale worker=N


def test_the_instance_dagster_yaml_builds_has_pooled_storage(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str
) -> None:
    """What dagster.yaml builds, not what it says: every process gets pooled storage connections
    (dagster-postgres's from_config_value would build a plain, unpooled DagsterPostgresStorage)."""
    import dagster as dg

    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    clean_env.setenv("ETL_DATABASE_URL", pg_url)
    clean_env.setenv("ETL_REDIS_URL", "redis://127.0.0.1:6379/0")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert getattr(instance.run_storage, "etl_pooled", False)  # set by PooledPostgresStorage
        for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
            assert type(storage._engine.pool).__name__ != "NullPool", storage
        assert instance.get_runs_count() >= 0
