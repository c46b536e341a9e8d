"""The benchmark harness: what the scenarios in bench/ share (see bench/README.md).

Code snapshots (`git archive` of one commit, first on every measured process's PYTHONPATH), child
processes returning JSON, deployments (databases `etl_bench_*`, temporary homes, Redis keys under a
prefix, a backlog of queued jobs), the stack of one configuration `WxC[mM][iS][t[K]]` (workers and
dagster-daemon in process groups, `etl_pipelines.stack.ProcessGroup`/`stop_groups`, sampled from
/proc), statistics, markdown tables, the environment, and `main(module)`: every scenario script's
entry point. Only the standard library is imported at module level: the RQ scenario's child runs
this file with an interpreter that has neither etl_pipelines nor SQLAlchemy.
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
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from subprocess import PIPE
from typing import Any, NamedTuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("ETL_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1/postgres")
REDIS_URL = os.environ.get("ETL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
FIB_N = 10  # every scenario's job: Fibonacci(n=10), CPU-trivial
CLK_TCK, PAGE_SIZE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
NAN = float("nan")
FINAL = ("completed", "failed", "cancelled")
# Dagster's run events (stored under their legacy PIPELINE_* names): (mark, event type, text in it)
RUN_MARKS = [("RUN_STARTING", "PIPELINE_STARTING", None), ("RUN_START", "PIPELINE_START", None)]
RUN_MARKS += [("STEP_START", "STEP_START", None), ("STEP_SUCCESS", "STEP_SUCCESS", None)]
RUN_MARKS += [("RUN_SUCCESS", "PIPELINE_SUCCESS", None)]


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


def child(env: dict[str, str], cwd: Path, module: str, function: str, python: str = "", **kw) -> dict:
    """`module.function(**kw)` of bench/ in a new process group with `env`; its JSON result."""
    argv = [python or sys.executable, str(BENCH / "harness.py"), "--child", module, function, json.dumps(kw)]
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


@contextlib.contextmanager
def database(name: str, template: str | None = None) -> Iterator[str]:
    """Database `name` (a copy of `template` if given); its URL. Dropped WITH (FORCE) afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"' + f' TEMPLATE "{template}"' * bool(template)))
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
def backlog(tag: str, code: Code, count: int, env: dict, cwd: Path | None = None, **dispatch) -> Iterator:
    """A template database etl_bench_<tag>_tmpl with the schema and `count` queued jobs.

    Yields the template's name, the dispatch child's result and the dispatch environment.
    """
    name = f"etl_bench_{tag}_tmpl"
    with database(name) as url, home(f"etl_bench_{tag}_", {"dagster.yaml": instance_yaml(code)}) as path:
        env = clean_env(DAGSTER_HOME=str(path), ETL_DATABASE_URL=url, PYTHONPATH=code.pythonpath(BENCH)) | env
        say(f"schema setup, then {count} dispatches (code {code.commit}) ...")
        child(env, cwd or code.root, "harness", "setup_schema")
        yield name, child(env, cwd or code.root, "harness", "dispatch_jobs", count=count, **dispatch), env


@dataclass(frozen=True)
class Config:
    """WxC[mM][iSECONDS][t[K]]: W workers with --concurrency C, max_concurrent_runs M (default W*C),
    dequeue_interval_seconds (default dagster.yaml's), t: dequeue_use_threads, K dequeue workers (M)."""

    workers: int
    concurrency: int
    max_runs: int
    interval: float | None = None
    threads: int = 0

    @classmethod
    def parse_list(cls, specs: str) -> list[Config]:
        configs = []
        for spec in filter(None, specs.split(",")):
            m = re.fullmatch(r"(\d+)x(\d+)(?:m(\d+))?(?:i(\d+(?:\.\d*)?|\.\d+))?(t(\d+)?)?", spec.strip())
            if not m:
                raise argparse.ArgumentTypeError(f"bad configuration {spec!r}: expected WxC[mM][iS][t[K]]")
            runs = int(m[3] or int(m[1]) * int(m[2]))
            interval = float(m[4]) if m[4] else None
            configs.append(cls(int(m[1]), int(m[2]), runs, interval, int(m[6] or runs) * bool(m[5])))
        return configs

    @property
    def label(self) -> str:
        interval = "" if self.interval is None else f" i{self.interval:g}"
        threads = f" t{self.threads}" if self.threads else ""
        return f"{self.workers}x{self.concurrency} m{self.max_runs}{interval}{threads}"

    @property
    def fractional(self) -> bool:
        """Dagster's dequeue_interval_seconds is IntSource: a fractional one needs bench_coordinator."""
        return self.interval is not None and self.interval != int(self.interval)

    def apply(self, instance: dict) -> None:
        """This configuration's coordinator settings, into a dagster.yaml dict."""
        coordinator = instance["run_coordinator"]
        settings = coordinator["config"]
        settings["max_concurrent_runs"] = self.max_runs
        if self.fractional:
            coordinator["module"], coordinator["class"] = "bench_coordinator", "BenchRunCoordinator"
        elif self.interval is not None:
            settings["dequeue_interval_seconds"] = int(self.interval)
        if self.threads:
            settings |= {"dequeue_use_threads": True, "dequeue_num_workers": self.threads}


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


