"""Helpers shared by the benchmark scripts (imported as `common`: bench/ is the scripts' path)."""

import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation between ranks."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def clean_env() -> dict[str, str]:
    """The current environment without DAGSTER_HOME or any ETL_ variable."""
    return {
        key: value
        for key, value in os.environ.items()
        if key != "DAGSTER_HOME" and not key.startswith("ETL_")
    }


def git_commit() -> str:
    """HEAD's short hash, with "+dirty" when the package or dagster.yaml has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "etl_pipelines", "dagster.yaml"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"{head}+dirty" if dirty else head
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment_info(packages: Sequence[str]) -> dict[str, Any]:
    """Date, machine, load and versions: what a result is only meaningful next to."""
    from importlib.metadata import version

    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **{package: version(package) for package in packages},
        "commit": git_commit(),
    }
