"""Worker CPU profile: where a trivial run's ~100 ms of `etl-jobs worker` CPU goes, and what saves it.

What is measured
    The per-run work of the production worker (bench/throughput.py's mode: EtlCeleryRunLauncher,
    the whole run executed in a warm `etl-jobs worker`), without Celery around it:

    1. A template database etl_bench_<random>_pwtmpl gets the schema, and one process dispatches
       (`Fibonacci.dispatch(n=10)`, via bench/throughput.py's dispatch child) variants x
       (N + warm-up) jobs, so they sit QUEUED in Dagster's run queue (DAGSTER_HOME holds the
       repository's dagster.yaml; ETL_REDIS_URL is Redis db 7 with a unique ETL_REDIS_KEY_PREFIX).
    2. Every variant runs in its own process against its own copy of that database
       (CREATE DATABASE ... TEMPLATE) and its own DAGSTER_HOME (the repository's dagster.yaml
       plus the variant's instance settings). The process opens the instance as the worker does
       (`etl_pipelines.framework.instance.get_instance()`: pooled storage connections), launches
       every queued run the way dagster-daemon does (`instance.launch_run`: RUN_STARTING, then
       EtlCeleryRunLauncher sends the Celery task to Redis and writes its engine event; measured
       apart as "launch"), then calls the Celery task's own function
       `etl_pipelines.framework.celery.task.execute_run(None, run_id)` for each run: the first
       --warmup runs unmeasured (imports, code load), then N runs measured one by one:
       - CPU ms: `time.process_time()` delta of the process (all threads);
       - child CPU ms: `os.times()` children user+system delta (subprocesses the run started
         and waited for, e.g. Dagster's compute-log `tail -F` and orphan-watcher processes);
       - wall ms; SQL statements (SQLAlchemy `before_cursor_execute` on every Engine) and new
         DB connections (Pool `connect`); subprocesses started (`subprocess.Popen`).
    3. The `cprofile` variant is the baseline under cProfile with a CPU timer
       (`time.process_time`), `cprofile_wall` the same with the default wall-clock timer (cheaper
       per call, so less distorted; SQL round trips show as psycopg2's cursor.execute): top
       cumulative and tottime entries per run, time by package (tottime, disjoint), and chosen
       Dagster/etl_pipelines functions' inclusive time per run. Profiled numbers include the
       profiler's overhead (the CPU timer's is large: a syscall per call); use them for shares
       and call counts, and the unprofiled variants for milliseconds.

    Variants are instance settings (yaml) or, marked "patch", monkeypatches of Dagster in this
    process that stand for a code change in etl_pipelines (no product file is edited).

    Code: by default a `git archive` copy of HEAD's etl_pipelines/ and dagster.yaml is what every
    process imports (bench/snapshot.py); `--code worktree` measures the working tree.

    Cleanup, also on errors: databases dropped WITH (FORCE), homes removed, Redis keys of the
    prefix deleted; children run in their own sessions and are killed (whole group) on error.

How to run (repository root; PostgreSQL 127.0.0.1:5432 trust user postgres; Redis)
    .venv/bin/python bench/profile_worker.py                              # N = 200, all variants
    .venv/bin/python bench/profile_worker.py --count 100 --variants baseline,noop_compute_logs
    .venv/bin/python bench/profile_worker.py --json --profile-out /tmp/worker   # + .cpu/.wall.pstats
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from common import clean_env, environment_info, percentile
from snapshot import Code, code_snapshot
from throughput import DEFAULT_PG_ADMIN_URL, delete_redis_keys, temporary_database

SCRIPT = Path(__file__).resolve()
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
NOOP_COMPUTE_LOGS = {
    "module": "dagster._core.storage.noop_compute_log_manager",
    "class": "NoOpComputeLogManager",
}
# name -> instance settings merged into dagster.yaml, monkeypatches, profiled?
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "cprofile": {"profile": "cpu"},
    "cprofile_wall": {"profile": "wall"},
    "noop_compute_logs": {"yaml": {"compute_logs": NOOP_COMPUTE_LOGS}},
    "compute_logs_no_tail": {"patch": ["compute_logs_no_tail"]},
    "no_engine_events": {"patch": ["no_engine_events"]},
    "no_notify": {"patch": ["no_notify"]},
    "compute_logs_no_tail+no_engine_events+no_notify": {
        "patch": ["compute_logs_no_tail", "no_engine_events", "no_notify"]
    },
    "noop_compute_logs+no_engine_events+no_notify": {
        "yaml": {"compute_logs": NOOP_COMPUTE_LOGS},
        "patch": ["no_engine_events", "no_notify"],
    },
}
DEFAULT_VARIANTS = ",".join(VARIANTS)

# (label, filename substring, function name): inclusive CPU per run in the cProfile variant.
FUNCTIONS = [
    ("whole run: _execute_run_command_body", "dagster/_cli/api.py", "_execute_run_command_body"),
    ("  load the job (recon_job_from_origin)", "", "recon_job_from_origin"),
    ("  core_execute_run (after the job is loaded)", "dagster/_grpc/impl.py", "core_execute_run"),
    ("  context creation (create_context_creation_data)", "", "create_context_creation_data"),
    ("  execution plan (create_execution_plan)", "", "create_execution_plan"),
    ("  resources (resource_initialization_manager)", "", "resource_initialization_manager"),
    ("  compute logs: capture_logs (LocalComputeLogManager)", "local_compute_log_manager", "capture_logs"),
    ("    tail + watcher start/stop (execute_posix_tail)", "compute_logs.py", "execute_posix_tail"),
    ("    subprocess spawns (Popen._execute_child)", "subprocess.py", "_execute_child"),
    ("  the op body: etl_pipelines run_attempt", "etl_pipelines/framework/attempt.py", "run_attempt"),
    ("    job table (JobStore.mark_started)", "etl_pipelines/store", "mark_started"),
    ("    job table (JobStore.mark_completed)", "etl_pipelines/store", "mark_completed"),
    ("    job table (JobStore.ensure)", "etl_pipelines/store", "ensure"),
    ("  event log: DagsterInstance.handle_new_event", "", "handle_new_event"),
    ("    event insert: store_event", "dagster_postgres/event_log", "store_event"),
    ("    run status: run storage handle_run_event", "sql_run_storage.py", "handle_run_event"),
    ("  report_engine_event (engine events)", "", "report_engine_event"),
    ("  run reads: get_run_by_id", "dagster/_core/instance", "get_run_by_id"),
    ("  run reads: run storage get_runs", "sql_run_storage.py", "get_runs"),
    ("  schema reflection: has_run_stats_index_cols", "", "has_run_stats_index_cols"),
    ("  schema reflection: has_backfill_id_column", "", "has_backfill_id_column"),
    ("  serialization: serialize_value", "dagster_shared/serdes", "serialize_value"),
    ("  deserialization: deserialize_value", "dagster_shared/serdes", "deserialize_value"),
    ("  config: process_config", "", "process_config"),
    ("  logging: DagsterLogManager.log_dagster_event", "log_manager.py", "log_dagster_event"),
    ("  SQLAlchemy Connection.execute", "sqlalchemy/engine/base.py", "execute"),
    ("  psycopg2 cursor.execute (C, incl. server wait)", "~", "psycopg2.extensions.cursor"),
    ("  pool checkout (_ConnectionFairy._checkout)", "sqlalchemy/pool/base.py", "_checkout"),
]


# --------------------------------------------------------------------------------------------
# Monkeypatches standing for code changes
# --------------------------------------------------------------------------------------------


def apply_patches(names: Sequence[str]) -> None:
    if "compute_logs_no_tail" in names:
        # LocalComputeLogManager captures each step's stdout/stderr by redirecting the file
        # descriptors into a file (kept: the UI still shows them) and mirrors the file back to the
        # original stream with a `tail -F` subprocess plus a Python orphan-watcher process per
        # stream (4 processes per step). Keep the capture, drop the mirror.
        from dagster._core.execution import compute_logs
        from dagster._core.storage import local_compute_log_manager

        @contextlib.contextmanager
        def capture_only(stream, filepath):
            compute_logs.ensure_file(filepath)
            with compute_logs.redirect_to_file(stream, filepath):
                yield (None, None)

        local_compute_log_manager.mirror_stream_to_file = capture_only
    if "no_notify" in names:
        # dagster-postgres sends `NOTIFY run_events` after every event insert, "no longer used for
        # pg event watch - preserved here to support version skew": one more round trip per event.
        from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
        from dagster_postgres.event_log.event_log import PostgresEventLogStorage

        original_store_event = PostgresEventLogStorage.store_event

        def store_event(self, event):
            if event.is_dagster_event and (
                event.dagster_event_type in ASSET_EVENTS or event.dagster_event_type in ASSET_CHECK_EVENTS
            ):
                return original_store_event(self, event)
            with self._connect() as conn:
                conn.execute(self.prepare_insert_event(event))
            return None

        PostgresEventLogStorage.store_event = store_event
    if "no_engine_events" in names:
        # Engine events are informational ("Started process for run", "Executing steps using
        # in-process executor", "Finished steps in process", ...): do not store them. Engine
        # events carrying an error are still stored. (Dagster's own hook: should_store_event.)
        from dagster._core.instance import DagsterInstance

        original_should_store = DagsterInstance.should_store_event

        def should_store_event(self, event):
            dagster_event = event.dagster_event
            if (
                dagster_event is not None
                and dagster_event.event_type_value == "ENGINE_EVENT"
                and getattr(dagster_event.event_specific_data, "error", None) is None
            ):
                return False
            return original_should_store(self, event)

        DagsterInstance.should_store_event = should_store_event


# --------------------------------------------------------------------------------------------
# Child: one variant
# --------------------------------------------------------------------------------------------


def statement_kind(statement: str) -> str:
    text = " ".join(statement.split())
    verb = text.split(" ", 1)[0].upper()
    if "pg_catalog" in text or "information_schema" in text:
        return f"{verb} pg_catalog (reflection)"
    match = re.search(r"\b(?:FROM|INTO|UPDATE)\s+([\w.\"]+)", text, re.IGNORECASE)
    return f"{verb} {match[1].strip(chr(34)) if match else ''}".strip()


def child_variant(name: str, warmup: int, count: int, profile_out: str | None) -> dict[str, Any]:
    spec = VARIANTS[name]
    apply_patches(spec.get("patch", ()))
    import sqlalchemy as sa
    from dagster import DagsterRunStatus, RunsFilter

    statements: list[str] = []
    connections = [0]
    spawns: list[str] = []
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    sa.event.listen(sa.pool.Pool, "connect", lambda *a: connections.__setitem__(0, connections[0] + 1))
    original_execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def counted_execute_child(self, args, *rest, **kwargs):
        spawns.append(os.path.basename(str(args[0] if isinstance(args, list | tuple) else args)))
        return original_execute_child(self, args, *rest, **kwargs)

    subprocess.Popen._execute_child = counted_execute_child  # type: ignore[attr-defined]

    from etl_pipelines.framework.celery.task import execute_run
    from etl_pipelines.framework.instance import get_instance

    instance = get_instance()
    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
    run_ids = [r.run_id for r in sorted(runs, key=lambda r: r.run_id)][: warmup + count]
    if len(run_ids) < warmup + count:
        raise RuntimeError(f"only {len(run_ids)} queued runs, need {warmup + count}")
    compute_log_manager = type(instance.compute_log_manager).__name__

    # What dagster-daemon does for each run (not the worker's CPU; reported apart).
    statements.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for run_id in run_ids:
        instance.launch_run(run_id, None)
    launch = {
        "cpu_ms_per_run": (time.process_time() - cpu0) * 1000.0 / len(run_ids),
        "wall_ms_per_run": (time.perf_counter() - wall0) * 1000.0 / len(run_ids),
        "sql_per_run": len(statements) / len(run_ids),
    }

    for run_id in run_ids[:warmup]:
        execute_run(None, run_id)

    timer = {"cpu": time.process_time, "wall": time.perf_counter}.get(spec.get("profile", ""))
    profiler = cProfile.Profile(timer) if timer else None
    rows: list[dict[str, float]] = []
    kinds: Counter[str] = Counter()
    spawned: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for run_id in run_ids[warmup:]:
        statements.clear()
        spawns.clear()
        conn0 = connections[0]
        children0 = os.times()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        outcome = execute_run(None, run_id)
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        children1 = os.times()
        child_cpu = (children1.children_user - children0.children_user) + (
            children1.children_system - children0.children_system
        )
        outcomes[outcome] += 1
        kinds.update(statement_kind(s) for s in statements)
        spawned.update(spawns)
        rows.append(
            {
                "cpu_ms": cpu * 1000.0,
                "child_cpu_ms": child_cpu * 1000.0,
                "wall_ms": wall * 1000.0,
                "sql": len(statements),
                "connections": connections[0] - conn0,
                "spawns": len(spawns),
            }
        )
    n = len(rows)
    import etl_pipelines

    result: dict[str, Any] = {
        "variant": name,
        "etl_pipelines_imported_from": str(Path(etl_pipelines.__file__).parent),
        "compute_log_manager": compute_log_manager,
        "measured_runs": n,
        "outcomes": dict(outcomes),
        "launch": launch,
        "sql_by_kind_per_run": {k: v / n for k, v in kinds.most_common()},
        "spawns_per_run": {k: v / n for k, v in spawned.most_common()},
    }
    for key in ("cpu_ms", "child_cpu_ms", "wall_ms", "sql", "connections", "spawns"):
        values = sorted(r[key] for r in rows)
        result[key] = {
            "mean": statistics.fmean(values),
            "median": percentile(values, 50),
            "p90": percentile(values, 90),
        }
    result["cpu_incl_children_ms_mean"] = result["cpu_ms"]["mean"] + result["child_cpu_ms"]["mean"]
    if profiler is not None:
        result["profile"] = profile_summary(profiler, n)
        result["profile"]["timer"] = spec["profile"]
        if profile_out:
            profiler.dump_stats(f"{profile_out}.{spec['profile']}.pstats")
    return result


# --------------------------------------------------------------------------------------------
# Profile summary
# --------------------------------------------------------------------------------------------


def package_of(filename: str, funcname: str) -> str:
    if filename == "~":
        if "psycopg2" in funcname:
            return "psycopg2 (C: SQL round trips, incl. server wait)"
        if "posix" in funcname or "fork" in funcname or "select" in funcname or "poll" in funcname:
            return "OS calls (fork/exec, select, poll, ...)"
        return "builtins (C)"
    path = filename.replace("\\", "/")
    for marker, label in (
        ("/sqlalchemy/", "sqlalchemy"),
        ("/psycopg2/", "psycopg2 (Python)"),
        ("/dagster_shared/serdes", "dagster serdes"),
        ("/dagster_shared/", "dagster_shared other"),
        ("/dagster_postgres/", "dagster_postgres"),
        ("/dagster/_core/storage/", "dagster storage"),
        ("/dagster/_core/execution/", "dagster execution"),
        ("/dagster/_core/events/", "dagster events"),
        ("/dagster/_core/definitions/", "dagster definitions"),
        ("/dagster/_config/", "dagster config"),
        ("/dagster/_core/instance/", "dagster instance"),
        ("/dagster/", "dagster other"),
        ("/pydantic", "pydantic"),
        ("/celery/", "celery/kombu"),
        ("/kombu/", "celery/kombu"),
        ("/etl_pipelines/", "etl_pipelines"),
        ("/logging/", "logging"),
        ("subprocess.py", "subprocess module"),
        ("/json/", "json"),
    ):
        if marker in path:
            return label
    return "other stdlib / libs"


def profile_summary(profiler: cProfile.Profile, runs: int) -> dict[str, Any]:
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    by_package: Counter[str] = Counter()
    for (filename, _line, funcname), (_cc, _nc, tt, _ct, _callers) in raw.items():
        by_package[package_of(filename, funcname)] += tt
    functions = {}
    for label, file_part, func in FUNCTIONS:
        ct = calls = 0.0
        for (filename, _line, funcname), (_cc, nc, _tt, fct, _callers) in raw.items():
            if file_part == "~":
                if filename == "~" and func in funcname:
                    ct += fct
                    calls += nc
            elif funcname == func and file_part in filename.replace("\\", "/"):
                ct += fct
                calls += nc
        functions[label] = {"ms_per_run": ct * 1000.0 / runs, "calls_per_run": calls / runs}

    def top(sort: str, limit: int) -> list[dict[str, Any]]:
        out = []
        for key, (_cc, nc, tt, ct, _callers) in sorted(
            raw.items(), key=lambda item: item[1][3 if sort == "cumulative" else 2], reverse=True
        )[:limit]:
            filename, line, funcname = key
            short = re.sub(r"^.*/site-packages/", "", filename)
            short = re.sub(r"^.*/(etl_pipelines|lib/python3\.\d+)/", r"\1/", short)
            out.append(
                {
                    "function": f"{short}:{line}({funcname})",
                    "calls_per_run": nc / runs,
                    "tottime_ms_per_run": tt * 1000.0 / runs,
                    "cumtime_ms_per_run": ct * 1000.0 / runs,
                }
            )
        return out

    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    return {
        "profiled_ms_per_run": total * 1000.0 / runs,
        "by_package_ms_per_run": {k: v * 1000.0 / runs for k, v in by_package.most_common()},
        "functions": functions,
        "top_cumulative": top("cumulative", 45),
        "top_tottime": top("tottime", 30),
    }


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def run_script_child(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run a child in its own session; kill its whole group if we are interrupted."""
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 0:
        sys.stderr.write(err[-6000:])
        raise RuntimeError(f"child {argv[2:]} exited {process.returncode}")
    return json.loads([line for line in out.splitlines() if line.strip()][-1])