def proc_stats() -> dict[int, tuple[float, float, int, int]]:
    """pid -> (own CPU s, reaped children's CPU s, RSS bytes, process group) of every process."""
    stats = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
            f = raw[raw.rfind(")") + 2 :].split()  # f[0] is field 3: pgrp 5, utime 14 .. cstime 17, rss 24
            cpu = [int(v) / CLK_TCK for v in f[11:15]]
            stats[int(pid)] = (cpu[0] + cpu[1], cpu[2] + cpu[3], int(f[21]) * PAGE_SIZE, int(f[2]))
    return stats


def group_memory(pgid: int) -> dict[str, float]:
    """RSS and PSS (MB) and the number of processes of a process group."""
    members = {pid: s for pid, s in proc_stats().items() if s[3] == pgid}
    pss = 0
    for pid in members:
        with contextlib.suppress(OSError):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            pss += sum(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    rss = sum(s[2] for s in members.values())
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**10, "processes": len(members)}


@dataclass
class Sampler:
    """CPU (utime+stime+cutime+cstime) and RSS of process groups every 0.25 s, per group and per pid."""

    groups: dict[str, int] = field(default_factory=dict)  # name -> pgid
    samples: list[dict[str, Any]] = field(default_factory=list)
    pids: dict[int, dict[str, Any]] = field(default_factory=dict)  # per pid: group, cmdline, CPU first/last
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        stats, values = proc_stats(), [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
        row: dict[str, Any] = {"t": time.time(), "busy": (sum(values[:8]) - values[3] - values[4]) / CLK_TCK}
        for name, pgid in self.groups.items():
            members = {pid: s for pid, s in stats.items() if s[3] == pgid}
            row[name] = (sum(s[0] + s[1] for s in members.values()), sum(s[2] for s in members.values()))
            for pid, (own, children, _, _) in members.items():
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

    def peak(self, name: str) -> float:
        return max((row.get(name, (0, 0))[1] for row in self.samples), default=0) / 2**20


def chain(*marks_and_labels: str) -> list[tuple[str, str, str]]:
    """Phases between consecutive marks: chain("A", "x", "B") is [("x: A → B", "A", "B")]."""
    xs = marks_and_labels
    return [(f"{label}: {a} → {b}", a, b) for a, label, b in zip(xs[:-1:2], xs[1::2], xs[2::2], strict=True)]


def event_phases(engine: Any, marks: Sequence[tuple], phases: Sequence[tuple]) -> dict[str, Any]:
    """Per-run phase durations from Dagster's event_logs, and the serial launch spacing.

    `marks`: (name, stored event type, text the event must contain or None), the first of each per
    run; `phases`: (label, from mark, to mark). The launch spacing: gaps under 0.5 s between
    consecutive RUN_STARTING events (within one dequeue iteration).
    """
    import sqlalchemy as sa

    query = "SELECT run_id, dagster_event_type, extract(epoch FROM timestamp), event FROM event_logs "
    with engine.connect() as connection:
        types = {"types": sorted({mark[1] for mark in marks})}
        rows = connection.execute(sa.text(query + "WHERE dagster_event_type = ANY(:types)"), types).all()
    runs: dict[str, dict[str, float]] = {}
    for run_id, kind, ts, event in rows:
        for name, stored, text in marks:
            if kind == stored and (text is None or text in event):
                runs.setdefault(run_id, {}).setdefault(name, float(ts))
    out = {
        label: summarise([r[b] - r[a] for r in runs.values() if {a, b} <= r.keys()]) for label, a, b in phases
    }
    starting = sorted(r["RUN_STARTING"] for r in runs.values() if "RUN_STARTING" in r)
    return {"phases": out, "launch_spacing": summarise([b - a for a, b in pairwise(starting) if b - a < 0.5])}


def stack_arguments(parser: argparse.ArgumentParser, count: int, configs: str, timeout: float) -> None:
    parser.add_argument("--count", type=int, default=count, help="jobs (%(default)s)")
    parser.add_argument("--configs", type=Config.parse_list, default=configs, help="WxC[mM][iS][t[K]], ...")
    parser.add_argument("--timeout", type=float, default=timeout, help="s per configuration (%(default)s)")
    add_code_option(parser)


def measure_configs(mode: Any, args: argparse.Namespace) -> dict:
    """throughput.py's and celery_executor.py's run: `args.count` jobs queued once, then each of
    `args.configs` over a copy of them. The `mode` module says how: `environment(redis_prefix,
    config or None)`, `files(code, config, redis_prefix)` (the home, on PYTHONPATH too),
    `worker_argv(config, number)`, MARKS and PHASES (event_phases), DISPATCH (backlog's
    arguments), PACKAGES, and optionally `analyse(sampler, result)`."""
    tag, results = uuid.uuid4().hex[:8], []
    env = mode.environment(f"bench-{tag}:dispatch:", None)
    with code_snapshot(args.code) as code, backlog(tag, code, args.count, env, **mode.DISPATCH) as queued:
        try:
            for index, config in enumerate(args.configs):
                result, sampler = run_stack(mode, config, code, queued[0], f"{tag}_{index}", args)
                results.append(result | (mode.analyse(sampler, result) if hasattr(mode, "analyse") else {}))
        finally:
            delete_redis_keys(f"bench-{tag}:")
    summary = {"environment": environment(mode.PACKAGES), "commit": code.commit, "count": args.count}
    return summary | {"dispatch": queued[1], "results": results}


def run_stack(
    mode: Any, config: Config, code: Code, template: str, name: str, args: Any
) -> tuple[dict, Sampler]:
    """Start the workers (until "ready."), then dagster-daemon; measure until all jobs are final."""
    import sqlalchemy as sa

    from etl_pipelines.stack import stop_groups

    groups, sampler, count, prefix = [], Sampler(), args.count, f"bench-{name.replace('_', ':')}:"
    with contextlib.ExitStack() as cleanup:
        url = cleanup.enter_context(database(f"etl_bench_{name}", template))
        path = cleanup.enter_context(home(f"etl_bench_{name}_", mode.files(code, config, prefix)))
        env = clean_env(**mode.environment(prefix, config), DAGSTER_HOME=str(path), ETL_DATABASE_URL=url)
        env["PYTHONPATH"] = code.pythonpath(BENCH, path)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        cleanup.callback(engine.dispose)

        def stop_all() -> None:
            stop_groups(groups)
            for group in groups if args.log_dir else ():
                args.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(group.log, args.log_dir / f"{name}-{group.name}.log")

        cleanup.callback(stop_all)
        for n in range(1, config.workers + 1):
            log = path / f"worker{n}.log"
            groups.append(start(f"worker{n}", mode.worker_argv(config, n), env, log, code.root))
        deadline = time.monotonic() + 120
        for group in groups:
            while "ready." not in group.output():
                if not group.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{group.name} did not start:\n{group.output()[-3000:]}")
                time.sleep(0.2)
        say(f"[{config.label}] {len(groups)} worker(s) ready; starting dagster-daemon")
        sampler.groups = {g.name: g.process.pid for g in groups}
        sampler.start()
        t_daemon = time.time()
        argv = [str(BIN / "dagster-daemon"), "run", "-w", str(path / "workspace.yaml")]
        groups.append(daemon := start("daemon", argv, env, path / "daemon.log", code.root))
        sampler.groups["daemon"] = daemon.process.pid
        try:
            last_report, timed_out = time.monotonic(), False
            while sum(n for status, n in job_counts(engine).items() if status in FINAL) < count:
                if not daemon.alive():
                    raise RuntimeError(f"dagster-daemon exited:\n{daemon.output()[-3000:]}")
                if timed_out := time.time() - t_daemon > args.timeout:
                    break
                if time.monotonic() - last_report > 15:
                    say(f"[{config.label}] {job_counts(engine)}")
                    last_report = time.monotonic()
                time.sleep(0.5)
            t_done = time.time()
        finally:
            sampler.stop()
        memory = {g.name: group_memory(g.process.pid) | {"peak_rss_mb": sampler.peak(g.name)} for g in groups}
        stop_all()
        with engine.connect() as connection:
            query = "SELECT extract(epoch FROM started_at), extract(epoch FROM finished_at) FROM etl_jobs "
            rows = connection.execute(sa.text(query + "WHERE status = 'completed'")).all()
        rows = [(float(a), float(b)) for a, b in rows]
        first = min((a for a, _ in rows), default=t_daemon)
        last = max((b for _, b in rows), default=t_done)
        window = last - first or NAN
        workers, done = [g.name for g in groups if g != daemon], len(rows)
        launched = [int(n) for n in re.findall(r"Launched (\d+) runs\.", daemon.output())]
        return {"config": config.label} | vars(config) | {
            "count": count,
            "completed": done,
            "status_counts": job_counts(engine),
            "timed_out": timed_out,
            "wall_s": t_done - t_daemon,
            "window_s": window,
            "throughput_jobs_s": done / window,
            "worker_cpu_ms_per_job": per_job(sampler.cpu(workers, first, last), done),
            "daemon_cpu_ms_per_job": per_job(sampler.cpu(["daemon"], first, last), done),
            "workers_cores": sampler.cpu(workers, first, last) / window,
            "machine_busy_cores": (sampler.at(last, busy := lambda r: r["busy"]) - sampler.at(first, busy))
            / window,
            "memory": memory,
            "record_started_to_finished": summarise([b - a for a, b in rows]),
            "ticks": {"lines": len(launched), "runs": sum(launched), "max": max(launched, default=0)},
            "events": event_phases(engine, mode.MARKS, mode.PHASES),
        }, sampler


def job_counts(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        counts = connection.execute(sa.text("SELECT status, count(*) FROM etl_jobs GROUP BY status"))
        return dict(counts.all())


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
    return table(["", *[r["config"] for r in results]], body)


def stack_report(title: str, result: dict, rows: list[tuple[str, Callable[[dict], Any]]]) -> str:
    """measure_configs' result: throughput first, then `rows`, then each phase's median."""
    first = [("completed", completed), ("first start → last finish (s)", lambda r: r["window_s"])]
    first += [("**sustained throughput (jobs/s)**", lambda r: f"**{r['throughput_jobs_s']:.3g}**")]
    phases = result["results"][0]["events"]["phases"] if result["results"] else ()
    rows = (
        first
        + rows
        + [(f"{k}, median (ms)", lambda r, k=k: r["events"]["phases"][k]["median_ms"]) for k in phases]
    )
    text = f"## {title} ({result['count']} jobs)\n\n{header(result)}{dispatch_line(result['dispatch'])}\n"
    return text + columns(result["results"], rows)


def completed(r: dict) -> str:
    return f"{r['completed']}/{r['count']}" + " TIMEOUT" * r["timed_out"]


def worker_memory(r: dict) -> str:
    return ", ".join(f"{m['rss_mb']:.0f} / {m['pss_mb']:.0f}" for k, m in r["memory"].items() if k[0] == "w")


def dispatch_line(d: dict) -> str:
    w = d["warm"]
    return (
        f"Dispatch phase: cold {d['cold_ms']:.0f} ms; {w['count']} warm: median {w['median_ms']:.1f} ms, "
        f"p90 {w['p90_ms']:.1f}, p99 {w['p99_ms']:.1f}, max {w['max_ms']:.1f}; "
        f"CPU {w['cpu_ms_per_call']:.1f} ms each.\n"
    )


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
    """Parse `argv` with the scenario's options, run it, write `<out>/<scenario>.json`; the result."""
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
    result |= module.run(args)
    result |= {"end_utc": f"{datetime.now(UTC):%H:%M:%S}", "load_after": load()}
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
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
