"""Worker CPU profile: where a trivial run's `etl-jobs worker` CPU goes, and what would save it.

The worker's code path in one process, without Celery: variants x (warm-up + N) runs are queued
in a template database; each variant, in its own process, database copy and DAGSTER_HOME (the
commit's dagster.yaml plus the variant's settings), launches them as dagster-daemon does (reported
apart; from 1a55b51 the task itself takes QUEUED runs) and executes them one by one with the
Celery task's function, `execute_run(None, run_id)`.
Per run: CPU (process_time), CPU of waited-for child processes, wall, SQL, new connections,
subprocesses. Variants: instance settings, or monkeypatches standing for a small code change;
cprofile and cprofile_wall run the baseline under cProfile (for shares and call counts only).

examples:
  .venv/bin/python bench/profile_worker.py                              # N = 200, all variants
  .venv/bin/python bench/profile_worker.py --count 40 --variants baseline,no_engine_events+no_notify
  .venv/bin/python bench/profile_worker.py --variants cprofile --profile-out /tmp/worker   # .cpu.pstats
"""

import contextlib
import cProfile
import io
import os
import pstats
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import harness

NOOP_COMPUTE_LOGS = {
    "module": "dagster._core.storage.noop_compute_log_manager",
    "class": "NoOpComputeLogManager",
}
VARIANTS = {
    "baseline": {},
    "cprofile": {"profile": "cpu"},
    "cprofile_wall": {"profile": "wall"},
    "noop_compute_logs": {"yaml": {"compute_logs": NOOP_COMPUTE_LOGS}},
    "no_engine_events": {"patch": ["no_engine_events"]},
    "no_notify": {"patch": ["no_notify"]},
    "no_engine_events+no_notify": {"patch": ["no_engine_events", "no_notify"]},
}
# (label, part of the file name, function): inclusive time per run in the profiled variants.
FUNCTIONS = [
    ("task: execute_run", "etl_pipelines/framework/celery/task", "execute_run"),
    ("  whole run: execute_run_here", "etl_pipelines/framework/_dagster_internal", "execute_run_here"),
    ("    load the job (recon_job_from_origin)", "", "recon_job_from_origin"),
    ("    context creation", "", "create_context_creation_data"),
    ("    execution plan", "", "create_execution_plan"),
    ("    compute logs: capture_logs", "", "capture_logs"),
    ("    the op body: run_attempt", "etl_pipelines/framework/attempt.py", "run_attempt"),
    ("      the job's handle()", "etl_pipelines/jobs/", "handle"),
    ("  table line: hand_on", "etl_pipelines/framework/launch", "hand_on"),
    ("event log: handle_new_event", "", "handle_new_event"),
    ("  event insert: store_event", "dagster_postgres/event_log", "store_event"),
    ("  run status write: handle_run_event", "dagster/_core/storage/runs", "handle_run_event"),
    ("run reads: get_run_by_id", "dagster/_core/instance", "get_run_by_id"),
    ("snapshot reads: _get_snapshot", "dagster/_core/storage/runs", "_get_snapshot"),
    ("job table: JobStore.transition", "etl_pipelines/store/store.py", "transition"),
    ("job table: JobStore.get", "etl_pipelines/store/store.py", "get"),
    ("pool pre-ping: do_ping", "sqlalchemy/dialects/postgresql", "do_ping"),
    ("config: process_config", "dagster/_config", "process_config"),
    ("serdes: serialize_value", "dagster_shared/serdes/serdes.py", "serialize_value"),
    ("serdes: deserialize_value", "dagster_shared/serdes/serdes.py", "deserialize_value"),
    ("SQLAlchemy Connection.execute", "sqlalchemy/engine/base.py", "execute"),
    ("psycopg2 cursor.execute (C, incl. server wait)", "~", "psycopg2.extensions.cursor"),
]
MEASURES = ("cpu_ms", "child_cpu_ms", "wall_ms", "sql", "connections", "spawns")
PACKAGES = [
    ("/sqlalchemy/", "sqlalchemy"),
    ("/dagster_shared/serdes", "dagster serdes"),
    ("/dagster_postgres/", "dagster_postgres"),
    ("/dagster/_core/storage/", "dagster storage"),
    ("/dagster/_core/execution/", "dagster execution"),
    ("/dagster/_config/", "dagster config"),
    ("/dagster", "dagster other"),
    ("/etl_pipelines/", "etl_pipelines"),
    ("/logging/", "logging"),
    ("psycopg2", "psycopg2 (incl. server wait)"),
]


def arguments(parser):
    parser.add_argument("--count", type=int, default=200, help="measured runs per variant (%(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured runs first (%(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (%(default)s)")
    parser.add_argument("--profile-out", help="save the profiled variants' data as PATH.<timer>.pstats")
    harness.add_code_option(parser)