@contextlib.contextmanager
def temporary_home(code: Code, prefix: str, extra: dict[str, Any]) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        config = yaml.safe_load(code.dagster_yaml.read_text())
        config.update(extra)
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def format_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Worker CPU per trivial run (Fibonacci n=10), {report['count']} measured runs per variant "
        f"after {report['warmup']} warm-up; {env['date_utc']}, load {env['loadavg_1m_at_start']} -> "
        f"{env.get('loadavg_1m_at_end', '?')}, dagster {env['dagster']}, commit {env['commit']}",
        "",
        "| variant | CPU ms/run (mean / median) | + child processes ms | wall ms (median) | SQL/run | "
        "new conns/run | subprocesses/run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['variant']} | {r['cpu_ms']['mean']:.1f} / {r['cpu_ms']['median']:.1f} | "
            f"{r['child_cpu_ms']['mean']:.1f} | {r['wall_ms']['median']:.1f} | {r['sql']['mean']:.1f} | "
            f"{r['connections']['mean']:.2f} | {r['spawns']['mean']:.1f} |"
        )
    base = next((r for r in report["results"] if r["variant"] == "baseline"), None)
    if base:
        lines += ["", f"daemon-side launch (not worker CPU): {base['launch']['cpu_ms_per_run']:.1f} ms CPU, "]
        lines[-1] += f"{base['launch']['sql_per_run']:.1f} SQL statements per run"
        lines += ["", "SQL statements per run (baseline):"]
        lines += [f"  {v:5.2f}  {k}" for k, v in base["sql_by_kind_per_run"].items()]
        lines += ["subprocesses per run (baseline): " + json.dumps(base["spawns_per_run"])]
    for prof in [r for r in report["results"] if "profile" in r]:
        p = prof["profile"]
        lines += ["", f"cProfile ({p['timer']} timer), {p['profiled_ms_per_run']:.1f} ms/run profiled:"]
        lines += ["", "CPU by package (tottime, ms/run):"]
        lines += [f"  {v:7.2f}  {k}" for k, v in p["by_package_ms_per_run"].items() if v >= 0.05]
        lines += ["", "inclusive CPU of chosen functions (ms/run, calls/run; nested, not additive):"]
        lines += [
            f"  {v['ms_per_run']:7.2f}  {v['calls_per_run']:6.1f}  {k}" for k, v in p["functions"].items()
        ]
        lines += ["", "top cumulative (ms/run cum, tot, calls/run):"]
        lines += [
            f"  {e['cumtime_ms_per_run']:7.2f} {e['tottime_ms_per_run']:6.2f} {e['calls_per_run']:7.1f}  "
            f"{e['function']}"
            for e in p["top_cumulative"]
        ]
        lines += ["", "top tottime:"]
        lines += [
            f"  {e['tottime_ms_per_run']:7.2f} {e['calls_per_run']:7.1f}  {e['function']}"
            for e in p["top_tottime"]
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Per-run CPU of the production worker, profiled.")
    parser.add_argument("--count", type=int, default=200, help="measured runs per variant (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured runs first (default 5)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--profile-out", help="save the cprofile variant's pstats data here")
    parser.add_argument(
        "--pg-admin-url", default=os.environ.get("ETL_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL)
    )
    parser.add_argument("--redis-url", default=os.environ.get("ETL_BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--code",
        default="HEAD",
        help="git ref whose etl_pipelines/ and dagster.yaml are measured (a `git archive` copy), "
        "or 'worktree' (default %(default)s)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        real_stdout, sys.stdout = sys.stdout, sys.stderr
        result = child_variant(args.child, args.warmup, args.count, args.profile_out)
        sys.stdout = real_stdout
        print(json.dumps(result))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    environment = environment_info(("dagster", "sqlalchemy"))
    run_tag = uuid.uuid4().hex[:8]
    template = f"etl_bench_{run_tag}_pwtmpl"
    prefix = f"bench-pw-{run_tag}:"
    per_variant = args.warmup + args.count
    results = []
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temporary_database(args.pg_admin_url, template))
        stack.callback(delete_redis_keys, args.redis_url, prefix)
        code = stack.enter_context(code_snapshot(args.code))
        environment["commit"] = code.commit
        home = stack.enter_context(temporary_home(code, "etl_bench_pw_dispatch_", {}))
        env = clean_env() | {
            "DAGSTER_HOME": str(home),
            "ETL_DATABASE_URL": url,
            "ETL_REDIS_URL": args.redis_url,
            "ETL_REDIS_KEY_PREFIX": prefix,
        }
        if code.root:
            env["PYTHONPATH"] = code.pythonpath()
        throughput_py = str(SCRIPT.parent / "throughput.py")
        print("schema setup ...", file=sys.stderr)
        run_script_child([sys.executable, throughput_py, "--child", "setup", "--count", "2"], env, code.cwd)
        # Every variant copies the whole backlog and takes its first warm-up + N queued runs.
        print(f"dispatching {per_variant} jobs ...", file=sys.stderr)
        dispatch = run_script_child(
            [sys.executable, throughput_py, "--child", "dispatch", "--count", str(per_variant)], env, code.cwd
        )
        for index, name in enumerate(args.variant_list):
            print(f"[{name}] ...", file=sys.stderr)
            with contextlib.ExitStack() as inner:
                db = inner.enter_context(
                    temporary_database(args.pg_admin_url, f"etl_bench_{run_tag}_pw{index}", template)
                )
                vhome = inner.enter_context(
                    temporary_home(code, f"etl_bench_pw{index}_", VARIANTS[name].get("yaml", {}))
                )
                venv = env | {"DAGSTER_HOME": str(vhome), "ETL_DATABASE_URL": db}
                argv = [sys.executable, str(SCRIPT), "--child", name]
                argv += ["--count", str(args.count), "--warmup", str(args.warmup)]
                if args.profile_out and VARIANTS[name].get("profile"):
                    argv += ["--profile-out", args.profile_out]
                result = run_script_child(argv, venv, code.cwd)
            print(
                f"[{name}] CPU {result['cpu_ms']['mean']:.1f} ms/run (+{result['child_cpu_ms']['mean']:.1f} "
                f"children), SQL {result['sql']['mean']:.1f}/run",
                file=sys.stderr,
            )
            results.append(result)
    environment["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report = {
        "environment": environment,
        "count": args.count,
        "warmup": args.warmup,
        "dispatch": dispatch,
        "results": results,
    }
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
