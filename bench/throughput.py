"""Throughput: trivial jobs end to end through the production architecture.

What is measured
    `Fibonacci.dispatch(n=10)` jobs executed by the production stack: PostgreSQL (Dagster's storage
    and the job table), dagster-daemon (EtlRunCoordinator, a QueuedRunCoordinator with
    `dequeue_interval_seconds: 1`), EtlCeleryRunLauncher, Redis, and `etl-jobs worker` Celery
    workers. Mode: **backlog first**. All N jobs are dispatched before any daemon or worker runs;
    then the workers are started (and waited for until ready), then the daemon, and the script
    polls the job table until all N records are final.

    1. Dispatch phase (once per invocation). A fresh template database etl_bench_<random>_tmpl
       gets Dagster's schema and the job table from a throw-away process; then one process
       (environment set before import) dispatches N jobs one by one. The first dispatch is the
       cold one (opens the instance, loads the code location) and is reported apart; median, p90,
       p99, max and CPU per dispatch are over the other N - 1. Every configuration then gets a
       copy of this database (CREATE DATABASE ... TEMPLATE), so all start from the identical
       backlog of N queued runs.
    2. Per configuration W workers x C concurrency, max_concurrent_runs M (default M = W x C;
       the copied dagster.yaml is the repository's with only max_concurrent_runs changed), each
       with its own Redis key prefix (ETL_REDIS_KEY_PREFIX=bench-<random>:<config>:):
       - workers started (each its own session / process group), waited for until "ready.";
       - dagster-daemon started (its own process group; it spawns a gRPC code server in it);
       - a sampler reads /proc every 0.25 s: CPU time (utime+stime+cutime+cstime of every
         process of the group) and RSS of each process group, and the machine's busy CPU;
       - done when all N records are completed (or failed/cancelled, or --timeout).
       From the records: sustained throughput = N / (last finished_at - first started_at); wall
       time = daemon start -> all N final. CPU per job = the group's CPU time consumed between
       first started_at and last finished_at (interpolated from the samples) / N; the total
       including start-up is reported too. Memory: RSS and PSS (/proc/<pid>/smaps_rollup) of each
       worker group at the end, and its peak RSS.
       Where the time goes, from Dagster's event log (SQL on event_logs, every run): launch in the
       daemon (RUN_STARTING -> "Sent to Celery"), Celery pickup (-> RUN_START), run set-up
       (-> STEP_START), the op (-> STEP_SUCCESS), teardown (-> RUN_SUCCESS); and the daemon's
       dequeue ticks (the daemon log's "Launched N runs." lines: ticks, runs per tick, seconds per
       tick) and the serial launch cost (gap between consecutive RUN_STARTING events < 0.5 s).

    Everything is removed afterwards, also on errors and Ctrl-C: process groups killed (TERM,
    then KILL), databases dropped WITH (FORCE), temporary homes removed, Redis keys of the prefix
    deleted.

How to run (from the repository root; PostgreSQL 127.0.0.1:5432 trust user postgres, Redis)
    .venv/bin/python bench/throughput.py                          # N = 1000, default configs
    .venv/bin/python bench/throughput.py --count 100 --json       # smoke run
    .venv/bin/python bench/throughput.py --configs 1x2,2x2,2x2m16,1x4,2x4
    .venv/bin/python bench/throughput.py --count 200 --configs 2x2 --log-dir /tmp/tp-logs

    A configuration is WxC[mM][iSECONDS][t[K]]: W workers with --concurrency C,
    max_concurrent_runs M (default W*C), dequeue_interval_seconds SECONDS (default dagster.yaml's),
    t = dequeue_use_threads: true with dequeue_num_workers K (default M). Examples: 2x2,
    2x2m16, 2x2i0.25, 2x2m4i0.25t (threads, 4 dequeue workers). Dagster's config takes whole
    seconds only (IntSource): for a fractional interval the configuration's dagster.yaml names
    bench/bench_coordinator.py's BenchRunCoordinator, which reads BENCH_DEQUEUE_INTERVAL_SECONDS.
    The daemon waits in 0.5 s steps, so intervals in (0, 0.5] tick every >= 0.5 s.
    Defaults: 1x2 (a), 2x2 (b), 2x2m16 (c: 4 x the slots).
    Code: a `git archive` copy of HEAD's etl_pipelines/ and dagster.yaml (bench/snapshot.py) is
    first on every process's PYTHONPATH and their working directory; `--code worktree` measures
    the working tree.

Internally the script re-invokes itself as `--child setup|dispatch`, with the environment set
before anything from etl_pipelines is imported; the child prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from common import clean_env, environment_info, percentile
from snapshot import Code, code_snapshot

SCRIPT = Path(__file__).resolve()
BENCH = SCRIPT.parent
BIN = Path(sys.executable).parent
# Read by bench_coordinator.BenchRunCoordinator: a dequeue interval below/between whole seconds.
INTERVAL_ENV = "BENCH_DEQUEUE_INTERVAL_SECONDS"
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CONFIGS = "1x2,2x2,2x2m16"
FIB_N = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_INTERVAL_S = 0.25
# The performance bar of the issue.
BAR = {
    "throughput_2_workers_jobs_s": 25.0,
    "dispatch_median_ms": 10.0,
    "dispatch_p99_ms": 50.0,
    "worker_cpu_ms_per_job": 60.0,
}


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def summarise_ms(values_s: Sequence[float]) -> dict[str, float]:
    """Count, median, p90, p99, max and mean in milliseconds of durations in seconds."""
    ms = sorted(v * 1000.0 for v in values_s)
    return {
        "count": len(ms),
        "median_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# Children: run in a subprocess whose environment is already set
# --------------------------------------------------------------------------------------------


def child_setup() -> dict[str, Any]:
    """Create Dagster's schema and the job table in ETL_DATABASE_URL's database."""
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    get_instance().get_runs_count()
    JobStore(Settings.from_env().database_url)
    return {"ok": True}


def child_dispatch(count: int) -> dict[str, Any]:
    """Dispatch `count` Fibonacci jobs: the first (cold) apart, the others timed one by one."""
    t0 = time.perf_counter()
    from etl_pipelines.jobs.fibonacci import Fibonacci

    import_s = time.perf_counter() - t0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    Fibonacci.dispatch(n=FIB_N)
    cold_ms = (time.perf_counter() - t0) * 1000.0
    cold_cpu_ms = (time.process_time() - cpu0) * 1000.0

    samples: list[float] = []
    perf = time.perf_counter
    cpu0 = time.process_time()
    wall0 = perf()
    for _ in range(count - 1):
        t = perf()
        Fibonacci.dispatch(n=FIB_N)
        samples.append(perf() - t)
    wall = perf() - wall0
    cpu = time.process_time() - cpu0
    warm = summarise_ms(samples)
    warm["per_second"] = len(samples) / wall if wall > 0 else float("nan")
    warm["cpu_ms_per_call"] = cpu * 1000.0 / len(samples) if samples else float("nan")
    return {"import_s": import_s, "cold_ms": cold_ms, "cold_cpu_ms": cold_cpu_ms, "warm": warm}


def child_main(args: argparse.Namespace) -> int:
    """Entry point of `--child`: keep stdout for the JSON result only."""
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        result = child_setup() if args.child == "setup" else child_dispatch(args.count)
        import etl_pipelines

        result["etl_pipelines_imported_from"] = str(Path(etl_pipelines.__file__).parent)
    finally:
        sys.stdout = real_stdout
    json.dump(result, real_stdout)
    real_stdout.write("\n")
    real_stdout.flush()
    return 0


def run_child(kind: str, env: dict[str, str], count: int, cwd: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(SCRIPT), "--child", kind, "--count", str(count)]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise RuntimeError(f"child {kind} exited {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# Process groups and /proc sampling
# --------------------------------------------------------------------------------------------


@dataclass
class Group:
    """A process started in its own session (so its pid is the process group id)."""

    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pgid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None and not _group_alive(self.pgid):
                    return
                time.sleep(0.1)

    def alive(self) -> bool:
        return self.process.poll() is None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_group(name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> Group:
    with log.open("wb") as handle:
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Group(name, process, log)


def proc_stats() -> dict[int, tuple[float, int, int]]:
    """pid -> (CPU seconds incl. reaped children, RSS bytes, process group id) of every process."""
    stats: dict[int, tuple[float, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                raw = handle.read().decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        # fields[0] is field 3 (state): pgrp 5, utime 14, stime 15, cutime 16, cstime 17, rss 24.
        cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
        stats[int(entry)] = (cpu, int(fields[21]) * PAGE_SIZE, int(fields[2]))
    return stats


def group_usage(pgid: int, stats: dict[int, tuple[float, int, int]]) -> tuple[float, int, int]:
    """(CPU seconds, RSS bytes, number of processes) of one process group."""
    members = [s for s in stats.values() if s[2] == pgid]
    return sum(m[0] for m in members), sum(m[1] for m in members), len(members)


def group_pss(pgid: int) -> int:
    """Proportional set size (bytes) of a process group: shared pages counted once in total."""
    total = 0
    for pid, (_cpu, _rss, pg) in proc_stats().items():
        if pg != pgid:
            continue
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class Sampler:
    """Samples CPU and RSS of process groups every SAMPLE_INTERVAL_S in a thread."""

    groups: dict[str, int]  # name -> pgid
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        stats = proc_stats()
        busy, total = machine_busy_s()
        row: dict[str, Any] = {"t": time.time(), "busy": busy, "total": total, "groups": {}}
        for name, pgid in self.groups.items():
            cpu, rss, procs = group_usage(pgid, stats)
            row["groups"][name] = {"cpu": cpu, "rss": rss, "procs": procs}
        self.samples.append(row)

    def add(self, name: str, pgid: int) -> None:
        self.groups[name] = pgid

    def start(self) -> None:
        self.sample()

        def loop() -> None:
            while not self._stop.wait(SAMPLE_INTERVAL_S):
                self.sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def at(self, t: float, get: Callable[[dict[str, Any]], float]) -> float:
        """`get(sample)` linearly interpolated at time `t` (clamped to the sampled range)."""
        rows = [r for r in self.samples]
        if t <= rows[0]["t"]:
            return get(rows[0])
        for before, after in pairwise(rows):
            if before["t"] <= t <= after["t"]:
                span = after["t"] - before["t"]
                frac = (t - before["t"]) / span if span > 0 else 0.0
                return get(before) + (get(after) - get(before)) * frac
        return get(rows[-1])

    def group_cpu(self, name: str, t0: float, t1: float) -> float:
        get = lambda r: r["groups"].get(name, {}).get("cpu", 0.0)  # noqa: E731
        return self.at(t1, get) - self.at(t0, get)

    def peak_rss(self, name: str) -> int:
        return max((r["groups"].get(name, {}).get("rss", 0) for r in self.samples), default=0)


# --------------------------------------------------------------------------------------------
# Databases, homes, Redis
# --------------------------------------------------------------------------------------------


def admin_engine(admin_url: str):
    import sqlalchemy as sa

    return sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@contextlib.contextmanager
def temporary_database(admin_url: str, name: str, template: str | None = None) -> Iterator[str]:
    """A database `name` (optionally a copy of `template`); its URL. Dropped WITH (FORCE) after."""
    import sqlalchemy as sa

    admin = admin_engine(admin_url)
    clause = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def instance_yaml(code: Code, config: Config | None) -> str:
    """The measured commit's dagster.yaml with only the configuration's coordinator settings changed.

    `config` None (the dispatch phase) keeps the file as it is. Otherwise max_concurrent_runs is
    set; with an interval, dequeue_interval_seconds too (a whole number: Dagster's config type is
    IntSource), or for a fractional interval the coordinator class becomes the bench-only
    BenchRunCoordinator, which reads the interval from the environment; with threads,
    dequeue_use_threads and dequeue_num_workers.
    """
    import yaml

    instance = yaml.safe_load(code.dagster_yaml.read_text())
    if config is None:
        return yaml.safe_dump(instance)
    coordinator = instance["run_coordinator"]
    coordinator["config"]["max_concurrent_runs"] = config.max_runs
    if config.interval is not None:
        if config.interval == int(config.interval):
            coordinator["config"]["dequeue_interval_seconds"] = int(config.interval)
        else:
            coordinator["module"], coordinator["class"] = "bench_coordinator", "BenchRunCoordinator"
    if config.thread_workers:
        coordinator["config"]["dequeue_use_threads"] = True
        coordinator["config"]["dequeue_num_workers"] = config.thread_workers
    return yaml.safe_dump(instance)


def workspace_yaml(code: Code) -> str:
    """The repository's workspace (etl_pipelines.definitions), loaded from the measured code."""
    import yaml

    location = {
        "module_name": "etl_pipelines.definitions",
        "location_name": "etl_pipelines",
        "working_directory": str(code.cwd),
    }
    return yaml.safe_dump({"load_from": [{"python_module": location}]})


