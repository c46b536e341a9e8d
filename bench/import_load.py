"""Imports and syncs (issue 13): `data_import` of a CSV and `sync_table` between two databases,
each beside PostgreSQL's own COPY of the same rows, with the executing process's peak RSS.

Everything runs on the bench's own PostgreSQL cluster. The CSV (id, name, amount, active,
created_at) is generated deterministically, in chunks of --chunk rows (numpy and Arrow's string
kernels, so memory stays bounded whatever --rows), with about 0.3 % bad rows: an unparseable amount
('n/a', 0.1 %), an impossible date (2024-02-30T00:00:00Z, 0.1 %), a line with an extra field
(0.1 %); about 2 % of the names are quoted and hold a comma and doubled quotes. A second file holds
the same rows without the bad ones: `COPY` cannot load a file with bad rows (the first one fails
the whole statement), so the baseline loads the clean file, the import the dirty one.

Per size and round, interleaved: the baseline (psycopg2 `copy_expert("COPY bench.users_copy FROM
STDIN WITH (FORMAT csv, HEADER true)")` into a fresh table of the import's shape, primary key on
id), then `data_import` into a fresh bench.users (dropped with bench.users_rejects before every
round), then the old code (--old, sizes up to --old-rows). An import runs in a child process the
way a worker executes a run: `execute_in_process` of the Dagster job with a test instance (as
etl_pipelines_tests/jobs/helpers.py does), the code snapshot first on PYTHONPATH, each code in its
own database (its job table at its own schema). Reported: the op's time (`handle()`, timed by a
wrapper, and STEP_START -> STEP_SUCCESS from the run's event log), the child's wall time, its
peak RSS (VmHWM at the end) and its RSS before the run (after importing Dagster and the
definitions), the child's CPU and the PostgreSQL cluster's CPU in the step. Ratio: the median op
time over the median COPY time. A CHECKPOINT precedes every timed step.

sync_table: bench_src.items (id bigint primary key, name text, amount float8, updated_at
timestamptz), --sync-rows rows in database etl_bench_imp_src (ETL_DATABASE_URL_SRC), synced into
bench.items of the code's database (created by the job). Baseline: `COPY (SELECT * FROM
bench_src.items) TO STDOUT WITH (FORMAT csv)` on one connection, piped by a thread into `COPY
bench.items_copy FROM STDIN WITH (FORMAT csv)` on the other, into a fresh table with its primary
key. Per round: baseline, first sync into an empty target (all inserted), then (unless
--no-update) 10 % of the source rows updated and a second sync (the updated path; its baseline is
the same pipe of just the changed rows into a fresh table: what moving them costs, not an
upsert); the old code's syncs in the first --old-sync-rounds rounds only. Then one more first
sync with cProfile on the child's main thread and SQLAlchemy statement timings, and the parts
alone: the source's COPY TO into a file, Arrow parsing that file (csv_rows) and writing it back as
CSV (the stage's `_csv`): where the sync's time goes. The largest import is also run once more,
profiled the same way (--no-profile-import: not).

examples:
  .venv/bin/python bench/import_load.py --code worktree --out /tmp/etl-bench-import
  .venv/bin/python bench/import_load.py --rows '' --rounds 5 --sync-batch-sizes 100000 --old ''
  .venv/bin/python bench/import_load.py --rows 100000 --rounds 1 --sync-rows 100000 --old ''
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness

COLUMNS = {"id": "int", "name": "str", "amount": "float", "active": "bool", "created_at": "datetime"}
USERS = "(id bigint PRIMARY KEY, name text, amount double precision, active boolean, created_at timestamptz)"
ITEMS = "(id bigint PRIMARY KEY, name text, amount float8, updated_at timestamptz)"
SOURCE = "src"  # ETL_DATABASE_URL_SRC
T0 = 1_577_836_800  # 2020-01-01T00:00:00Z


def arguments(parser):
    harness.add_code_option(parser)
    parser.add_argument("--rows", default="500000,5000000", help="CSV sizes, comma-separated (%(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per size (%(default)s)")
    parser.add_argument("--sync-rows", type=int, default=1_000_000, help="0: no sync (%(default)s)")
    parser.add_argument("--sync-rounds", type=int, default=0, help="default: --rounds")
    parser.add_argument("--no-update", action="store_true", help="no second sync after updating 10 %%")
    parser.add_argument("--old", default="3601def", help="the old code ('' for none) (%(default)s)")
    parser.add_argument("--old-rows", type=int, default=500_000, help="largest size the old code imports")
    parser.add_argument(
        "--sync-batch-sizes", default="", help="sync variants: batch_size values besides the default"
    )
    parser.add_argument(
        "--old-sync-rounds", type=int, default=1, help="rounds with the old code's syncs (%(default)s)"
    )
    parser.add_argument(
        "--no-profile-import", dest="profile_import", action="store_false", help="no profiled import"
    )
    parser.add_argument("--chunk", type=int, default=250_000, help="rows generated at a time (%(default)s)")


# --- data ----------------------------------------------------------------------------------------


def generate(rows: int, path: Path, clean: Path, chunk: int, seed: int = 13) -> dict:
    """`rows` data rows into `path` (about 0.3 % bad) and the good ones into `clean`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    counts = {"rows": rows, "bad_amount": 0, "bad_date": 0, "extra_field": 0, "quoted_names": 0}
    header = b"id,name,amount,active,created_at\n"
    with path.open("wb") as out, clean.open("wb") as good_out:
        out.write(header)
        good_out.write(header)
        for start in range(0, rows, chunk):
            m = min(chunk, rows - start)
            ids = pc.cast(pa.array(np.arange(start + 1, start + m + 1, dtype=np.int64)), pa.string())
            kind = rng.random(m)  # < 0.001 bad amount, < 0.002 bad date, < 0.003 extra field
            quoted = rng.random(m) < 0.02
            cents = rng.integers(0, 10_000_000, m)
            stamps = pa.array((T0 + rng.integers(0, 10**8, m)).astype("datetime64[s]"))
            plain = pc.binary_join_element_wise("user", ids, " ")
            fancy = pc.binary_join_element_wise('"Doe, J. ""JJ""', ids, '"', " ")
            name = pc.if_else(pa.array(quoted), fancy, plain)
            euros = pc.cast(pa.array(cents // 100), pa.string())
            amount = pc.binary_join_element_wise(
                euros, pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), 2, "0"), "."
            )
            amount = pc.if_else(pa.array(kind < 0.001), "n/a", amount)
            active = pc.if_else(pa.array(rng.random(m) < 0.5), "true", "false")
            created = pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%SZ")
            created = pc.if_else(pa.array((kind >= 0.001) & (kind < 0.002)), "2024-02-30T00:00:00Z", created)
            line = pc.binary_join_element_wise(ids, name, amount, active, created, ",")
            extra = (kind >= 0.002) & (kind < 0.003)
            dirty = pc.if_else(pa.array(extra), pc.binary_join_element_wise(line, "extra", ","), line)
            out.write(_lines(dirty))
            good_out.write(_lines(line.filter(pa.array(kind >= 0.003))))
            counts["bad_amount"] += int((kind < 0.001).sum())
            counts["bad_date"] += int(((kind >= 0.001) & (kind < 0.002)).sum())
            counts["extra_field"] += int(extra.sum())
            counts["quoted_names"] += int(quoted.sum())
    counts["bad"] = counts["bad_amount"] + counts["bad_date"] + counts["extra_field"]
    return counts | {"mb": path.stat().st_size / 1e6, "clean_mb": clean.stat().st_size / 1e6}