def apply_patches(names) -> None:
    if "no_notify" in names:  # dagster-postgres NOTIFYs after every event insert ("for version skew")
        from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
        from dagster_postgres.event_log.event_log import PostgresEventLogStorage

        original_store_event = PostgresEventLogStorage.store_event

        def store_event(self, event):
            if event.is_dagster_event and event.dagster_event_type in (*ASSET_EVENTS, *ASSET_CHECK_EVENTS):
                return original_store_event(self, event)
            with self._connect() as conn:
                conn.execute(self.prepare_insert_event(event))

        PostgresEventLogStorage.store_event = store_event
    if "no_engine_events" in names:  # informational engine events; those carrying an error are kept
        from dagster._core.instance import DagsterInstance

        original_should_store = DagsterInstance.should_store_event

        def should_store_event(self, event):
            data = event.dagster_event
            if data is not None and data.event_type_value == "ENGINE_EVENT":
                return getattr(data.event_specific_data, "error", None) is not None
            return original_should_store(self, event)

        DagsterInstance.should_store_event = should_store_event


def statement_kind(statement: str) -> str:
    text = " ".join(statement.split())
    verb = text.split(" ", 1)[0].upper()
    if "pg_catalog" in text or "information_schema" in text:
        return f"{verb} pg_catalog (reflection)"
    match = re.search(r"\b(?:FROM|INTO|UPDATE)\s+([\w.\"]+)", text, re.IGNORECASE)
    return f"{verb} {match[1].strip(chr(34)) if match else ''}".strip()


def variant(name: str, warmup: int, count: int, profile_out: str | None) -> dict:
    """Child: launch the queued runs, then execute them as the Celery task does, measured."""
    spec = VARIANTS[name]
    apply_patches(spec.get("patch", ()))
    import sqlalchemy as sa
    from dagster import DagsterRunStatus, RunsFilter

    statements, connections, spawns = [], [0], []
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    sa.event.listen(sa.pool.Pool, "connect", lambda *a: connections.__setitem__(0, connections[0] + 1))
    original_execute_child = subprocess.Popen._execute_child

    def counted_execute_child(self, args, *rest, **kwargs):
        spawns.append(os.path.basename(str(args[0] if isinstance(args, list | tuple) else args)))
        return original_execute_child(self, args, *rest, **kwargs)

    subprocess.Popen._execute_child = counted_execute_child
    from dagster._core.run_coordinator import QueuedRunCoordinator

    from etl_pipelines.framework.celery.task import execute_run
    from etl_pipelines.framework.instance import get_instance

    instance = get_instance()
    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
    run_ids = sorted(r.run_id for r in runs)[: warmup + count]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    statements.clear()
    # The old design: what dagster-daemon does per run. From 1a55b51 the task takes QUEUED runs.
    for run_id in run_ids if isinstance(instance.run_coordinator, QueuedRunCoordinator) else ():
        instance.launch_run(run_id, None)
    launch = {"cpu_ms_per_run": (time.process_time() - cpu0) * 1000 / len(run_ids)}
    launch |= {"wall_ms_per_run": (time.perf_counter() - wall0) * 1000 / len(run_ids)}
    launch["sql_per_run"] = len(statements) / len(run_ids)
    for run_id in run_ids[:warmup]:
        execute_run(None, run_id)
    timer = {"cpu": time.process_time, "wall": time.perf_counter}.get(spec.get("profile", ""))
    profiler = cProfile.Profile(timer) if timer else None
    rows, kinds, spawned, outcomes = {k: [] for k in MEASURES}, Counter(), Counter(), Counter()
    for run_id in run_ids[warmup:]:
        statements.clear()
        spawns.clear()
        conn0, children0 = connections[0], sum(os.times()[2:4])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with profiler or contextlib.nullcontext():
            outcomes[execute_run(None, run_id)] += 1
        wall, cpu, children = (
            time.perf_counter() - wall0,
            time.process_time() - cpu0,
            sum(os.times()[2:4]) - children0,
        )
        kinds.update(statement_kind(s) for s in statements)
        spawned.update(spawns)
        values = (
            cpu * 1000,
            children * 1000,
            wall * 1000,
            len(statements),
            connections[0] - conn0,
            len(spawns),
        )
        for key, value in zip(MEASURES, values, strict=True):
            rows[key].append(value)
    n = len(rows["cpu_ms"])
    result = {"variant": name, "compute_log_manager": type(instance.compute_log_manager).__name__}
    result |= {"measured_runs": n, "outcomes": dict(outcomes), "launch": launch}
    result["sql_by_kind_per_run"] = {k: v / n for k, v in kinds.most_common()}
    result["spawns_per_run"] = {k: v / n for k, v in spawned.most_common()}
    result |= {k: {"mean": sum(v) / n, "median": harness.percentile(sorted(v), 50)} for k, v in rows.items()}
    if profiler is not None:
        result["profile"] = profile_summary(profiler, n, spec["profile"])
        if profile_out:
            profiler.dump_stats(f"{profile_out}.{spec['profile']}.pstats")
    return result