@contextlib.contextmanager
def temporary_home(prefix: str, code: Code, config: Config | None) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        (home / "dagster.yaml").write_text(instance_yaml(code, config))
        (home / "workspace.yaml").write_text(workspace_yaml(code))
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def delete_redis_keys(redis_url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()
    return len(keys)


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """`WxC[mM][iSECONDS][t[K]]`: see the module docstring."""

    workers: int
    concurrency: int
    max_runs: int
    interval: float | None = None  # dequeue_interval_seconds; None keeps dagster.yaml's
    thread_workers: int = 0  # dequeue_use_threads with this many dequeue_num_workers; 0 = serial

    @property
    def label(self) -> str:
        label = f"{self.workers}x{self.concurrency} m{self.max_runs}"
        if self.interval is not None:
            label += f" i{self.interval:g}"
        if self.thread_workers:
            label += f" t{self.thread_workers}"
        return label

    @property
    def slots(self) -> int:
        return self.workers * self.concurrency

    @property
    def interval_patched(self) -> bool:
        """A fractional interval needs the bench-only coordinator (Dagster's config is IntSource)."""
        return self.interval is not None and self.interval != int(self.interval)

    @classmethod
    def parse(cls, spec: str) -> Config:
        match = re.fullmatch(r"(\d+)x(\d+)(?:m(\d+))?(?:i(\d+(?:\.\d*)?|\.\d+))?(t(\d+)?)?", spec.strip())
        if not match:
            raise argparse.ArgumentTypeError(
                f"bad configuration {spec!r}: expected WxC[mM][iSECONDS][t[K]], e.g. 2x2m4i0.25t"
            )
        workers, concurrency = int(match[1]), int(match[2])
        max_runs = int(match[3]) if match[3] else workers * concurrency
        interval = float(match[4]) if match[4] else None
        threads = (int(match[6]) if match[6] else max_runs) if match[5] else 0
        return cls(workers, concurrency, max_runs, interval, threads)


def job_counts(engine) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT status, count(*) FROM etl_jobs GROUP BY status"))
        return {status: n for status, n in rows}


def record_stats(engine) -> dict[str, Any]:
    """First start, last finish and per-job op durations from the job table."""
    import sqlalchemy as sa

    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT extract(epoch FROM started_at), extract(epoch FROM finished_at) "
                "FROM etl_jobs WHERE status = 'completed'"
            )
        ).all()
    starts = [float(r[0]) for r in rows if r[0] is not None]
    finishes = [float(r[1]) for r in rows if r[1] is not None]
    durations = [float(r[1]) - float(r[0]) for r in rows if r[0] is not None and r[1] is not None]
    return {
        "completed": len(rows),
        "first_start": min(starts) if starts else None,
        "last_finish": max(finishes) if finishes else None,
        "record_started_to_finished": summarise_ms(durations),
    }


