"""The benchmark harness: what the scenarios in bench/ share (see bench/README.md).

Servers of the bench's own (a PostgreSQL cluster with pg_stat_statements and a redis-server, in
their own process groups, so their CPU and counters are the bench's alone), code snapshots (`git
archive` of one commit, first on every measured process's PYTHONPATH), child processes returning
JSON, deployments (databases `etl_bench_*`, temporary homes, Redis keys under a prefix), the stack
of one configuration `WxC[mM][iS][t[K]][n][p]` (workers, dagster-daemon and a dispatching process in
process groups, `etl_pipelines.stack.ProcessGroup`/`stop_groups`, sampled from /proc with the
servers), server counters, statistics, markdown tables, the environment, and `main(module)`: every
scenario script's entry point. Only the standard library (and psycopg2, for the counters) is
imported at module level: the RQ scenario's child runs this file with an interpreter that has
neither etl_pipelines nor SQLAlchemy.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import io
import json
import os
import platform
import pstats
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from subprocess import DEVNULL, PIPE
from typing import Any, NamedTuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BIN = Path(sys.executable).parent
# Given servers (the bench then starts none of its own and cannot attribute their CPU).
PG_ADMIN_URL = os.environ.get("ETL_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1/postgres")
REDIS_URL = os.environ.get("ETL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
SERVER_PIDS: dict[str, int] = json.loads(os.environ.get("ETL_BENCH_SERVER_PIDS", "{}"))  # name -> pid
FIB_N = 10  # every scenario's trivial job: Fibonacci(n=10)
CLK_TCK, PAGE_SIZE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
NAN = float("nan")
FINAL = ("completed", "failed", "cancelled")
# Dagster's run events (stored under their legacy PIPELINE_* names), in the order a run meets them:
# (mark, event type, text in it). SENT exists only in the old design (the daemon's launch).
RUN_MARKS = [("ENQUEUED", "PIPELINE_ENQUEUED", None), ("STARTING", "PIPELINE_STARTING", None)]
RUN_MARKS += [("SENT", "ENGINE_EVENT", "Sent to Celery"), ("START", "PIPELINE_START", None)]
RUN_MARKS += [("STEP_START", "STEP_START", None), ("STEP_SUCCESS", "STEP_SUCCESS", None)]
RUN_MARKS += [("SUCCESS", "PIPELINE_SUCCESS", None)]
# The shared server's settings that differ from PostgreSQL's defaults, for the private cluster.
PG_SETTINGS = {"autovacuum": "off", "shared_buffers": "128MB", "max_connections": "300", "TimeZone": "UTC"}
PG_SETTINGS |= {"shared_preload_libraries": "pg_stat_statements", "listen_addresses": "127.0.0.1"}


def say(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, interpolating linearly between ranks."""
    if not sorted_values:
        return NAN
    pos = (len(sorted_values) - 1) * q / 100.0
    low, high = int(pos), min(int(pos) + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarise(seconds: Sequence[float], cpu_s: float | None = None, wall_s: float | None = None) -> dict:
    """Count, median, p90, p99, max, mean in ms of durations; per second and CPU per call if given."""
    ms = sorted(s * 1000.0 for s in seconds)
    out = {"count": len(ms), "mean_ms": statistics.fmean(ms) if ms else NAN, "max_ms": ms[-1] if ms else NAN}
    out |= {f"{name}_ms": percentile(ms, q) for name, q in (("median", 50), ("p90", 90), ("p99", 99))}
    if wall_s:
        out["per_second"] = len(ms) / wall_s
    if cpu_s is not None:
        out["cpu_ms_per_call"] = per_job(cpu_s, len(ms))
    return out


def per_job(seconds: float, jobs: int) -> float:
    return seconds * 1000.0 / jobs if jobs else NAN


def git(*args: str) -> str:
    argv = ["git", "--no-optional-locks", "-C", str(REPO), *args]  # read-only: no index refresh
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(packages: Sequence[str] = ("dagster", "celery", "sqlalchemy")) -> dict[str, Any]:
    """Date, machine, load and versions: what a result is only meaningful next to."""
    from importlib.metadata import PackageNotFoundError, version

    env = {"date_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}", "cpus": os.cpu_count()}
    env["python"] = platform.python_version()
    for package in packages:
        with contextlib.suppress(PackageNotFoundError):
            env[package] = version(package)
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without DAGSTER_HOME, PYTHONPATH or any ETL_ variable, plus `extra`."""
    drop = ("DAGSTER_HOME", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ETL_")} | extra


class Code(NamedTuple):
    """A frozen copy of the package (etl_pipelines/ and dagster.yaml under `root`) and its commit."""

    root: Path
    commit: str

    def pythonpath(self, *extra: Path) -> str:
        return ":".join(str(p) for p in (self.root, *extra))

    @property
    def queued_design(self) -> bool:
        """The old design: a QueuedRunCoordinator with max_concurrent_runs and a daemon dequeue
        tick (up to 961a9de). From 1a55b51 EtlRunCoordinator admits at submission, no config keys."""
        import yaml

        coordinator = yaml.safe_load((self.root / "dagster.yaml").read_text())["run_coordinator"]
        return "max_concurrent_runs" in (coordinator.get("config") or {})


@contextlib.contextmanager
def code_snapshot(ref: str) -> Iterator[Code]:
    """`git archive` of `ref`'s etl_pipelines/ and dagster.yaml (`worktree`: a copy of the files).

    First on PYTHONPATH and the working directory, it precedes the editable install's import hook,
    so edits to the working tree during a run do not mix into it.
    """
    root = Path(tempfile.mkdtemp(prefix="etl_bench_code_"))
    try:
        if ref == "worktree":
            dirty = git("status", "--porcelain", "--", "etl_pipelines", "dagster.yaml").strip()
            commit = git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / "etl_pipelines", root / "etl_pipelines", ignore=ignore)
            shutil.copyfile(REPO / "dagster.yaml", root / "dagster.yaml")
        else:
            commit = git("rev-parse", "--short", ref).strip()
            archive = ["git", "-C", str(REPO), "archive", commit, "etl_pipelines", "dagster.yaml"]
            tar = subprocess.run(archive, capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(tar)) as handle:
                handle.extractall(root, filter="data")
        # Byte-compiled once, as an installed package is (PYTHONDONTWRITEBYTECODE may be set).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root)], check=True)
        yield Code(root, commit)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def child_argv(module: str, function: str, python: str = "", **kw: Any) -> list[str]:
    return [python or sys.executable, str(BENCH / "harness.py"), "--child", module, function, json.dumps(kw)]


def child(env: dict[str, str], cwd: Path, module: str, function: str, python: str = "", **kw) -> dict:
    """`module.function(**kw)` of bench/ in a new process group with `env`; its JSON result."""
    argv = child_argv(module, function, python, **kw)
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=PIPE, stderr=PIPE, start_new_session=True)
    try:
        out, err = (stream.decode(errors="replace") for stream in process.communicate())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 0:
        sys.stderr.write(err[-5000:])
        raise RuntimeError(f"child {module}.{function} exited {process.returncode}")
    return json.loads(out.splitlines()[-1])


def child_main(module: str, function: str, kwargs: str) -> None:
    """The child's side: stdout carries the JSON result only, with where etl_pipelines came from."""
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    result = getattr(importlib.import_module(module), function)(**json.loads(kwargs))
    if package := sys.modules.get("etl_pipelines"):
        result["etl_pipelines_imported_from"] = str(Path(package.__file__).parent)
    print(json.dumps(result), file=real_stdout, flush=True)


# --- the bench's own servers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def servers() -> Iterator[dict[str, int]]:
    """A PostgreSQL cluster (the shared server's settings, pg_stat_statements loaded) and a
    redis-server of the bench's own, each in its own session, for the whole invocation: their CPU
    (PostgreSQL: the postmaster with its backends and what it reaped) and counters are the bench's
    alone. PG_ADMIN_URL, REDIS_URL and SERVER_PIDS point at them (children inherit them through the
    ETL_BENCH_* variables). With ETL_BENCH_PG_ADMIN_URL set, the given servers are used instead.
    """
    global PG_ADMIN_URL, REDIS_URL, SERVER_PIDS
    if SERVER_PIDS or "ETL_BENCH_PG_ADMIN_URL" in os.environ:
        yield SERVER_PIDS
        return
    root = Path(tempfile.mkdtemp(prefix="etl_bench_servers_"))
    processes: list[subprocess.Popen] = []
    saved = {
        k: os.environ.get(k)
        for k in ("ETL_BENCH_PG_ADMIN_URL", "ETL_BENCH_REDIS_URL", "ETL_BENCH_SERVER_PIDS")
    }
    try:
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None  # postgres refuses root
        as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
        root.chmod(0o755)  # mkdtemp's 0700 would keep the postgres user out
        data = root / "pg"
        data.mkdir(mode=0o700)
        if owner:
            os.chown(data, owner.pw_uid, owner.pw_gid)
        pg_bin = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        initdb = [str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        subprocess.run([*initdb, "--no-sync"], check=True, stdout=DEVNULL, cwd=root, **as_owner)
        pg_port, redis_port = free_port(), free_port()
        options = [f"-c{k}={v}" for k, v in PG_SETTINGS.items()]
        argv = [str(pg_bin / "postgres"), "-D", str(data), "-p", str(pg_port), "-k", str(data), *options]
        with (root / "postgres.log").open("wb") as log:
            processes.append(
                subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True, **as_owner)
            )
        argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(root)]
        processes.append(subprocess.Popen(argv, stdout=DEVNULL, stderr=DEVNULL, start_new_session=True))
        PG_ADMIN_URL = f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/postgres"
        REDIS_URL = f"redis://127.0.0.1:{redis_port}/0"
        deadline = time.monotonic() + 60
        while True:
            try:
                with pg(PG_ADMIN_URL) as cursor:
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                import redis

                redis.Redis.from_url(REDIS_URL).ping()
                break
            except Exception:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"private servers did not start; see {root}/postgres.log") from None
                time.sleep(0.2)
        SERVER_PIDS = {"postgres": processes[0].pid, "redis": processes[1].pid}
        os.environ |= {"ETL_BENCH_PG_ADMIN_URL": PG_ADMIN_URL, "ETL_BENCH_REDIS_URL": REDIS_URL}
        os.environ["ETL_BENCH_SERVER_PIDS"] = json.dumps(SERVER_PIDS)
        say(f"private PostgreSQL on :{pg_port} (pid {processes[0].pid}), Redis on :{redis_port}")
        yield SERVER_PIDS
    finally:
        for process, sig in zip(processes, (signal.SIGINT, signal.SIGTERM), strict=False):  # fast shutdown
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        SERVER_PIDS = {}
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def pg(url: str) -> Iterator[Any]:
    """An autocommit psycopg2 cursor on `url` (a SQLAlchemy or libpq URL)."""
    import psycopg2

    connection = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


