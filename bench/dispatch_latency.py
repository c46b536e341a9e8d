"""Dispatch latency: how long `Fibonacci.dispatch(n=10)` takes to return, per storage backend.

The job-record insert plus the Dagster run's creation and submission to EtlRunCoordinator (from
1a55b51 that includes admitting the run and sending its Celery task to Redis); no daemon and no
worker runs (the tasks wait in Redis, under a key prefix of their own, deleted afterwards).
`postgres`: a fresh database and the commit's dagster.yaml; `sqlite`: the embedded default (a
fresh DAGSTER_HOME, etl_pipelines/embedded_dagster.yaml; at def7d75 it still carries the old
coordinator keys, which EtlRunCoordinator refuses). After a throw-away process
creates the schema, the measured one imports the job, makes the cold first dispatch, then N timed
one by one (wall, CPU), then N job-record inserts alone (`JobStore.create`, as dispatch() does).

examples:
  .venv/bin/python bench/dispatch_latency.py                        # both configurations, N = 1000
  .venv/bin/python bench/dispatch_latency.py --only postgres --count 200 --json
  .venv/bin/python bench/dispatch_latency.py --only postgres --count 200 --profile-out /tmp/dispatch
"""

import contextlib
import sys
import uuid
from pathlib import Path

import harness

CONFIGS = ("sqlite", "postgres")
STATS = ("median", "p90", "p99", "max")


def arguments(parser):
    parser.add_argument("--count", type=int, default=1000, help="timed dispatches (%(default)s)")
    parser.add_argument("--only", choices=CONFIGS, help="one configuration only")
    parser.add_argument("--profile-out", metavar="PATH", help="under cProfile, saved as PATH.<config>.prof")
    harness.add_code_option(parser)


def measure(count: int, profile_out: str | None = None) -> dict:
    """Child: the cold dispatch and `count` timed ones, then `count` record inserts alone."""
    result = harness.dispatch_jobs(count + 1, profile_out=profile_out)
    from etl_pipelines.jobs.fibonacci import Fibonacci
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    settings, payload = Settings.from_env(), {"n": harness.FIB_N}

    def insert() -> None:  # the job record as dispatch() writes it
        job_id, store = str(uuid.uuid4()), JobStore(settings.database_url)
        if hasattr(store, "create"):  # up to 63420b2
            kw = {"job_type": Fibonacci.job_type(), "job_class": Fibonacci.job_class(), "payload": payload}
            retries = len(Fibonacci.retry_schedule(settings))
            store.create(id=job_id, queue=Fibonacci.queue, max_retries=retries, run_id=job_id, **kw)
        else:  # from fc32799: the lifecycle's bootstrap
            from etl_pipelines.lifecycle import events

            new_job = Fibonacci.new_job(job_id, Fibonacci.queue, payload, settings)
            events.bootstrap(store, new_job, job_id, must_be_new=True)

    result["insert"] = harness.timed(insert, count)
    return result


def run(args) -> dict:
    results, prefix = [], f"bench-dl-{uuid.uuid4().hex[:8]}:"
    with harness.code_snapshot(args.code) as code:
        for config in [args.only] if args.only else CONFIGS:
            with contextlib.ExitStack() as stack:
                stack.callback(harness.delete_redis_keys, prefix)
                env = harness.clean_env(PYTHONPATH=code.pythonpath())
                env |= {"ETL_REDIS_URL": harness.REDIS_URL, "ETL_REDIS_KEY_PREFIX": prefix}
                if config == "sqlite":
                    instance = (code.root / "etl_pipelines" / "embedded_dagster.yaml").read_text()
                else:
                    name = f"etl_bench_dl_{uuid.uuid4().hex[:8]}"
                    env["ETL_DATABASE_URL"] = stack.enter_context(harness.database(name))
                    instance = harness.instance_yaml(code, redis_prefix=prefix)
                home = stack.enter_context(harness.home("etl_bench_dl_", {"dagster.yaml": instance}))
                env["DAGSTER_HOME"] = str(home)
                harness.child(env, code.root, "harness", "setup_schema")
                harness.say(f"[{config}] cold + {args.count} dispatches, {args.count} inserts ...")
                profile = f"{Path(args.profile_out).absolute()}.{config}.prof" if args.profile_out else None
                kw = {"count": args.count, "profile_out": profile}
                results.append(
                    {"config": config} | harness.child(env, code.root, "dispatch_latency", "measure", **kw)
                )
    return {
        "environment": harness.environment(),
        "commit": code.commit,
        "count": args.count,
        "results": results,
    }


def report(result: dict) -> str:
    rows = [
        ("import etl_pipelines.jobs.fibonacci (s)", lambda r: f"{r['import_s']:.2f}"),
        ("first dispatch, cold (ms)", lambda r: r["cold_ms"]),
    ]
    for key, label in (("warm", "**dispatch**"), ("insert", "record insert alone")):
        rows += [
            (f"{label} {stat} (ms)", lambda r, k=key, s=stat: f"{r[k][s + '_ms']:.2f}") for stat in STATS
        ]
        rows += [(f"{label} per s", lambda r, k=key: r[k]["per_second"])]
        rows += [(f"{label} CPU per call (ms)", lambda r, k=key: f"{r[k]['cpu_ms_per_call']:.2f}")]
    text = f"## Dispatch latency ({result['count']} warm dispatches)\n\n{harness.header(result)}\n"
    text += harness.columns(result["results"], rows)
    for r in result["results"]:
        if "profile" in r:
            text += f"\ncProfile of the {r['config']} dispatches (cumulative):\n\n```\n{r['profile']}```\n"
    return text


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
