"""The Dagster instance of this process: DAGSTER_HOME's, or the embedded default's."""

import os
from importlib import resources
from pathlib import Path

import dagster as dg

from etl_pipelines.framework._dagster_internal import pool_storage_connections
from etl_pipelines.process_cache import ProcessCache
from etl_pipelines.settings import dagster_home

instances: ProcessCache[dg.DagsterInstance] = ProcessCache(close=lambda instance: instance.dispose())


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, exported; the embedded default's directory and dagster.yaml are created."""
    home = dagster_home()
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(home)
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            template = resources.files("etl_pipelines").joinpath("embedded_dagster.yaml")
            config.write_text(template.read_text())
    return home


def get_instance() -> dg.DagsterInstance:
    """The process's instance for DAGSTER_HOME, opened once."""
    home = ensure_dagster_home()

    def make() -> dg.DagsterInstance:
        instance = dg.DagsterInstance.from_config(str(home))
        pool_storage_connections(instance)
        return instance

    return instances.get(home, make)