DB_COUNTERS = ("xact_commit", "xact_rollback", "sessions", "tup_inserted", "tup_updated", "tup_deleted")


def counters(database: str, reset_statements: bool = False) -> dict[str, Any]:
    """pg_stat_database counters of `database`, its pg_stat_statements (then reset, if asked: the
    view is global, the bench's own cluster serves nobody else), Redis INFO commandstats."""
    import redis

    out: dict[str, Any] = {"t": time.time()}
    with pg(PG_ADMIN_URL) as cursor:
        columns = ", ".join(DB_COUNTERS)  # constants
        cursor.execute(f"SELECT {columns} FROM pg_stat_database WHERE datname = %s", [database])  # noqa: S608
        out["pg"] = dict(zip(DB_COUNTERS, cursor.fetchone(), strict=True))
        try:
            cursor.execute(
                "SELECT query, calls, total_exec_time FROM pg_stat_statements s JOIN pg_database d"
                " ON d.oid = s.dbid WHERE d.datname = %s",
                [database],
            )
            out["statements"] = [list(row) for row in cursor.fetchall()]
            if reset_statements:
                cursor.execute("SELECT pg_stat_statements_reset()")
        except Exception:  # not loaded on given servers
            out["statements"] = None
    client = redis.Redis.from_url(REDIS_URL)
    out["redis"] = {
        k.removeprefix("cmdstat_"): [v["calls"], v["usec"]] for k, v in client.info("commandstats").items()
    }
    client.close()
    return out


