"""RQ baseline: the old "RQ + SQLAlchemy" design on the same machine and servers, for comparison.

Each job is enqueued as the old design did (a job-row INSERT, then `Queue.enqueue`); it records
when it began, does its work and updates its row over a new connection. As for the production
stack, W workers (RQ's forking `Worker` and `SimpleWorker`, long-running, not burst) are started
and warmed (2 jobs per worker) first; then, sampled from /proc with the bench's PostgreSQL and
Redis: `throughput`: N Fibonacci(10) enqueued at once, jobs/s = N / (first enqueue → last
finish); `latency`: jobs one at a time on idle workers, enqueue (before the INSERT) → job began;
`io`: 1 s jobs (`SELECT pg_sleep(1)`) on 8 and 16 forking workers, RQ's counterpart of 1 and 2
Celery workers with --concurrency 8. Per job: CPU of every process (workers with their work
horses, the enqueuing thread, PostgreSQL, Redis), transactions and SQL statements, Redis commands
(INFO commandstats). The measured part is a child run by --rq-python (rq is bench-only: that venv
is created if missing) against a scratch database etl_bench_rq_<random>.

examples:
  .venv/bin/python bench/rq_baseline.py                            # N = 1000, 2 workers
  .venv/bin/python bench/rq_baseline.py --count 300 --latency-count 20 --io-waves 6
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import harness

CLASSES = ("Worker", "SimpleWorker")


def arguments(parser):
    parser.add_argument("--count", type=int, default=1000, help="jobs per throughput run (%(default)s)")
    parser.add_argument(
        "--workers", type=int, default=2, help="workers for throughput and latency (%(default)s)"
    )
    parser.add_argument("--latency-count", type=int, default=50, help="jobs one at a time (%(default)s)")
    parser.add_argument("--io-workers", default="8,16", help="forking workers for the 1 s jobs (%(default)s)")
    parser.add_argument("--io-waves", type=int, default=10, help="1 s jobs per worker (%(default)s)")
    parser.add_argument("--rq-python", default="/tmp/rqvenv/bin/python", help="with rq (%(default)s)")


def fib(n: int, dsn: str, row_id: int) -> int:
    """The trivial job: F(n), then its row updated over a new connection, as the old worker did."""
    import psycopg2

    began = time.time()
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        query = "UPDATE jobs SET status = 'completed', result = %s, started = %s, finished = %s WHERE id = %s"
        cursor.execute(query, (a, began, time.time(), row_id))
    return a


def sleep(seconds: float, dsn: str, row_id: int) -> None:
    """The I/O-bound job: a query that sleeps `seconds` in the database, then the row updated."""
    import psycopg2

    began = time.time()
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", (seconds,))
        query = "UPDATE jobs SET status = 'completed', started = %s, finished = %s WHERE id = %s"
        cursor.execute(query, (began, time.time(), row_id))


def measure(dsn: str, database: str, runs: list[dict]) -> dict:
    """Child (rq interpreter): every run of `runs` with its own queue, workers and sampling."""
    import rq

    with harness.pg(dsn) as cursor:
        columns = "id serial PRIMARY KEY, status text, result bigint"
        columns += ", created float8, started float8, finished float8"
        cursor.execute(f"CREATE TABLE jobs ({columns})")
    return {"rq": rq.__version__, "results": [one_run(dsn, database, **run) for run in runs]}


def one_run(dsn: str, database: str, kind: str, worker_class: str, workers: int, count: int) -> dict:
    import psycopg2
    import rq
    from redis import Redis

    redis, tag = Redis.from_url(harness.REDIS_URL), uuid.uuid4().hex[:8]
    queue = rq.Queue(f"bench-rq-{tag}", connection=redis)
    function, args = ("rq_baseline.sleep", (1.0,)) if kind == "io" else ("rq_baseline.fib", (harness.FIB_N,))
    connection = psycopg2.connect(dsn)

    def enqueue() -> int:
        created = time.time()
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO jobs (status, created) VALUES ('queued', %s) RETURNING id", (created,)
            )
            (row_id,) = cursor.fetchone()
        queue.enqueue(function, *args, dsn, row_id)
        return row_id

    def wait(ids: list[int]) -> None:
        with connection, connection.cursor() as cursor:
            while True:
                cursor.execute(
                    "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'completed'", (ids,)
                )
                if cursor.fetchone()[0] == len(ids):
                    return
                connection.commit()
                time.sleep(0.01 if kind == "latency" else 0.25)

    argv = [sys.executable, "-m", "rq.cli", "worker", "--url", harness.REDIS_URL, "--quiet"]
    argv += ["--worker-class", f"rq.worker.{worker_class}", queue.name]
    env, quiet = os.environ | {"PYTHONPATH": str(harness.BENCH)}, subprocess.DEVNULL
    processes = [
        subprocess.Popen(argv, env=env, stdout=quiet, stderr=quiet, start_new_session=True)
        for _ in range(workers)
    ]
    groups = {f"w{p.pid}": p.pid for p in processes} | harness.SERVER_PIDS
    try:
        while rq.Worker.count(connection=redis, queue=queue) < workers:
            time.sleep(0.05)
        wait([enqueue() for _ in range(2 * workers)])  # warm-up
        harness.wait_quiet([p.pid for p in processes])
        before = harness.counters(database, reset_statements=True)
        cpu_before = harness.cpu_snapshot(groups)
        t0, cpu0, ids, latencies = time.time(), time.thread_time(), [], []
        for _ in range(count):
            t = time.perf_counter()
            ids.append(enqueue())
            latencies.append(time.perf_counter() - t)
            if kind == "latency":
                wait(ids[-1:])
                time.sleep(0.2)
        enqueue_cpu = time.thread_time() - cpu0
        wait(ids)
        cpu_after = harness.cpu_snapshot(groups)
        memory = max(harness.group_memory(p.pid)["rss_mb"] for p in processes)
        after = harness.counters(database)
        time.sleep(1.5)  # backends report pg_stat_database at most once a second
        after["pg"] = harness.counters(database)["pg"]
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # warm shutdown
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        redis.delete(*redis.scan_iter(match=f"*bench-rq-{tag}*"))
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT created, started, finished FROM jobs WHERE id = ANY(%s)", (ids,))
        rows = cursor.fetchall()
    connection.close()
    t1 = max(f for *_, f in rows)

    def delta(names: list[str]) -> float:
        return sum(cpu_after[n] - cpu_before[n] for n in names)

    cpu = {"workers": delta([f"w{p.pid}" for p in processes]), "enqueuer": enqueue_cpu}
    cpu |= {name: delta([name]) for name in harness.SERVER_PIDS}
    counters = harness.counter_delta(before, after, count)
    counters["top_statements"] = [
        s for s in counters.get("top_statements", []) if "FROM jobs WHERE id = ANY" not in s[0]
    ]
    return {
        "kind": kind,
        "worker_class": worker_class,
        "workers": workers,
        "count": count,
        "enqueue": harness.summarise(latencies),
        "window_s": t1 - t0,
        "jobs_per_second": count / (t1 - t0),
        "created_to_started": harness.summarise([s - c for c, s, _ in rows]),
        "cpu_ms_per_job": {k: harness.per_job(v, count) for k, v in cpu.items()},
        "total_cpu_ms_per_job": harness.per_job(sum(cpu.values()), count),
        "machine_busy_cores": delta(["busy"]) / (cpu_after["t"] - cpu_before["t"]),
        "rss_mb": memory,
        "counters": counters,
    }


def run(args) -> dict:
    python = Path(args.rq_python)
    if not python.exists():
        harness.say(f"creating {python.parent.parent} with rq, redis, psycopg2-binary ...")
        subprocess.run(["python3", "-m", "venv", str(python.parent.parent)], check=True)
        subprocess.run([python.parent / "pip", "install", "-q", "rq", "redis", "psycopg2-binary"], check=True)
    runs = [
        {"kind": "throughput", "worker_class": c, "workers": args.workers, "count": args.count}
        for c in CLASSES
    ]
    runs += [
        {"kind": "latency", "worker_class": c, "workers": args.workers, "count": args.latency_count}
        for c in CLASSES
    ]
    io = [int(w) for w in args.io_workers.split(",") if w.strip()]
    runs += [{"kind": "io", "worker_class": "Worker", "workers": w, "count": w * args.io_waves} for w in io]
    name = f"etl_bench_rq_{uuid.uuid4().hex[:8]}"
    with harness.database(name) as url:
        dsn = url.replace("postgresql+psycopg2://", "postgresql://")
        kw = {"dsn": dsn, "database": name, "runs": runs}
        measured = harness.child(dict(os.environ), harness.BENCH, "rq_baseline", "measure", str(python), **kw)
    return {"environment": harness.environment(()) | {"rq": measured["rq"]}, "count": args.count} | measured


def report(result: dict) -> str:
    head = [
        "run",
        "jobs",
        "**jobs/s**",
        "enqueue + row insert median / p99 (ms)",
        "enqueue → job began median / p90 (ms)",
    ]
    head += [
        "**CPU per job, all (ms)**",
        "workers / enqueuer / PostgreSQL / Redis (ms)",
        "Redis commands / SQL / xacts per job",
    ]
    head += ["RSS per worker (MB)", "machine busy (cores)"]
    rows = []
    for r in result["results"]:
        c, k = r["cpu_ms_per_job"], r["counters"]
        rows.append(
            [
                f"{r['kind']}: {r['worker_class']} x{r['workers']}",
                r["count"],
                f"{r['jobs_per_second']:.1f}",
                "{median_ms:.2f} / {p99_ms:.2f}".format(**r["enqueue"]),
                "{median_ms:.1f} / {p90_ms:.1f}".format(**r["created_to_started"]),
                f"{r['total_cpu_ms_per_job']:.1f}",
                "{workers:.1f} / {enqueuer:.1f} / {postgres:.1f} / {redis:.1f}".format(
                    **({"postgres": harness.NAN, "redis": harness.NAN} | c)
                ),
                "{:.1f} / {:.1f} / {:.1f}".format(
                    k["redis_commands_per_job"],
                    k.get("statements_per_job", harness.NAN),
                    k["pg_per_job"]["xact_commit"],
                ),
                round(r["rss_mb"]),
                f"{r['machine_busy_cores']:.2f}",
            ]
        )
    title = f"## RQ baseline (rq {result['rq']})\n\n"
    return title + harness.header(result) + "\n" + harness.table(head, rows)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
