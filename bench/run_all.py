"""Every scenario in one invocation: one after another, one results directory, one summary.

Runs dispatch_latency (postgres), throughput, celery_executor, profile_worker, rq_baseline and
cli_latency in this process, strictly one after another (the machine has 2 shared cores), all on
one commit (--code, resolved once; cli_latency compares --cli-before with it). Into --out
(default /tmp/etl-bench-<UTC timestamp>) it writes <scenario>.json (each with the load average
before and after), logs/ (daemon and worker logs), run.json (the command, every step's outcome)
and summary.md (every scenario's tables, then the performance bar). A failed scenario is recorded
and the next one still runs; Ctrl-C or SIGTERM stops the running one (its cleanup runs) and writes
the summary of what finished.

examples:
  .venv/bin/python bench/run_all.py                                         # the full run, ~50 min
  .venv/bin/python bench/run_all.py --count 200 --ce-count 20 --pw-count 40 --configs 1x2,2x2
  .venv/bin/python bench/run_all.py --only cli_latency,rq_baseline --out /tmp/bench-some
  .venv/bin/python bench/run_all.py --summarize /tmp/etl-bench-20261202-0430  # summary.md again
"""

import argparse
import importlib
import json
import signal
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

import harness

SCENARIOS = ["dispatch_latency", "throughput", "celery_executor", "profile_worker", "rq_baseline"]
SCENARIOS += ["cli_latency"]
BAR = {"jobs_s": 25.0, "median_ms": 10.0, "p99_ms": 50.0, "cpu_ms": 60.0}  # the performance bar
MODES = {"throughput": "production", "celery_executor": "celery_executor", "rq_baseline": "RQ"}


def parse_args(argv=None) -> argparse.Namespace:
    doc, raw = __doc__.split("\n\n", 1), argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=doc[0], epilog=doc[1], formatter_class=raw)
    add = parser.add_argument
    add("--count", type=int, default=1000, help="N of dispatch_latency, throughput and RQ (%(default)s)")
    add("--configs", default="1x2,2x2,2x2i0.25,2x4m8i0.25,2x4m8i0.25t", help="throughput's (%(default)s)")
    add("--ce-count", type=int, default=100, help="N of celery_executor (%(default)s)")
    add("--ce-configs", default="1x2m4,2x2m4", help="celery_executor's (%(default)s)")
    add("--pw-count", type=int, default=200, help="measured runs per profile_worker variant (%(default)s)")
    add("--pw-variants", default="baseline,no_engine_events+no_notify", help="profile_worker's (%(default)s)")
    add("--rq-workers", default="1,2", help="rq_baseline's worker counts (%(default)s)")
    add("--cli-before", default="68468f8", help="cli_latency's ref to compare --code with (%(default)s)")
    add("--cli-runs", type=int, default=10, help="cli_latency's runs per ref and command (%(default)s)")
    add("--code", default="HEAD", help="git ref to measure, or 'worktree' (%(default)s)")
    add("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    add("--out", type=Path, help="results directory (default /tmp/etl-bench-<UTC timestamp>)")
    add("--summarize", type=Path, metavar="DIR", help="only write DIR/summary.md again and print it")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, commit: str) -> list[tuple[str, list[str]]]:
    code = ["--code", commit]
    steps = [
        ("dispatch_latency", ["--only", "postgres", "--count", str(args.count), *code]),
        ("throughput", ["--count", str(args.count), "--configs", args.configs, *code]),
        ("celery_executor", ["--count", str(args.ce_count), "--configs", args.ce_configs, *code]),
        ("profile_worker", ["--count", str(args.pw_count), "--variants", args.pw_variants, *code]),
        ("rq_baseline", ["--count", str(args.count), "--workers", args.rq_workers]),
        ("cli_latency", ["--refs", f"{args.cli_before},{commit}", "--runs", str(args.cli_runs)]),
    ]
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    if unknown := only - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return [step for step in steps if step[0] in only]


def rate(r: dict) -> float:
    return r["throughput_jobs_s"] if "config" in r else r["jobs_per_second"]


def name(r: dict) -> str:
    return r["config"] if "config" in r else f"{r['worker_class']} x{r['workers']}"


def alike(a: dict, b: dict) -> bool:
    """Only the worker count differs (and max_concurrent_runs, the same or in proportion)."""
    if "worker_class" in a:
        return a["worker_class"] == b["worker_class"]
    same = [a[k] == b[k] for k in ("concurrency", "interval")] + [bool(a["threads"]) == bool(b["threads"])]
    return all(same) and b["max_runs"] in (a["max_runs"], 2 * a["max_runs"])


def cpu(r: dict, mode: str) -> float:
    return r["worker_cpu_ms_per_job"] + (r["daemon_cpu_ms_per_job"] if mode == "celery_executor" else 0)