def event_phases(engine) -> dict[str, Any]:
    """Per-run phase durations and the daemon's dequeue ticks, from Dagster's event_logs table."""
    import sqlalchemy as sa

    # Dagster stores the legacy names of the run events (PIPELINE_*).
    stored = {
        "PIPELINE_STARTING": "RUN_STARTING",  # written by launch_run, as the daemon dequeues
        "PIPELINE_START": "RUN_START",
        "STEP_START": "STEP_START",
        "STEP_SUCCESS": "STEP_SUCCESS",
        "PIPELINE_SUCCESS": "RUN_SUCCESS",
    }
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT run_id, dagster_event_type, extract(epoch FROM timestamp) FROM event_logs "
                "WHERE dagster_event_type = ANY(:types) "
                "   OR (dagster_event_type = 'ENGINE_EVENT' AND event LIKE '%Sent to Celery%')"
            ),
            {"types": list(stored)},
        ).all()
    runs: dict[str, dict[str, float]] = {}
    for run_id, kind, ts in rows:
        name = stored.get(kind, "SENT")
        runs.setdefault(run_id, {}).setdefault(name, float(ts))
    phases = [
        ("daemon launch (RUN_STARTING -> sent to Celery)", "RUN_STARTING", "SENT"),
        ("Celery pickup (sent -> RUN_START)", "SENT", "RUN_START"),
        ("run set-up (RUN_START -> STEP_START)", "RUN_START", "STEP_START"),
        ("op (STEP_START -> STEP_SUCCESS)", "STEP_START", "STEP_SUCCESS"),
        ("teardown (STEP_SUCCESS -> RUN_SUCCESS)", "STEP_SUCCESS", "RUN_SUCCESS"),
        ("in the worker (RUN_START -> RUN_SUCCESS)", "RUN_START", "RUN_SUCCESS"),
    ]
    result: dict[str, Any] = {"runs_with_events": len(runs), "phases": {}}
    for label, a, b in phases:
        values = [r[b] - r[a] for r in runs.values() if a in r and b in r]
        result["phases"][label] = summarise_ms(values)
    # Serial launch cost in the daemon: the gap between consecutive RUN_STARTING events of one
    # dequeue iteration (gaps under 0.5 s; the iteration then sleeps dequeue_interval_seconds).
    starting = sorted(r["RUN_STARTING"] for r in runs.values() if "RUN_STARTING" in r)
    gaps = [b - a for a, b in pairwise(starting) if b - a < 0.5]
    result["launch_spacing"] = summarise_ms(gaps)
    return result


