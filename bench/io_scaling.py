"""I/O-bound scaling: 1 s jobs (slow_query, pg_sleep) on W workers x --concurrency C.

The production stack of throughput.py with SlowQuery(duration=1, no table): after a warm-up of 2
jobs per worker process, `--waves` x W x C jobs dispatched as fast as one process can (the queue
fills ahead of the workers: ~40 dispatches/s against at most 16 completions/s). Throughput = N /
(first measured dispatch → last finished_at), against the ideal W x C / duration; the ratio of the
2-worker to the 1-worker rate.

examples:
  .venv/bin/python bench/io_scaling.py                                  # 1x8, 2x8; 10 waves each
  .venv/bin/python bench/io_scaling.py --configs 1x8,2x8 --waves 6 --code 961a9de
"""

import sys

import harness

JOB, SEQUENTIAL = "slow_query", False
DURATION = 1.0
PARAMS = {"duration": DURATION}


def arguments(parser):
    harness.stack_arguments(parser, count=0, configs="1x8,2x8", timeout=600.0)
    parser.add_argument("--waves", type=int, default=10, help="jobs per worker process (%(default)s)")


def count_for(config: harness.Config, args) -> int:
    return args.count or args.waves * config.slots


def run(args) -> dict:
    return harness.measure_configs(sys.modules[__name__], args) | {"duration_s": DURATION}


def ideal(r: dict) -> float:
    return r["workers"] * r["concurrency"] / DURATION


def report(result: dict) -> str:
    rows = [
        ("jobs", lambda r: r["count"]),
        ("**throughput (jobs/s)**", lambda r: f"**{r['throughput_jobs_s']:.2f}**"),
        ("ideal W x C / duration (jobs/s)", ideal),
        ("**of the ideal**", lambda r: f"**{100 * r['throughput_jobs_s'] / ideal(r):.0f} %**"),
        ("dispatching N took (s)", lambda r: r["dispatch_s"]),
        (
            "record created → started, median / p90 (ms)",
            lambda r: "{median_ms:.0f} / {p90_ms:.0f}".format(**r["created_to_started"]),
        ),
        (
            "record started → finished, median / p90 (ms)",
            lambda r: "{median_ms:.0f} / {p90_ms:.0f}".format(**r["started_to_finished"]),
        ),
        *harness.CPU_ROWS,
        ("worker RSS / PSS, each (MB)", harness.worker_memory),
    ]
    text = harness.stack_report("I/O-bound scaling (SlowQuery, 1 s each)", result, rows)
    by_workers = {r["workers"]: r["throughput_jobs_s"] for r in result["results"]}
    if 1 in by_workers and 2 in by_workers:
        text += f"\nSecond worker: x{by_workers[2] / by_workers[1]:.2f}.\n"
    return text


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
