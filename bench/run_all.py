"""Run every benchmark in one invocation and write the results and a summary into one directory.

What it runs, one after another (never two at once: the machine has 2 shared cores)
    1. dispatch_latency.py --only postgres --count N                         -> dispatch_latency.json
    2. throughput.py --count N --configs CONFIGS (default 1x2,2x2,2x2i0.25,2x4m8i0.25)
                                                                             -> throughput.json
    3. celery_executor.py --count CE_N --configs CE_CONFIGS (default N 100, 1x2m4,2x2m4)
                                                                             -> celery_executor.json
    4. rq_baseline.py --count N --workers 1,2 with the RQ interpreter (default /tmp/rqvenv; it
       is created with `python3 -m venv` + `pip install rq redis psycopg2-binary` if missing)
                                                                             -> rq_baseline.json
    Each script's stderr (progress, errors) goes to <name>.log, its daemon/worker logs (throughput,
    celery_executor) under logs/. run.json records per step: command, start/end time, seconds,
    exit code, 1-minute load average before and after (the machine is shared: compare within one
    run). summary.md holds one table per script and the performance bar (bar / measured / met?).
    A failed step is recorded and the next one still runs.

    The three Dagster scripts measure a `git archive` copy of one commit (bench/snapshot.py,
    `--code`, default HEAD), resolved once here so that all of them measure the same commit even
    if HEAD moves during the run. Each script cleans up after itself (databases etl_bench_*, Redis
    keys of its prefix, temporary homes, process groups). On Ctrl-C or SIGTERM this script sends
    SIGINT to the running script, waits for its cleanup (up to 120 s), then kills its process
    group.

How to run (repository root; PostgreSQL 127.0.0.1:5432 trust user postgres; Redis 127.0.0.1:6379)
    .venv/bin/python bench/run_all.py                                # the full run, ~35-50 min
    .venv/bin/python bench/run_all.py --count 50 --ce-count 10 --out /tmp/bench-smoke   # smoke
    .venv/bin/python bench/run_all.py --only throughput,rq --configs 1x2,2x2
    .venv/bin/python bench/run_all.py --summarize /tmp/etl-bench-20261127-2345   # table again

    --out defaults to /tmp/etl-bench-<UTC timestamp>.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import REPO, environment_info

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
STEPS = ("dispatch", "throughput", "celery_executor", "rq")
DEFAULT_CONFIGS = "1x2,2x2,2x2i0.25,2x4m8i0.25"
DEFAULT_CE_CONFIGS = "1x2m4,2x2m4"
DEFAULT_RQ_PYTHON = "/tmp/rqvenv/bin/python"
BAR = {"throughput": 25.0, "median": 10.0, "p99": 50.0, "cpu": 60.0}


# --------------------------------------------------------------------------------------------
# Running the scripts
# --------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _raise_interrupted(*_: object) -> None:
    raise Interrupted()


def run_step(name: str, argv: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run one script in its own process group; stdout -> <name>.json, stderr -> <name>.log."""
    record: dict[str, Any] = {
        "step": name,
        "command": " ".join(argv),
        "start_utc": datetime.now(UTC).strftime("%H:%M:%S"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"== {name}: {record['command']}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with (out / f"{name}.json").open("wb") as stdout, (out / f"{name}.log").open("wb") as stderr:
        process = subprocess.Popen(argv, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            record["returncode"] = process.wait(timeout=timeout)
        except (Interrupted, KeyboardInterrupt, subprocess.TimeoutExpired) as exc:
            stop_step(process)
            record["returncode"] = (
                "interrupted" if not isinstance(exc, subprocess.TimeoutExpired) else "timeout"
            )
            record["seconds"] = round(time.monotonic() - t0, 1)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
    record["seconds"] = round(time.monotonic() - t0, 1)
    record["end_utc"] = datetime.now(UTC).strftime("%H:%M:%S")
    record["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"== {name}: exit {record['returncode']} after {record['seconds']} s", file=sys.stderr, flush=True)
    return record


def stop_step(process: subprocess.Popen) -> None:
    """SIGINT the script (its own cleanup runs), then SIGKILL its whole process group."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=120)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def ensure_rq_python(path: str) -> str:
    if Path(path).exists():
        return path
    venv = Path(path).parent.parent
    print(f"creating {venv} with rq, redis, psycopg2-binary ...", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "rq", "redis", "psycopg2-binary"], check=True)
    return path


def resolve_commit(ref: str) -> str:
    if ref == "worktree":
        return ref
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True, check=True
    ).stdout.strip()


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A markdown table; the first column left-aligned, the others right-aligned if `numeric`."""
    align = "---:|" if numeric else "---|"
    lines = ["| " + " | ".join(header) + " |", "|---|" + align * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def worker_mem(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{m['rss_mb']:.0f} / {m['pss_mb']:.0f}"
        for k, m in result["memory"].items()
        if k.startswith("worker")
    )


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Only the worker count differs (throughput.py's results)."""
    keys = ("concurrency", "dequeue_interval_seconds", "dequeue_num_workers")
    return all(a.get(k) == b.get(k) for k in keys) and (
        a["max_concurrent_runs"] * b["workers"] == b["max_concurrent_runs"] * a["workers"]
    )


def summarize(out: Path) -> str:
    meta = json.loads((out / "run.json").read_text())
    dl, tp, ce, rq = (
        load(out, n) for n in ("dispatch_latency", "throughput", "celery_executor", "rq_baseline")
    )
    env = meta["environment"]
    lines = [
        f"# Benchmark run {meta['started_utc']} - {meta.get('finished_utc', '?')}",
        "",
        f"* Commit measured: `{meta['commit']}` (git archive snapshot); Python {env['python']}, "
        f"dagster {env.get('dagster')}, celery {env.get('celery')}, {env['cpus']} CPUs (shared)",
        f"* Command: `{meta['command']}`",
        "",
    ]
    lines += table(
        ["step", "start-end (UTC)", "s", "exit", "load 1/5/15 min before", "load 1/5/15 min after"],
        [
            [
                s["step"],
                f"{s['start_utc']}-{s.get('end_utc', '?')}",
                fmt(s.get("seconds"), ".0f"),
                str(s.get("returncode")),
                " / ".join(str(x) for x in s["loadavg_before"]),
                " / ".join(str(x) for x in s.get("loadavg_after", [])),
            ]
            for s in meta["steps"]
        ],
    )
    bar: list[list[str]] = []

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else "**yes**" if ok else "**no**"

    if dl:
        r = dl["results"][0]
        d = r["dispatch"]
        lines += [f"## Dispatch latency (postgres, {dl['count']} warm dispatches)", ""]
        lines += table(
            [
                "median ms",
                "p90",
                "p99",
                "max",
                "per s",
                "CPU ms/dispatch",
                "cold ms",
                "insert alone median ms",
            ],
            [
                [
                    fmt(d["median_ms"], ".2f"),
                    fmt(d["p90_ms"], ".2f"),
                    fmt(d["p99_ms"], ".2f"),
                    fmt(d["max_ms"], ".1f"),
                    fmt(d["per_second"], ".1f"),
                    fmt(d["cpu_ms_per_call"], ".2f"),
                    fmt(r["cold_ms"], ".0f"),
                    fmt(r["insert"]["median_ms"], ".2f"),
                ]
            ],
        )
        bar.append(
            [
                f"dispatch median <= {BAR['median']:g} ms",
                f"{d['median_ms']:.1f} ms (dispatch_latency)",
                verdict(d["median_ms"] <= BAR["median"]),
            ]
        )
        bar.append(
            [
                f"dispatch p99 <= {BAR['p99']:g} ms",
                f"{d['p99_ms']:.1f} ms (dispatch_latency)",
                verdict(d["p99_ms"] <= BAR["p99"]),
            ]
        )
    if tp:
        results = tp["results"]
        d = tp["dispatch"]["warm"]
        lines += [
            f"## Throughput, production mode ({tp['count']} jobs; dispatch phase: median "
            f"{d['median_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, CPU {d['cpu_ms_per_call']:.1f} ms)",
            "",
        ]
        rows = [
            (
                "completed",
                lambda r: f"{r['completed']}/{r['count']}" + (" TIMEOUT" if r["timed_out"] else ""),
            ),
            ("**sustained jobs/s**", lambda r: f"**{r['throughput_jobs_s']:.2f}**"),
            ("first start → last finish (s)", lambda r: fmt(r["window_s"])),
            ("**worker CPU per job (ms)**", lambda r: f"**{r['worker_cpu_ms_per_job']:.1f}**"),
            ("daemon CPU per job (ms)", lambda r: fmt(r["daemon_cpu_ms_per_job"])),
            ("machine busy (cores of 2)", lambda r: fmt(r["machine_busy_cores"], ".2f")),
            ("worker RSS / PSS, each (MB)", worker_mem),
            (
                "daemon RSS / PSS (MB)",
                lambda r: f"{r['memory']['daemon']['rss_mb']:.0f} / {r['memory']['daemon']['pss_mb']:.0f}",
            ),
        ]
        for label in results[0]["events"]["phases"] if results else []:
            rows.append(
                (f"{label}, median ms", lambda r, k=label: fmt(r["events"]["phases"][k]["median_ms"]))
            )
        rows += [
            ("daemon ticks that launched", lambda r: str(r["daemon_launch_lines"]["lines"])),
            (
                "runs per tick, mean / max",
                lambda r: (
                    f"{r['daemon_launch_lines']['runs'] / max(r['daemon_launch_lines']['lines'], 1):.1f}"
                    f" / {r['daemon_launch_lines']['max_per_line']}"
                ),
            ),
            ("s per tick", lambda r: fmt(r["window_s"] / max(r["daemon_launch_lines"]["lines"], 1), ".2f")),
            (
                "launch spacing in a tick, median ms",
                lambda r: fmt(r["events"]["launch_spacing"]["median_ms"]),
            ),
        ]
        body = []
        for label, get in rows:
            cells = []
            for r in results:
                try:
                    cells.append(get(r))
                except (KeyError, TypeError, ValueError, ZeroDivisionError):
                    cells.append("-")
            body.append([label, *cells])
        lines += table(["", *[r["config"] for r in results]], body)
        if any(r.get("dequeue_interval_patched") for r in results):
            lines += [
                "Fractional intervals use bench/bench_coordinator.py (Dagster's dequeue_interval_seconds "
                "is IntSource: whole seconds only).",
                "",
            ]
        two = [r for r in results if r["workers"] == 2]
        best = max(two, key=lambda r: r["throughput_jobs_s"], default=None)
        if best:
            measured = ", ".join(f"{r['config']}: {r['throughput_jobs_s']:.2f}" for r in two)
            bar.append(
                [
                    f">= {BAR['throughput']:g} jobs/s over {tp['count']} jobs, 2 workers (production)",
                    measured,
                    verdict(best["throughput_jobs_s"] >= BAR["throughput"]),
                ]
            )
        cpus = [r["worker_cpu_ms_per_job"] for r in results]
        bar.append(
            [
                f"worker CPU per trivial job <= {BAR['cpu']:g} ms (production)",
                f"{min(cpus):.1f}-{max(cpus):.1f} ms",
                verdict(max(cpus) <= BAR["cpu"]),
            ]
        )
        mem = [m for r in results for k, m in r["memory"].items() if k.startswith("worker")]
        bar.append(
            [
                "memory per worker stated (production, RSS / PSS)",
                "; ".join(f"{r['config']}: {worker_mem(r)} MB" for r in results) if mem else "-",
                verdict(bool(mem)),
            ]
        )
        for a in [r for r in results if r["workers"] == 1]:
            for b in two:
                if same_settings(a, b):
                    ratio = b["throughput_jobs_s"] / a["throughput_jobs_s"]
                    bar.append(
                        [
                            f"2nd worker raises throughput (production, {b['config']} / {a['config']})",
                            f"x{ratio:.2f}",
                            verdict(ratio > 1.05),
                        ]
                    )
    if ce:
        results = ce["results"]
        d = ce["dispatch"]["warm"]
        lines += [
            f"## celery_executor mode ({ce['count']} jobs; dispatch median {d['median_ms']:.1f} ms, "
            f"p99 {d['p99_ms']:.1f} ms)",
            "",
        ]
        body = []
        for label, get in [
            (
                "completed",
                lambda r: f"{r['completed']}/{r['count']}" + (" TIMEOUT" if r["timed_out"] else ""),
            ),
            ("**sustained jobs/s**", lambda r: f"**{r['throughput_jobs_s']:.3f}**"),
            ("CPU per job, all groups (ms)", lambda r: fmt(r["all_groups_cpu_ms_per_job"], ".0f")),
            ("Celery worker CPU per job (ms)", lambda r: fmt(r["celery_worker_cpu_ms_per_job"], ".0f")),
            ("run worker CPU per run (ms)", lambda r: fmt(r["run_worker_cpu_ms_per_job"], ".0f")),
            ("machine busy (cores of 2)", lambda r: fmt(r["machine_busy_cores"], ".2f")),
            ("Celery worker RSS / PSS, each (MB)", worker_mem),
            ("daemon group peak RSS (MB)", lambda r: fmt(r["memory"]["daemon"]["peak_rss_mb"], ".0f")),
            (
                "whole run RUN_STARTING → RUN_SUCCESS, median ms",
                lambda r: fmt(
                    r["events"]["phases"]["whole run: RUN_STARTING -> RUN_SUCCESS"]["median_ms"], ".0f"
                ),
            ),
        ]:
            cells = []
            for r in results:
                try:
                    cells.append(get(r))
                except (KeyError, TypeError, ValueError, ZeroDivisionError):
                    cells.append("-")
            body.append([label, *cells])
        lines += table(["", *[r["config"] for r in results]], body)
        two = [r for r in results if r["workers"] == 2]
        one = [r for r in results if r["workers"] == 1]
        if two:
            bar.append(
                [
                    f">= {BAR['throughput']:g} jobs/s, 2 workers (celery_executor, N = {ce['count']})",
                    ", ".join(f"{r['config']}: {r['throughput_jobs_s']:.3f}" for r in two),
                    verdict(max(r["throughput_jobs_s"] for r in two) >= BAR["throughput"]),
                ]
            )
        bar.append(
            [
                "dispatch median / p99 (celery_executor's dispatch phase)",
                f"{d['median_ms']:.1f} / {d['p99_ms']:.1f} ms",
                verdict(d["median_ms"] <= BAR["median"] and d["p99_ms"] <= BAR["p99"]),
            ]
        )
        cpu = [r["all_groups_cpu_ms_per_job"] for r in results]
        bar.append(
            [
                f"worker CPU per job <= {BAR['cpu']:g} ms (celery_executor: all groups)",
                f"{min(cpu):.0f}-{max(cpu):.0f} ms (Celery worker alone "
                + ", ".join(f"{r['celery_worker_cpu_ms_per_job']:.0f}" for r in results)
                + ")",
                verdict(max(cpu) <= BAR["cpu"]),
            ]
        )
        bar.append(
            [
                "memory per worker (celery_executor, Celery worker RSS / PSS)",
                "; ".join(f"{r['config']}: {worker_mem(r)} MB" for r in results),
                verdict(True),
            ]
        )
        for a in one:
            for b in two:
                if (
                    a["concurrency"] == b["concurrency"]
                    and a["max_concurrent_runs"] == b["max_concurrent_runs"]
                ):
                    ratio = b["throughput_jobs_s"] / a["throughput_jobs_s"]
                    bar.append(
                        [
                            f"2nd worker raises throughput (celery_executor, {b['config']} / {a['config']})",
                            f"x{ratio:.2f}",
                            verdict(ratio > 1.05),
                        ]
                    )
    if rq:
        results = rq["results"]
        renv = rq["environment"]
        lines += [
            f"## RQ baseline ({rq['count']} jobs, rq {renv['rq']}, load {renv['loadavg_1m_at_start']} → "
            f"{renv['loadavg_1m_at_end']})",
            "",
        ]
        lines += table(
            [
                "worker class",
                "workers",
                "enqueue+insert median / p99 ms",
                "drain s",
                "jobs/s",
                "worker CPU ms/job",
                "peak RSS MB",
            ],
            [
                [
                    r["worker_class"],
                    str(r["workers"]),
                    f"{r['enqueue_median_ms']:.2f} / {r['enqueue_p99_ms']:.2f}",
                    fmt(r["drain_seconds"], ".2f"),
                    fmt(r["jobs_per_second"], ".1f"),
                    fmt(r["worker_cpu_ms_per_job"], ".1f"),
                    fmt(r["worker_peak_rss_mb_max_so_far"], ".0f"),
                ]
                for r in results
            ],
        )
        for cls in ("Worker", "SimpleWorker"):
            by = {r["workers"]: r for r in results if r["worker_class"] == cls}
            if 2 in by:
                r2 = by[2]
                bar.append(
                    [
                        f">= {BAR['throughput']:g} jobs/s, 2 workers (RQ {cls})",
                        f"{r2['jobs_per_second']:.1f} jobs/s; enqueue median / p99 "
                        f"{r2['enqueue_median_ms']:.2f} / {r2['enqueue_p99_ms']:.2f} ms; worker CPU "
                        f"{r2['worker_cpu_ms_per_job']:.1f} ms/job; peak RSS "
                        f"{r2['worker_peak_rss_mb_max_so_far']:.0f} MB",
                        verdict(r2["jobs_per_second"] >= BAR["throughput"]),
                    ]
                )
            if 1 in by and 2 in by:
                ratio = by[2]["jobs_per_second"] / by[1]["jobs_per_second"]
                bar.append(
                    [
                        f"2nd worker raises throughput (RQ {cls}, 2 / 1)",
                        f"x{ratio:.2f}",
                        verdict(ratio > 1.05),
                    ]
                )
    lines += ["## The performance bar", ""]
    lines += table(["bar", "measured", "met?"], bar, numeric=False)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run all benchmarks sequentially; JSON + summary.md.")
    parser.add_argument("--count", type=int, default=1000, help="N for dispatch, throughput, RQ (1000)")
    parser.add_argument("--ce-count", type=int, default=100, help="N for celery_executor (100)")
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help="throughput.py configurations (%(default)s)"
    )
    parser.add_argument(
        "--ce-configs", default=DEFAULT_CE_CONFIGS, help="celery_executor.py ones (%(default)s)"
    )
    parser.add_argument("--rq-workers", default="1,2", help="rq_baseline.py --workers (%(default)s)")
    parser.add_argument("--rq-python", default=DEFAULT_RQ_PYTHON, help="interpreter with rq (%(default)s)")
    parser.add_argument("--code", default="HEAD", help="git ref to measure, or 'worktree' (default HEAD)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per step (3600)")
    parser.add_argument("--out", help="results directory (default /tmp/etl-bench-<UTC timestamp>)")
    parser.add_argument("--summarize", metavar="DIR", help="only (re)write DIR/summary.md and print it")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        out = Path(args.summarize)
        text = summarize(out)
        (out / "summary.md").write_text(text + "\n")
        print(text)
        return 0
    steps = [s.strip() for s in args.only.split(",")] if args.only else list(STEPS)
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {STEPS}")
    out = Path(args.out or f"/tmp/etl-bench-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    commit = resolve_commit(args.code)
    environment = environment_info(("dagster", "celery"))
    meta: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python", "bench/run_all.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit[:7] if commit != "worktree" else environment["commit"] + " (worktree)",
        "environment": environment,
        "steps": [],
    }
    signal.signal(signal.SIGTERM, _raise_interrupted)
    plan: list[tuple[str, list[str]]] = []
    common = ["--code", commit, "--json"]
    logs = out / "logs"
    if "dispatch" in steps:
        argv_step = ["bench/dispatch_latency.py", "--only", "postgres", "--count", str(args.count), *common]
        plan.append(("dispatch_latency", [PYTHON, *argv_step]))
    if "throughput" in steps:
        argv_step = ["bench/throughput.py", "--count", str(args.count), "--configs", args.configs, *common]
        plan.append(("throughput", [PYTHON, *argv_step, "--log-dir", str(logs / "throughput")]))
    if "celery_executor" in steps:
        argv_step = ["bench/celery_executor.py", "--count", str(args.ce_count), "--configs", args.ce_configs]
        argv_step += [*common, "--log-dir", str(logs / "celery_executor")]
        plan.append(("celery_executor", [PYTHON, *argv_step]))
    if "rq" in steps:
        rq_python = ensure_rq_python(args.rq_python)
        argv_step = [
            "bench/rq_baseline.py",
            "--count",
            str(args.count),
            "--workers",
            args.rq_workers,
            "--json",
        ]
        plan.append(("rq_baseline", [rq_python, *argv_step]))
    try:
        for name, argv_step in plan:
            meta["steps"].append(run_step(name, argv_step, out, args.timeout))
            (out / "run.json").write_text(json.dumps(meta, indent=2))
    except (Interrupted, KeyboardInterrupt):
        meta["interrupted"] = True
        print("interrupted; the running step was stopped", file=sys.stderr)
    meta["finished_utc"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    text = summarize(out)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\nresults in {out}", file=sys.stderr)
    return 1 if meta.get("interrupted") or any(s.get("returncode") != 0 for s in meta["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
