"""RQ baseline: what the old "RQ + SQLAlchemy" design drains on this machine, for comparison.

N trivial jobs enqueued as the old design did (a job-row INSERT, then `Queue.enqueue`; the job
computes F(10) and updates its row over a new connection), then drained by W burst workers, with
RQ's forking `Worker` and with `SimpleWorker`, for every W of --workers. Reported: enqueue + insert
latency, drain time (worker start-up included), jobs/s, worker CPU per job (getrusage of the reaped
workers and their work horses, start-up included) and the largest peak RSS of a worker. The
measured part is a child run by --rq-python (rq is bench-only: that venv is created if missing)
against a scratch database etl_bench_rq_<random> and queues of its own, removed afterwards.

examples:
  .venv/bin/python bench/rq_baseline.py                            # N = 1000, 1 and 2 workers
  .venv/bin/python bench/rq_baseline.py --count 300 --workers 2 --rq-python /tmp/rqvenv/bin/python
"""

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import harness


def arguments(parser):
    parser.add_argument("--count", type=int, default=1000, help="jobs per drain (%(default)s)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (%(default)s)")
    parser.add_argument("--rq-python", default="/tmp/rqvenv/bin/python", help="with rq (%(default)s)")


def fib(n: int, dsn: str, row_id: int) -> int:
    """The job: trivial work, then its row updated over a new connection, as the old worker did."""
    import psycopg2

    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("UPDATE jobs SET status = 'completed', result = %s WHERE id = %s", (a, row_id))
    return a


def measure(dsn: str, count: int, workers: list[int]) -> dict:
    """Child (rq interpreter): per worker count and class, enqueue `count` jobs, then drain them."""
    import psycopg2
    import rq
    from redis import Redis

    redis, connection, results, keys = Redis.from_url(harness.REDIS_URL), psycopg2.connect(dsn), [], []
    tag = uuid.uuid4().hex[:8]
    with connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE jobs (id serial PRIMARY KEY, status text, result bigint)")
    try:
        for n_workers, worker_class in [(n, c) for n in workers for c in ("Worker", "SimpleWorker")]:
            queue = rq.Queue(f"bench-rq-{tag}-{len(results)}", connection=redis)
            latencies = []
            for _ in range(count):
                t0 = time.perf_counter()
                with connection, connection.cursor() as cursor:
                    cursor.execute("INSERT INTO jobs (status) VALUES ('queued') RETURNING id")
                    (row_id,) = cursor.fetchone()
                job_id = queue.enqueue("rq_baseline.fib", harness.FIB_N, dsn, row_id).id
                keys += [f"rq:job:{job_id}", f"rq:results:{job_id}"]
                latencies.append(time.perf_counter() - t0)
            seconds, cpu, rss_mb = drain(queue.name, n_workers, f"rq.worker.{worker_class}")
            if (done := queue.finished_job_registry.count) < count:
                raise RuntimeError(f"only {done} of {count} jobs finished")
            result = {
                "worker_class": worker_class,
                "workers": n_workers,
                "enqueue": harness.summarise(latencies),
            }
            result |= {"drain_s": seconds, "jobs_per_second": count / seconds, "peak_rss_mb": rss_mb}
            results.append(result | {"worker_cpu_ms_per_job": harness.per_job(cpu, count)})
    finally:
        redis.delete(*keys, *redis.scan_iter(match=f"*bench-rq-{tag}*"), "rq:queues", "rq:clean_groups")
    return {"rq": rq.__version__, "results": results}


def drain(queue: str, workers: int, worker_class: str) -> tuple[float, float, float]:
    """`workers` burst workers until the queue is empty: seconds, their CPU seconds, the peak RSS MB."""
    usage0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    argv = [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", harness.REDIS_URL, "--quiet"]
    argv += ["--worker-class", worker_class, queue]
    env, quiet = os.environ | {"PYTHONPATH": str(harness.BENCH)}, subprocess.DEVNULL
    processes = [
        subprocess.Popen(argv, env=env, stdout=quiet, stderr=quiet, start_new_session=True)
        for _ in range(workers)
    ]
    try:
        for process in processes:
            process.wait(timeout=1800)
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    seconds, usage = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    return seconds, cpu, usage.ru_maxrss / 1024  # ru_maxrss: KiB, the largest of all reaped so far


def run(args) -> dict:
    python = Path(args.rq_python)
    if not python.exists():
        harness.say(f"creating {python.parent.parent} with rq, redis, psycopg2-binary ...")
        subprocess.run(["python3", "-m", "venv", str(python.parent.parent)], check=True)
        subprocess.run([python.parent / "pip", "install", "-q", "rq", "redis", "psycopg2-binary"], check=True)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with harness.database(f"etl_bench_rq_{uuid.uuid4().hex[:8]}") as url:
        dsn = url.replace("postgresql+psycopg2://", "postgresql://")
        kw = {"dsn": dsn, "count": args.count, "workers": workers}
        measured = harness.child(dict(os.environ), harness.BENCH, "rq_baseline", "measure", str(python), **kw)
    return {"environment": harness.environment(()) | {"rq": measured["rq"]}, "count": args.count} | measured


def report(result: dict) -> str:
    head = ["worker class", "workers", "enqueue + row insert median / p99 (ms)", "drain (s)", "**jobs/s**"]
    head += ["**worker CPU per job (ms)**", "peak RSS per worker (MB)"]
    keys = ("drain_s", "jobs_per_second", "worker_cpu_ms_per_job", "peak_rss_mb")
    enqueue = "{median_ms:.2f} / {p99_ms:.2f}"
    rows = [
        [r["worker_class"], r["workers"], enqueue.format(**r["enqueue"]), *map(r.get, keys)]
        for r in result["results"]
    ]
    title = f"## RQ baseline ({result['count']} jobs, rq {result['rq']})\n\n"
    return title + harness.header(result) + "\n" + harness.table(head, rows)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