def _lines(strings: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.compute as pc

    listed = pa.ListArray.from_arrays(pa.array([0, len(strings)], pa.int32()), strings)
    return pc.binary_join(listed, "\n")[0].as_py().encode() + b"\n"


def fill_source(url: str, rows: int) -> None:
    """bench_src.items with `rows` rows (generated by PostgreSQL itself), analysed."""
    with harness.pg(url) as cursor:
        cursor.execute("CREATE SCHEMA bench_src")
        cursor.execute(f"CREATE TABLE bench_src.items {ITEMS}")
        fill = (
            "INSERT INTO bench_src.items SELECT g, 'item ' || g || CASE WHEN g % 50 = 0 "
            "THEN ', \"quoted\"' ELSE '' END, round((random() * 100000)::numeric, 2)::float8, "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' "
        )
        cursor.execute(fill + f"FROM generate_series(1, {int(rows)}) AS g")
        cursor.execute("VACUUM ANALYZE bench_src.items")


def update_source(url: str, share: float = 0.1) -> int:
    with harness.pg(url) as cursor:
        change = "UPDATE bench_src.items SET amount = amount + 1, updated_at = now() WHERE id % {} = 0"
        cursor.execute(change.format(round(1 / share)))
        updated = cursor.rowcount
        cursor.execute("VACUUM ANALYZE bench_src.items")
        return updated


# --- the parent's measurements -------------------------------------------------------------------


def checkpoint() -> None:
    with harness.pg(harness.PG_ADMIN_URL) as cursor:
        cursor.execute("CHECKPOINT")


@contextlib.contextmanager
def window(out: dict) -> Any:
    """The PostgreSQL cluster's CPU and the machine's busy cores over the block, into `out`."""
    pid = harness.SERVER_PIDS["postgres"]
    before = harness.cpu_snapshot({"postgres": pid})
    yield
    after = harness.cpu_snapshot({"postgres": pid})
    seconds = after["t"] - before["t"]
    out["postgres_cpu_s"] = after["postgres"] - before["postgres"]
    out["machine_busy_cores"] = (after["busy"] - before["busy"]) / seconds
    out["load"] = harness.load()


def copy_file(url: str, path: Path, table: str) -> dict:
    import psycopg2

    with harness.pg(url) as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TABLE {table} {USERS}")
    checkpoint()
    out: dict[str, Any] = {}
    connection = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with window(out), connection.cursor() as cursor, path.open("rb") as stream:
            t0 = time.perf_counter()
            cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)", stream)
            connection.commit()
            out["copy_s"] = time.perf_counter() - t0
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 (the bench's own)
            out["rows"] = cursor.fetchone()[0]
    finally:
        connection.close()
    return out


def copy_pipe(source_url: str, target_url: str, query: str, table: str, fresh: bool = True) -> dict:
    """`COPY (query) TO STDOUT` on the source piped by a thread into `COPY table FROM STDIN` on the
    target (fresh: a new table of the items' shape first)."""
    import psycopg2

    if fresh:
        with harness.pg(target_url) as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} {ITEMS}")
    checkpoint()
    libpq = [u.replace("postgresql+psycopg2://", "postgresql://") for u in (source_url, target_url)]
    source, target = (psycopg2.connect(u) for u in libpq)
    read_fd, write_fd = os.pipe()
    reader, writer = os.fdopen(read_fd, "rb", buffering=1 << 20), os.fdopen(write_fd, "wb", buffering=1 << 20)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with source.cursor() as cursor:
                cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", writer)
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.close()

    out: dict[str, Any] = {}
    try:
        with window(out):
            t0 = time.perf_counter()
            thread = threading.Thread(target=produce)
            thread.start()
            with target.cursor() as cursor:
                cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv)", reader)
            target.commit()
            thread.join()
            out["copy_s"] = time.perf_counter() - t0
        if errors:
            raise errors[0]
    finally:
        reader.close()
        source.close()
        target.close()
    return out


