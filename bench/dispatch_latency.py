"""Dispatch latency: how long `Fibonacci.dispatch(n=10)` takes to return, per storage backend.

What is measured
    Only the dispatch call: the job record insert (status queued) into the job table plus the
    Dagster run creation and submission to the instance's QueuedRunCoordinator. No dagster-daemon
    runs, so nothing is dequeued or executed. Two configurations, each in its own subprocess (the
    package caches the Dagster instance, code location and SQLAlchemy engines per process, and
    reads its configuration from the environment):

    sqlite    the embedded default: a fresh temporary DAGSTER_HOME holding a copy of
              etl_pipelines/embedded_dagster.yaml (SQLite storage), ETL_DATABASE_URL unset (the
              job table defaults to sqlite:///$DAGSTER_HOME/etl.sqlite).
    postgres  a fresh database etl_bench_<random> on the PostgreSQL server of --pg-admin-url, a
              temporary DAGSTER_HOME with a copy of the repository's dagster.yaml and
              ETL_DATABASE_URL pointing at that database (Dagster's storage and the job table).

    Per configuration:
    - schema setup: one dispatch in a throw-away process first creates Dagster's tables and the
      job table, so the measured process starts against an already-used deployment;
    - import: `import etl_pipelines.jobs.fibonacci` in the measured process (imports Dagster);
    - cold: the first dispatch of the measured process (opens the instance, loads the code
      location in process, builds the job snapshot);
    - N more dispatches timed one by one (wall clock, time.perf_counter): median, p90, p99, max,
      dispatches/s, and the CPU time of the dispatching process per dispatch (time.process_time);
    - for context, N job-record inserts alone (`JobStore(url).create(...)`, as dispatch does),
      so the Dagster part of a dispatch can be told apart from ours.

    Temporary homes and the benchmark database are removed afterwards (DROP DATABASE ... WITH
    (FORCE)), also on errors and Ctrl-C.

    Code: by default a `git archive` copy of HEAD's etl_pipelines/ and dagster.yaml (bench/snapshot.py)
    is first on the processes' PYTHONPATH and their working directory, so edits to the working
    tree during a run do not mix into it; `--code worktree` measures the working tree.

How to run (from the repository root)
    .venv/bin/python bench/dispatch_latency.py                  # both configurations, N = 1000
    .venv/bin/python bench/dispatch_latency.py --count 200 --json
    .venv/bin/python bench/dispatch_latency.py --only postgres --profile --count 200
    .venv/bin/python bench/dispatch_latency.py --only postgres --count 200 --profile-out /tmp/d

    --profile runs the timed dispatches under cProfile and prints the top functions by
    cumulative time (the numbers are then inflated by the profiler; use them for shares only);
    --profile-out PATH also saves the pstats data as PATH.<config>.prof.

Internally the script re-invokes itself as `--worker sqlite|postgres`, with the environment set
before anything from etl_pipelines is imported; the worker prints its results as one JSON object
on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common import clean_env, environment_info, percentile
from snapshot import Code, code_snapshot

SCRIPT = Path(__file__).resolve()
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
CONFIGS = ("sqlite", "postgres")
# Dispatch parameters: the trivial CPU-only job.
FIB_N = 10


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def summarise(samples_s: Sequence[float], cpu_s: float, wall_s: float) -> dict[str, float]:
    """Latency summary in milliseconds of per-call wall times, plus throughput and CPU per call."""
    ms = sorted(s * 1000.0 for s in samples_s)
    n = len(ms)
    return {
        "count": n,
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "median_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        "min_ms": ms[0] if ms else float("nan"),
        "per_second": n / wall_s if wall_s > 0 else float("nan"),
        "cpu_ms_per_call": cpu_s * 1000.0 / n if n else float("nan"),
        "cpu_share": cpu_s / wall_s if wall_s > 0 else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# Worker: runs in a subprocess whose environment is already set
# --------------------------------------------------------------------------------------------


def _timed_calls(
    call: Callable[[], object], count: int, profiler: cProfile.Profile | None = None
) -> tuple[list[float], float, float]:
    """Call `call()` `count` times; per-call wall times, total CPU time, total wall time."""
    samples: list[float] = []
    perf = time.perf_counter
    if profiler is not None:
        profiler.enable()
    cpu0 = time.process_time()
    wall0 = perf()
    for _ in range(count):
        t0 = perf()
        call()
        samples.append(perf() - t0)
    wall = perf() - wall0
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
    return samples, cpu, wall


def run_setup_worker() -> dict[str, Any]:
    """One dispatch on a brand-new deployment: creates Dagster's schema and the job table."""
    t0 = time.perf_counter()
    from etl_pipelines.jobs.fibonacci import Fibonacci

    Fibonacci.dispatch(n=FIB_N)
    return {"setup_s": time.perf_counter() - t0}


