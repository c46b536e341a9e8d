"""The performance bar in one invocation: the new design, the old design and RQ, one after another.

Starts the bench's own PostgreSQL and Redis once (see harness.servers), then runs dispatch_latency
(postgres), throughput, start_latency and io_scaling on --code (default HEAD), right after each on
--base if given (an earlier commit of the new design, the same N, its configurations in reverse
order), then on --old (default 961a9de, the daemon-dequeue design), then rq_baseline, strictly one
after another (the machine has 2 shared cores). Into --out (default /tmp/etl-bench-<UTC timestamp>) it
writes <scenario>@<commit>.json (each with the load average before and after), logs/, run.json
(the command, every step's outcome) and summary.md (every scenario's tables, then the bar with
each figure of --code, --base, the old design and RQ, and the ratios). A failed step is recorded
and the next one still runs; Ctrl-C or SIGTERM stops the running one (its cleanup runs) and writes
the summary of what finished. --only adds or picks scenarios (profile_worker, celery_executor and
cli_latency run only when named).

examples:
  .venv/bin/python bench/run_all.py                                          # the bar, ~20 min
  .venv/bin/python bench/run_all.py --count 300 --old-count 100 --latency-count 20
  .venv/bin/python bench/run_all.py --base def7d75 --dispatch-count 500 --latency-count 30 \
      --old-count 100 --old-latency-count 10 --io-waves 5 --rq-count 300 --rq-io-waves 5  # ~20 min
  .venv/bin/python bench/run_all.py --only rq_baseline,profile_worker --out /tmp/bench-some
  .venv/bin/python bench/run_all.py --summarize /tmp/etl-bench-20261202-0730  # summary.md again
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

BAR_SCENARIOS = ["dispatch_latency", "throughput", "start_latency", "io_scaling", "rq_baseline"]
SCENARIOS = [*BAR_SCENARIOS, "profile_worker", "celery_executor", "cli_latency"]


def parse_args(argv=None) -> argparse.Namespace:
    doc, raw = __doc__.split("\n\n", 1), argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=doc[0], epilog=doc[1], formatter_class=raw)
    add = parser.add_argument
    add("--code", default="HEAD", help="the design measured (%(default)s)")
    add("--base", default="", help="an earlier commit of the new design, same N, right after --code")
    add("--old", default="961a9de", help="the old design beside it; '' for none (%(default)s)")
    add("--count", type=int, default=1000, help="dispatches, throughput jobs, RQ jobs (%(default)s)")
    add("--dispatch-count", type=int, help="dispatch_latency's dispatches (default: --count)")
    add("--rq-count", type=int, help="rq_baseline's throughput jobs (default: --count)")
    add("--old-io", action=argparse.BooleanOptionalAction, default=True, help="io_scaling on --old too")
    add("--configs", default="2x2,2x2n", help="throughput's and start_latency's (%(default)s)")
    add("--old-count", type=int, default=200, help="throughput jobs of --old (%(default)s)")
    add("--old-configs", default="2x2", help="--old's (%(default)s; M defaults to W x C)")
    add("--latency-count", type=int, default=50, help="start_latency's jobs (%(default)s)")
    add("--old-latency-count", type=int, default=20, help="start_latency's jobs of --old (%(default)s)")
    add("--io-configs", default="1x8,2x8", help="io_scaling's (%(default)s)")
    add("--io-waves", type=int, default=10, help="io_scaling's jobs per worker process (%(default)s)")
    add("--rq-io-waves", type=int, default=10, help="rq_baseline's 1 s jobs per worker (%(default)s)")
    add("--pw-count", type=int, default=100, help="profile_worker's runs per variant (%(default)s)")
    add("--pw-variants", default="baseline,cprofile", help="profile_worker's (%(default)s)")
    add("--ce-count", type=int, default=20, help="celery_executor's jobs (%(default)s)")
    add("--cli-before", default="68468f8", help="cli_latency's ref to compare --code with (%(default)s)")
    add("--only", help=f"comma-separated, from {','.join(SCENARIOS)} (default: {','.join(BAR_SCENARIOS)})")
    add("--out", type=Path, help="results directory (default /tmp/etl-bench-<UTC timestamp>)")
    add("--summarize", type=Path, metavar="DIR", help="only write DIR/summary.md again and print it")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, new: str, old: str, base: str = "") -> list[tuple[str, list[str]]]:
    """Each scenario on --code, then --base (its configurations in reverse order: the two commits'
    runs of one configuration then stand in ABBA order), then --old."""

    def reverse(argv: list[str]) -> list[str]:
        if "--configs" not in argv:
            return argv
        i = argv.index("--configs") + 1
        return [*argv[:i], ",".join(reversed(argv[i].split(","))), *argv[i + 1 :]]

    def both(scenario: str, new_argv: list[str], old_argv: list[str] | None = None) -> list:
        steps = [(scenario, [*new_argv, "--code", new])]
        steps += [(scenario, [*reverse(new_argv), "--code", base])] if base else []
        return steps + (
            [(scenario, [*(old_argv or new_argv), "--code", old])] if old and old_argv != [] else []
        )

    io = ["--configs", args.io_configs, "--waves", str(args.io_waves)]
    rq = ["--count", str(args.rq_count or args.count), "--latency-count", str(args.latency_count)]
    steps = [
        *both("dispatch_latency", ["--only", "postgres", "--count", str(args.dispatch_count or args.count)]),
        *both(
            "throughput",
            ["--count", str(args.count), "--configs", args.configs],
            ["--count", str(args.old_count), "--configs", args.old_configs],
        ),
        *both(
            "start_latency",
            ["--count", str(args.latency_count), "--configs", args.configs],
            ["--count", str(args.old_latency_count), "--configs", args.old_configs],
        ),
        *both("io_scaling", io, None if args.old_io else []),
        ("rq_baseline", [*rq, "--io-waves", str(args.rq_io_waves)]),
        *both("profile_worker", ["--count", str(args.pw_count), "--variants", args.pw_variants]),
        ("celery_executor", ["--count", str(args.ce_count), "--code", new]),
        ("cli_latency", ["--refs", f"{args.cli_before},{new}"]),
    ]
    only = set(args.only.split(",")) if args.only else set(BAR_SCENARIOS)
    if unknown := only - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return [s for s in steps if s[0] in only]


# --- the bar -------------------------------------------------------------------------------------


def pick(results: list[dict], **match) -> dict | None:
    """The first result matching `match`; a key missing from an older result counts as False."""
    return next((r for r in results if all(r.get(k, False) == v for k, v in match.items())), None)


def ratio(a: float | None, b: float | None) -> str:
    return f"x{a / b:.2f}" if a and b and a == a and b == b else "-"


def design(found: dict[str, dict], commit: str, daemon: bool) -> dict | None:
    """One column of the bar: a commit's stack scenarios with or without dagster-daemon (2 workers,
    the storage of its dagster.yaml), normalised to the keys the rows read."""

    def of(scenario: str) -> list[dict]:
        return found.get(f"{scenario}@{commit}", {}).get("results", [])

    if not commit or not any(key.endswith(f"@{commit}") for key in found):
        return None
    tp = pick(of("throughput"), workers=2, daemon=daemon, storage_fix=False)
    latency = pick(of("start_latency"), workers=2, daemon=daemon, storage_fix=False)
    dispatch = (of("dispatch_latency") or [None])[0] if daemon else None
    io = {r["workers"]: r for r in of("io_scaling") if r["daemon"] == daemon and not r.get("storage_fix")}
    return {
        "tp": tp,
        "rate": tp and tp["throughput_jobs_s"],
        "dispatch": dispatch and dispatch["warm"],
        "latency": latency and latency["created_to_started"],
        "io": {w: r["throughput_jobs_s"] for w, r in io.items()},
    }


def rq_design(found: dict[str, dict], worker_class: str) -> dict | None:
    """RQ's column with `worker_class` (io: always the forking Worker, 8 and 16 workers)."""
    results = found.get("rq_baseline", {}).get("results", [])
    if not results:
        return None
    tp = pick(results, kind="throughput", worker_class=worker_class)
    latency = pick(results, kind="latency", worker_class=worker_class)
    io = {r["workers"] // 8: r["jobs_per_second"] for r in results if r["kind"] == "io"}
    return {
        "tp": tp,
        "rate": tp and tp["jobs_per_second"],
        "dispatch": tp and tp["enqueue"],
        "latency": latency and latency["created_to_started"],
        "io": io if worker_class == "Worker" else {},
    }


def performance_bar(found: dict[str, dict], new: str, old: str, base: str = "") -> str:
    """Each bar: --code and --base with and without dagster-daemon, the old design, RQ (Worker /
    SimpleWorker), the ratios of --code (daemon) to the others, and whether --code meets the bar
    (with the daemon, as production runs; the no-daemon figure in brackets where it differs)."""
    columns = [
        (f"**{new}**, daemon", design(found, new, True)),
        (f"{new}, no daemon", design(found, new, False)),
        (f"{base}, daemon", design(found, base, True)),
        (f"{base}, no daemon", design(found, base, False)),
        (f"old ({old})", design(found, old, True)),
    ]
    columns = [(label, d) for label, d in columns if d is not None]
    rq = [rq_design(found, c) for c in ("Worker", "SimpleWorker")]
    rows = []

    def add(bar: str, get, fmt_=lambda v: f"{v:.1f}", limit=None) -> None:
        def value(d: dict | None) -> float | None:
            try:
                v = get(d) if d else None
            except (KeyError, TypeError, ZeroDivisionError):
                return None
            return v if v is None or v == v else None

        values = [value(d) for _, d in columns]
        cells = [
            f"**{fmt_(v)}**" if v is not None and i == 0 else fmt_(v) if v is not None else "-"
            for i, v in enumerate(values)
        ]
        rq_values = [value(d) for d in rq]
        cells.append(" / ".join(fmt_(v) for v in rq_values if v is not None) or "-")
        ratios = [ratio(values[0], values[i]) for i in range(2, len(values), 2)] if values else []
        ratios.append(ratio(values[0], rq_values[0]) if values else "-")
        met = "-"
        if limit and values and values[0] is not None:
            met = "**yes**" if limit(values[0]) else "**no**"
            if len(values) > 1 and values[1] is not None and limit(values[1]) != limit(values[0]):
                met += f" (no daemon: {'yes' if limit(values[1]) else 'no'})"
        rows.append([bar, *cells, *ratios, met])

    f0, f2 = (lambda v: f"{v:.0f}"), (lambda v: f"{v:.2f}")
    add("end to end ≥ 25 jobs/s, 2 workers (jobs/s)", lambda d: d["rate"], limit=lambda v: v >= 25)
    add(
        "dispatch median ≤ 10 ms (idle; RQ: INSERT + enqueue)",
        lambda d: d["dispatch"]["median_ms"],
        limit=lambda v: v <= 10,
    )
    add("dispatch p99 ≤ 50 ms (idle)", lambda d: d["dispatch"]["p99_ms"], limit=lambda v: v <= 50)
    add(
        "… dispatch median / p99 during the throughput run (ms): median",
        lambda d: d["tp"]["dispatch"]["median_ms"],
    )
    add("… p99", lambda d: d["tp"]["dispatch"]["p99_ms"])
    add(
        "idle start median ≤ 100 ms (created_at → started_at)",
        lambda d: d["latency"]["median_ms"],
        f0,
        lambda v: v <= 100,
    )
    add("idle start p90 ≤ 300 ms", lambda d: d["latency"]["p90_ms"], f0, lambda v: v <= 300)
    add(
        "CPU per job, all processes incl. PostgreSQL and Redis ≤ 80 ms",
        lambda d: d["tp"]["total_cpu_ms_per_job"],
        limit=lambda v: v <= 80,
    )
    for group, label in (
        ("workers", "workers"),
        ("dispatcher", "dispatcher"),
        ("daemon", "dagster-daemon group"),
        ("postgres", "PostgreSQL"),
        ("redis", "Redis"),
    ):
        add(f"… of it {label} (ms per job)", lambda d, g=group: d["tp"]["cpu_ms_per_job"][g])
    add("dagster-daemon group (cores)", lambda d: d["tp"]["cores"]["daemon"], f2)
    add("others' processes during the throughput run (cores)", lambda d: d["tp"]["other_cores"], f2)
    add(
        "I/O: 2 x --concurrency 8 ≥ 90 % of 16 jobs/s (jobs/s; RQ: 16 Workers)",
        lambda d: d["io"][2],
        limit=lambda v: v >= 0.9 * 16,
    )
    add(
        "I/O: 1 → 2 workers ≥ x1.8 (RQ: 8 → 16 Workers)",
        lambda d: d["io"][2] / d["io"][1],
        lambda v: f"x{v:.2f}",
        lambda v: v >= 1.8,
    )
    counters = lambda d: d["tp"]["counters"]  # noqa: E731
    add(
        "new PostgreSQL connections per job (pg_stat_database sessions)",
        lambda d: counters(d)["pg_per_job"]["sessions"],
        f2,
    )
    add(
        "SQL statements per job (pg_stat_statements, incl. BEGIN/COMMIT)",
        lambda d: counters(d)["statements_per_job"],
    )
    add("… without BEGIN/COMMIT/ROLLBACK/SET", lambda d: counters(d)["statements_not_utility_per_job"])
    add(
        "transactions committed per job (pg_stat_database)",
        lambda d: counters(d)["pg_per_job"]["xact_commit"],
    )
    add("Redis commands per job", lambda d: counters(d)["redis_commands_per_job"])
    add("Dagster event-log rows per job", lambda d: sum(d["tp"]["event_rows_per_job"].values()))
    storage = [
        (d["tp"] or {}).get("instance_storage", {}).get("run_storage", "-") if d else "-" for _, d in columns
    ]
    rows.append(
        [
            "storage as dagster.yaml builds it (run storage, pool)",
            *storage,
            "-",
            *["" for _ in range(2, len(columns), 2)],
            "",
            "",
        ]
    )
    head = ["bar", *(label for label, _ in columns), "RQ Worker / SimpleWorker"]
    head += [f"{columns[0][0].split(',')[0].strip('*')} / {columns[i][0]}" for i in range(2, len(columns), 2)]
    head += [f"{new} / RQ Worker", "met?"]
    return "## The performance bar\n\n" + harness.table(head, rows)


def summarize(out: Path) -> str:
    meta = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    found = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "run.json"}
    text = f"# Benchmark run {meta.get('started_utc')}\n\n`{meta.get('command')}`\n\n"
    keys = ("scenario", "argv", "start_utc", "end_utc", "load_before", "load_after", "outcome")
    steps = [[" ".join(s[k]) if k == "argv" else s.get(k, "-") for k in keys] for s in meta.get("steps", [])]
    text += harness.table(
        ["scenario", "arguments", "start UTC", "end", "load before", "after", "outcome"], steps
    )
    for key, result in found.items():
        text += "\n" + importlib.import_module(key.split("@")[0]).report(result)
    bar = performance_bar(found, meta.get("new", ""), meta.get("old", ""), meta.get("base", ""))
    return text + "\n" + bar


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.summarize or args.out or Path(f"/tmp/etl-bench-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    steps = []
    if not args.summarize:
        signal.signal(signal.SIGTERM, harness.interrupt)
        new, old, base = (
            ref if ref in ("worktree", "") else harness.git("rev-parse", "--short", ref).strip()
            for ref in (args.code, args.old, args.base)
        )
        command = " ".join(
            [".venv/bin/python bench/run_all.py", *(argv if argv is not None else sys.argv[1:])]
        )
        meta = {
            "command": command,
            "started_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
            "new": new,
            "old": old,
            "base": base,
        }
        meta["steps"] = steps
        out.mkdir(parents=True, exist_ok=True)
        with harness.servers():
            for scenario, step_argv in plan(args, new, old, base):
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