def source_to_file(source_url: str, path: Path) -> dict:
    import psycopg2

    connection = psycopg2.connect(source_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with connection.cursor() as cursor, path.open("wb") as out:
            t0 = time.perf_counter()
            sql = "COPY (SELECT * FROM bench_src.items ORDER BY updated_at, id) TO STDOUT"
            cursor.copy_expert(f"{sql} WITH (FORMAT csv, HEADER true)", out)
            return {"copy_to_file_s": time.perf_counter() - t0, "mb": path.stat().st_size / 1e6}
    finally:
        connection.close()


def run_job(env: dict, code: harness.Code, job: str, params: dict, profile: bool = False) -> dict:
    checkpoint()
    out: dict[str, Any] = {}
    with window(out):
        t0 = time.perf_counter()
        out |= harness.child(
            env, code.root, "import_load", "execute", job=job, params=params, profile=profile
        )
        out["child_wall_s"] = time.perf_counter() - t0
    if out.get("status") != "completed" and not out.get("success"):
        harness.say(f"  {job} ({code.commit}) did not complete: {out.get('status')} {out.get('error')}")
    return out


# --- the child's side ----------------------------------------------------------------------------


def proc_status() -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def execute(job: str, params: dict, profile: bool = False) -> dict:
    """Child: the job executed as a worker executes a run (execute_in_process, test instance)."""
    import resource

    t_import = time.perf_counter()
    import dagster as dg

    from etl_pipelines.definitions import defs
    from etl_pipelines.framework.op import run_config_for
    from etl_pipelines.framework.registry import get_job_type
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    job_cls = get_job_type(job)
    out: dict[str, Any] = {"import_s": time.perf_counter() - t_import}
    timing: dict[str, float] = {}
    profiler = cProfile.Profile() if profile else None
    statements: dict[str, list[float]] = {}
    original = job_cls.handle

    def handle(self, ctx):
        t0 = time.perf_counter()
        try:
            if profiler is None:
                return original(self, ctx)
            profiler.enable()
            statements["in handle"] = []  # the timer's flag: only the op's own statements
            try:
                return original(self, ctx)
            finally:
                profiler.disable()
                del statements["in handle"]
        finally:
            timing["handle_s"] = time.perf_counter() - t0

    job_cls.handle = handle
    if profile:
        statement_timer(statements)
    job_def = defs.resolve_job_def(job)
    run_config = run_config_for(job_cls, job_cls.model_construct(**params).model_dump(mode="json"))
    before = proc_status()
    out["rss_before_mb"] = before["VmRSS"]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with dg.instance_for_test() as instance:
        t0 = time.perf_counter()
        result = job_def.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)
        out["execute_s"] = time.perf_counter() - t0
        marks = {}
        for record in instance.all_logs(result.run_id):
            event = record.dagster_event
            if event is not None and event.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
                marks.setdefault(event.event_type_value, record.timestamp)
        if "STEP_START" in marks:
            end = marks.get("STEP_SUCCESS", marks.get("STEP_FAILURE"))
            out["step_s"] = end - marks["STEP_START"] if end else None
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    out["peak_rss_mb"] = proc_status()["VmHWM"]
    out |= timing | {"success": result.success}
    record = JobStore(Settings.from_env().database_url).require(result.run_id)
    out["status"] = str(getattr(record.status, "value", record.status))
    out["error"] = (record.error or "")[:2000] if getattr(record, "error", None) else None
    job_result = dict(record.result or {})
    job_result.pop("rejected", None)
    out["result"] = job_result
    if profiler is not None:
        out["profile"] = profile_summary(profiler, statements)
    return out