def counter_delta(before: dict, after: dict, jobs: int) -> dict[str, Any]:
    """Per job: transactions, sessions, rows; SQL statements (all, and the top ones); Redis commands."""
    pg_delta = {k: (after["pg"][k] - before["pg"][k]) / jobs for k in DB_COUNTERS}
    out: dict[str, Any] = {"pg_per_job": pg_delta}
    if after["statements"] is not None:
        # Without the bench's own polling (job_counts).
        grouped: dict[str, list[float]] = {}
        for query, calls, ms in after["statements"]:
            if "GROUP BY status" not in query:
                # NOTIFY is not normalised: one entry per payload. Grouped here.
                key = re.sub(r"^(NOTIFY \w+), '.*'$", r"\1, '…'", query.strip())
                grouped[key] = [x + y for x, y in zip(grouped.get(key, [0, 0.0]), (calls, ms), strict=True)]
        rows = sorted(([q, c, t] for q, (c, t) in grouped.items()), key=lambda r: -r[1])
        utility = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SET|SHOW|SAVEPOINT|RELEASE)\b", re.I)
        out["statements_per_job"] = sum(r[1] for r in rows) / jobs
        out["statements_not_utility_per_job"] = sum(r[1] for r in rows if not utility.match(r[0])) / jobs
        out["statement_ms_per_job"] = sum(r[2] for r in rows) / jobs
        out["top_statements"] = [
            [" ".join(q.split())[:160], c / jobs, t / c if c else 0] for q, c, t in rows[:25]
        ]
    calls = {k: v[0] - before["redis"].get(k, [0, 0])[0] for k, v in after["redis"].items()}
    usec = {k: v[1] - before["redis"].get(k, [0, 0])[1] for k, v in after["redis"].items()}
    calls.pop("info", None)  # the bench's own INFO
    out["redis_commands_per_job"] = sum(calls.values()) / jobs
    out["redis_top"] = [
        [k, c / jobs, usec[k] / c if c else 0] for k, c in Counter(calls).most_common(12) if c
    ]
    return out


# --- deployments ---------------------------------------------------------------------------------


def setup_schema() -> dict:
    """Child: Dagster's schema and the job table for DAGSTER_HOME and ETL_DATABASE_URL."""
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    get_instance().get_runs_count()
    JobStore(Settings.from_env().database_url)
    return {}


def timed(call: Callable[[], object], count: int, profiler: cProfile.Profile | None = None) -> dict:
    """`call()` `count` times: the per-call wall times summarised, calls per second, CPU per call."""
    samples, perf = [], time.perf_counter
    cpu0, wall0 = time.process_time(), perf()
    with profiler or contextlib.nullcontext():
        for _ in range(count):
            t0 = perf()
            call()
            samples.append(perf() - t0)
    return summarise(samples, time.process_time() - cpu0, perf() - wall0)


def dispatch_jobs(count: int, definitions: str | None = None, profile_out: str | None = None) -> dict:
    """Child: `count` x `Fibonacci.dispatch(n=10)`; the first (cold) apart, the others timed."""
    t0 = time.perf_counter()
    from etl_pipelines.jobs.fibonacci import Fibonacci

    if definitions:  # the product's dispatch(), loading another code location (same names)
        from etl_pipelines.framework import _dagster_internal

        _dagster_internal.DEFINITIONS_MODULE = definitions
    result: dict[str, Any] = {"import_s": time.perf_counter() - t0}
    cpu0, t0 = time.process_time(), time.perf_counter()
    Fibonacci.dispatch(n=FIB_N)
    result["cold_ms"] = (time.perf_counter() - t0) * 1000
    result["cold_cpu_ms"] = (time.process_time() - cpu0) * 1000
    profiler = cProfile.Profile() if profile_out else None
    result["warm"] = timed(lambda: Fibonacci.dispatch(n=FIB_N), count - 1, profiler)
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        profiler.dump_stats(profile_out)
        result["profile"] = text.getvalue()
    return result


def drive(
    job: str,
    params: dict,
    count: int,
    warmup: int,
    sequential: bool,
    result: str,
    ready: str,
    go: str,
    definitions: str | None = None,
    gap: float = 0.2,
) -> dict:
    """Child: the dispatching process of a stack run (what an application calling dispatch() is).

    Imports, dispatches `warmup` jobs at once and waits for them (every worker process and the
    daemon warm), touches `ready`, waits for `go`; then dispatches `count` jobs, timed: all at once,
    or (`sequential`) one at a time, each after the last ended and `gap` s more (an idle stack).
    Writes its result to `result` and stays alive (so its CPU stays in /proc) until it is stopped.
    """
    from etl_pipelines.framework.registry import get_job_type

    if definitions:  # the product's dispatch(), loading another code location (same names)
        from etl_pipelines.framework import _dagster_internal

        _dagster_internal.DEFINITIONS_MODULE = definitions
    job_cls = get_job_type(job)
    for handle in [job_cls.dispatch(**params) for _ in range(warmup)]:
        handle.wait(timeout=600, poll=0.05)
    storage = instance_storage()
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    t_start, cpu0, samples = time.time(), time.process_time(), []
    for _ in range(count):
        t0 = time.perf_counter()
        handle = job_cls.dispatch(**params)
        samples.append(time.perf_counter() - t0)
        if sequential:
            handle.wait(timeout=600, poll=0.01)
            time.sleep(gap)
    out = {
        "t_start": t_start,
        "t_dispatched": time.time(),
        "dispatch": summarise(samples, time.process_time() - cpu0),
        "instance_storage": storage,
    }
    Path(result).write_text(json.dumps(out))
    time.sleep(3600)
    return out