def profile_summary(profiler: cProfile.Profile, runs: int, timer: str) -> dict:
    stats = pstats.Stats(profiler)
    raw = stats.stats  # (file, line, function) -> (primitive calls, calls, tottime, cumtime, callers)
    by_package: Counter = Counter()
    for (filename, _, funcname), (_, _, tottime, _, _) in raw.items():
        where = f"{filename} {funcname}"
        by_package[next((label for marker, label in PACKAGES if marker in where), "other")] += tottime
    functions = {}
    for label, file_part, func in FUNCTIONS:
        hits = [
            (v[1], v[3])
            for (f, _, n), v in raw.items()
            if (func in n if file_part == "~" else n == func and file_part in f)
        ]
        functions[label] = (sum(h[1] for h in hits) * 1000 / runs, sum(h[0] for h in hits) / runs)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    return {"timer": timer, "ms_per_run": stats.total_tt * 1000 / runs, "functions": functions} | {
        "by_package_ms_per_run": {k: v * 1000 / runs for k, v in by_package.most_common()},
        "top_cumulative_all_runs": re.sub(r"/\S*/site-packages/", "", text.getvalue()),
    }


def run(args) -> dict:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(names) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    tag, results = uuid.uuid4().hex[:8], []
    prefix, out = f"bench-pw-{tag}:", str(Path(args.profile_out).absolute()) if args.profile_out else None
    env = {"ETL_REDIS_URL": harness.REDIS_URL, "ETL_REDIS_KEY_PREFIX": prefix}
    with (
        harness.code_snapshot(args.code) as code,
        harness.schema_template(tag, code, env) as (template, dispatch_env),
    ):
        harness.say(f"{args.warmup + args.count} dispatches (code {code.commit}) ...")
        harness.child(dispatch_env, code.root, "harness", "dispatch_jobs", count=args.warmup + args.count)
        for index, name in enumerate(names):
            instance = harness.instance_yaml(code, None, prefix, **VARIANTS[name].get("yaml", {}))
            with (
                harness.database(f"etl_bench_{tag}_pw{index}", template) as url,
                harness.home(f"etl_bench_pw{index}_", {"dagster.yaml": instance}) as home,
            ):
                env = dispatch_env | {"DAGSTER_HOME": str(home), "ETL_DATABASE_URL": url}
                kw = {"name": name, "warmup": args.warmup, "count": args.count, "profile_out": out}
                results.append(r := harness.child(env, code.root, "profile_worker", "variant", **kw))
            harness.say(
                f"[{name}] CPU {r['cpu_ms']['mean']:.1f} ms/run, {r['child_cpu_ms']['mean']:.1f} children"
            )
        harness.delete_redis_keys(prefix)
    summary = {"environment": harness.environment(), "commit": code.commit, "count": args.count}
    return summary | {"warmup": args.warmup, "results": results}


def report(result: dict) -> str:
    head = ["variant", "CPU ms/run: total", "in process, mean / median", "children", "wall ms median"]
    head += ["SQL/run", "new conns/run", "subprocesses/run"]
    rows = [
        [
            r["variant"],
            r["cpu_ms"]["mean"] + r["child_cpu_ms"]["mean"],
            "{mean:.1f} / {median:.1f}".format(**r["cpu_ms"]),
        ]
        + [r[k]["median" if k == "wall_ms" else "mean"] for k in MEASURES[1:]]
        for r in result["results"]
    ]
    text = f"## Worker CPU profile ({result['count']} runs per variant after {result['warmup']} warm-up)\n\n"
    text += harness.header(result) + "\n" + harness.table(head, rows)
    for r in result["results"][:1]:
        text += (
            "\nDaemon-side `launch_run`: {cpu_ms_per_run:.1f} ms CPU, {sql_per_run:.1f} SQL per run. ".format(
                **r["launch"]
            )
        )
        text += f"SQL per run ({r['variant']}):\n\n" + harness.table(
            ["statement", "per run"], r["sql_by_kind_per_run"].items()
        )
    for p in (r["profile"] for r in result["results"] if "profile" in r):
        text += (
            f"\ncProfile ({p['timer']} timer, {p['ms_per_run']:.1f} ms/run profiled), tottime by package:\n\n"
        )
        text += harness.table(["package", "ms/run"], p["by_package_ms_per_run"].items()) + "\n"
        text += harness.table(
            ["function (inclusive, nested)", "ms/run", "calls/run"],
            [[k, *v] for k, v in p["functions"].items()],
        )
    return text


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