def statement_timer(statements: dict[str, list[float]]) -> None:
    """Every SQL statement's wall time by kind (engine events), and every commit's."""
    import sqlalchemy as sa
    from sqlalchemy.engine import default

    def kind(statement: str) -> str:
        words = statement.split()
        head = " ".join(words[:3]).upper()
        if head.startswith("WITH WRITTEN AS"):
            return "upsert (INSERT ... ON CONFLICT from the stage)"
        if head.startswith("CREATE TEMPORARY TABLE"):
            return "CREATE TEMPORARY TABLE (stage)"
        return " ".join(words[:2]).upper()

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info.setdefault("etl_bench_t", []).append(time.perf_counter())

    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        t0 = conn.info["etl_bench_t"].pop()
        if "in handle" in statements and threading.current_thread() is threading.main_thread():
            statements.setdefault(kind(statement), []).append(time.perf_counter() - t0)

    commit = default.DefaultDialect.do_commit

    def do_commit(self, dbapi_connection):
        t0 = time.perf_counter()
        try:
            return commit(self, dbapi_connection)
        finally:
            if "in handle" in statements and threading.current_thread() is threading.main_thread():
                statements.setdefault("COMMIT", []).append(time.perf_counter() - t0)

    default.DefaultDialect.do_commit = do_commit


