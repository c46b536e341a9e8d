"""The performance bar in one invocation: the new design, the old design and RQ, one after another.

Starts the bench's own PostgreSQL and Redis once (see harness.servers), then runs dispatch_latency
(postgres), throughput, start_latency and io_scaling on --code (default HEAD) and right after each
on --old (default 961a9de, the daemon-dequeue design), then rq_baseline, strictly one after
another (the machine has 2 shared cores). Into --out (default /tmp/etl-bench-<UTC timestamp>) it
writes <scenario>@<commit>.json (each with the load average before and after), logs/, run.json
(the command, every step's outcome) and summary.md (every scenario's tables, then the bar with
each figure, the old design's, RQ's and their ratios). A failed step is recorded and the next one
still runs; Ctrl-C or SIGTERM stops the running one (its cleanup runs) and writes the summary of
what finished. --only adds or picks scenarios (profile_worker, celery_executor and cli_latency run
only when named).

examples:
  .venv/bin/python bench/run_all.py                                          # the bar, ~20 min
  .venv/bin/python bench/run_all.py --count 300 --old-count 100 --latency-count 20
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
    add("--old", default="961a9de", help="the old design beside it; '' for none (%(default)s)")
    add("--count", type=int, default=1000, help="dispatches, throughput jobs, RQ jobs (%(default)s)")
    add("--configs", default="2x2,2x2n", help="throughput's and start_latency's (%(default)s)")
    add("--old-count", type=int, default=200, help="throughput jobs of --old (%(default)s)")
    add("--old-configs", default="2x2", help="--old's (%(default)s; M defaults to W x C)")
    add("--latency-count", type=int, default=50, help="start_latency's jobs (%(default)s)")
    add("--old-latency-count", type=int, default=20, help="start_latency's jobs of --old (%(default)s)")
    add("--io-configs", default="1x8,2x8", help="io_scaling's (%(default)s)")
    add("--io-waves", type=int, default=10, help="io_scaling's jobs per worker process (%(default)s)")
    add("--pw-count", type=int, default=100, help="profile_worker's runs per variant (%(default)s)")
    add("--pw-variants", default="baseline,cprofile", help="profile_worker's (%(default)s)")
    add("--ce-count", type=int, default=20, help="celery_executor's jobs (%(default)s)")
    add("--cli-before", default="68468f8", help="cli_latency's ref to compare --code with (%(default)s)")
    add("--only", help=f"comma-separated, from {','.join(SCENARIOS)} (default: {','.join(BAR_SCENARIOS)})")
    add("--out", type=Path, help="results directory (default /tmp/etl-bench-<UTC timestamp>)")
    add("--summarize", type=Path, metavar="DIR", help="only write DIR/summary.md again and print it")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, new: str, old: str) -> list[tuple[str, list[str]]]:
    def both(scenario: str, new_argv: list[str], old_argv: list[str] | None = None) -> list:
        steps = [(scenario, [*new_argv, "--code", new])]
        return steps + ([(scenario, [*(old_argv or new_argv), "--code", old])] if old else [])

    io = ["--configs", args.io_configs, "--waves", str(args.io_waves)]
    steps = [
        *both("dispatch_latency", ["--only", "postgres", "--count", str(args.count)]),
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
        *both("io_scaling", io),
        ("rq_baseline", ["--count", str(args.count), "--latency-count", str(args.latency_count)]),
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
    return next((r for r in results if all(r.get(k) == v for k, v in match.items())), None)


def ratio(a: float | None, b: float | None) -> str:
    return f"x{a / b:.2f}" if a and b and a == a and b == b else "-"


def performance_bar(found: dict[str, dict], new: str, old: str) -> str:
    """Each bar: the new design (with and without dagster-daemon), the old design, RQ, ratios."""

    def of(scenario: str, commit: str) -> list[dict]:
        return found.get(f"{scenario}@{commit}", {}).get("results", [])

    rq = found.get("rq_baseline", {}).get("results", [])
    rows = []

    def add(bar: str, values: tuple, met: bool | None) -> None:
        new_d, new_nd, old_v, rq_v, fmt_ = values
        text = [fmt_(v) if v is not None else "-" for v in (new_d, new_nd, old_v)]
        rq_text = " / ".join(fmt_(v) for v in rq_v if v is not None) or "-"
        first_rq = next((v for v in rq_v if v is not None), None)
        met_text = "-" if met is None else "**yes**" if met else "**no**"
        rows.append([bar, *text, rq_text, ratio(new_d, old_v), ratio(new_d, first_rq), met_text])

    def two(scenario: str, commit: str, workers: int = 2, **kw) -> tuple[dict | None, dict | None]:
        results = of(scenario, commit)
        return pick(results, workers=workers, daemon=True, **kw), pick(
            results, workers=workers, daemon=False, **kw
        )

    f1 = lambda v: f"{v:.1f}"  # noqa: E731
    f0 = lambda v: f"{v:.0f}"  # noqa: E731
    # Throughput and CPU
    tn, tnd = two("throughput", new)
    to, _ = two("throughput", old)
    rq_t = [pick(rq, kind="throughput", worker_class=c) for c in ("Worker", "SimpleWorker")]
    get = lambda r, k: r[k] if r else None  # noqa: E731
    add(
        "end to end ≥ 25 jobs/s, 2 workers (jobs/s; RQ: Worker / SimpleWorker)",
        (
            get(tn, "throughput_jobs_s"),
            get(tnd, "throughput_jobs_s"),
            get(to, "throughput_jobs_s"),
            [get(r, "jobs_per_second") for r in rq_t],
            f1,
        ),
        bool(tn) and max(get(tn, "throughput_jobs_s"), get(tnd, "throughput_jobs_s") or 0) >= 25,
    )
    dn = (of("dispatch_latency", new) or [None])[0]
    do = (of("dispatch_latency", old) or [None])[0]
    for stat, limit in (("median_ms", 10.0), ("p99_ms", 50.0)):
        add(
            f"dispatch {stat[:-3]} ≤ {limit:g} ms (idle, dispatch_latency; RQ: INSERT + enqueue)",
            (
                dn["warm"][stat] if dn else None,
                None,
                do["warm"][stat] if do else None,
                [r["enqueue"][stat] if r else None for r in rq_t],
                f1,
            ),
            dn["warm"][stat] <= limit if dn else None,
        )
        add(
            f"… dispatch {stat[:-3]} during the throughput run (ms)",
            (
                tn["dispatch"][stat] if tn else None,
                tnd["dispatch"][stat] if tnd else None,
                to["dispatch"][stat] if to else None,
                [],
                f1,
            ),
            None,
        )
    ln, lnd = two("start_latency", new)
    lo, _ = two("start_latency", old)
    rq_l = [pick(rq, kind="latency", worker_class=c) for c in ("Worker", "SimpleWorker")]
    for stat, limit in (("median_ms", 100.0), ("p90_ms", 300.0)):
        values = [r["created_to_started"][stat] if r else None for r in (ln, lnd, lo)]
        add(
            f"idle start latency {stat[:-3]} ≤ {limit:g} ms (created_at → started_at)",
            (*values, [r["created_to_started"][stat] if r else None for r in rq_l], f0),
            max(v for v in values[:2] if v is not None) <= limit if ln else None,
        )
    cpu = lambda r: r["total_cpu_ms_per_job"] if r else None  # noqa: E731
    add(
        "CPU per job, all processes incl. PostgreSQL and Redis ≤ 80 ms (throughput run)",
        (cpu(tn), cpu(tnd), cpu(to), [cpu(r) for r in rq_t], f1),
        min(v for v in (cpu(tn), cpu(tnd)) if v is not None) <= 80 if tn else None,
    )
    io_n = {r["workers"]: r for r in of("io_scaling", new) if r["daemon"]}
    io_o = {r["workers"]: r for r in of("io_scaling", old)}
    rq_io = {r["workers"]: r for r in rq if r["kind"] == "io"}
    rate = lambda r, k="throughput_jobs_s": r[k] if r else None  # noqa: E731
    add(
        "I/O: 1 s jobs on 2 x --concurrency 8 ≥ 90 % of 16 jobs/s (jobs/s; RQ: 16 Workers)",
        (rate(io_n.get(2)), None, rate(io_o.get(2)), [rate(rq_io.get(16), "jobs_per_second")], f1),
        rate(io_n.get(2)) >= 0.9 * 16 if io_n.get(2) else None,
    )
    scale = lambda d, a, b, k="throughput_jobs_s": d[b][k] / d[a][k] if a in d and b in d else None  # noqa: E731
    add(
        "I/O: 1 → 2 workers ≥ x1.8 (RQ: 8 → 16 Workers)",
        (
            scale(io_n, 1, 2),
            None,
            scale(io_o, 1, 2),
            [scale(rq_io, 8, 16, "jobs_per_second")],
            lambda v: f"x{v:.2f}",
        ),
        scale(io_n, 1, 2) >= 1.8 if scale(io_n, 1, 2) else None,
    )
    # Per job counts
    ev = lambda r: sum(r["event_rows_per_job"].values()) if r else None  # noqa: E731
    add("Dagster event-log rows per job", (ev(tn), ev(tnd), ev(to), [], f1), None)
    c = lambda r, k: r["counters"].get(k) if r and r.get("counters") else None  # noqa: E731
    add(
        "SQL statements per job (pg_stat_statements, incl. BEGIN/COMMIT)",
        (
            c(tn, "statements_per_job"),
            c(tnd, "statements_per_job"),
            c(to, "statements_per_job"),
            [c(r, "statements_per_job") for r in rq_t],
            f1,
        ),
        None,
    )
    x = lambda r, k: r["counters"]["pg_per_job"][k] if r and r.get("counters") else None  # noqa: E731
    add(
        "transactions committed per job (pg_stat_database)",
        (
            x(tn, "xact_commit"),
            x(tnd, "xact_commit"),
            x(to, "xact_commit"),
            [x(r, "xact_commit") for r in rq_t],
            f1,
        ),
        None,
    )
    add(
        "new PostgreSQL connections per job",
        (
            x(tn, "sessions"),
            x(tnd, "sessions"),
            x(to, "sessions"),
            [x(r, "sessions") for r in rq_t],
            lambda v: f"{v:.2f}",
        ),
        None,
    )
    add(
        "Redis commands per job (INFO commandstats)",
        (
            c(tn, "redis_commands_per_job"),
            c(tnd, "redis_commands_per_job"),
            c(to, "redis_commands_per_job"),
            [c(r, "redis_commands_per_job") for r in rq_t],
            f1,
        ),
        None,
    )
    head = [
        "bar",
        f"new ({new}), daemon",
        "new, no daemon",
        f"old ({old})",
        "RQ",
        "new / old",
        "new / RQ",
        "met?",
    ]
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
    return text + "\n" + performance_bar(found, meta.get("new", ""), meta.get("old", ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.summarize or args.out or Path(f"/tmp/etl-bench-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    steps = []
    if not args.summarize:
        signal.signal(signal.SIGTERM, harness.interrupt)
        new, old = (
            ref if ref in ("worktree", "") else harness.git("rev-parse", "--short", ref).strip()
            for ref in (args.code, args.old)
        )
        command = " ".join(
            [".venv/bin/python bench/run_all.py", *(argv if argv is not None else sys.argv[1:])]
        )
        meta = {
            "command": command,
            "started_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
            "new": new,
            "old": old,
        }
        meta["steps"] = steps
        out.mkdir(parents=True, exist_ok=True)
        with harness.servers():
            for scenario, step_argv in plan(args, new, old):
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
