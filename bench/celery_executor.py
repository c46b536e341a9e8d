"""Throughput in dagster-celery's step-level mode: default run launcher + `celery_executor`.

What is measured
    The same as bench/throughput.py (sustained throughput of N trivial `fibonacci` jobs, n=10,
    dispatch median/p99 from Python, CPU per job, memory per worker, 2 workers vs 1), but with the
    architecture dagster-celery documents, not the project's production one:

    * the job is the project's own `build_job(Fibonacci)` with the resources of
      etl_pipelines/definitions.py, in the bench-only code location bench/celery_executor_defs.py
      whose executor is `dagster_celery.celery_executor` (Redis broker and backend, kombu
      `queue_order_strategy: priority`, a per-configuration `global_keyprefix`);
    * the instance: PostgreSQL storage, the project's EtlRunCoordinator (a QueuedRunCoordinator,
      `dequeue_interval_seconds: 1`, max_concurrent_runs M) and Dagster's **default run launcher**:
      for every run dagster-daemon asks its gRPC code server, which spawns a run-worker process
      (multiprocessing "spawn"); the run worker sends the op's step to Celery queue `dagster` and
      polls for its result every second (dagster-celery's TICK_SECONDS);
    * W Celery workers `celery -A dagster_celery.app worker -Q dagster --concurrency C
      --prefetch-multiplier=1` (what `dagster-celery worker start` runs), configured by a
      `dagster_celery_config` module with the same broker, backend and transport options.

    Mode: backlog first, as in throughput.py. A template database gets the schema, one process
    dispatches N jobs (`Fibonacci.dispatch`, with `_dagster_internal.DEFINITIONS_MODULE` pointed at
    the bench code location: the dispatch path is otherwise the product's), then each configuration
    WxC[mM] gets a copy of it, its workers start (waited for until "ready."), then dagster-daemon;
    the script polls the job table until all N records are final.

    CPU: every process group (daemon with its code servers and run workers; each Celery worker
    with its prefork children) is sampled from /proc every 0.25 s, utime+stime+cutime+cstime of
    every member (throughput.py's Sampler). Per job = CPU between first start and last finish / N.
    The daemon group is also split per process kind from per-pid samples: run workers (the code
    servers' reaped-children CPU, plus the largest CPU seen of run workers never reaped by a live
    server), code servers (own CPU), and the daemon process itself. Phases per run from
    Dagster's event_logs: daemon launch (RUN_STARTING) -> run worker up ("Started process for
    run") -> RUN_START -> step sent to Celery -> picked up by a Celery worker -> STEP_START ->
    STEP_SUCCESS -> RUN_SUCCESS (the run worker notices the result at its next 1 s poll).

    Cleanup, also on errors and Ctrl-C: process groups TERM then KILL, databases dropped WITH
    (FORCE), temporary homes removed, Redis keys of the prefix deleted.

How to run (repository root; PostgreSQL 127.0.0.1:5432 trust user postgres; Redis)
    .venv/bin/python bench/celery_executor.py                          # N = 100; 1x2m4, 2x2m4
    .venv/bin/python bench/celery_executor.py --count 200 --configs 1x2m4,2x2m4 --json
    .venv/bin/python bench/celery_executor.py --count 20 --configs 1x2m4 --log-dir /tmp/ce-logs

    Redis: db 7 by default (--redis-url), keys under the prefix bench-ce-<random>:.
    Code: by default a `git archive` copy of HEAD's etl_pipelines/ and dagster.yaml goes first on
    every process's PYTHONPATH (bench/snapshot.py), so edits to the working tree during a run do not
    mix into it; `--code worktree` measures the working tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import clean_env, environment_info
from snapshot import Code, code_snapshot
from throughput import (
    BIN,
    CLK_TCK,
    DEFAULT_PG_ADMIN_URL,
    FIB_N,
    Config,
    Group,
    Sampler,
    child_dispatch,
    child_setup,
    delete_redis_keys,
    group_pss,
    group_usage,
    job_counts,
    proc_stats,
    record_stats,
    start_group,
    summarise_ms,
    temporary_database,
)

SCRIPT = Path(__file__).resolve()
BENCH = SCRIPT.parent
DEFS_MODULE = "celery_executor_defs"
LOCATION_NAME = "etl_pipelines"  # what the runs' origins name (etl_pipelines.settings.LOCATION_NAME)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
DEFAULT_CONFIGS = "1x2m4,2x2m4"


# --------------------------------------------------------------------------------------------
# Children (environment set before import)
# --------------------------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        if args.child == "setup":
            result = child_setup()
        else:
            # The product's dispatch(), loading the bench code location instead of
            # etl_pipelines.definitions (same job name, same location name).
            from etl_pipelines.framework import _dagster_internal

            _dagster_internal.DEFINITIONS_MODULE = DEFS_MODULE
            result = child_dispatch(args.count)
        import etl_pipelines

        result["etl_pipelines_imported_from"] = str(Path(etl_pipelines.__file__).parent)
    finally:
        sys.stdout = real_stdout
    json.dump(result, real_stdout)
    real_stdout.write("\n")
    return 0


def run_child(kind: str, env: dict[str, str], count: int) -> dict[str, Any]:
    cmd = [sys.executable, str(SCRIPT), "--child", kind, "--count", str(count)]
    # cwd = bench/: the runs' code origin records it as the location's working directory.
    proc = subprocess.run(cmd, env=env, cwd=BENCH, capture_output=True, text=True, start_new_session=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise RuntimeError(f"child {kind} exited {proc.returncode}")
    return json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])


# --------------------------------------------------------------------------------------------
# Homes and per-process CPU of the daemon group
# --------------------------------------------------------------------------------------------


def instance_yaml(code: Code, max_concurrent_runs: int) -> str:
    """The measured commit's dagster.yaml without the Celery run launcher (so Dagster's default)."""
    config = yaml.safe_load(code.dagster_yaml.read_text())
    config.pop("run_launcher", None)
    config["run_coordinator"]["config"]["max_concurrent_runs"] = max_concurrent_runs
    return yaml.safe_dump(config)


def workspace_yaml() -> str:
    location = {"module_name": DEFS_MODULE, "location_name": LOCATION_NAME, "working_directory": str(BENCH)}
    return yaml.safe_dump({"load_from": [{"python_module": location}]})


def celery_config_module(broker: str, prefix: str) -> str:
    """`dagster_celery_config` for the worker: what `dagster-celery worker start -y` would write."""
    from celery_executor_defs import celery_config_source

    lines = [f"broker_url = {broker!r}", f"result_backend = {broker!r}"]
    lines += [f"{key} = {value!r}" for key, value in celery_config_source(prefix).items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def temporary_home(
    code: Code, prefix: str, max_concurrent_runs: int, broker: str, key_prefix: str
) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        (home / "dagster.yaml").write_text(instance_yaml(code, max_concurrent_runs))
        (home / "workspace.yaml").write_text(workspace_yaml())
        (home / "celery_config").mkdir()
        (home / "celery_config" / "dagster_celery_config.py").write_text(
            celery_config_module(broker, key_prefix)
        )
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def process_kind(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "spawn_main" in cmdline:
        return "run_worker"  # multiprocessing "spawn" child of the code server: the run worker
    if "resource_tracker" in cmdline:
        return "other"
    if " grpc" in cmdline or "code-server" in cmdline:
        return "code_server"
    if "dagster-daemon" in cmdline or "dagster_daemon" in cmdline:
        return "daemon"
    return "other"


@dataclass
class KindSampler(Sampler):
    """throughput.Sampler plus per-pid CPU (own, reaped children) of one group's processes."""

    detail_pgid: int | None = None
    pids: dict[int, dict[str, Any]] = field(default_factory=dict)

    def sample(self) -> None:
        super().sample()
        if self.detail_pgid is None:
            return
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry}/stat").read_text(errors="replace")
            except OSError:
                continue
            fields = raw[raw.rfind(")") + 2 :].split()
            if int(fields[2]) != self.detail_pgid:
                continue
            pid = int(entry)
            own = (int(fields[11]) + int(fields[12])) / CLK_TCK
            children = (int(fields[13]) + int(fields[14])) / CLK_TCK
            info = self.pids.get(pid)
            if info is None:
                info = self.pids[pid] = {
                    "kind": process_kind(pid),
                    "own0": own,
                    "children0": children,
                    "first_seen": time.time(),
                }
            info.update(own=own, children=children, last_seen=time.time())

    def by_kind(self) -> dict[str, Any]:
        """CPU seconds per process kind over the sampled lifetime of each process."""
        out: dict[str, Any] = {"run_worker_pids": 0, "code_server_own_cpu_s": 0.0}
        out["code_server_reaped_children_cpu_s"] = 0.0
        out["daemon_own_cpu_s"] = 0.0
        out["other_cpu_s"] = 0.0
        run_worker_seen = []
        for info in self.pids.values():
            kind = info["kind"]
            if kind == "run_worker":
                out["run_worker_pids"] += 1
                run_worker_seen.append(info["own"] + info["children"])
            elif kind == "code_server":
                out["code_server_own_cpu_s"] += info["own"] - info["own0"]
                out["code_server_reaped_children_cpu_s"] += info["children"] - info["children0"]
            elif kind == "daemon":
                out["daemon_own_cpu_s"] += info["own"] - info["own0"]
            else:
                out["other_cpu_s"] += info["own"] - info["own0"]
        # A lower bound per run worker (its CPU up to the last sample before it exited).
        out["run_worker_cpu_seen_s"] = sum(run_worker_seen)
        out["run_worker_cpu_seen_per_process_ms"] = summarise_ms(run_worker_seen)
        return out


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------