def profile_summary(profiler: cProfile.Profile, statements: dict[str, list[float]]) -> dict:
    """cProfile of handle() (main thread): named parts, and the top functions by cumulative time."""
    stats = pstats.Stats(profiler)
    parts: dict[str, dict[str, float]] = {}
    wanted = {
        "csv_rows (reads the pipe: waits for the source's COPY TO, Arrow parses)": ("stage.py", "csv_rows"),
        "copy_upsert": ("stage.py", "copy_upsert"),
        "_csv (Arrow writes the stage's CSV)": ("stage.py", "_csv"),
        "psycopg2 copy_expert, main thread (stage COPY FROM)": ("~", "copy_expert"),
        "psycopg2 cursor.execute (all statements)": ("~", "<method 'execute' of 'psycopg2"),
        "psycopg2 commit": ("~", "<method 'commit' of 'psycopg2"),
        "typed_batches (import: types the text)": ("stage.py", "typed_batches"),
        "csv_batches (import: Arrow reads the file)": ("reader.py", "csv_batches"),
        "Stage.merge (import: INSERT ... SELECT)": ("stage.py", "merge"),
        "Stage._copy (import: the stage's COPY statements)": ("stage.py", "_copy"),
        "_Chunks.read (import: rows produced for COPY: read, type, write CSV)": ("stage.py", "read"),
        "_type (import: one batch typed)": ("stage.py", "_type"),
        "type_column (import)": ("columns.py", "type_column"),
        "decode (import: UTF-8 check)": ("columns.py", "decode"),
        "keep_rejects (import)": ("rejects.py", "keep_rejects"),
    }
    for label, (file, name) in wanted.items():
        for (path, _, function), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
            if path.endswith(file) and (function == name or (file == "~" and name in function)):
                entry = parts.setdefault(label, {"calls": 0, "tottime_s": 0.0, "cumtime_s": 0.0})
                entry["calls"] += calls
                entry["tottime_s"] += tottime
                entry["cumtime_s"] += cumtime
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    sql = {k: {"count": len(v), "total_s": sum(v)} for k, v in statements.items()}
    return {"parts": parts, "statements": sql, "top": text.getvalue()[-12000:]}


def parse_only(path: str, columns: list[str], rows: int) -> dict:
    """Child: the sync's CSV work alone on a file (no database): Arrow parsing it in batches of
    `rows` (csv_rows) and writing each batch back as CSV (the stage's _csv)."""
    import pyarrow.csv as pcsv

    from etl_pipelines.loading.stage import _csv, csv_rows

    options = pcsv.WriteOptions(include_header=False, quoting_style="needed")
    parse = write = 0.0
    with open(path, "rb") as stream:
        batches = csv_rows(stream, columns, rows)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            parse += time.perf_counter() - t0
            if batch is None:
                break
            t0 = time.perf_counter()
            _csv(batch, options)
            write += time.perf_counter() - t0
    return {"parse_s": parse, "write_csv_s": write, "peak_rss_mb": proc_status()["VmHWM"]}


def setup_store() -> dict:
    """Child: the code's job table in ETL_DATABASE_URL (an empty database gets it)."""
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    JobStore(Settings.from_env().database_url)
    return {}


# --- the run -------------------------------------------------------------------------------------


def fingerprint(code: harness.Code) -> dict[str, str]:
    """The measured snapshot's loading code (a worktree changes between runs): file -> sha1[:10]."""
    import hashlib

    root = code.root / "etl_pipelines"
    files = [
        *sorted((root / "loading").glob("*.py")),
        root / "jobs/data_import.py",
        root / "jobs/sync_table.py",
    ]
    return {
        str(f.relative_to(root)): hashlib.sha1(f.read_bytes()).hexdigest()[:10] for f in files if f.exists()
    }


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else harness.NAN