def instance_storage() -> dict[str, str]:
    """What an instance built from DAGSTER_HOME's dagster.yaml gets, as dagster-daemon and its
    code server build it (`DagsterInstance.get()`, without etl_pipelines' own pooling): the
    storage's class and each storage's connection pool (`NullPool`: a new connection per query)."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    try:
        ref = instance.get_ref().storage_data
        out = {"dagster.yaml": f"{ref.module_name}.{ref.class_name}" if ref else "-"}
        for name in ("run_storage", "event_log_storage", "schedule_storage"):
            storage = getattr(instance, name)
            pool = getattr(getattr(storage, "_engine", None), "pool", None)
            out[name] = f"{type(storage).__name__} ({type(pool).__name__})"
        return out
    finally:
        instance.dispose()


@contextlib.contextmanager
def database(name: str, template: str | None = None) -> Iterator[str]:
    """Database `name` (a copy of `template` if given); its URL. Dropped WITH (FORCE) afterwards."""
    with pg(PG_ADMIN_URL) as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"' + f' TEMPLATE "{template}"' * bool(template))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with pg(PG_ADMIN_URL) as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def home(prefix: str, files: dict[str, str]) -> Iterator[Path]:
    """A temporary directory holding `files` (name -> text); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        for name, text in files.items():
            (path / name).write_text(text)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def delete_redis_keys(prefix: str) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)


def instance_yaml(code: Code, edit: Callable | None = None, redis_prefix: str = "", **settings: Any) -> str:
    """The measured commit's dagster.yaml, changed by `edit` and with top-level `settings`."""
    import yaml

    instance = yaml.safe_load((code.root / "dagster.yaml").read_text()) | settings
    if redis_prefix and "config" in instance.get("run_launcher", {}):  # launcher settings (from 7d3e41b)
        instance["run_launcher"]["config"]["redis_key_prefix"] = redis_prefix
    if edit:
        edit(instance)
    return yaml.safe_dump(instance)


def workspace_yaml(module: str, directory: Path) -> str:
    location = {"module_name": module, "location_name": "etl_pipelines", "working_directory": str(directory)}
    return json.dumps({"load_from": [{"python_module": location}]})  # JSON is YAML


@contextlib.contextmanager
def schema_template(tag: str, code: Code, env: dict, cwd: Path | None = None) -> Iterator[tuple[str, dict]]:
    """A template database etl_bench_<tag>_tmpl with the commit's schema; its name and the env."""
    name = f"etl_bench_{tag}_tmpl"
    with database(name) as url, home(f"etl_bench_{tag}_", {"dagster.yaml": instance_yaml(code)}) as path:
        env = clean_env(DAGSTER_HOME=str(path), ETL_DATABASE_URL=url, PYTHONPATH=code.pythonpath(BENCH)) | env
        child(env, cwd or code.root, "harness", "setup_schema")
        yield name, env


@dataclass(frozen=True)
class Config:
    """WxC[mM][iSECONDS][t[K]][n][p]: W workers with --concurrency C; n: no dagster-daemon; p: the
    storage of dagster.yaml (etl_pipelines' PooledPostgresStorage, from 395484b) replaced by
    bench_storage's, which dagster.yaml really builds. The old design's dequeue knobs (up to 961a9de
    only): max_concurrent_runs M (default W*C), dequeue_interval_seconds (default dagster.yaml's),
    t: dequeue_use_threads, K dequeue workers (M)."""

    workers: int
    concurrency: int
    max_runs: int | None = None
    interval: float | None = None
    threads: int = 0
    daemon: bool = True
    storage_fix: bool = False

    @classmethod
    def parse_list(cls, specs: str) -> list[Config]:
        configs = []
        for spec in filter(None, specs.split(",")):
            pattern = r"(\d+)x(\d+)(?:m(\d+))?(?:i(\d+(?:\.\d*)?|\.\d+))?(t(\d+)?)?(n)?(p)?"
            m = re.fullmatch(pattern, spec.strip())
            if not m:
                raise argparse.ArgumentTypeError(
                    f"bad configuration {spec!r}: expected WxC[mM][iS][t[K]][n][p]"
                )
            runs = int(m[3]) if m[3] else None
            interval = float(m[4]) if m[4] else None
            threads = int(m[6] or runs or int(m[1]) * int(m[2])) * bool(m[5])
            configs.append(cls(int(m[1]), int(m[2]), runs, interval, threads, not m[7], bool(m[8])))
        return configs

    @property
    def slots(self) -> int:
        return self.workers * self.concurrency

    def label(self, code: Code | None = None) -> str:
        queued = code.queued_design if code else self.max_runs is not None
        runs = f" m{self.max_runs or self.slots}" if queued else ""
        interval = "" if self.interval is None else f" i{self.interval:g}"
        threads = f" t{self.threads}" if self.threads else ""
        text = f"{self.workers}x{self.concurrency}{runs}{interval}{threads}"
        return text + " no daemon" * (not self.daemon) + " pooled-fix" * self.storage_fix

    @property
    def fractional(self) -> bool:
        """Dagster's dequeue_interval_seconds is IntSource: a fractional one needs bench_coordinator."""
        return self.interval is not None and self.interval != int(self.interval)

    def check(self, code: Code) -> None:
        """The old design needs dagster-daemon; the new one has no dequeue knobs."""
        if code.queued_design and not self.daemon:
            raise ValueError(
                f"{self.label(code)}: {code.commit} starts runs from dagster-daemon's dequeue tick"
            )
        if not code.queued_design and (self.max_runs or self.interval is not None or self.threads):
            raise ValueError(f"{self.label()}: {code.commit}'s EtlRunCoordinator has no dequeue settings")
        if self.storage_fix and "PooledPostgresStorage" not in (code.root / "dagster.yaml").read_text():
            raise ValueError(f"{self.label()}: {code.commit}'s dagster.yaml names no PooledPostgresStorage")

    def apply(self, instance: dict) -> None:
        """This configuration's coordinator settings, into a dagster.yaml dict (the old design's)."""
        if self.storage_fix:  # the same config (the bench's database URL from ETL_DATABASE_URL)
            instance["storage"]["custom"] |= {"module": "bench_storage", "class": "PooledPostgresStorage"}
        coordinator = instance["run_coordinator"]
        settings = coordinator.get("config")
        if not settings or "max_concurrent_runs" not in settings:
            return  # admission at submission: nothing to set
        settings["max_concurrent_runs"] = self.max_runs or self.slots
        if self.fractional:
            coordinator["module"], coordinator["class"] = "bench_coordinator", "BenchRunCoordinator"
        elif self.interval is not None:
            settings["dequeue_interval_seconds"] = int(self.interval)
        if self.threads:
            settings |= {"dequeue_use_threads": True, "dequeue_num_workers": self.threads}