def performance_bar(found: dict[str, dict]) -> str:
    rows: list[list[str]] = []

    def add(what: str, measured: str, met: bool | None) -> None:
        rows.append([what, measured, "-" if met is None else "**yes**" if met else "**no**"])

    modes = [(mode, found[s]) for s, mode in MODES.items() if s in found]
    for mode, r in modes:
        two = [x for x in r["results"] if x["workers"] == 2]
        measured = ", ".join(f"{name(x)}: {rate(x):.2f}" for x in two)
        add(
            f">= {BAR['jobs_s']:g} jobs/s, 2 workers, {mode} (N = {r['count']})",
            measured,
            max(map(rate, two), default=0) >= BAR["jobs_s"],
        )
    sources = [(n, found[n]["dispatch"]["warm"]) for n in ("throughput", "celery_executor") if n in found]
    if "dispatch_latency" in found:
        sources.insert(0, ("dispatch_latency", found["dispatch_latency"]["results"][0]["warm"]))
    for stat in ("median_ms", "p99_ms") if sources else ():
        measured = "; ".join(f"{d[stat]:.1f} ms ({source})" for source, d in sources)
        add(f"dispatch {stat[:-3]} <= {BAR[stat]:g} ms", measured, sources[0][1][stat] <= BAR[stat])
    for mode, r in modes:
        values = [cpu(x, mode) for x in r["results"]]
        what = f"worker CPU per job <= {BAR['cpu_ms']:g} ms, {mode}" + " (all processes)" * (
            mode == "celery_executor"
        )
        add(what, f"{min(values):.1f} to {max(values):.1f} ms", max(values) <= BAR["cpu_ms"])
    for x in found.get("profile_worker", {}).get("results", []):
        measured = f"{x['cpu_ms']['mean'] + x['child_cpu_ms']['mean']:.1f} ms"
        add(f"same, the worker's code path alone (profile_worker, {x['variant']})", measured, None)
    for mode, r in modes:
        memory = [
            f"{name(x)}: {harness.worker_memory(x) if 'memory' in x else round(x['peak_rss_mb'])} MB"
            for x in r["results"]
        ]
        add(f"memory per worker stated, {mode} (RSS / PSS; RQ: peak RSS)", "; ".join(memory), True)
    for mode, r in modes:
        for a, b in [
            (a, b) for a in r["results"] for b in r["results"] if (a["workers"], b["workers"]) == (1, 2)
        ]:
            if alike(a, b):
                ratio = f"x{rate(b) / rate(a):.2f} ({name(b)} / {name(a)})"
                add(f"a second worker raises throughput, {mode}", ratio, rate(b) > 1.05 * rate(a))
    return "## The performance bar\n\n" + harness.table(["bar", "measured", "met?"], rows).replace(
        "---:|", "---|"
    )


def summarize(out: Path) -> str:
    meta = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    found = {n: json.loads(path.read_text()) for n in SCENARIOS if (path := out / f"{n}.json").exists()}
    text = (
        f"# Benchmark run {meta.get('started_utc')}\n\n`{meta.get('command')}`, code {meta.get('commit')}\n\n"
    )
    keys = ("scenario", "start_utc", "end_utc", "load_before", "load_after", "outcome")
    steps = [[s.get(key, "-") for key in keys] for s in meta.get("steps", [])]
    text += harness.table(
        ["scenario", "start UTC", "end", "load 1/5/15 min before", "after", "outcome"], steps
    )
    for scenario, result in found.items():
        text += "\n" + importlib.import_module(scenario).report(result)
    return text + "\n" + performance_bar(found)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.summarize or args.out or Path(f"/tmp/etl-bench-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    steps = []
    if not args.summarize:
        signal.signal(signal.SIGTERM, harness.interrupt)
        commit = (
            args.code if args.code == "worktree" else harness.git("rev-parse", "--short", args.code).strip()
        )
        command = " ".join(["bench/run_all.py", *(argv if argv is not None else sys.argv[1:])])
        meta = {
            "command": command,
            "started_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
            "commit": commit,
        }
        meta["steps"] = steps
        out.mkdir(parents=True, exist_ok=True)
        for scenario, step_argv in plan(args, commit):
            steps.append({"scenario": scenario, "argv": step_argv, "load_before": harness.load()})
            steps[-1]["start_utc"] = f"{datetime.now(UTC):%H:%M:%S}"
            try:
                harness.run_scenario(importlib.import_module(scenario), step_argv, out)
                steps[-1]["outcome"] = "ok"
            except KeyboardInterrupt:
                steps[-1]["outcome"] = "interrupted"
                break
            except Exception as exc:  # recorded; the next scenario still runs
                traceback.print_exc()
                steps[-1]["outcome"] = f"failed: {type(exc).__name__}: {exc}"[:300]
            finally:
                steps[-1] |= {"end_utc": f"{datetime.now(UTC):%H:%M:%S}", "load_after": harness.load()}
                (out / "run.json").write_text(json.dumps(meta, indent=2))
    text = summarize(out)
    (out / "summary.md").write_text(text)
    print(text)
    harness.say(f"results in {out}")
    return 0 if all(step["outcome"] == "ok" for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
