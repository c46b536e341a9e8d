"""Run dagster-webserver, dagster-daemon and workers in the foreground; Ctrl-C/SIGTERM stops them all."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from etl_pipelines.settings import LOCATION_NAME, Settings

WORKSPACE_YAML = f"""\
load_from:
  - python_module:
      module_name: etl_pipelines.definitions
      location_name: {LOCATION_NAME}
"""


def write_workspace(home: Path) -> Path:
    """A workspace.yaml in DAGSTER_HOME, so the stack runs from any directory."""
    path = home / "workspace.yaml"
    path.write_text(WORKSPACE_YAML)
    return path


def _bin(name: str) -> str:
    # The console scripts beside this interpreter: the stack runs in the same environment.
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class ProcessGroup:
    """A child process in its own session: stopping it stops everything it started."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]):
        self.name = name
        self.process = subprocess.Popen(list(argv), env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def gone(self) -> bool:
        """The leader has exited and nothing in its group is left."""
        return self.process.poll() is not None and not group_alive(self.process.pid)


def stop_groups(groups: Sequence[ProcessGroup], timeout: float = 10.0) -> None:
    """SIGTERM every group at once, then SIGKILL what is left after `timeout` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            group.signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(g.gone() for g in groups):
            time.sleep(0.1)
        if all(g.gone() for g in groups):
            return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_http(url: str, timeout: float, alive: Callable[[], bool]) -> None:
    """Poll `url` until it answers 200; RuntimeError if the server dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server behind {url} exited during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")


def upgrade_schema(settings: Settings, echo: Callable[[str], None]) -> None:
    """The job table made or upgraded to this release's schema (`etl-jobs db upgrade`), before any
    process uses it: the stack owns its deployment. A table newer than this code stops it here."""
    from etl_pipelines.store.engine import get_engine
    from etl_pipelines.store.schema import upgrade

    before, after = upgrade(get_engine(settings.database_url))
    if before != after:
        echo(f"job table upgraded: {before.describe()} -> {after.describe()}")


def recover_at_start(settings: Settings, echo: Callable[[str], None]) -> None:
    """What the last stack left unfinished gets its work back before anything new starts."""
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.framework.recovery import recover
    from etl_pipelines.store import JobStore

    try:
        actions = recover(get_instance(), JobStore(settings.database_url), settings, since=None)
    except Exception as exc:  # the job_recovery sensor tries again every 30 s
        echo(f"recovery at start-up failed ({type(exc).__name__}: {exc}); the sensor retries")
        return
    for action in actions:
        echo(f"recovered: {action}")


def queue_demo(echo: Callable[[str], None]) -> None:
    """Dispatch the demo batch, one line per job."""
    from etl_pipelines.demo import dispatch_demo

    for item in dispatch_demo():
        echo(f"queued {item['job_type']} on {item['queue']}: {item['id']}")


def run_stack(
    settings: Settings,
    host: str,
    port: int,
    workers: int | None,
    concurrency: int,
    demo: bool,
    echo: Callable[[str], None],
) -> int:
    """Upgrade the job table, recover lost work, start webserver, daemon and `workers` Celery
    workers (None: 1) on the settings' broker (Redis, or the SQLite file in DAGSTER_HOME), queue
    the demo batch if asked; wait for a signal or a death; stop all."""
    from etl_pipelines.framework.instance import ensure_dagster_home

    home = ensure_dagster_home()
    if workers is None:
        workers = 1
    upgrade_schema(settings, echo)
    recover_at_start(settings, echo)
    workspace = write_workspace(home)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    groups: list[ProcessGroup] = []
    exit_code = 0
    try:
        groups.append(
            ProcessGroup(
                "dagster-webserver",
                [_bin("dagster-webserver"), "-w", str(workspace), "-h", host, "-p", str(port)],
                env,
            )
        )
        groups.append(
            ProcessGroup("dagster-daemon", [_bin("dagster-daemon"), "run", "-w", str(workspace)], env)
        )
        for number in range(1, workers + 1):
            argv = [_bin("etl-jobs"), "worker", "--concurrency", str(concurrency), "--name", f"w{number}@%h"]
            groups.append(ProcessGroup(f"worker {number}", argv, env))
        url = f"http://{host}:{port}"
        wait_for_http(f"{url}/server_info", 120, lambda: all(g.alive() for g in groups) and not stopping)
        echo(f"Dagster UI: {url}  ({workers} worker(s); DAGSTER_HOME={home}; Ctrl-C stops everything)")
        if demo:
            queue_demo(echo)
        while not stopping:
            dead = [g.name for g in groups if not g.alive()]
            if dead:
                echo(f"{', '.join(dead)} exited; stopping the stack")
                exit_code = 1
                break
            time.sleep(0.5)
    except RuntimeError as exc:
        if not stopping:
            echo(f"error: {exc}")
            exit_code = 1
    finally:
        stop_groups(groups)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code
