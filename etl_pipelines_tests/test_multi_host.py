"""Workers on other hosts: three network namespaces stand for three machines.

- "ui": dagster-webserver and dagster-daemon; "w1", "w2": one `etl-jobs worker` each (one slot).
- Each namespace reaches this machine only over its own veth pair (10.X.N.2 inside, 10.X.N.1 on
  this side) and has its own DAGSTER_HOME (a temporary directory holding only dagster.yaml):
  nothing is shared but ETL_DATABASE_URL and ETL_REDIS_URL. PostgreSQL and Redis listen on
  127.0.0.1 only; TCP proxies owned by the test listen on each 10.X.N.1 and forward to them.
- The test process dispatches (an application host) and asks the UI's GraphQL over the veth.

Shown: jobs run on both workers; every run's step output (Dagster's own log lines, on stderr) is
served by the webserver, which never saw the workers' disks, live while a step runs and complete
after; a worker cut off mid-job (`ip link set … down` inside its namespace) loses its attempt,
recovery gives the job to the other worker, and it completes once there.
"""

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.jobs.slow_query import SlowQuery
from etl_pipelines.stack import stop_groups
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import production_deployment
from etl_pipelines_tests.harness import BIN, REPO, Deployment, Group, graphql, poll, wait_for_jobs
from etl_pipelines_tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

IP = shutil.which("ip") or "/usr/sbin/ip"
HOSTS = ("ui", "w1", "w2")
WEB_PORT = 3000  # inside the ui namespace, on its veth address

CAPTURED_KEYS = """
query Captures($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename ... on LogsCapturedEvent { fileKey stepKeys } } }
    ... on PythonError { message }
  }
}"""
CAPTURED_LOGS = """
query Logs($logKey: [String!]!) {
  capturedLogs(logKey: $logKey) { stdout stderr cursor }
  capturedLogsMetadata(logKey: $logKey) { stderrLocation stderrDownloadUrl }
}"""


def ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    """One namespace: its veth pair, the addresses either side, the proxies to the services."""

    name: str
    netns: str
    outside: str  # the veth end in the root namespace (proxies listen on its address)
    inside: str  # the end in the host's namespace
    outside_ip: str
    inside_ip: str
    proxies: list[TcpProxy] = field(default_factory=list)
    deployment: Deployment | None = None

    def groups(self) -> list[Group]:
        return self.deployment.groups if self.deployment else []

    def exec(self, *argv: str) -> list[str]:
        return [IP, "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        """The host loses the network: its end of the link goes down (no RST, packets vanish)."""
        ip("netns", "exec", self.netns, IP, "link", "set", self.inside, "down")


@contextlib.contextmanager
def network(tag: str) -> Iterator[dict[str, Host]]:
    """A namespace and a veth pair per host; all deleted after, whatever happened."""
    subnet = 100 + int(tag[:4], 16) % 150
    hosts: dict[str, Host] = {}
    try:
        for number, name in enumerate(HOSTS):
            host = Host(
                name=name,
                netns=f"etl-{tag}-{name}",
                outside=f"e{tag}o{number}",
                inside=f"e{tag}i{number}",
                outside_ip=f"10.{subnet}.{number}.1",
                inside_ip=f"10.{subnet}.{number}.2",
            )
            ip("netns", "add", host.netns)
            hosts[name] = host
            ip("link", "add", host.outside, "type", "veth", "peer", "name", host.inside)
            ip("link", "set", host.inside, "netns", host.netns)
            ip("addr", "add", f"{host.outside_ip}/24", "dev", host.outside)
            ip("link", "set", host.outside, "up")
            inside = ["netns", "exec", host.netns, IP]
            ip(*inside, "addr", "add", f"{host.inside_ip}/24", "dev", host.inside)
            ip(*inside, "link", "set", host.inside, "up")
            ip(*inside, "link", "set", "lo", "up")  # the daemon's code server listens on loopback
        yield hosts
    finally:
        for host in hosts.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "delete", host.outside)  # its peer goes with it
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "delete", host.netns)


def proxied_pg_url(url: str, proxy: TcpProxy) -> str:
    return sa.make_url(url).set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)


def proxied_redis_url(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=proxy.url_netloc()))


def start(host: Host, name: str, argv: list[str]) -> Group:
    """`argv` in the host's namespace, as a user starts it there, in its own process group."""
    assert host.deployment is not None
    return host.deployment.start(name, host.exec(*argv))


def worker_log_has(group: Group, run_id: str) -> bool:
    return f"execute_run[{run_id}] received" in group.output()


def captured_logs(url: str, run_id: str) -> list[dict]:
    """What the UI shows for each of the run's captures: asked over the veth, as a browser does."""
    events = graphql(url, CAPTURED_KEYS, {"runId": run_id})["logsForRun"]
    assert events["__typename"] == "EventConnection", events
    found = []
    for event in events["events"]:
        if event["__typename"] == "LogsCapturedEvent":
            log_key = [run_id, "compute_logs", event["fileKey"]]
            found.append({"log_key": log_key, **graphql(url, CAPTURED_LOGS, {"logKey": log_key})})
    return found


def stderr_of(url: str, run_id: str) -> str:
    return "".join((c["capturedLogs"]["stderr"] or "") for c in captured_logs(url, run_id))


def test_workers_on_other_hosts(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    ip("netns", "list")  # root and iproute2, or a loud failure
    tag = uuid.uuid4().hex[:6]
    rd = urlsplit(redis_url)
    assert rd.path in ("", "/0"), "the proxies forward to Redis's DB 0; isolation is the key prefix"
    timings: list[str] = []
    t0 = time.monotonic()

    def note(text: str) -> None:
        timings.append(f"{time.monotonic() - t0:6.1f}s {text}")

    with contextlib.ExitStack() as stack:
        # The application host (this process): direct URLs, a DAGSTER_HOME of its own.
        app = stack.enter_context(
            production_deployment(
                clean_env,
                tmp_path / "app" / "dagster_home",
                pg_url,
                redis_url,
                redis_prefix,
                ETL_HEARTBEAT_SECONDS="1",
                ETL_RECOVERY_GRACE_SECONDS="2",
            )
        )
        hosts = stack.enter_context(network(tag))
        dagster_yaml = (app.home / "dagster.yaml").read_text()
        for host in hosts.values():
            pg_proxy = stack.enter_context(
                TcpProxy("127.0.0.1", sa.make_url(pg_url).port or 5432, host=host.outside_ip)
            )
            redis_proxy = stack.enter_context(TcpProxy("127.0.0.1", rd.port or 6379, host=host.outside_ip))
            host.proxies = [pg_proxy, redis_proxy]
            home = tmp_path / host.name / "dagster_home"
            home.mkdir(parents=True)
            (home / "dagster.yaml").write_text(dagster_yaml)
            env = {
                **app.env,
                "DAGSTER_HOME": str(home),
                "ETL_DATABASE_URL": proxied_pg_url(pg_url, pg_proxy),
                "ETL_REDIS_URL": proxied_redis_url(redis_url, redis_proxy),
            }
            host.deployment = Deployment(home=home, database_url=env["ETL_DATABASE_URL"], env=env)
        # Every host's processes at once (a cut-off worker waits for its task: SIGKILL after 5 s),
        # before the proxies and namespaces go.
        stack.callback(lambda: stop_groups([g for h in hosts.values() for g in h.groups()], 5))  # type: ignore[misc]
        note("namespaces, veths and proxies up")

        ui = hosts["ui"]
        webserver = start(
            ui,
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                ui.inside_ip,
                "-p",
                str(WEB_PORT),
            ],
        )
        daemon = start(ui, "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")])
        workers = {
            name: start(
                hosts[name],
                "worker",
                [str(BIN / "etl-jobs"), "worker", "--concurrency", "1", "--name", f"{name}@%h"],
            )
            for name in ("w1", "w2")
        }
        url = f"http://{ui.inside_ip}:{WEB_PORT}"
        groups = [webserver, daemon, *workers.values()]
        try:
            for name, group in workers.items():
                poll(lambda: "ready." in group.output() or group.process.poll() is not None, 90, 0.2, name)  # noqa: B023
                assert group.process.poll() is None, group.output()
            poll(
                lambda: answers(f"{url}/server_info") or webserver.process.poll() is not None,
                120,
                0.5,
                "webserver",
            )
            assert webserver.process.poll() is None, webserver.output()
            note("webserver (over the veth) and both workers ready")
            run_everywhere(app, url, workers, note)
            cut_mid_job(app, url, hosts, workers, note)
        except BaseException:
            for group in groups:
                print(
                    f"--- {group.name} ({group.log}), last lines:\n"
                    + "\n".join(group.output().splitlines()[-60:])
                )
            raise
        finally:
            print("\n".join(timings))


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def run_everywhere(app: Deployment, url: str, workers: dict[str, Group], note) -> None:
    """Slow queries dispatched together take both one-slot workers; every run's output is in the UI."""
    store = JobStore(app.database_url)
    handles = [SlowQuery.dispatch(duration=2, queue="high") for _ in range(2)]
    handles += [Fibonacci.dispatch(n=20 + i, queue="high") for i in range(2)]
    wait_for_jobs(store, [h.id for h in handles], 120)
    note("4 jobs completed")
    for handle in handles:
        assert handle.record().status == JobStatus.COMPLETED, handle.record().to_dict()
    ran_on = {h.id: [n for n, g in workers.items() if worker_log_has(g, h.id)] for h in handles}
    assert all(len(names) == 1 for names in ran_on.values()), ran_on
    assert {names[0] for names in ran_on.values()} == {"w1", "w2"}, ran_on
    for handle in handles:
        (capture,) = captured_logs(url, handle.id)
        stderr = capture["capturedLogs"]["stderr"] or ""
        assert f"{handle.job_type}_op - STEP_START" in stderr, stderr[-2000:]
        assert "STEP_SUCCESS" in stderr, stderr[-2000:]
        metadata = capture["capturedLogsMetadata"]
        assert metadata["stderrLocation"].startswith("etl_compute_logs in "), metadata
        # The download link of the UI serves the same bytes, copied out of the database.
        with urllib.request.urlopen(f"{url}{metadata['stderrDownloadUrl']}", timeout=10) as response:
            assert response.read().decode() == stderr
    note(f"every run's step output read from the UI's GraphQL; ran on {sorted(ran_on.values())}")


