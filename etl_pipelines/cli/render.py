"""How etl-jobs shows things: tables, a record, the live status line of a followed job, JSON.

Imported by the commands that print one of these (rich costs ~50 ms to import: `--help` skips it).
"""

import io
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from etl_pipelines.lifecycle.progress import describe as progress_line
from etl_pipelines.store import JobRecord, JobStatus
from etl_pipelines.store.models import utcnow

if TYPE_CHECKING:
    from etl_pipelines.framework.base import BaseJob
    from etl_pipelines.stats import Stats

LIST_COLUMNS = ("id", "job_type", "queue", "status", "retry_count", "created_at", "finished_at")
HISTORY_COLUMNS = ("at", "action", "from_status", "to_status", "actor", "run_id", "reason")

STATUS_STYLES = {
    "queued": "cyan",
    "started": "blue",
    "waiting_retry": "yellow",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def show(table: Table) -> None:
    """Print a table: coloured at the terminal's width, or plain, never wrapped or cut, in a pipe."""
    out = Console(highlight=False)
    if out.is_terminal:
        out.print(table)
        return
    buffer = io.StringIO()
    Console(highlight=False, width=100_000, no_color=True, file=buffer).print(table)
    for line in buffer.getvalue().splitlines():
        click.echo(line.rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def records_table(records: Sequence[Any], columns: Sequence[str] = LIST_COLUMNS) -> Table:
    """Records (or audit events) as a table, one row each, status coloured on a terminal."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column.upper(), no_wrap=column != "reason", overflow="fold")
    for record in records:
        cells = []
        for column in columns:
            text = _cell(getattr(record, column))
            style = STATUS_STYLES.get(text) if column in ("status", "to_status") else None
            cells.append(Text(text, style=style or ""))
        table.add_row(*cells)
    return table


def record_view(record: JobRecord) -> Table:
    """One record as `field  value` rows (JSON fields compact, the traceback last)."""
    data = record.to_dict()
    tb = data.pop("traceback")
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        if key == "progress" and value:
            text = f"{progress_line(value)}, at {value.get('at', '?')}"
        else:
            text = json.dumps(value) if isinstance(value, (dict, list)) else _cell(value)
        table.add_row(key, Text(text, style=STATUS_STYLES.get(text, "") if key == "status" else ""))
    if tb:
        table.add_row("traceback", Text(tb.rstrip()))
    return table


def show_records(
    found: Sequence[Any], as_json: bool, columns: Sequence[str] = LIST_COLUMNS, empty: str = "no jobs"
) -> None:
    """Records or events as a JSON array, or a table (`empty` on stderr when there are none)."""
    if as_json:
        emit_json([item.to_dict() for item in found])
    elif found:
        show(records_table(found, columns))
    else:
        click.echo(empty, err=True)


def page_note(offset: int, shown: int, total: int, noun: str = "jobs") -> str | None:
    """Where a page is in the whole and how to get the next (None: nothing more to say)."""
    after = offset + shown
    if shown and after < total:
        return f"{offset + 1}-{after} of {total} {noun}; {total - after} more: --offset {after}"
    if not shown and offset and total:
        return f"nothing past --offset {offset}: {total} {noun} in all"
    return None


def show_page(offset: int, shown: int, total: Callable[[], int], noun: str = "jobs") -> None:
    """The page note on stderr (stdout stays the rows or the JSON array). `total` is asked for
    only when the page may not be the whole: a full page, or an empty one past the start."""
    if not shown and not offset:
        return
    note = page_note(offset, shown, total(), noun)
    if note:
        click.echo(note, err=True)


def show_record(found: JobRecord, as_json: bool) -> None:
    """One record as JSON, or as `field  value` rows."""
    if as_json:
        emit_json(found.to_dict())
    else:
        show(record_view(found))


def describe(record: JobRecord, now: datetime) -> str:
    """One line for where a job is: `retry 2 of 3 in 4m59s (FailedJobError: boom)`."""
    attempt = f" (retry {record.retry_count} of {record.max_retries})" if record.retry_count else ""
    if record.status == JobStatus.WAITING_RETRY and record.next_retry_at is not None:
        left = max(0, int((record.next_retry_at - now).total_seconds() + 0.999))
        due = f"{left // 60}m{left % 60:02d}s" if left >= 60 else f"{left}s"
        return f"retry {record.retry_count + 1} of {record.max_retries} in {due} ({record.error})"
    if record.status == JobStatus.COMPLETED:
        return f"completed{attempt}: {json.dumps(record.result)}"
    if record.status == JobStatus.FAILED:
        return f"failed{attempt}: {record.error}"
    if record.status == JobStatus.STARTED and record.progress:
        return f"started{attempt}: {progress_line(record.progress)}"
    return f"{record.status.value}{attempt}"


class StatusLine:
    """A followed job on stderr: a line per change in a pipe; on a terminal, one live line redrawn at
    each poll (a retry's countdown ticks), kept as history when the job moves on.

    Pass it as `follow(..., on_record=line)` inside `with StatusLine() as line:`.
    """

    def __init__(self) -> None:
        self.err = Console(stderr=True, highlight=False)
        self.live = self.err.is_terminal
        self.shown: tuple[JobStatus, int, str | None] | None = None
        self.open = False  # a live line is on screen without its newline

    def __call__(self, record: JobRecord) -> None:
        # A long job's progress reports (one per heartbeat) are changes too.
        state = (record.status, record.retry_count, (record.progress or {}).get("at"))
        line = f"{datetime.now(UTC):%H:%M:%S} {describe(record, utcnow())}"
        if state != self.shown:
            if self.live:
                self._end_line()
            else:
                click.echo(line, err=True)
            self.shown = state
        if self.live:
            self.err.file.write(f"\r\x1b[2K{line}")
            self.err.file.flush()
            self.open = True

    def _end_line(self) -> None:
        if self.open:
            self.err.file.write("\n")
            self.err.file.flush()
            self.open = False

    def __enter__(self) -> "StatusLine":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end_line()  # an error message or the shell prompt starts on a line of its own


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def stats_table(stats: "Stats") -> Table:
    """`etl-jobs stats`: one row per queue."""
    from etl_pipelines.stats import QUANTILES

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    window = f"{stats.window_seconds / 3600:g}h"
    headers = ["QUEUE", "WAITING", "OLDEST", "RUNNING", "RETRY PENDING", f"DONE {window}", f"FAILED {window}"]
    headers += [f"TO START p{round(q * 100)}" for q in QUANTILES]
    for header in headers:
        table.add_column(header, justify="left" if header == "QUEUE" else "right")
    for q in stats.queues:
        failed = Text(str(q.failed_last_window), style="bold red" if q.failed_last_window else "")
        row = [
            q.queue,
            str(q.waiting),
            _age(q.oldest_waiting_seconds),
            str(q.running),
            str(q.retries_pending),
        ]
        row += [str(q.completed_last_window)]
        table.add_row(*row, failed, *(_age(q.time_to_start[str(x)]) for x in QUANTILES))
    return table


def show_stats(result: "Stats", as_json: bool) -> None:
    if as_json:
        emit_json(result.to_dict())
    else:
        show(stats_table(result))


def job_types_data(types: Mapping[str, "type[BaseJob]"]) -> list[dict[str, Any]]:
    """Each job type's name, queue, whether it destroys data, description and parameters."""
    data = []
    for name, job_cls in types.items():
        params = {
            field: {
                "type": str(getattr(info.annotation, "__name__", info.annotation)),
                "required": info.is_required(),
                "default": None if info.is_required() else info.get_default(call_default_factory=True),
                "description": info.description,
            }
            for field, info in job_cls.model_fields.items()
        }
        data.append(
            {
                "job_type": name,
                "queue": job_cls.queue,
                "destructive": job_cls.destructive,
                "description": job_cls.description(),
                "parameters": params,
            }
        )
    return data


def show_job_types(types: Mapping[str, "type[BaseJob]"], as_json: bool) -> None:
    """`etl-jobs job-types`: JSON, or a line per type (destructive ones say so) and one per parameter."""
    data = job_types_data(types)
    if as_json:
        emit_json(data)
        return
    for item in data:
        destructive = ", destructive: dispatch needs --confirm" if item["destructive"] else ""
        click.echo(f"{item['job_type']}  (queue {item['queue']}{destructive})  {item['description']}")
        for field, info in item["parameters"].items():
            default = "required" if info["required"] else f"default {info['default']!r}"
            click.echo(f"    {field}: {info['type']}, {default}  {info['description'] or ''}")


def show_queued(items: Sequence[Mapping[str, Any]], as_json: bool) -> None:
    """The demo batch as queued: JSON, or `id  job_type  queue` lines."""
    if as_json:
        emit_json(list(items))
    else:
        for item in items:
            click.echo(f"{item['id']}  {item['job_type']:<17} {item['queue']}")