# (name, dagster_event_type, text the event's JSON must contain or None)
MARKS = [
    ("RUN_STARTING", "PIPELINE_STARTING", None),
    ("PROCESS", "ENGINE_EVENT", "Started process for run"),
    ("RUN_START", "PIPELINE_START", None),
    ("SUBMITTED", "ENGINE_EVENT", "Submitting celery task"),
    ("IN_WORKER", "ENGINE_EVENT", "in celery worker"),
    ("STEP_START", "STEP_START", None),
    ("STEP_SUCCESS", "STEP_SUCCESS", None),
    ("RUN_SUCCESS", "PIPELINE_SUCCESS", None),
]
PHASES = [
    ("daemon launch -> run worker up (RUN_STARTING -> 'Started process')", "RUN_STARTING", "PROCESS"),
    ("run worker: 'Started process' -> RUN_START", "PROCESS", "RUN_START"),
    ("run worker: RUN_START -> step sent to Celery", "RUN_START", "SUBMITTED"),
    ("Celery pickup: sent -> 'Executing steps in celery worker'", "SUBMITTED", "IN_WORKER"),
    ("Celery worker: -> STEP_START", "IN_WORKER", "STEP_START"),
    ("op: STEP_START -> STEP_SUCCESS", "STEP_START", "STEP_SUCCESS"),
    ("run worker notices + teardown: STEP_SUCCESS -> RUN_SUCCESS", "STEP_SUCCESS", "RUN_SUCCESS"),
    ("whole run: RUN_STARTING -> RUN_SUCCESS", "RUN_STARTING", "RUN_SUCCESS"),
]


