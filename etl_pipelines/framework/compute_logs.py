"""Step stdout/stderr captured to files for the Dagster UI, without Dagster's per-step `tail`.

Dagster's LocalComputeLogManager mirrors each step's stdout and stderr back to the console with a
`tail -F` process per stream (and a Python watcher for each): four processes per step, ~64 ms of
CPU, more than a trivial job's whole run otherwise costs (bench/README.md, "Worker CPU profile").
This manager redirects the streams into the same files and spawns nothing: the UI shows the same
logs; only the live echo of a step's prints in the worker's own console is gone (its structured
log, events and results are unaffected).
"""

import sys
from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg

from etl_pipelines.framework._dagster_internal import (
    CapturedLogContext,
    ConfigurableClassData,
    LocalComputeLogManager,
    ensure_file,
    redirect_to_file,
    touch_file,
)
from etl_pipelines.settings import dagster_home


class FileComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager minus the console mirror; `base_dir` defaults to $DAGSTER_HOME/storage."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "base_dir": dg.Field(dg.StringSource, is_required=False),
            "polling_timeout": dg.Field(dg.Float, is_required=False),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "FileComputeLogManager":
        config = dict(config_value)
        # Where Dagster's own default puts them (the instance is still being built: no .get() here).
        config.setdefault("base_dir", str(dagster_home() / "storage"))
        return cls(inst_data=inst_data, **config)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, "out")
        errpath = self.get_captured_local_path(log_key, "err")
        ensure_file(outpath)
        ensure_file(errpath)
        with redirect_to_file(sys.stdout, outpath), redirect_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        # Left on the file system so that readers know the capture is complete.
        touch_file(self.complete_artifact_path(log_key))
