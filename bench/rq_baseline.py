"""RQ baseline: what the old "RQ + SQLAlchemy" design drains on this machine, for comparison.

Enqueues N trivial jobs (Fibonacci n=10, plus the job-row INSERT the old design made per job),
then drains them with W RQ workers in burst mode, once with RQ's forking `Worker` and once with
its non-forking `SimpleWorker`, and reports enqueue latency and jobs/s. `--workers 1,2` repeats
everything per worker count (the second-worker ratio). Worker CPU per job is the burst workers'
CPU (getrusage of the reaped children: each worker with its reaped work horses) over the drain
divided by N, start-up and import included; worker memory is the largest peak RSS (ru_maxrss)
among them.

RQ is a bench-only dependency: run this with an interpreter that has `rq` and `redis`, e.g.

    python3 -m venv /tmp/rqvenv && /tmp/rqvenv/bin/pip install rq redis psycopg2-binary
    /tmp/rqvenv/bin/python bench/rq_baseline.py --count 1000 --workers 2
    /tmp/rqvenv/bin/python bench/rq_baseline.py --count 1000 --workers 1,2 --json

It uses Redis DB 0 under a queue name of its own and a scratch PostgreSQL database
(etl_bench_rq_<random>), both removed afterwards.
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
from redis import Redis
from rq import Queue

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def fib(n: int, dsn: str | None = None, row_id: int | None = None) -> int:
    """The job: the work is trivial, like the Fibonacci job of the Dagster benchmark."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    if dsn:
        # The old worker opened a session per job and recorded the outcome in the job row.
        with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
            cursor.execute("UPDATE jobs SET status = 'completed', result = %s WHERE id = %s", (a, row_id))
    return a


def drain(
    queue_name: str, workers: int, worker_class: str, count: int, redis_url: str
) -> tuple[float, float, float]:
    """Start `workers` burst workers; seconds until all ran, their CPU seconds, max peak RSS MB."""
    redis = Redis.from_url(redis_url)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rq.cli",
                "worker",
                "--burst",
                "--url",
                redis_url,
                "--worker-class",
                worker_class,
                "--quiet",
                queue_name,
            ],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        for process in processes:
            process.wait(timeout=1800)
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    done = Queue(queue_name, connection=redis).finished_job_registry.count
    if done < count:
        raise RuntimeError(f"only {done} of {count} jobs finished")
    # ru_maxrss (KiB on Linux) is the largest of all reaped children so far: the workers of
    # this and earlier drains.
    return elapsed, cpu, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", default="2", help="worker count, or comma-separated counts (1,2)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # SIGTERM behaves like Ctrl-C, so the database and the Redis keys are removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    database = f"etl_bench_rq_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={database}"
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE jobs (id serial PRIMARY KEY, status text, result bigint)")
    redis = Redis.from_url(args.redis_url)
    worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    import rq

    report: dict[str, object] = {
        "count": args.count,
        "workers": worker_counts,
        "environment": {
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "rq": rq.__version__,
        },
        "results": [],
    }
    runs = [(w, c) for w in worker_counts for c in ("rq.worker.Worker", "rq.worker.SimpleWorker")]
    queue_names: list[str] = []
    try:
        for workers, worker_class in runs:
            queue_name = f"bench-rq-{uuid.uuid4().hex[:8]}"
            queue_names.append(queue_name)
            queue = Queue(queue_name, connection=redis)
            latencies = []
            with psycopg2.connect(dsn) as connection:
                for _ in range(args.count):
                    t0 = time.perf_counter()
                    # What the old design did per dispatch: a job row, then the enqueue.
                    with connection.cursor() as cursor:
                        cursor.execute("INSERT INTO jobs (status) VALUES ('queued') RETURNING id")
                        (row_id,) = cursor.fetchone()
                    connection.commit()
                    queue.enqueue("rq_baseline.fib", 10, dsn, row_id)
                    latencies.append((time.perf_counter() - t0) * 1000)
            seconds, cpu, peak_rss_mb = drain(queue_name, workers, worker_class, args.count, args.redis_url)
            latencies.sort()
            report["results"].append(
                {
                    "worker_class": worker_class.rsplit(".", 1)[1],
                    "workers": workers,
                    "enqueue_median_ms": round(statistics.median(latencies), 2),
                    "enqueue_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
                    "drain_seconds": round(seconds, 2),
                    "jobs_per_second": round(args.count / seconds, 1),
                    "worker_cpu_ms_per_job": round(cpu * 1000 / args.count, 2),
                    "worker_peak_rss_mb_max_so_far": round(peak_rss_mb, 1),
                }
            )
    finally:
        for queue_name in queue_names:
            for key in redis.scan_iter(match=f"*{queue_name}*"):
                redis.delete(key)
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    report["environment"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for values in report["results"]:
            print(values)


if __name__ == "__main__":
    main()
