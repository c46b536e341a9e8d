"""Dagster schedules (they replace the old APScheduler process). Runs go through the same run queue,
priorities and job records as dispatch().

Cadence and timezone are read when the definitions load (Dagster needs them at definition time):
ETL_SCHEDULE_TIMEZONE (default UTC) and ETL_DEMO_CRON (default every 5 minutes).
"""

import os
from typing import Any

import dagster as dg

from etl_pipelines.framework.op import run_config_for
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.framework.tags import QUEUE_TAG
from etl_pipelines.settings import Settings

NIGHTLY_IMPORT_FILE = "users.csv"
NIGHTLY_IMPORT = {
    "source_csv": NIGHTLY_IMPORT_FILE,
    "target_table": "auth.users_import",
    "columns": {"id": "int", "name": "str", "email": "str", "department": "str", "salary": "float"},
    "key_columns": ["id"],
    "replace": True,
}


def run_config(job_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run config for `job_type` with `params` (checked against the job type's fields)."""
    job_cls = get_job_type(job_type)
    job_cls.from_params(params)
    return run_config_for(job_cls, params)


def build_schedules(jobs: dict[str, dg.JobDefinition]) -> list[dg.ScheduleDefinition]:
    """The schedules, targeting the jobs built from the job types."""
    timezone = os.environ.get("ETL_SCHEDULE_TIMEZONE", "UTC")

    def fixed(name: str, job_type: str, cron: str, params: dict[str, Any], description: str, **kw: Any):
        return dg.ScheduleDefinition(
            name=name,
            job=jobs[job_type],
            cron_schedule=cron,
            execution_timezone=timezone,
            run_config=run_config(job_type, params),
            tags={QUEUE_TAG: "low"},
            description=description,
            **kw,
        )

    @dg.schedule(
        name="nightly_data_import",
        job=jobs["data_import"],
        cron_schedule="0 1 * * 1-5",
        execution_timezone=timezone,
        description=f"Mon-Fri 01:00: import {NIGHTLY_IMPORT_FILE} from ETL_IMPORT_DIR into auth.users_import "
        "(skipped when the file is missing).",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def nightly_data_import(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        path = Settings.from_env().import_dir / NIGHTLY_IMPORT_FILE
        if not path.is_file():
            return dg.SkipReason(f"no {path} to import")
        return dg.RunRequest(run_config=run_config("data_import", NIGHTLY_IMPORT), tags={QUEUE_TAG: "medium"})

    return [
        dg.ScheduleDefinition(
            name="demo_batch",
            job=jobs["demo_batch"],
            cron_schedule=os.environ.get("ETL_DEMO_CRON", "*/5 * * * *"),
            execution_timezone=timezone,
            tags={QUEUE_TAG: "high"},
            description="Queue the demo batch (the seven sample jobs); off by default.",
            default_status=dg.DefaultScheduleStatus.STOPPED,
        ),
        nightly_data_import,
        fixed(
            "nightly_vacuum_analyze",
            "vacuum_analyze",
            "30 2 * * *",
            {},
            "Every night at 02:30: VACUUM (ANALYZE) every table of the allowed schemas.",
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
        fixed(
            "weekly_reindex",
            "reindex",
            "0 3 * * 0",
            {"table": "auth.users"},
            "Sundays at 03:00: REINDEX auth.users.",
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
        fixed(
            "daily_archive_old_rows",
            "archive_old_rows",
            "0 4 * * *",
            {"table": "auth.users", "older_than_days": 365, "timestamp_column": "created_at"},
            "Every day at 04:00: move auth.users rows older than a year to auth.users_archive "
            "(it deletes rows: off until switched on).",
            default_status=dg.DefaultScheduleStatus.STOPPED,
        ),
    ]