def run(args) -> dict:
    sizes = [int(s) for s in args.rows.split(",") if s.strip()]
    free = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    need = max(sizes, default=0) * 110 / 1e9 + args.sync_rows * 60 / 1e9  # both files, and the dump
    if free < need + 2:
        raise SystemExit(f"{free:.0f} GB free in {tempfile.gettempdir()}, {need:.1f} GB needed")
    rounds_sync = args.sync_rounds or args.rounds
    result: dict[str, Any] = {
        "environment": harness.environment(("dagster", "sqlalchemy", "pyarrow", "psycopg2-binary", "numpy"))
    }
    result |= {"imports": [], "syncs": [], "data": {}}
    with contextlib.ExitStack() as stack:
        data = Path(stack.enter_context(harness.home("etl_bench_import_data_", {})))
        refs = {"new": args.code} | ({"old": args.old} if args.old else {})
        codes = {k: stack.enter_context(harness.code_snapshot(ref)) for k, ref in refs.items()}
        result["commit"] = codes["new"].commit  # the old code's in its rows' labels
        result["old_commit"] = codes["old"].commit if "old" in codes else None
        result["code_files"] = fingerprint(codes["new"])
        src_url = stack.enter_context(harness.database("etl_bench_imp_src"))
        envs = {}
        for label, code in codes.items():
            url = stack.enter_context(harness.database(f"etl_bench_imp_{label}"))
            home = stack.enter_context(harness.home(f"etl_bench_import_{label}_", {}))
            envs[label] = harness.clean_env(
                DAGSTER_HOME=str(home),
                ETL_DATABASE_URL=url,
                ETL_IMPORT_DIR=str(data),
                ETL_ALLOWED_SCHEMAS="bench",
                PYTHONPATH=code.pythonpath(),
                **{f"ETL_DATABASE_URL_{SOURCE.upper()}": src_url},
            )
            with harness.pg(url) as cursor:
                cursor.execute("CREATE SCHEMA bench")
            harness.child(envs[label], code.root, "import_load", "setup_store")
        new_url = envs["new"]["ETL_DATABASE_URL"]

        for rows in sizes:
            dirty, clean = data / f"users_{rows}.csv", data / f"users_{rows}_clean.csv"
            t0 = time.perf_counter()
            made = generate(rows, dirty, clean, args.chunk)
            made["generate_s"] = time.perf_counter() - t0
            result["data"][str(rows)] = made
            harness.say(
                f"{rows:,} rows: {made['mb']:.0f} MB, {made['bad']} bad, in {made['generate_s']:.1f} s"
            )
            labels = ["new"] + (["old"] if "old" in codes and rows <= args.old_rows else [])
            entry: dict[str, Any] = {"rows": rows, "copy": [], **{label: [] for label in labels}}
            for index in range(args.rounds):
                entry["copy"].append(copy_file(new_url, clean, "bench.users_copy"))
                harness.say(f"  round {index + 1}: COPY {entry['copy'][-1]['copy_s']:.1f} s")
                for label in labels:
                    with harness.pg(envs[label]["ETL_DATABASE_URL"]) as cursor:
                        cursor.execute("DROP TABLE IF EXISTS bench.users, bench.users_rejects")
                    params = {"source_csv": dirty.name, "target_table": "bench.users", "columns": COLUMNS}
                    measured = run_job(
                        envs[label], codes[label], "data_import", params | {"key_columns": ["id"]}
                    )
                    entry[label].append(measured | {"round": index})
                    harness.say(
                        f"  round {index + 1}: {label} import op {measured.get('handle_s', harness.NAN):.1f} s, "  # noqa: E501
                        f"peak RSS {measured['peak_rss_mb']:.0f} MB, {measured['status']}"
                    )
            if rows == max(sizes) and args.profile_import:  # where the largest import's time goes
                with harness.pg(new_url) as cursor:
                    cursor.execute("DROP TABLE IF EXISTS bench.users, bench.users_rejects")
                params = {"source_csv": dirty.name, "target_table": "bench.users", "columns": COLUMNS}
                params["key_columns"] = ["id"]
                entry["profiled"] = run_job(envs["new"], codes["new"], "data_import", params, profile=True)
                harness.say(f"  profiled import op {entry['profiled'].get('handle_s', 0):.1f} s")
            with harness.pg(new_url) as cursor:
                cursor.execute("DROP TABLE IF EXISTS bench.users, bench.users_rejects, bench.users_copy")
            dirty.unlink()
            clean.unlink()
            result["imports"].append(entry)

        if args.sync_rows:
            fill_source(src_url, args.sync_rows)
            params = {
                "source_database": SOURCE,
                "source_table": "bench_src.items",
                "target_table": "bench.items",
                "key_column": "id",
                "updated_at_column": "updated_at",
            }
            # label -> (code, its parameters): the job's default batch size, then the variants.
            variants = {"new": ("new", params)}
            for size in [int(b) for b in args.sync_batch_sizes.split(",") if b.strip()]:
                table = {"target_table": f"bench.items_b{size}", "batch_size": size}
                variants[f"new, batch_size {size}"] = ("new", params | table)
            if "old" in codes and args.old_sync_rounds > 0:
                variants["old"] = ("old", params)
            entry = {"rows": args.sync_rows, "copy": [], "copy_updated": [], "updated_rows": 0}
            entry |= {"labels": list(variants)}
            entry |= {label: [] for label in variants} | {f"{label}_updated": [] for label in variants}
            query = "SELECT * FROM bench_src.items"
            for index in range(rounds_sync):
                labels = [k for k in variants if k != "old" or index < args.old_sync_rounds]
                if index:  # the source as it was: the updates of the last round undone in effect
                    with harness.pg(src_url) as cursor:
                        cursor.execute("DROP SCHEMA bench_src CASCADE")
                    fill_source(src_url, args.sync_rows)
                entry["copy"].append(copy_pipe(src_url, new_url, query, "bench.items_copy"))
                harness.say(f"  sync round {index + 1}: COPY | COPY {entry['copy'][-1]['copy_s']:.1f} s")
                for label in labels:
                    code, job_params = variants[label]
                    with harness.pg(envs[code]["ETL_DATABASE_URL"]) as cursor:
                        cursor.execute(f"DROP TABLE IF EXISTS {job_params['target_table']}")
                    measured = run_job(envs[code], codes[code], "sync_table", job_params) | {"round": index}
                    entry[label].append(measured)
                    harness.say(f"  sync round {index + 1}: {label} {measured.get('handle_s', 0):.1f} s")
                if args.no_update:
                    continue
                entry["updated_rows"] = update_source(src_url)
                # The baseline of the updated path: the changed rows piped into a fresh table.
                since = "SELECT * FROM bench_src.items WHERE updated_at >= now() - interval '1 day'"
                entry["copy_updated"].append(copy_pipe(src_url, new_url, since, "bench.items_stage_copy"))
                for label in labels:
                    code, job_params = variants[label]
                    measured = run_job(envs[code], codes[code], "sync_table", job_params) | {"round": index}
                    entry[f"{label}_updated"].append(measured)
                    harness.say(
                        f"  sync round {index + 1}: {label} updated path {measured.get('handle_s', 0):.1f} s"
                    )
            # Where a first sync's time goes: one more, profiled; and its parts alone.
            with harness.pg(src_url) as cursor:
                cursor.execute("DROP SCHEMA bench_src CASCADE")
            fill_source(src_url, args.sync_rows)
            with harness.pg(new_url) as cursor:
                cursor.execute("DROP TABLE IF EXISTS bench.items")
            entry["profiled"] = run_job(envs["new"], codes["new"], "sync_table", params, profile=True)
            dump = data / "items.csv"
            entry["source_copy_to_file"] = source_to_file(src_url, dump)
            columns = ["id", "name", "amount", "updated_at"]
            entry["parse_only"] = harness.child(
                envs["new"],
                codes["new"].root,
                "import_load",
                "parse_only",
                path=str(dump),
                columns=columns,
                rows=10_000,
            )
            dump.unlink()
            result["syncs"].append(entry)
    return result