def run_worker(
    config: str, count: int, insert_count: int, profile_top: int, profile_out: str | None
) -> dict[str, Any]:
    """The measured process: import, cold dispatch, `count` warm dispatches, record inserts."""
    t0 = time.perf_counter()
    from etl_pipelines.jobs.fibonacci import Fibonacci

    import_s = time.perf_counter() - t0

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    Fibonacci.dispatch(n=FIB_N)
    cold_s = time.perf_counter() - t0
    cold_cpu_s = time.process_time() - cpu0

    profiler = cProfile.Profile() if profile_top else None
    samples, cpu, wall = _timed_calls(lambda: Fibonacci.dispatch(n=FIB_N), count, profiler)
    result: dict[str, Any] = {
        "config": config,
        "import_s": import_s,
        "cold_ms": cold_s * 1000.0,
        "cold_cpu_ms": cold_cpu_s * 1000.0,
        "dispatch": summarise(samples, cpu, wall),
    }
    if profiler is not None:
        import io
        import pstats

        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(profile_top)
        result["profile"] = out.getvalue()
        if profile_out:
            stats.dump_stats(profile_out)

    # Context: the job-record insert alone, as dispatch() does it (same table, same engine).
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    url = Settings.from_env().database_url
    job_type, job_class = Fibonacci.job_type(), Fibonacci.job_class()
    max_retries = len(Fibonacci.retry_schedule(Settings.from_env()))

    def insert() -> None:
        job_id = str(uuid.uuid4())
        JobStore(url).create(
            id=job_id,
            job_type=job_type,
            job_class=job_class,
            queue=Fibonacci.queue,
            payload={"n": FIB_N},
            max_retries=max_retries,
            run_id=job_id,
        )

    samples, cpu, wall = _timed_calls(insert, insert_count)
    result["insert"] = summarise(samples, cpu, wall)
    result["database_backend"] = url.split(":", 1)[0]
    import etl_pipelines

    result["etl_pipelines_imported_from"] = str(Path(etl_pipelines.__file__).parent)
    return result


def worker_main(args: argparse.Namespace) -> int:
    """Entry point of `--worker`: keep stdout for the JSON result only."""
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything printed by libraries goes to stderr
    try:
        if args.setup:
            result = run_setup_worker()
        else:
            result = run_worker(
                args.worker, args.count, args.insert_count, args.profile_top, args.profile_out
            )
    finally:
        sys.stdout = real_stdout
    json.dump(result, real_stdout)
    real_stdout.write("\n")
    real_stdout.flush()
    return 0


# --------------------------------------------------------------------------------------------
# Parent: prepares each configuration, runs its workers, cleans up
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def temporary_home(prefix: str, dagster_yaml: Path) -> Iterator[Path]:
    """A fresh DAGSTER_HOME holding a copy of `dagster_yaml` as dagster.yaml; removed after."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        shutil.copyfile(dagster_yaml, home / "dagster.yaml")
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database etl_bench_<random>; its URL. Dropped WITH (FORCE) after."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"etl_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _run_worker_process(
    config: str, env: dict[str, str], args: argparse.Namespace, setup: bool, cwd: Path
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--worker",
        config,
        "--count",
        str(args.count),
        "--insert-count",
        str(args.insert_count),
    ]
    if setup:
        cmd.append("--setup")
    elif args.profile:
        cmd += ["--profile-top", str(args.profile_top)]
        if args.profile_out:
            # One file per configuration: <path>.<config>.prof
            cmd += ["--profile-out", str(Path(args.profile_out).absolute()) + f".{config}.prof"]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"{config} worker{' (setup)' if setup else ''} exited {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def run_config(config: str, args: argparse.Namespace, code: Code) -> dict[str, Any]:
    """Set up `config`'s deployment, run the setup and measured workers, clean up."""
    env = clean_env()
    if code.root is not None:
        env["PYTHONPATH"] = code.pythonpath()
    with contextlib.ExitStack() as stack:
        if config == "sqlite":
            embedded = code.cwd / "etl_pipelines" / "embedded_dagster.yaml"
            home = stack.enter_context(temporary_home("etl_bench_sqlite_", embedded))
        else:
            url = stack.enter_context(temporary_database(args.pg_admin_url))
            home = stack.enter_context(temporary_home("etl_bench_pg_", code.dagster_yaml))
            env["ETL_DATABASE_URL"] = url
        env["DAGSTER_HOME"] = str(home)
        print(f"[{config}] schema setup (one dispatch in a throw-away process) ...", file=sys.stderr)
        setup = _run_worker_process(config, env, args, setup=True, cwd=code.cwd)
        print(
            f"[{config}] measuring: cold + {args.count} dispatches, {args.insert_count} inserts ...",
            file=sys.stderr,
        )
        result = _run_worker_process(config, env, args, setup=False, cwd=code.cwd)
        result["setup_s"] = setup["setup_s"]
        return result


