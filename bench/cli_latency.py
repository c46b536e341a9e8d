"""CLI latency: wall time of `etl-jobs --help`, `etl-jobs status <id>` and `etl-jobs list`, per code ref.

Each ref (a commit, or `worktree`) is a code snapshot, run as `python -m etl_pipelines.cli ...`
with the snapshot first on PYTHONPATH (so it works for cli.py and for a cli/ package with
__main__.py), against its own embedded deployment: a temporary DAGSTER_HOME with the snapshot's
embedded_dagster.yaml, the job table in SQLite there, and --jobs jobs dispatched into it with that
ref's own `dispatch` command (each ref creates its own schema). After one warm-up of every command,
the runs are interleaved (run i of every ref and command before run i + 1), so load that comes and
goes on a shared machine touches all refs alike. Reported per ref and command: median, p90 and max
wall time and median CPU (getrusage of the child), and the ratio of each ref's median to the first
ref's.

examples:
  .venv/bin/python bench/cli_latency.py                       # 68468f8 (cli.py) against HEAD
  .venv/bin/python bench/cli_latency.py --refs 68468f8,worktree --runs 20
"""

import contextlib
import json
import resource
import subprocess
import sys
import time

import harness

COMMANDS = {"--help": ["--help"], "status <id>": ["status", "{job_id}"], "list": ["list"]}


def arguments(parser):
    parser.add_argument(
        "--refs", default="68468f8,HEAD", help="comma-separated, the first is 'before' (%(default)s)"
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs per ref and command (%(default)s)")
    parser.add_argument("--jobs", type=int, default=5, help="jobs in each ref's job table (%(default)s)")


def cli(code: harness.Code, env: dict, *args: str) -> tuple[float, float, str]:
    """One `python -m etl_pipelines.cli` run: wall seconds, CPU seconds, stdout."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    argv = [sys.executable, "-m", "etl_pipelines.cli", *args]
    proc = subprocess.run(argv, env=env, cwd=code.root, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} ({code.commit}) exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, proc.stdout


def run(args) -> dict:
    refs = [ref.strip() for ref in args.refs.split(",") if ref.strip()]
    with contextlib.ExitStack() as stack:
        codes = [stack.enter_context(harness.code_snapshot(ref)) for ref in refs]
        envs, job_ids = [], []
        for code in codes:  # its own embedded deployment, with the jobs dispatched by its own CLI
            instance = (code.root / "etl_pipelines" / "embedded_dagster.yaml").read_text()
            home = stack.enter_context(harness.home("etl_bench_cli_", {"dagster.yaml": instance}))
            envs.append(harness.clean_env(DAGSTER_HOME=str(home), PYTHONPATH=code.pythonpath()))
            dispatch = ["dispatch", "fibonacci", "--param", f"n={harness.FIB_N}", "--json"]
            job_ids.append([json.loads(cli(code, envs[-1], *dispatch)[2])["id"] for _ in range(args.jobs)])
        harness.say(f"{len(refs)} refs x {len(COMMANDS)} commands: 1 warm-up + {args.runs} runs each ...")
        samples = {(ref, name): [] for ref in refs for name in COMMANDS}
        for index in range(args.runs + 1):  # interleaved; run 0 is the warm-up
            for ref, code, env, ids in zip(refs, codes, envs, job_ids, strict=True):
                for name, argv in COMMANDS.items():
                    measured = cli(code, env, *(arg.format(job_id=ids[0]) for arg in argv))
                    samples[ref, name] += [measured[:2]] * bool(index)
    results = []
    for (ref, name), values in samples.items():
        cpu = harness.percentile(sorted(c * 1000 for _, c in values), 50)
        result = {"ref": ref, "commit": codes[refs.index(ref)].commit, "command": name, "cpu_median_ms": cpu}
        results.append(result | {"wall": harness.summarise([w for w, _ in values])})
    for r in results:
        first = next(b for b in results if b["command"] == r["command"])
        r["ratio_to_first"] = r["wall"]["median_ms"] / first["wall"]["median_ms"]
    commits = ", ".join(f"{r} = {c.commit}" for r, c in zip(refs, codes, strict=True))
    return {"environment": harness.environment(("click", "dagster")), "commit": commits, "results": results}


def report(result: dict) -> str:
    head = ["command", "ref (commit)", "median ms", "p90 ms", "max ms", "CPU median ms", "median / 1st ref's"]
    rows = [
        [
            f"`etl-jobs {r['command']}`",
            f"{r['ref']} ({r['commit']})",
            f"**{r['wall']['median_ms']:.0f}**",
            r["wall"]["p90_ms"],
            r["wall"]["max_ms"],
            r["cpu_median_ms"],
            f"x{r['ratio_to_first']:.2f}",
        ]
        for r in sorted(result["results"], key=lambda r: r["command"])
    ]
    runs = result["results"][0]["wall"]["count"]
    return f"## CLI latency ({runs} runs each after a warm-up)\n\n{harness.header(result)}\n" + harness.table(
        head, rows
    )


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
