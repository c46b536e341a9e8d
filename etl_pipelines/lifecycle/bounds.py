"""How much of a job's outcome the job table keeps, and what never goes in: pure functions, no Dagster.

Whatever writes a record (the op, sensors, recovery, the CLI) goes through JobStore, which applies
these to every stored `result`, `error`, `traceback` and audit `reason`; the op's run metadata and
the failure alert use the same functions, so the job table, Dagster and the webhook agree.

Limits (UTF-8 bytes):
- a result: ETL_MAX_RESULT_BYTES of JSON (default 1 MiB); a larger one is replaced by a summary;
- an error message or an audit reason: 4 KiB (the first three quarters and the last quarter kept:
  the exception's type and message, and SQLAlchemy's closing "Background on this error" link);
- a traceback: 64 KiB (the first quarter and the last three quarters kept: where it started, and
  the innermost frames and the exception, which say what broke).

Removed from errors, tracebacks and reasons: SQLAlchemy's `[parameters: ...]` (the bound values of
the failed statement: row data, possibly secrets) and the row values PostgreSQL echoes in a DETAIL
line (`Key (email)=(bob@example.com) already exists`, `Failing row contains (...)`); the column
names stay, they say what was violated.
"""

import json
import re
from typing import Any

from etl_pipelines.settings import DEFAULT_MAX_RESULT_BYTES

ERROR_LIMIT_BYTES = 4 * 1024
TRACEBACK_LIMIT_BYTES = 64 * 1024
# The start of an oversized result kept in its summary: enough to recognise it, small enough for a list.
PREVIEW_BYTES = 1024

HIDDEN = "[parameters hidden]"

# SQLAlchemy's rendering of a failed statement's bound values: `[parameters: (1, 'bob')]` on one line
# (the parameters' repr escapes newlines), up to the end of that line.
_PARAMETERS = re.compile(r"\[parameters: [^\n]*")
# PostgreSQL's DETAIL lines that quote row values (unique/foreign key/exclusion violations, check
# and not-null violations): the values between the parentheses go, the column names stay.
_KEY_DETAIL = re.compile(
    r"^(?P<head>\s*DETAIL:\s+Key \((?P<columns>[^\n]*?)\))=\([^\n]*\)(?P<tail>[^()\n]*)$", re.M
)
_ROW_DETAIL = re.compile(r"^(?P<head>\s*DETAIL:\s+Failing row contains )\([^\n]*\)(?P<tail>[^()\n]*)$", re.M)


def json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON (what the job table stores, give or take spacing)."""
    return len(_dumps(value).encode())


def bounded_result(value: Any, limit_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> Any:
    """`value` if its JSON is at most `limit_bytes`, else a small summary object in its place.

    The summary: {"truncated": true, "size_bytes": N, "limit_bytes": L, "preview": the first
    PREVIEW_BYTES (at most half the limit) of the JSON text, "note": why}. A summary is returned as
    it is (bounding twice changes nothing).
    """
    text = _dumps(value)
    size = len(text.encode())
    if size <= limit_bytes or is_truncated(value):
        return value
    preview = _cut_bytes(text, max(0, min(PREVIEW_BYTES, limit_bytes // 2)))
    return {
        "truncated": True,
        "size_bytes": size,
        "limit_bytes": limit_bytes,
        "preview": preview,
        "note": (
            f"the result was {size} bytes of JSON, over the job table's limit of {limit_bytes} "
            "(ETL_MAX_RESULT_BYTES): only its start is kept. Write large outputs to a table or a file "
            "and return where they are."
        ),
    }


def is_truncated(value: Any) -> bool:
    """True for the summary bounded_result puts in place of an oversized result."""
    return isinstance(value, dict) and value.get("truncated") is True and "size_bytes" in value


def scrub_error(text: str, limit_bytes: int = ERROR_LIMIT_BYTES, *, keep_tail: bool = False) -> str:
    """`text` without bound parameters or row values, cut to `limit_bytes` of UTF-8.

    A cut keeps the start and the end with a marker between; `keep_tail` keeps more of the end (a
    traceback's innermost frames). Scrubbing twice changes nothing.
    """
    text = _PARAMETERS.sub(HIDDEN, text)
    text = _KEY_DETAIL.sub(r"\g<head>=(...)\g<tail>", text)
    text = _ROW_DETAIL.sub(r"\g<head>(...)\g<tail>", text)
    return bound_text(text, limit_bytes, keep_tail=keep_tail)


def scrub_traceback(text: str, limit_bytes: int = TRACEBACK_LIMIT_BYTES) -> str:
    """A traceback scrubbed like an error, cut to `limit_bytes` keeping mostly its end."""
    return scrub_error(text, limit_bytes, keep_tail=True)


def bound_text(text: str, limit_bytes: int, *, keep_tail: bool = False) -> str:
    """`text` if it fits in `limit_bytes` of UTF-8, else its start and end around a marker saying
    how much was cut (the whole fits in `limit_bytes`)."""
    data = text.encode()
    if len(data) <= limit_bytes:
        return text
    marker = f"\n[... {len(data)} bytes, cut to {limit_bytes} ...]\n"
    room = limit_bytes - len(marker.encode())
    if room <= 0:  # a limit too small for the marker: the start alone
        return _cut_bytes(text, limit_bytes)
    head_bytes = room // 4 if keep_tail else room * 3 // 4
    head = data[:head_bytes].decode(errors="ignore")
    tail = data[len(data) - (room - head_bytes) :].decode(errors="ignore") if room > head_bytes else ""
    return (head + marker + tail).encode()[:limit_bytes].decode(errors="ignore")


def _dumps(value: Any) -> str:
    # default=str: measuring must not fail on a value the caller has yet to make JSON-safe.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _cut_bytes(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")