def format_table(report: dict[str, Any]) -> str:
    """A readable plain-text table of a report."""
    results: list[dict[str, Any]] = report["results"]
    env = report["environment"]
    lines = [
        f"Dispatch latency: Fibonacci.dispatch(n={FIB_N}), {report['count']} timed dispatches and "
        f"{report['insert_count']} record inserts per configuration",
        f"{env['date_utc']}, {env['cpus']} CPUs, load (1 min) {env['loadavg_1m_at_start']} -> "
        f"{env.get('loadavg_1m_at_end', '?')}, Python {env['python']}, dagster {env['dagster']}, "
        f"commit {env['commit']}",
        "",
    ]
    header = ["", *[r["config"] for r in results]]
    rows: list[list[str]] = []

    def row(label: str, fmt: str, get: Callable[[dict[str, Any]], float]) -> None:
        rows.append([label, *[fmt.format(get(r)) for r in results]])

    row("schema setup, first-ever dispatch (s)", "{:.2f}", lambda r: r["setup_s"])
    row("import etl_pipelines.jobs.fibonacci (s)", "{:.2f}", lambda r: r["import_s"])
    row("first dispatch, cold (ms)", "{:.1f}", lambda r: r["cold_ms"])
    row("  CPU of the cold dispatch (ms)", "{:.1f}", lambda r: r["cold_cpu_ms"])
    for key, label in [("dispatch", "dispatch"), ("insert", "record insert alone")]:
        row(f"{label}: median (ms)", "{:.2f}", lambda r, k=key: r[k]["median_ms"])
        row(f"{label}: p90 (ms)", "{:.2f}", lambda r, k=key: r[k]["p90_ms"])
        row(f"{label}: p99 (ms)", "{:.2f}", lambda r, k=key: r[k]["p99_ms"])
        row(f"{label}: max (ms)", "{:.2f}", lambda r, k=key: r[k]["max_ms"])
        row(f"{label}: mean (ms)", "{:.2f}", lambda r, k=key: r[k]["mean_ms"])
        row(f"{label}: per second", "{:.1f}", lambda r, k=key: r[k]["per_second"])
        row(f"{label}: CPU per call (ms)", "{:.2f}", lambda r, k=key: r[k]["cpu_ms_per_call"])
    row(
        "insert share of dispatch median",
        "{:.0%}",
        lambda r: r["insert"]["median_ms"] / r["dispatch"]["median_ms"],
    )
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    fmt_line = lambda cells: "  ".join(  # noqa: E731
        cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells)
    )
    lines.append(fmt_line(header))
    lines.append(fmt_line(["-" * w for w in widths]))
    lines.extend(fmt_line(r) for r in rows)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time Fibonacci.dispatch() against the embedded SQLite default and PostgreSQL.",
    )
    parser.add_argument(
        "--count", type=int, default=1000, help="timed dispatches per configuration (default 1000)"
    )
    parser.add_argument(
        "--insert-count",
        type=int,
        default=None,
        help="job-record inserts timed alone per configuration (default: --count)",
    )
    parser.add_argument(
        "--only", choices=CONFIGS, action="append", help="run only this configuration (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("ETL_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL),
        help="a URL able to CREATE/DROP DATABASE (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the timed dispatches under cProfile and print the top functions (cumulative)",
    )
    parser.add_argument(
        "--profile-top", type=int, default=0, help="with --profile: how many lines (default 40)"
    )
    parser.add_argument(
        "--profile-out",
        metavar="PATH",
        help="with --profile: also save the pstats data as PATH.<config>.prof (for pstats/snakeviz)",
    )
    parser.add_argument(
        "--code",
        default="HEAD",
        help="git ref whose etl_pipelines/ and dagster.yaml are measured (a `git archive` copy), "
        "or 'worktree' (default %(default)s)",
    )
    # Internal: the subprocess side.
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.insert_count is None:
        args.insert_count = args.count
    if args.profile_out and not args.worker:
        args.profile = True
    if args.profile and not args.profile_top:
        args.profile_top = 40
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)

    configs = [c for c in CONFIGS if not args.only or c in args.only]
    environment = environment_info(("dagster", "sqlalchemy"))
    with code_snapshot(args.code) as code:
        environment["commit"] = code.commit
        results = [run_config(config, args, code) for config in configs]
    environment["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report = {
        "environment": environment,
        "count": args.count,
        "insert_count": args.insert_count,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        for result in results:
            if "profile" in result:
                print(f"\ncProfile of {args.count} {result['config']} dispatches (cumulative):")
                print(result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