# --- processes and /proc -------------------------------------------------------------------------


def start(name: str, argv: Sequence[str], env: dict[str, str], log: Path, cwd: Path) -> Any:
    """A process in its own session (an `etl_pipelines.stack.ProcessGroup`), its output into `log`."""
    from etl_pipelines.stack import ProcessGroup

    class LoggedGroup(ProcessGroup):
        def __init__(self) -> None:  # ProcessGroup's, with a log file and a working directory
            self.name, self.log = name, log
            with log.open("wb") as out:
                self.process = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdout=out, stderr=out, start_new_session=True
                )

        def output(self) -> str:
            return log.read_text(errors="replace") if log.exists() else ""

    return LoggedGroup()


def proc_stats() -> dict[int, tuple[float, float, int, int, int]]:
    """pid -> (own CPU s, reaped children's CPU s, RSS bytes, process group, parent) of every process."""
    stats = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
            f = raw[
                raw.rfind(")") + 2 :
            ].split()  # f[0] is field 3: ppid 4, pgrp 5, utime 14 .. cstime 17, rss 24
            cpu = [int(v) / CLK_TCK for v in f[11:15]]
            stats[int(pid)] = (cpu[0] + cpu[1], cpu[2] + cpu[3], int(f[21]) * PAGE_SIZE, int(f[2]), int(f[1]))
    return stats


def members(stats: dict, root: int) -> dict[int, tuple]:
    """A group: the processes in `root`'s process group, and `root`'s children (PostgreSQL's backends
    each start a session of their own)."""
    return {pid: s for pid, s in stats.items() if s[3] == root or s[4] == root}


def group_memory(root: int) -> dict[str, float]:
    """RSS and PSS (MB) and the number of processes of a group."""
    group = members(proc_stats(), root)
    pss = 0
    for pid in group:
        with contextlib.suppress(OSError):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            pss += sum(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    rss = sum(s[2] for s in group.values())
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**10, "processes": len(group)}


def group_cpu(roots: Sequence[int]) -> float:
    stats = proc_stats()
    return sum(s[0] + s[1] for root in roots for s in members(stats, root).values())