# --- the report ----------------------------------------------------------------------------------


def summarise(entry: dict, labels: list[str]) -> dict:
    out = {"copy_s": median([r["copy_s"] for r in entry["copy"]])}
    for label in labels:
        runs = entry.get(label) or []
        if runs:
            out[label] = {
                "op_s": median([r.get("handle_s") for r in runs]),
                "step_s": median([r.get("step_s") for r in runs]),
                "child_wall_s": median([r["child_wall_s"] for r in runs]),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "rss_before_mb": median([r["rss_before_mb"] for r in runs]),
                "cpu_s": median([r["cpu_s"] for r in runs]),
                "postgres_cpu_s": median([r["postgres_cpu_s"] for r in runs]),
                "status": ", ".join(sorted({r["status"] for r in runs})),
            }
            out[label]["ratio"] = out[label]["op_s"] / out["copy_s"]
            # Each run over its own round's COPY (the pairs the interleaving makes).
            out[label]["round_ratios"] = [
                r["handle_s"] / entry["copy"][r.get("round", i)]["copy_s"] for i, r in enumerate(runs)
            ]
    return out


def profile_text(title: str, profiled: dict) -> str:
    if not profiled.get("profile"):
        return ""
    p = profiled["profile"]
    lines = [[k, v["calls"], v["tottime_s"], v["cumtime_s"]] for k, v in p["parts"].items()]
    text = f"\n{title} (cProfile, main thread): op {profiled.get('handle_s', harness.NAN):.1f} s\n\n"
    text += harness.table(["part", "calls", "own s", "cumulative s"], lines)
    by_time = sorted(p["statements"].items(), key=lambda kv: -kv[1]["total_s"])
    stmts = [[k, v["count"], v["total_s"]] for k, v in by_time]
    return text + "\n" + harness.table(["statement (main thread, SQLAlchemy)", "count", "total s"], stmts[:8])


