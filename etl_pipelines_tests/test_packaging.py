"""What the Docker image and a plain `pip install .` get: package data, and a compose file that agrees."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from etl_pipelines_tests.harness import REPO


def test_wheel_carries_the_package_data(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
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


def test_compose_agrees_with_the_image_and_the_instance() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    dockerfile = (REPO / "Dockerfile").read_text()
    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    home = re.search(r"^ENV DAGSTER_HOME=(\S+)$", dockerfile, re.M).group(1)
    assert f"COPY dagster.yaml {home}/dagster.yaml" in dockerfile
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "ETL_DATABASE_URL"}
    services = compose["services"]
    for name in ("webserver", "daemon"):
        service = services[name]
        assert service["environment"]["DAGSTER_HOME"] == home
        assert service["environment"]["ETL_DATABASE_URL"].startswith("postgresql+psycopg2://")
        assert "workspace.yaml" in service["command"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert f"dagster-storage:{home}/storage" in service["volumes"]
        assert "healthcheck" in service
    url = services["daemon"]["environment"]["ETL_DATABASE_URL"]
    postgres = services["postgres"]["environment"]
    assert url == (
        f"postgresql+psycopg2://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