def cpu_snapshot(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each group (name -> root pid) and of the whole machine, now: two snapshots
    give a window's CPU without a sampling thread beside a process whose latency is measured."""
    stats, values = proc_stats(), [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
    out = {"t": time.time(), "busy": (sum(values[:8]) - values[3] - values[4]) / CLK_TCK}
    return out | {
        name: sum(s[0] + s[1] for s in members(stats, root).values()) for name, root in groups.items()
    }


def wait_quiet(roots: Sequence[int], cores: float = 0.15, timeout: float = 30.0) -> float:
    """Wait until the groups use under `cores` over a second (start-up work done); seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = group_cpu(roots)
        time.sleep(1.0)
        if group_cpu(roots) - before < cores:
            break
    return time.monotonic() - t0


@dataclass
class Sampler:
    """CPU (utime+stime+cutime+cstime) and RSS of groups every 0.25 s, per group and per pid."""

    groups: dict[str, int] = field(default_factory=dict)  # name -> root pid
    samples: list[dict[str, Any]] = field(default_factory=list)
    pids: dict[int, dict[str, Any]] = field(default_factory=dict)  # per pid: group, cmdline, CPU first/last
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        stats, values = proc_stats(), [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
        row: dict[str, Any] = {"t": time.time(), "busy": (sum(values[:8]) - values[3] - values[4]) / CLK_TCK}
        for name, root in list(self.groups.items()):
            group = members(stats, root)
            row[name] = (sum(s[0] + s[1] for s in group.values()), sum(s[2] for s in group.values()))
            for pid, (own, children, *_) in group.items():
                if pid not in self.pids:
                    with contextlib.suppress(OSError):
                        cmd = Path(f"/proc/{pid}/cmdline").read_text(errors="replace").replace("\0", " ")
                        self.pids[pid] = {"group": name, "cmdline": cmd, "own0": own, "children0": children}
                if pid in self.pids:
                    self.pids[pid] |= {"own": own, "children": children}
        self.samples.append(row)

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()

    def at(self, t: float, get: Callable[[dict], float]) -> float:
        """`get(sample)` interpolated linearly at time `t` (clamped to the sampled range)."""
        for a, b in pairwise(self.samples):
            if a["t"] <= t <= b["t"]:
                share = (t - a["t"]) / (b["t"] - a["t"]) if b["t"] > a["t"] else 0.0
                return get(a) + (get(b) - get(a)) * share
        return get(self.samples[0] if t < self.samples[0]["t"] else self.samples[-1])

    def cpu(self, names: Sequence[str], t0: float, t1: float) -> float:
        def get(row: dict) -> float:
            return sum(row.get(name, (0.0, 0))[0] for name in names)

        return self.at(t1, get) - self.at(t0, get)

    def busy(self, t0: float, t1: float) -> float:
        return self.at(t1, lambda r: r["busy"]) - self.at(t0, lambda r: r["busy"])

    def peak(self, name: str) -> float:
        return max((row.get(name, (0, 0))[1] for row in self.samples), default=0) / 2**20


def event_phases(engine: Any, run_ids: set[str]) -> dict[str, Any]:
    """Per-run phase durations between consecutive RUN_MARKS that the runs have (Dagster's event_logs)."""
    import sqlalchemy as sa

    query = "SELECT run_id, dagster_event_type, extract(epoch FROM timestamp), event FROM event_logs "
    with engine.connect() as connection:
        types = {"types": sorted({mark[1] for mark in RUN_MARKS})}
        rows = connection.execute(sa.text(query + "WHERE dagster_event_type = ANY(:types)"), types).all()
    runs: dict[str, dict[str, float]] = {}
    for run_id, kind, ts, event in rows:
        for name, stored, text in RUN_MARKS if run_id in run_ids else ():
            if kind == stored and (text is None or text in event):
                runs.setdefault(run_id, {}).setdefault(name, float(ts))
    present = [m[0] for m in RUN_MARKS if any(m[0] in r for r in runs.values())]
    phases = [(f"{a} → {b}", a, b) for a, b in pairwise(present)]
    phases += [(f"**whole run: {present[0]} → {present[-1]}**", present[0], present[-1])] if present else []
    return {
        label: summarise([r[b] - r[a] for r in runs.values() if {a, b} <= r.keys()]) for label, a, b in phases
    }


# --- one stack run -------------------------------------------------------------------------------


def stack_arguments(parser: argparse.ArgumentParser, count: int, configs: str, timeout: float) -> None:
    parser.add_argument(
        "--count", type=int, default=count, help="measured jobs per configuration (%(default)s)"
    )
    parser.add_argument(
        "--configs", type=Config.parse_list, default=configs, help="WxC[mM][iS][t[K]][n][p], ..."
    )
    parser.add_argument("--warmup", type=int, help="jobs first, unmeasured (default: 2 per worker process)")
    parser.add_argument("--timeout", type=float, default=timeout, help="s per configuration (%(default)s)")
    add_code_option(parser)


def production_environment(redis_prefix: str, config: Config | None) -> dict:
    env = {"ETL_REDIS_URL": REDIS_URL, "ETL_REDIS_KEY_PREFIX": redis_prefix}
    if config and config.fractional:  # read by bench_coordinator.BenchRunCoordinator
        env["BENCH_DEQUEUE_INTERVAL_SECONDS"] = repr(config.interval)
    return env


def production_files(code: Code, config: Config, redis_prefix: str) -> dict:
    return {
        "dagster.yaml": instance_yaml(code, config.apply, redis_prefix),
        "workspace.yaml": workspace_yaml("etl_pipelines.definitions", code.root),
    }


def production_worker_argv(config: Config, number: int) -> list[str]:
    """`etl-jobs worker` of the snapshot (`python -m etl_pipelines.cli`, the snapshot first on the path)."""
    cli = [sys.executable, "-m", "etl_pipelines.cli", "worker"]
    return [*cli, "--concurrency", str(config.concurrency), "-n", f"bw{number}@%h"]


def measure_configs(mode: Any, args: argparse.Namespace) -> dict:
    """A stack scenario: each of `args.configs` on a fresh copy of a schema-only template.

    The `mode` module says what is dispatched: JOB, PARAMS, SEQUENTIAL; optionally how the stack
    is made (`environment`, `files`, `worker_argv`, DISPATCH: drive()'s extra arguments, PACKAGES,
    `analyse(sampler, result)`); by default the production stack of the commit.
    """
    tag, results = uuid.uuid4().hex[:8], []
    environment_of = getattr(mode, "environment", production_environment)
    with code_snapshot(args.code) as code:
        for config in args.configs if not hasattr(mode, "files") else ():  # the production stack
            config.check(code)
        env = environment_of(f"bench-{tag}:schema:", None)
        with schema_template(tag, code, env, getattr(mode, "DISPATCH", {}).get("cwd")) as (template, _):
            try:
                for index, config in enumerate(args.configs):
                    result, sampler = run_stack(mode, config, code, template, f"{tag}_{index}", args)
                    results.append(
                        result | (mode.analyse(sampler, result) if hasattr(mode, "analyse") else {})
                    )
            finally:
                delete_redis_keys(f"bench-{tag}")
    summary = {"environment": environment(getattr(mode, "PACKAGES", ("dagster", "celery", "sqlalchemy")))}
    return summary | {"commit": code.commit, "count": args.count, "results": results}


def run_stack(
    mode: Any, config: Config, code: Code, template: str, name: str, args: Any
) -> tuple[dict, Sampler]:
    """Workers (until "ready."), dagster-daemon (until it beats), a dispatching process (drive())
    with its warm-up; then, sampled: `args.count` jobs dispatched, until all are final."""
    import sqlalchemy as sa

    from etl_pipelines.stack import stop_groups

    groups, sampler, prefix = [], Sampler(), f"bench-{name.replace('_', ':')}:"
    files = getattr(mode, "files", production_files)(code, config, prefix)
    environment_of = getattr(mode, "environment", production_environment)
    worker_argv = getattr(mode, "worker_argv", production_worker_argv)
    warmup = 2 * config.slots if args.warmup is None else args.warmup
    count = mode.count_for(config, args) if hasattr(mode, "count_for") else args.count
    label = config.label(code)
    with contextlib.ExitStack() as cleanup:
        db = f"etl_bench_{name}"
        url = cleanup.enter_context(database(db, template))
        path = cleanup.enter_context(home(f"etl_bench_{name}_", files))
        env = clean_env(**environment_of(prefix, config), DAGSTER_HOME=str(path), ETL_DATABASE_URL=url)
        env["PYTHONPATH"] = code.pythonpath(BENCH, path)
        engine = sa.create_engine(url, pool_size=1)  # one connection: no new sessions while measuring
        cleanup.callback(engine.dispose)

        def stop_all() -> None:
            stop_groups(groups)
            for group in groups if args.log_dir else ():
                args.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(group.log, args.log_dir / f"{name}-{group.name}.log")

        cleanup.callback(stop_all)
        for n in range(1, config.workers + 1):
            groups.append(
                start(f"worker{n}", worker_argv(config, n), env, path / f"worker{n}.log", code.root)
            )
        deadline = time.monotonic() + 180
        for group in groups:
            while "ready." not in group.output():
                if not group.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{group.name} did not start:\n{group.output()[-3000:]}")
                time.sleep(0.2)
        if config.daemon:
            argv = [str(BIN / "dagster-daemon"), "run", "-w", str(path / "workspace.yaml")]
            groups.append(start("daemon", argv, env, path / "daemon.log", code.root))
            wait_daemon(engine, groups[-1])
        dispatch = getattr(mode, "DISPATCH", {})
        files_of = {k: str(path / f"dispatcher.{k}") for k in ("result", "ready", "go")}
        kw = {"job": mode.JOB, "params": mode.PARAMS, "count": count, "warmup": warmup}
        kw |= {"sequential": mode.SEQUENTIAL, **files_of, **{k: v for k, v in dispatch.items() if k != "cwd"}}
        argv = child_argv("harness", "drive", **kw)
        groups.append(
            dispatcher := start(
                "dispatcher", argv, env, path / "dispatcher.log", dispatch.get("cwd", code.root)
            )
        )
        ready = f"{config.workers} worker(s) ready" + ", daemon up" * config.daemon
        say(f"[{label}] {ready}; {warmup} warm-up jobs ...")
        while not Path(files_of["ready"]).exists():
            if not dispatcher.alive() or any(not g.alive() for g in groups):
                raise RuntimeError(f"a process exited during the warm-up:\n{dispatcher.output()[-3000:]}")
            time.sleep(0.2)
        quiet = wait_quiet([g.process.pid for g in groups])
        sampler.groups = {g.name: g.process.pid for g in groups} | SERVER_PIDS
        sampler.start()
        before = counters(db, reset_statements=True)
        event_rows0 = event_counts(engine)
        say(f"[{label}] quiet after {quiet:.0f} s; {count} jobs{' one at a time' * mode.SEQUENTIAL} ...")
        spies = py_spy(groups, mode.py_spy_dir(label)) if hasattr(mode, "py_spy_dir") else []
        Path(files_of["go"]).touch()
        try:
            t_go, last_report, timed_out = time.time(), time.monotonic(), False
            while sum(n for status, n in job_counts(engine).items() if status in FINAL) < warmup + count:
                if dead := [g.name for g in groups if not g.alive()]:
                    raise RuntimeError(f"{dead} exited:\n{groups[-1].output()[-3000:]}")
                if timed_out := time.time() - t_go > args.timeout:
                    break
                if time.monotonic() - last_report > 15:
                    say(f"[{label}] {job_counts(engine)}")
                    last_report = time.monotonic()
                time.sleep(0.25)
            t_done = time.time()
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
            for spy in spies:
                spy.wait(timeout=60)
            after_commands = counters(db)
            time.sleep(1.5)  # backends report pg_stat_database at most once a second
            after = counters(db)
            after["redis"] = after_commands["redis"]
        finally:
            sampler.stop()
        while not Path(files_of["result"]).exists() and dispatcher.alive():
            time.sleep(0.1)
        driven = json.loads(Path(files_of["result"]).read_text())
        memory = {g.name: group_memory(g.process.pid) | {"peak_rss_mb": sampler.peak(g.name)} for g in groups}
        event_rows = {k: v - event_rows0.get(k, 0) for k, v in event_counts(engine).items()}
        stop_all()
        query = "SELECT run_id, status, extract(epoch FROM created_at), extract(epoch FROM started_at), "
        query += "extract(epoch FROM finished_at) FROM etl_jobs WHERE created_at >= to_timestamp(:t)"
        with engine.connect() as connection:
            rows = connection.execute(sa.text(query), {"t": driven["t_start"] - 0.001}).all()
        done = [(float(c), float(s), float(f)) for _, status, c, s, f in rows if status == "completed"]
        t0, t1 = driven["t_start"], max((f for *_, f in done), default=t_done)
        window = t1 - t0 or NAN
        workers = [g.name for g in groups if g.name.startswith("worker")]
        ours = [*sampler.groups]
        cpu = {g: per_job(sampler.cpu([g], t0, t1), len(done)) for g in ours if not g.startswith("worker")}
        cpu["workers"] = per_job(sampler.cpu(workers, t0, t1), len(done))
        result = (
            {"config": label, "commit": code.commit}
            | vars(config)
            | {
                "count": count,
                "warmup": warmup,
                "completed": len(done),
                "status_counts": {s: sum(1 for r in rows if r[1] == s) for s in {r[1] for r in rows}},
                "timed_out": timed_out,
                "window_s": window,
                "throughput_jobs_s": len(done) / window,
                "started_window_s": t1 - min((s for _, s, _ in done), default=t0),
                "dispatch": driven["dispatch"],
                "instance_storage": driven.get("instance_storage", {}),
                "dispatch_s": driven["t_dispatched"] - t0,
                "cpu_ms_per_job": cpu,
                "total_cpu_ms_per_job": per_job(sampler.cpu(ours, t0, t1), len(done)),
                "cores": {g: sampler.cpu([g], t0, t1) / window for g in ours},
                "machine_busy_cores": sampler.busy(t0, t1) / window,
                "memory": memory,
                "created_to_started": summarise([s - c for c, s, _ in done]),
                "started_to_finished": summarise([f - s for _, s, f in done]),
                "created_to_finished": summarise([f - c for c, _, f in done]),
                "event_rows_per_job": {k: v / len(done) for k, v in event_rows.items() if v} if done else {},
                "counters": counter_delta(before, after, len(done)) if done else {},
                "phases": event_phases(engine, {r[0] for r in rows}),
            }
        )
        result["other_cores"] = result["machine_busy_cores"] - sum(result["cores"].values())
        result["worker_split_ms_per_job"] = worker_split(sampler, groups, len(done))
        return result, sampler


def worker_split(sampler: Sampler, groups: Sequence[Any], jobs: int) -> dict[str, float]:
    """The workers' CPU per job (whole sampling, not the window: a little more than the window's)
    split into the main `etl-jobs worker` processes (Celery's consumer) and their pool processes."""
    roots = {g.process.pid for g in groups if g.name.startswith("worker")}
    split = {"main": 0.0, "pool": 0.0}
    for pid, info in sampler.pids.items():
        if info["group"].startswith("worker") and "own" in info:
            cpu = info["own"] - info["own0"] + info["children"] - info["children0"]
            split["main" if pid in roots else "pool"] += cpu
    return {k: per_job(v, jobs) for k, v in split.items()}


def py_spy(groups: Sequence[Any], directory: Path, rate: int = 100) -> list[subprocess.Popen]:
    """py-spy (not blocking the process) on every group with its subprocesses: `<group>.txt`,
    collapsed stacks with their sample counts (py-spy leaves out idle threads by default)."""
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for group in groups:
        argv = [str(BIN / "py-spy"), "record", "--pid", str(group.process.pid), "--subprocesses"]
        argv += ["--nonblocking", "--rate", str(rate), "--format", "raw"]
        argv += ["--output", str(directory / f"{group.name}.txt")]
        log = (directory / f"{group.name}.py-spy.log").open("wb")
        spies.append(subprocess.Popen(argv, stdout=log, stderr=log))
    time.sleep(0.5)  # attached before the first dispatch
    return spies


def wait_daemon(engine: Any, daemon: Any, timeout: float = 90.0) -> None:
    """Until dagster-daemon's daemons have all beaten once (their number stable for 3 s)."""
    import sqlalchemy as sa

    deadline, seen, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"dagster-daemon exited:\n{daemon.output()[-3000:]}")
        with contextlib.suppress(Exception), engine.connect() as connection:
            n = connection.execute(
                sa.text("SELECT count(DISTINCT daemon_type) FROM daemon_heartbeats")
            ).scalar()
            if n != seen:
                seen, since = n, time.monotonic()
            elif n >= 3 and time.monotonic() - since > 3:
                return
        time.sleep(0.5)
    raise RuntimeError(f"dagster-daemon did not beat in {timeout:g} s:\n{daemon.output()[-3000:]}")


def event_counts(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT coalesce(dagster_event_type, 'user log'), count(*) FROM event_logs GROUP BY 1")
        )
        return dict(rows.all())


def job_counts(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        counts = connection.execute(sa.text("SELECT status, count(*) FROM etl_jobs GROUP BY status"))
        return dict(counts.all())


# --- reports -------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.1f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(map(fmt, row)) + " |" for row in rows]) + "\n"


def columns(results: Sequence[dict], rows: Sequence[tuple[str, Callable[[dict], Any]]]) -> str:
    """A markdown table with a column per configuration; a cell that cannot be computed is '-'."""

    def cell(get: Callable[[dict], Any], r: dict) -> Any:
        try:
            return get(r)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
            return "-"

    body = [[label, *[cell(get, r) for r in results]] for label, get in rows]
    names = [f"{r['config']} ({r['commit']})" if "commit" in r else r["config"] for r in results]
    return table(["", *names], body)


def cpu_split(r: dict) -> str:
    c = {"daemon": NAN, "postgres": NAN, "redis": NAN} | r["cpu_ms_per_job"]
    return " / ".join(fmt(c[k]) for k in ("workers", "dispatcher", "daemon", "postgres", "redis"))


CPU_ROWS = [
    ("**CPU per job, all processes (ms)**", lambda r: f"**{r['total_cpu_ms_per_job']:.1f}**"),
    ("… workers / dispatcher / daemon / PostgreSQL / Redis (ms)", cpu_split),
    (
        "machine busy / of it others' processes (cores)",
        lambda r: f"{r['machine_busy_cores']:.2f} / {r['other_cores']:.2f}",
    ),
]
COUNTER_ROWS = [
    ("Dagster event-log rows per job", lambda r: sum(r["event_rows_per_job"].values())),
    (
        "SQL statements per job (without BEGIN/COMMIT/SET)",
        lambda r: "{statements_per_job:.1f} ({statements_not_utility_per_job:.1f})".format(**r["counters"]),
    ),
    (
        "transactions committed / new connections per job",
        lambda r: "{xact_commit:.1f} / {sessions:.2f}".format(**r["counters"]["pg_per_job"]),
    ),
    ("Redis commands per job", lambda r: r["counters"]["redis_commands_per_job"]),
]


def stack_report(title: str, result: dict, rows: list[tuple[str, Callable[[dict], Any]]]) -> str:
    """measure_configs' result: `rows`, then each phase's median."""
    phases = list(dict.fromkeys(k for r in result["results"] for k in r["phases"]))
    rows = rows + [(f"{k}, median (ms)", lambda r, k=k: r["phases"][k]["median_ms"]) for k in phases]
    text = f"## {title}\n\n{header(result)}\n"
    return text + columns(result["results"], [("completed", completed), *rows])


def completed(r: dict) -> str:
    return f"{r['completed']}/{r['count']}" + " TIMEOUT" * r["timed_out"]


def worker_memory(r: dict) -> str:
    return ", ".join(f"{m['rss_mb']:.0f} / {m['pss_mb']:.0f}" for k, m in r["memory"].items() if k[0] == "w")


def header(result: dict) -> str:
    versions = ", ".join(
        f"{k} {v}" for k, v in result["environment"].items() if k not in ("date_utc", "cpus")
    )
    when = f"{result['start_utc']} to {result['end_utc']} UTC"
    load_range = f"load 1/5/15 min {result['load_before']} → {result['load_after']}"
    return f"{when}, {load_range}; {versions}; code {result.get('commit', '-')}.\n"


def add_code_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", default="HEAD", help="git ref to measure, or 'worktree' (%(default)s)")


def run_scenario(module: Any, argv: Sequence[str], out: Path | None = None) -> dict:
    """Parse `argv` with the scenario's options, run it, write `<out>/<scenario>[@<code>].json`."""
    name = Path(module.__file__).stem
    doc = module.__doc__.split("\n\n", 1)
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        f"bench/{name}.py", description=doc[0], epilog=doc[1], formatter_class=raw
    )
    module.arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of markdown")
    parser.add_argument("--out", type=Path, help="also write <scenario>.json (and logs/) into this directory")
    args = parser.parse_args(argv)
    out = args.out or out
    args.log_dir = out / "logs" if out else None
    result = {"scenario": name, "argv": list(argv), "start_utc": f"{datetime.now(UTC):%H:%M:%S}"}
    result["load_before"] = load()
    say(f"== {name} {' '.join(argv)} (load {result['load_before']})")
    with servers():
        result |= module.run(args)
    result |= {"end_utc": f"{datetime.now(UTC):%H:%M:%S}", "load_after": load()}
    if out:
        out.mkdir(parents=True, exist_ok=True)
        suffix = f"@{result['commit']}" if getattr(args, "code", None) and result.get("commit") else ""
        (out / f"{name}{suffix}.json").write_text(json.dumps(result, indent=2))
    return result


def interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def main(module: Any) -> int:
    signal.signal(signal.SIGTERM, interrupt)
    result = run_scenario(module, sys.argv[1:])
    print(json.dumps(result, indent=2) if "--json" in sys.argv else module.report(result))
    return 0


if __name__ == "__main__":
    child_main(*sys.argv[2:5]) if sys.argv[1:2] == ["--child"] else print(__doc__)