def run_config(
    config: Config, index: int, template: str, args: argparse.Namespace, run_tag: str, code: Code
) -> dict[str, Any]:
    """Copy the backlog database, start workers then the daemon, measure until all N are final."""
    import sqlalchemy as sa

    db_name = f"etl_bench_{run_tag}_c{index}"
    prefix = f"bench-{run_tag}:c{index}:"
    result: dict[str, Any] = {
        "config": config.label,
        "workers": config.workers,
        "concurrency": config.concurrency,
        "max_concurrent_runs": config.max_runs,
        "dequeue_interval_seconds": config.interval,
        "dequeue_interval_patched": config.interval_patched,
        "dequeue_num_workers": config.thread_workers,
    }
    groups: list[Group] = []
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temporary_database(args.pg_admin_url, db_name, template))
        home = stack.enter_context(temporary_home(f"etl_bench_tp_c{index}_", code, config))
        stack.callback(delete_redis_keys, args.redis_url, prefix)
        env = clean_env() | {
            "DAGSTER_HOME": str(home),
            "ETL_DATABASE_URL": url,
            "ETL_REDIS_URL": args.redis_url,
            "ETL_REDIS_KEY_PREFIX": prefix,
            # The measured code first; bench/ for bench_coordinator (a fractional interval).
            "PYTHONPATH": code.pythonpath(BENCH),
        }
        if config.interval_patched:
            env[INTERVAL_ENV] = repr(config.interval)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        stack.callback(engine.dispose)

        def stop_all() -> None:
            for group in reversed(groups):
                group.stop()
            if args.log_dir:
                out = Path(args.log_dir)
                out.mkdir(parents=True, exist_ok=True)
                for group in groups:
                    shutil.copyfile(group.log, out / f"c{index}-{group.log.name}")

        stack.callback(stop_all)
        sampler = Sampler({})
        for number in range(1, config.workers + 1):
            argv = [
                str(BIN / "etl-jobs"),
                "worker",
                "--concurrency",
                str(config.concurrency),
                "--name",
                f"bw{number}@%h",
            ]
            group = start_group(f"worker{number}", argv, env, home / f"worker{number}.log", code.cwd)
            groups.append(group)
            sampler.add(group.name, group.pgid)
        deadline = time.monotonic() + 120
        for group in groups:
            while "ready." not in group.output():
                if not group.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{group.name} did not start:\n{group.output()[-3000:]}")
                time.sleep(0.2)
        print(f"[{config.label}] {config.workers} worker(s) ready; starting dagster-daemon", file=sys.stderr)
        sampler.start()
        t_daemon = time.time()
        daemon = start_group(
            "daemon",
            [str(BIN / "dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
            env,
            home / "daemon.log",
            code.cwd,
        )
        groups.append(daemon)
        sampler.add("daemon", daemon.pgid)
        n = args.count
        final = 0
        timed_out = False
        last_report = time.monotonic()
        while True:
            counts = job_counts(engine)
            final = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
            if final >= n:
                break
            if time.time() - t_daemon > args.timeout:
                timed_out = True
                break
            if not daemon.alive():
                raise RuntimeError(f"dagster-daemon exited:\n{daemon.output()[-3000:]}")
            if time.monotonic() - last_report > 15:
                print(f"[{config.label}] {counts}", file=sys.stderr)
                last_report = time.monotonic()
            time.sleep(0.5)
        t_done = time.time()
        sampler.stop()
        memory = {
            g.name: {
                "rss_mb": group_usage(g.pgid, proc_stats())[1] / 2**20,
                "pss_mb": group_pss(g.pgid) / 2**20,
                "peak_rss_mb": sampler.peak_rss(g.name) / 2**20,
                "processes": group_usage(g.pgid, proc_stats())[2],
            }
            for g in groups
        }
        # Stop the processes before reading the results (stop() is idempotent; the stack's
        # stop_all runs again on exit and copies the logs).
        for group in reversed(groups):
            group.stop()

        counts = job_counts(engine)
        records = record_stats(engine)
        first, last = records["first_start"], records["last_finish"]
        window = (last - first) if first is not None and last is not None else float("nan")
        completed = records["completed"]
        worker_names = [g.name for g in groups if g.name.startswith("worker")]
        worker_cpu = sum(sampler.group_cpu(w, first, last) for w in worker_names) if first else 0.0
        worker_cpu_total = sum(sampler.group_cpu(w, t_daemon, t_done) for w in worker_names)
        daemon_cpu = sampler.group_cpu("daemon", first, last) if first else 0.0
        daemon_cpu_total = sampler.group_cpu("daemon", t_daemon, t_done)
        busy = (
            (sampler.at(last, lambda r: r["busy"]) - sampler.at(first, lambda r: r["busy"])) if first else 0.0
        )
        daemon_log = daemon.output()
        launched = [int(m) for m in re.findall(r"Launched (\d+) runs\.", daemon_log)]
        result.update(
            {
                "count": n,
                "final": final,
                "status_counts": counts,
                "timed_out": timed_out,
                "completed": completed,
                "wall_s": t_done - t_daemon,
                "daemon_start_to_first_start_s": (first - t_daemon) if first else float("nan"),
                "window_s": window,
                "throughput_jobs_s": completed / window if window and window > 0 else float("nan"),
                "throughput_wall_jobs_s": completed / (t_done - t_daemon),
                "worker_cpu_ms_per_job": worker_cpu * 1000.0 / completed if completed else float("nan"),
                "worker_cpu_ms_per_job_incl_idle": worker_cpu_total * 1000.0 / completed
                if completed
                else float("nan"),
                "daemon_cpu_ms_per_job": daemon_cpu * 1000.0 / completed if completed else float("nan"),
                "daemon_cpu_s_total": daemon_cpu_total,
                "machine_busy_cores": busy / window if window and window > 0 else float("nan"),
                "worker_cpu_share_of_window": worker_cpu / window if window and window > 0 else float("nan"),
                "memory": memory,
                "daemon_launch_lines": {
                    "lines": len(launched),
                    "runs": sum(launched),
                    "max_per_line": max(launched, default=0),
                },
                "records": records,
                "events": event_phases(engine),
            }
        )
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def verdicts(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(bar item, measured, met?) for the issue's performance bar."""
    d = report["dispatch"]["warm"]
    results = report["results"]
    two = [r for r in results if r["workers"] == 2]
    one = [r for r in results if r["workers"] == 1]
    best = max(two, key=lambda r: r["throughput_jobs_s"], default=None)
    best_two = best["throughput_jobs_s"] if best else float("nan")
    import math

    items: list[tuple[str, str, bool | None]] = [
        (
            f">= {BAR['throughput_2_workers_jobs_s']:g} jobs/s sustained, 2 workers",
            f"{best_two:.2f} jobs/s ({best['config'] if best else '-'})",
            None if math.isnan(best_two) else best_two >= BAR["throughput_2_workers_jobs_s"],
        ),
        (
            f"dispatch median <= {BAR['dispatch_median_ms']:g} ms",
            f"{d['median_ms']:.1f} ms",
            d["median_ms"] <= BAR["dispatch_median_ms"],
        ),
        (
            f"dispatch p99 <= {BAR['dispatch_p99_ms']:g} ms",
            f"{d['p99_ms']:.1f} ms",
            d["p99_ms"] <= BAR["dispatch_p99_ms"],
        ),
    ]
    cpu = max((r["worker_cpu_ms_per_job"] for r in results), default=float("nan"))
    items.append(
        (
            f"worker CPU per job <= {BAR['worker_cpu_ms_per_job']:g} ms (worst config)",
            f"{cpu:.1f} ms",
            cpu <= BAR["worker_cpu_ms_per_job"],
        )
    )
    mem = [m["pss_mb"] for r in results for k, m in r["memory"].items() if k.startswith("worker")]
    items.append(
        ("memory per worker stated", f"PSS {min(mem, default=0):.0f}-{max(mem, default=0):.0f} MB", True)
    )

    def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Same slots per worker, runs per worker, interval and threading: only W differs."""
        keys = ("concurrency", "dequeue_interval_seconds", "dequeue_num_workers")
        return all(a.get(k) == b.get(k) for k in keys) and (
            a["max_concurrent_runs"] * b["workers"] == b["max_concurrent_runs"] * a["workers"]
        )

    for a in one:
        for b in two:
            if same_settings(a, b):
                ratio = b["throughput_jobs_s"] / a["throughput_jobs_s"]
                items.append(
                    (
                        f"2nd worker raises throughput ({b['config']} / {a['config']})",
                        f"x{ratio:.2f}",
                        ratio > 1.05,
                    )
                )
    return items


def format_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    d = report["dispatch"]
    results: list[dict[str, Any]] = report["results"]
    lines = [
        f"Throughput: {report['count']} x Fibonacci.dispatch(n={FIB_N}), backlog dispatched first, "
        "then workers, then dagster-daemon",
        f"{env['date_utc']}, {env['cpus']} CPUs, load (1 min) {env['loadavg_1m_at_start']} -> "
        f"{env.get('loadavg_1m_at_end', '?')}, Python {env['python']}, dagster {env['dagster']}, "
        f"celery {env['celery']}, commit {env['commit']}",
        "",
        f"dispatch phase: cold {d['cold_ms']:.0f} ms; {d['warm']['count']} warm: median "
        f"{d['warm']['median_ms']:.1f} ms, p90 {d['warm']['p90_ms']:.1f}, p99 {d['warm']['p99_ms']:.1f}, "
        f"max {d['warm']['max_ms']:.1f}; {d['warm']['per_second']:.1f}/s; CPU "
        f"{d['warm']['cpu_ms_per_call']:.1f} ms per dispatch",
        "",
    ]
    header = ["", *[r["config"] for r in results]]
    rows: list[list[str]] = []

    def row(label: str, fmt: str, get: Callable[[dict[str, Any]], Any]) -> None:
        cells = []
        for r in results:
            try:
                cells.append(fmt.format(get(r)))
            except (KeyError, TypeError, ValueError):
                cells.append("-")
        rows.append([label, *cells])

    row(
        "completed / N",
        "{}",
        lambda r: f"{r['completed']}/{r['count']}" + (" TIMEOUT" if r["timed_out"] else ""),
    )
    row("sustained throughput (jobs/s)", "{:.2f}", lambda r: r["throughput_jobs_s"])
    row("first start -> last finish (s)", "{:.1f}", lambda r: r["window_s"])
    row("wall: daemon start -> all final (s)", "{:.1f}", lambda r: r["wall_s"])
    row("  of which daemon start -> first start (s)", "{:.1f}", lambda r: r["daemon_start_to_first_start_s"])
    row("worker CPU per job (ms)", "{:.1f}", lambda r: r["worker_cpu_ms_per_job"])
    row("worker CPU / window (cores)", "{:.2f}", lambda r: r["worker_cpu_share_of_window"])
    row("daemon CPU per job (ms, incl. gRPC server)", "{:.1f}", lambda r: r["daemon_cpu_ms_per_job"])
    row("machine busy in window (cores of 2)", "{:.2f}", lambda r: r["machine_busy_cores"])
    row(
        "worker RSS, each (MB)",
        "{}",
        lambda r: ", ".join(f"{m['rss_mb']:.0f}" for k, m in r["memory"].items() if k.startswith("worker")),
    )
    row(
        "worker PSS, each (MB)",
        "{}",
        lambda r: ", ".join(f"{m['pss_mb']:.0f}" for k, m in r["memory"].items() if k.startswith("worker")),
    )
    row(
        "worker processes per group",
        "{}",
        lambda r: ", ".join(str(m["processes"]) for k, m in r["memory"].items() if k.startswith("worker")),
    )
    row(
        "daemon RSS / PSS (MB)",
        "{}",
        lambda r: f"{r['memory']['daemon']['rss_mb']:.0f} / {r['memory']['daemon']['pss_mb']:.0f}",
    )
    row(
        "record started->finished median (ms)",
        "{:.1f}",
        lambda r: r["records"]["record_started_to_finished"]["median_ms"],
    )
    for label in results[0]["events"]["phases"] if results else []:
        row(f"{label}: median (ms)", "{:.1f}", lambda r, k=label: r["events"]["phases"][k]["median_ms"])
    row("daemon ticks that launched (log lines)", "{}", lambda r: r["daemon_launch_lines"]["lines"])
    row(
        "runs launched per tick (mean / max)",
        "{}",
        lambda r: "{:.1f} / {}".format(
            r["daemon_launch_lines"]["runs"] / max(r["daemon_launch_lines"]["lines"], 1),
            r["daemon_launch_lines"]["max_per_line"],
        ),
    )
    row("s per tick (window / ticks)", "{:.2f}", lambda r: r["window_s"] / r["daemon_launch_lines"]["lines"])
    row(
        "serial launch spacing in a tick, median (ms)",
        "{:.1f}",
        lambda r: r["events"]["launch_spacing"]["median_ms"],
    )
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    fmt_line = lambda cells: "  ".join(  # noqa: E731
        cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells)
    )
    lines.append(fmt_line(header))
    lines.append(fmt_line(["-" * w for w in widths]))
    lines.extend(fmt_line(r) for r in rows)
    lines.append("")
    for item, measured, met in report["bar"]:
        verdict = "n/a" if met is None else "MET" if met else "NOT MET"
        lines.append(f"[{verdict}] {item}: {measured}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="End-to-end throughput of trivial jobs: PostgreSQL, Redis, dagster-daemon, Celery.",
    )
    parser.add_argument("--count", type=int, default=1000, help="jobs (default 1000)")
    parser.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="comma-separated WxC[mM][iSECONDS][t[K]]: W workers, --concurrency C, "
        "max_concurrent_runs M (default W*C), dequeue_interval_seconds (default dagster.yaml's), "
        "t = dequeue_use_threads with dequeue_num_workers K (default M); default %(default)s",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds per configuration before giving up on the rest (default 900)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--log-dir", help="copy the daemon and worker logs here")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("ETL_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL),
        help="a URL able to CREATE/DROP DATABASE (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("ETL_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis for Celery (default: %(default)s)",
    )
    parser.add_argument(
        "--code",
        default="HEAD",
        help="git ref whose etl_pipelines/ and dagster.yaml are measured (a `git archive` copy), "
        "or 'worktree' (default %(default)s)",
    )
    parser.add_argument("--child", choices=("setup", "dispatch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count < 2:
        parser.error("--count must be at least 2")
    if not args.child:
        try:
            args.config_list = [Config.parse(spec) for spec in args.configs.split(",") if spec.strip()]
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)

    # SIGTERM behaves like Ctrl-C, so the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    environment = environment_info(("dagster", "celery"))
    run_tag = uuid.uuid4().hex[:8]
    template = f"etl_bench_{run_tag}_tmpl"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temporary_database(args.pg_admin_url, template))
        code = stack.enter_context(code_snapshot(args.code))
        environment["commit"] = code.commit
        home = stack.enter_context(temporary_home("etl_bench_tp_dispatch_", code, None))
        env = clean_env() | {
            "DAGSTER_HOME": str(home),
            "ETL_DATABASE_URL": url,
            "PYTHONPATH": code.pythonpath(BENCH),
        }
        print(f"schema setup (code: {code.commit}, {code.cwd}) ...", file=sys.stderr)
        run_child("setup", env, args.count, code.cwd)
        print(f"dispatching {args.count} jobs ...", file=sys.stderr)
        dispatch = run_child("dispatch", env, args.count, code.cwd)
        results = []
        for index, config in enumerate(args.config_list):
            print(f"[{config.label}] running ...", file=sys.stderr)
            results.append(run_config(config, index, template, args, run_tag, code))
    environment["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report: dict[str, Any] = {
        "environment": environment,
        "count": args.count,
        "mode": "backlog first: all N dispatched, then workers started, then dagster-daemon",
        "dispatch": dispatch,
        "results": results,
    }
    report["bar"] = verdicts(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
