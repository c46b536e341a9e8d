"""What a running attempt reports of its work (rows read and written, rows per second).

handle() calls `ctx.progress.update(...)` as it goes (cheap: a dict assignment); the attempt's
heartbeat writes the latest report into the job record (`progress`) with each beat, and the report
is logged to the Dagster run every LOG_SECONDS, so the UI, `etl-jobs status` and `dispatch --wait`
show a long job's progress while it runs.
"""

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

LOG_SECONDS = 10.0


class Progress:
    """The latest counts of a running attempt; `rows_per_second` from `rows_read` (or `rows_moved`)
    since the first report."""

    def __init__(self, log: Callable[[str], None] | None = None, log_seconds: float = LOG_SECONDS):
        self._log = log
        self._log_seconds = log_seconds
        self._lock = threading.Lock()
        self._counts: dict[str, Any] = {}
        self._started: float | None = None
        self._logged = 0.0
        self._version = 0
        self._written = 0

    def update(self, **counts: Any) -> None:
        """Set some counts (rows_read=..., rows_written=..., phase=...); logs when due."""
        now = time.monotonic()
        with self._lock:
            if self._started is None:
                self._started = now
            self._counts.update(counts)
            self._version += 1
            due = self._log is not None and now - self._logged >= self._log_seconds
            if due:
                self._logged = now
        if due and self._log is not None:
            self._log(f"progress: {describe(self.snapshot() or {})}")

    def snapshot(self) -> dict[str, Any] | None:
        """The report as stored: the counts, elapsed_seconds, rows_per_second, at; None if none yet."""
        with self._lock:
            if self._started is None:
                return None
            elapsed = time.monotonic() - self._started
            report = dict(self._counts)
        report["elapsed_seconds"] = round(elapsed, 1)
        rows = report.get("rows_read", report.get("rows_moved"))
        if isinstance(rows, int) and elapsed > 0:
            report["rows_per_second"] = round(rows / elapsed)
        report["at"] = datetime.now(UTC).isoformat()
        return report

    def unwritten(self) -> tuple[dict[str, Any], int] | None:
        """The report and its version if it changed since the last one written (`written`), else None."""
        with self._lock:
            if self._version == self._written:
                return None
            version = self._version
        report = self.snapshot()
        return None if report is None else (report, version)

    def written(self, version: int) -> None:
        """The report of `version` is in the job record (a failed write leaves it unwritten)."""
        with self._lock:
            self._written = max(self._written, version)


def describe(report: dict[str, Any]) -> str:
    """One line for people: `phase, 1,200,000 rows read, 3 rejected, ... (250,000 rows/s)`."""
    parts = []
    if report.get("phase"):
        parts.append(str(report["phase"]))
    for key, value in report.items():
        if key.startswith("rows_") and key != "rows_per_second" and isinstance(value, int):
            parts.append(f"{value:,} {key[5:].replace('_', ' ')}")
    line = ", ".join(parts) or "started"
    if report.get("rows_per_second"):
        line += f" ({report['rows_per_second']:,} rows/s)"
    return line
