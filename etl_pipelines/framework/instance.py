"""The Dagster instance of this process: DAGSTER_HOME's, or the embedded default's."""

import os
from importlib import resources
from pathlib import Path

import dagster as dg

from etl_pipelines.framework._dagster_internal import pool_storage_connections
from etl_pipelines.process_cache import ProcessCache
from etl_pipelines.settings import dagster_home

# The first line of the embedded default's dagster.yaml: a file that starts with it is ours.
EMBEDDED_HEADER = "# The embedded default's Dagster instance"

instances: ProcessCache[dg.DagsterInstance] = ProcessCache(close=lambda instance: instance.dispose())


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, exported; the embedded default's directory and dagster.yaml are created."""
    home = dagster_home()
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(home)
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        template = resources.files("etl_pipelines").joinpath("embedded_dagster.yaml").read_text()
        # Ours to keep current (an older version's would not load); a file someone wrote is theirs.
        current = config.read_text() if config.exists() else None
        if current is None or (current.startswith(EMBEDDED_HEADER) and current != template):
            config.write_text(template)
    return home


def get_instance() -> dg.DagsterInstance:
    """The process's instance for DAGSTER_HOME, opened once."""
    home = ensure_dagster_home()

    def make() -> dg.DagsterInstance:
        instance = dg.DagsterInstance.from_config(str(home))
        pool_storage_connections(instance)
        return instance

    return instances.get(home, make)
