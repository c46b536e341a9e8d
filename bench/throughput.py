"""Throughput: 1,000 trivial jobs end to end through the production stack, with all their CPU.

Per configuration WxC[n] (W `etl-jobs worker --concurrency C` of the commit; `n`: no
dagster-daemon), a fresh database from a schema-only template, DAGSTER_HOME (the commit's
dagster.yaml; the old design's dequeue knobs mM, iS, t[K] only where the commit has them) and Redis
key prefix. The workers start, then dagster-daemon, then one dispatching process that warms the
stack (2 jobs per worker process) and, once everything is quiet, dispatches N Fibonacci(n=10) as
fast as it can while the workers run them. Sustained throughput = N / (first measured dispatch →
last finished_at). CPU per job of every process group in that window: workers, dispatcher, daemon
(with its code servers), and the bench's own PostgreSQL (postmaster, backends and what it reaped)
and Redis. Per job also: Dagster event-log rows, SQL statements (pg_stat_statements), transactions
and new connections (pg_stat_database), Redis commands (INFO commandstats); phases per run from
event_logs.

examples:
  .venv/bin/python bench/throughput.py                                  # N = 1000; 2x2, 2x2n
  .venv/bin/python bench/throughput.py --count 200 --configs 2x2 --code 961a9de --out /tmp/tp
"""

import sys

import harness

JOB, PARAMS, SEQUENTIAL = "fibonacci", {"n": harness.FIB_N}, False


def arguments(parser):
    harness.stack_arguments(parser, count=1000, configs="2x2,2x2n", timeout=900.0)


def run(args) -> dict:
    return harness.measure_configs(sys.modules[__name__], args)


def report(result: dict) -> str:
    rows = [
        ("**sustained throughput (jobs/s)**", lambda r: f"**{r['throughput_jobs_s']:.3g}**"),
        ("window: first dispatch → last finish (s)", lambda r: r["window_s"]),
        ("dispatching N took (s)", lambda r: r["dispatch_s"]),
        (
            "dispatch during the run, median / p99 (ms)",
            lambda r: "{median_ms:.1f} / {p99_ms:.1f}".format(**r["dispatch"]),
        ),
        (
            "record created → started, median / p90 (ms)",
            lambda r: "{median_ms:.0f} / {p90_ms:.0f}".format(**r["created_to_started"]),
        ),
        ("record started → finished, median (ms)", lambda r: r["started_to_finished"]["median_ms"]),
        *harness.CPU_ROWS,
        *harness.COUNTER_ROWS,
        (
            "… workers: main processes / pool processes (ms per job, whole sampling)",
            lambda r: "{main:.1f} / {pool:.1f}".format(**r["worker_split_ms_per_job"]),
        ),
        ("**worker RSS / PSS, each (MB)**", harness.worker_memory),
        (
            "storage as dagster.yaml builds it: run / event-log storage (pool)",
            lambda r: "{run_storage} / {event_log_storage}".format(**r["instance_storage"]),
        ),
        ("processes per worker", lambda r: r["memory"]["worker1"]["processes"]),
    ]
    return harness.stack_report(f"Throughput, production stack ({result['count']} jobs)", result, rows)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