def code_label(result: dict, label: str) -> str:
    commit = result.get("old_commit") if label == "old" else result.get("commit")
    return f"{label} ({commit})" if commit and "," not in commit else label


def measured_row(first: list, m: dict, copy_s: float) -> list:
    return [
        *first,
        copy_s,
        f"**{m['op_s']:.1f}**",
        m["step_s"],
        m["child_wall_s"],
        f"**x{m['ratio']:.2f}**",
        ", ".join(f"x{v:.2f}" for v in m["round_ratios"]),
        f"**{m['peak_rss_mb']:.0f}**",
        m["rss_before_mb"],
        m["cpu_s"],
        m["postgres_cpu_s"],
        m["status"],
    ]


HEAD = [
    "op s",
    "step s",
    "child wall s",
    "op / COPY",
    "each round's",
    "peak RSS MB",
    "RSS before MB",
    "child CPU s",
]
HEAD += ["PostgreSQL CPU s", "status"]


def report(result: dict) -> str:
    text = f"## Imports and syncs (issue 13)\n\n{harness.header(result)}\n"
    if result.get("code_files"):
        text += "Snapshot files (sha1): " + ", ".join(f"{k} {v}" for k, v in result["code_files"].items())
        text += "\n\n"
    rows = []
    for entry in result["imports"]:
        s = summarise(entry, ["new", "old"])
        made = result["data"][str(entry["rows"])]
        for label in ("new", "old"):
            if label in s:
                first = [
                    f"{entry['rows']:,} ({made['mb']:.0f} MB, {made['bad']} bad)",
                    code_label(result, label),
                ]
                rows.append(measured_row(first, s[label], s["copy_s"]))
    if rows:
        text += "### data_import (medians of the rounds; peak RSS: the largest)\n\n"
        text += harness.table(["rows (file)", "code", "COPY s", *HEAD], rows)
    for entry in result["imports"]:
        text += profile_text(f"Profiled import of {entry['rows']:,} rows", entry.get("profiled", {}))
    for entry in result["syncs"]:
        labels = entry.get("labels", ["new", "old"])
        updated = {"copy": entry["copy_updated"], **{k: entry.get(f"{k}_updated") for k in labels}}
        rows = []
        paths = [("first sync (all inserted)", summarise(entry, labels))]
        if entry["copy_updated"]:
            paths.append((f"second sync ({entry['updated_rows']:,} updated)", summarise(updated, labels)))
        for name, summary in paths:
            for label in labels:
                if label in summary:
                    first = [name, code_label(result, label)]
                    rows.append(measured_row(first, summary[label], summary["copy_s"]))
        text += f"\n### sync_table, {entry['rows']:,} rows\n\n"
        text += harness.table(["sync", "code", "COPY TO → COPY FROM s", *HEAD], rows)
        text += profile_text("Profiled first sync", entry.get("profiled", {}))
        alone = entry.get("source_copy_to_file", {}) | entry.get("parse_only", {})
        if alone:
            text += (
                f"\nParts alone: source COPY TO a file {alone['copy_to_file_s']:.1f} s "
                f"({alone['mb']:.0f} MB); Arrow parse (csv_rows) {alone['parse_s']:.1f} s; "
                f"Arrow CSV write (_csv) {alone['write_csv_s']:.1f} s\n"
            )
    return text


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
