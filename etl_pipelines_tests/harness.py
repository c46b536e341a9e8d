"""Real processes for tests: each in its own process group, always stopped by the test that started it."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from etl_pipelines.stack import group_alive, stop_groups
from etl_pipelines.store import JobStore

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout: float, interval: float = 0.2, what: str = "condition") -> T:
    """Call `check` until it returns something truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def run_finished(run_id: str) -> bool:
    """Whether the Dagster run has reached a final status (the op's record is written before)."""
    from etl_pipelines.framework.instance import get_instance

    run = get_instance().get_run_by_id(run_id)
    return run is not None and run.is_finished


def wait_for_jobs(store: JobStore, ids: list[str], timeout: float = 180) -> None:
    """Poll until every job's record is final and its Dagster run has finished too."""
    poll(
        lambda: all(store.require(i).status.is_final and run_finished(i) for i in ids),
        timeout,
        0.3,
        f"{len(ids)} job(s) to end",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def instance_yaml(source: Path, **coordinator_config: Any) -> str:
    """A dagster.yaml from `source` (the repo's or the embedded one) with coordinator overrides.

    The Celery launcher gets the test's Redis key prefix from ETL_REDIS_KEY_PREFIX, as a user with
    a prefix configures it: every production test deployment sets it, and its workers read it.
    """
    config = yaml.safe_load(source.read_text())
    if coordinator_config:
        config["run_coordinator"].setdefault("config", {}).update(coordinator_config)
    launcher = config.get("run_launcher") or {}
    if launcher.get("class") == "EtlCeleryRunLauncher":
        launcher["config"]["redis_key_prefix"] = {"env": "ETL_REDIS_KEY_PREFIX"}
    return yaml.safe_dump(config)


@dataclass
class Group:
    """A process started in its own session; stop() kills the whole group."""

    name: str
    process: subprocess.Popen
    log: Path

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def gone(self) -> bool:
        return self.process.poll() is not None and not group_alive(self.process.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL what is left: the same as `etl-jobs stack` does."""
        stop_groups([self], timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Deployment:
    """One isolated etl_pipelines deployment: a DAGSTER_HOME, a job table, the env to run it with."""

    home: Path
    database_url: str
    env: dict[str, str]
    groups: list[Group] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> Group:
        log = self.home / f"{name}-{len(self.groups)}.log"
        handle = log.open("wb")
        process = subprocess.Popen(
            argv,
            env=self.env,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        group = Group(name, process, log)
        self.groups.append(group)
        return group

    @property
    def celery(self) -> bool:
        """Whether runs go through `etl-jobs worker`s: both repository yamls (Redis, or the embedded
        default's SQLite broker in DAGSTER_HOME); a test's own dagster.yaml may say otherwise."""
        return "etl_pipelines.framework.celery.launcher" in (self.home / "dagster.yaml").read_text()

    @contextlib.contextmanager
    def daemon(self, workers: int = 1, concurrency: int = 2) -> Iterator[Group]:
        """dagster-daemon plus `workers` warm Celery workers (when the instance uses them) for the block."""
        group = self.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")])
        with contextlib.ExitStack() as stack:
            try:
                for _ in range(workers if self.celery else 0):
                    stack.enter_context(self.worker(concurrency=concurrency))
                yield group
            finally:
                group.stop()

    @contextlib.contextmanager
    def worker(self, concurrency: int = 1, queues: str | None = None) -> Iterator[Group]:
        """An `etl-jobs worker`, as users start it, for the duration of the block: on ETL_REDIS_URL,
        or without it on the SQLite broker in DAGSTER_HOME (the embedded default)."""
        number = sum(g.name == "worker" for g in self.groups) + 1
        argv = [str(BIN / "etl-jobs"), "worker", "--concurrency", str(concurrency), "--name", f"w{number}@%h"]
        if queues:
            argv += ["--queues", queues]
        group = self.start("worker", argv)
        try:
            poll(lambda: "ready." in group.output() or group.process.poll() is not None, 60, 0.2, "worker")
            assert group.process.poll() is None, group.output()
            yield group
        finally:
            group.stop()

    @contextlib.contextmanager
    def webserver(self) -> Iterator[str]:
        """dagster-webserver on a free port; yields its base URL once it answers."""
        port = free_port()
        group = self.start(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
        )
        url = f"http://127.0.0.1:{port}"
        try:
            poll(
                lambda: _answers(f"{url}/server_info") or group.process.poll() is not None,
                90,
                0.5,
                "webserver",
            )
            assert group.process.poll() is None, group.output()
            yield url
        finally:
            group.stop()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `etl-jobs ARGS` as a user would."""
        return subprocess.run(
            [str(BIN / "etl-jobs"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def dagster(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "dagster"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop_all(self) -> None:
        for group in self.groups:
            group.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def graphql(url: str, query: str, variables: Mapping[str, Any]) -> dict[str, Any]:
    """POST a GraphQL query to a dagster-webserver."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def pool_pid(run: str) -> int | None:
    """The pid of the Celery pool process executing `run`'s task (the task id is the run id)."""
    from etl_pipelines.framework.instance import get_instance

    active = get_instance().run_launcher.app.control.inspect(timeout=2).active() or {}  # type: ignore[attr-defined]
    for tasks in active.values():
        for task in tasks:
            if task.get("id") == run:
                return task.get("worker_pid")
    return None
