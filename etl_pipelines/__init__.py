"""etl_pipelines: database and ETL jobs queued, prioritised, retried and recorded, on Dagster."""

from typing import Any

__all__ = ["BaseJob", "JobContext", "JobHandle", "JobInputError", "dispatch"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `etl-jobs status` and `list` read the job table and must not pay for
    # importing Dagster (~1 s) just because they live in this package.
    if name in __all__:
        import etl_pipelines.framework as framework

        return getattr(framework, name)
    raise AttributeError(f"module 'etl_pipelines' has no attribute {name!r}")