def cut_mid_job(app: Deployment, url: str, hosts: dict[str, Host], workers: dict[str, Group], note) -> None:
    """A worker's link goes down mid-query: its job is recovered and completes once on the other."""
    store = JobStore(app.database_url)
    instance = get_instance()
    handle = SlowQuery.dispatch(duration=30, queue="high")
    first = handle.id
    victim = poll(
        lambda: next((n for n, g in workers.items() if worker_log_has(g, first)), None),
        30,
        0.2,
        "a worker to take it",
    )
    other = "w2" if victim == "w1" else "w1"
    poll(lambda: handle.status() == JobStatus.STARTED, 30, 0.2, "the slow query to start")
    # Live: the running step's output so far is in the UI (uploaded every upload_interval, 5 s).
    live = poll(lambda: "STEP_START" in stderr_of(url, first), 20, 0.5, "the running step's output in the UI")
    assert live
    assert not instance.all_logs(first, of_type=dg.DagsterEventType.STEP_SUCCESS)
    hosts[victim].cut()
    note(f"{victim} cut off mid-job {first} ({other} stays)")

    def ended() -> bool:
        record = handle.record()
        return record.status.is_final and all(
            (run := instance.get_run_by_id(r)) is not None and run.is_finished for r in record.run_ids
        )

    # Recovery as the job_recovery sensor runs it every 30 s, asked for now (from this host).
    poll(
        lambda: app.cli("recover").returncode == 0 and handle.record().run_id != first,
        90,
        1.0,
        "recovery to give up on the cut-off attempt and queue its retry",
    )
    poll(ended, 150, 0.5, "the job to be recovered and to end")
    record = handle.record()
    note(f"job ended: {record.status.value}, retry_count {record.retry_count}, runs {record.run_ids}")
    assert record.status == JobStatus.COMPLETED and record.retry_count == 1, record.to_dict()
    assert len(record.run_ids) == 2 and record.run_ids[0] == first
    second = record.run_ids[1]
    assert worker_log_has(workers[other], second) and not worker_log_has(workers[victim], second)
    first_run = instance.get_run_by_id(first)
    assert first_run is not None and first_run.status == dg.DagsterRunStatus.FAILURE
    successes = {
        r: len(instance.all_logs(r, of_type=dg.DagsterEventType.STEP_SUCCESS)) for r in record.run_ids
    }
    assert successes == {first: 0, second: 1}, successes
    history = store.history(first)
    assert [e.run_id for e in history if e.action == "completed"] == [second]
    # The retry's output, written on the other host, and what the lost attempt stored before its cut.
    assert "STEP_SUCCESS" in stderr_of(url, second)
    assert "STEP_START" in stderr_of(url, first)
    print(
        json.dumps([{"action": e.action, "run": e.run_id, "reason": e.reason} for e in history], indent=1)[
            :3000
        ]
    )
    assert re.search(r"no heartbeat|WorkerLost|worker", " ".join(e.reason or "" for e in history), re.I)