def event_phases(engine) -> dict[str, Any]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT run_id, dagster_event_type, extract(epoch FROM timestamp), event FROM event_logs "
                "WHERE dagster_event_type = ANY(:types)"
            ),
            {"types": sorted({m[1] for m in MARKS})},
        ).all()
        per_run = connection.execute(
            sa.text("SELECT count(*)::float / NULLIF(count(DISTINCT run_id), 0) FROM event_logs")
        ).scalar()
    runs: dict[str, dict[str, float]] = {}
    for run_id, kind, ts, event in rows:
        for name, stored, text in MARKS:
            if kind == stored and (text is None or text in event):
                runs.setdefault(run_id, {}).setdefault(name, float(ts))
    result: dict[str, Any] = {"runs_with_events": len(runs), "events_per_run": per_run, "phases": {}}
    for label, a, b in PHASES:
        result["phases"][label] = summarise_ms([r[b] - r[a] for r in runs.values() if a in r and b in r])
    return result


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------


def run_config(
    config: Config, index: int, template: str, args: argparse.Namespace, run_tag: str, code: Code
) -> dict[str, Any]:
    import sqlalchemy as sa

    db_name = f"etl_bench_{run_tag}_ce{index}"
    prefix = f"bench-ce-{run_tag}:c{index}:"
    result: dict[str, Any] = {
        "config": config.label,
        "workers": config.workers,
        "concurrency": config.concurrency,
        "max_concurrent_runs": config.max_runs,
    }
    groups: list[Group] = []
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temporary_database(args.pg_admin_url, db_name, template))
        home = stack.enter_context(
            temporary_home(code, f"etl_bench_ce_c{index}_", config.max_runs, args.redis_url, prefix)
        )
        stack.callback(delete_redis_keys, args.redis_url, prefix)
        env = clean_env() | {
            "DAGSTER_HOME": str(home),
            "ETL_DATABASE_URL": url,
            "ETL_BENCH_CELERY_URL": args.redis_url,
            "ETL_BENCH_CELERY_PREFIX": prefix,
            "PYTHONPATH": code.pythonpath(BENCH, home / "celery_config"),
        }
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        stack.callback(engine.dispose)

        def stop_all() -> None:
            for group in reversed(groups):
                group.stop()
            if args.log_dir:
                out = Path(args.log_dir)
                out.mkdir(parents=True, exist_ok=True)
                for group in groups:
                    shutil.copyfile(group.log, out / f"ce{index}-{group.log.name}")

        stack.callback(stop_all)
        sampler = KindSampler({})
        for number in range(1, config.workers + 1):
            argv = [
                str(BIN / "celery"),
                "-A",
                "dagster_celery.app",
                "worker",
                "--prefetch-multiplier=1",
                "--loglevel",
                "INFO",
                "-Q",
                "dagster",
                "--concurrency",
                str(config.concurrency),
                "-n",
                f"cw{number}@%h",
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
        sampler.detail_pgid = daemon.pgid
        sampler.start()
        n = args.count
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
        stats = proc_stats()
        memory = {
            g.name: {
                "rss_mb": group_usage(g.pgid, stats)[1] / 2**20,
                "pss_mb": group_pss(g.pgid) / 2**20,
                "peak_rss_mb": sampler.peak_rss(g.name) / 2**20,
                "processes": group_usage(g.pgid, stats)[2],
            }
            for g in groups
        }
        for group in reversed(groups):
            group.stop()

        counts = job_counts(engine)
        records = record_stats(engine)
        first, last = records["first_start"], records["last_finish"]
        window = (last - first) if first is not None and last is not None else float("nan")
        completed = records["completed"]
        per_job = (lambda seconds: seconds * 1000.0 / completed) if completed else (lambda _s: float("nan"))
        worker_names = [g.name for g in groups if g.name.startswith("worker")]
        worker_cpu = sum(sampler.group_cpu(w, first, last) for w in worker_names) if first else 0.0
        daemon_cpu = sampler.group_cpu("daemon", first, last) if first else 0.0
        daemon_cpu_total = sampler.group_cpu("daemon", t_daemon, t_done)
        busy = (
            (sampler.at(last, lambda r: r["busy"]) - sampler.at(first, lambda r: r["busy"])) if first else 0.0
        )
        kinds = sampler.by_kind()
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
                "celery_worker_cpu_ms_per_job": per_job(worker_cpu),
                "daemon_group_cpu_ms_per_job": per_job(daemon_cpu),
                "daemon_group_cpu_ms_per_job_incl_startup": per_job(daemon_cpu_total),
                "all_groups_cpu_ms_per_job": per_job(worker_cpu + daemon_cpu),
                "machine_busy_cores": busy / window if window and window > 0 else float("nan"),
                "daemon_group_by_kind": kinds,
                "run_worker_cpu_ms_per_job": per_job(
                    max(kinds["code_server_reaped_children_cpu_s"], kinds["run_worker_cpu_seen_s"])
                ),
                "code_server_cpu_ms_per_job": per_job(kinds["code_server_own_cpu_s"]),
                "daemon_process_cpu_ms_per_job": per_job(kinds["daemon_own_cpu_s"]),
                "memory": memory,
                "records": records,
                "events": event_phases(engine),
            }
        )
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def format_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    d = report["dispatch"]
    results: list[dict[str, Any]] = report["results"]
    lines = [
        f"celery_executor mode: {report['count']} x Fibonacci(n={FIB_N}), default run launcher, "
        "step sent to `celery -A dagster_celery.app worker`",
        f"{env['date_utc']}, {env['cpus']} CPUs, load (1 min) {env['loadavg_1m_at_start']} -> "
        f"{env.get('loadavg_1m_at_end', '?')}, dagster {env['dagster']}, dagster-celery "
        f"{env['dagster-celery']}, celery {env['celery']}, commit {env['commit']}",
        f"dispatch: cold {d['cold_ms']:.0f} ms; {d['warm']['count']} warm: median "
        f"{d['warm']['median_ms']:.1f} ms, p90 {d['warm']['p90_ms']:.1f}, p99 {d['warm']['p99_ms']:.1f}, "
        f"max {d['warm']['max_ms']:.1f}; "
        f"CPU {d['warm']['cpu_ms_per_call']:.1f} ms per dispatch",
        "",
        "| | " + " | ".join(r["config"] for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]

    def row(label: str, get) -> None:
        cells = []
        for r in results:
            try:
                cells.append(get(r))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("completed / N", lambda r: f"{r['completed']}/{r['count']}" + (" TIMEOUT" if r["timed_out"] else ""))
    row("**sustained throughput (jobs/s)**", lambda r: f"**{r['throughput_jobs_s']:.3f}**")
    row("first start -> last finish (s)", lambda r: f"{r['window_s']:.1f}")
    row("wall: daemon start -> all final (s)", lambda r: f"{r['wall_s']:.1f}")
    row("**CPU per job, all groups (ms)**", lambda r: f"**{r['all_groups_cpu_ms_per_job']:.0f}**")
    row("Celery worker CPU per job (ms)", lambda r: f"{r['celery_worker_cpu_ms_per_job']:.0f}")
    row("daemon group CPU per job (ms)", lambda r: f"{r['daemon_group_cpu_ms_per_job']:.0f}")
    row("  of which run worker per run (ms)", lambda r: f"{r['run_worker_cpu_ms_per_job']:.0f}")
    row("  of which code servers (ms)", lambda r: f"{r['code_server_cpu_ms_per_job']:.0f}")
    row("  of which dagster-daemon process (ms)", lambda r: f"{r['daemon_process_cpu_ms_per_job']:.0f}")
    row("run-worker processes seen", lambda r: str(r["daemon_group_by_kind"]["run_worker_pids"]))
    row("machine busy in window (cores of 2)", lambda r: f"{r['machine_busy_cores']:.2f}")
    row(
        "Celery worker RSS / PSS, each (MB)",
        lambda r: ", ".join(
            f"{m['rss_mb']:.0f} / {m['pss_mb']:.0f}" for k, m in r["memory"].items() if k.startswith("worker")
        ),
    )
    row(
        "Celery worker processes per group",
        lambda r: ", ".join(str(m["processes"]) for k, m in r["memory"].items() if k.startswith("worker")),
    )
    row("daemon group peak RSS (MB)", lambda r: f"{r['memory']['daemon']['peak_rss_mb']:.0f}")
    row("events per run", lambda r: f"{r['events']['events_per_run']:.1f}")
    row(
        "record started->finished median (ms)",
        lambda r: f"{r['records']['record_started_to_finished']['median_ms']:.1f}",
    )
    for label, _a, _b in PHASES:
        row(f"{label}, median (ms)", lambda r, k=label: f"{r['events']['phases'][k]['median_ms']:.0f}")
    for a in results:
        for b in results:
            if a["workers"] == 1 and b["workers"] == 2 and a["concurrency"] == b["concurrency"]:
                ratio = b["throughput_jobs_s"] / a["throughput_jobs_s"]
                lines.append(f"\nratio {b['config']} / {a['config']} = x{ratio:.2f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Throughput with dagster-celery's celery_executor.")
    parser.add_argument("--count", type=int, default=100, help="jobs (default 100)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="WxC[mM], comma-separated (%(default)s)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per configuration")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--log-dir", help="copy the daemon and worker logs here")
    parser.add_argument(
        "--pg-admin-url", default=os.environ.get("ETL_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL)
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("ETL_BENCH_CELERY_REDIS_URL", DEFAULT_REDIS_URL)
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
        args.config_list = [Config.parse(spec) for spec in args.configs.split(",") if spec.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    environment = environment_info(("dagster", "dagster-celery", "celery", "kombu"))
    run_tag = uuid.uuid4().hex[:8]
    template = f"etl_bench_{run_tag}_cetmpl"
    prefix = f"bench-ce-{run_tag}:dispatch:"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temporary_database(args.pg_admin_url, template))
        code = stack.enter_context(code_snapshot(args.code))
        environment["commit"] = code.commit
        home = stack.enter_context(temporary_home(code, "etl_bench_ce_dispatch_", 4, args.redis_url, prefix))
        env = clean_env() | {
            "DAGSTER_HOME": str(home),
            "ETL_DATABASE_URL": url,
            "ETL_BENCH_CELERY_URL": args.redis_url,
            "ETL_BENCH_CELERY_PREFIX": prefix,
            "PYTHONPATH": code.pythonpath(BENCH),
        }
        print("schema setup ...", file=sys.stderr)
        run_child("setup", env, args.count)
        print(f"dispatching {args.count} jobs ...", file=sys.stderr)
        dispatch = run_child("dispatch", env, args.count)
        results = []
        for index, config in enumerate(args.config_list):
            print(f"[{config.label}] running ...", file=sys.stderr)
            results.append(run_config(config, index, template, args, run_tag, code))
    environment["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report = {
        "environment": environment,
        "count": args.count,
        "mode": "celery_executor: default run launcher (run worker per run), step sent to Celery",
        "dispatch": dispatch,
        "results": results,
    }
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
