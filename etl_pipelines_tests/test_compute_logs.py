"""DatabaseComputeLogManager against a real PostgreSQL: a step's stdout/stderr written on one "host"
(a local directory of its own) is read from another's, live and complete, bounded, by offset."""

import sys
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_pipelines.framework._dagster_internal import ComputeIOType
from etl_pipelines.framework.compute_logs import TABLE_NAME, DatabaseComputeLogManager, truncation_marker
from etl_pipelines_tests.harness import poll


@pytest.fixture
def managers(pg_url: str, tmp_path: Path):
    """The worker's manager and the webserver's: the same database, nothing else shared."""
    writer = DatabaseComputeLogManager(pg_url, local_dir=str(tmp_path / "worker"), upload_interval=0)
    reader = DatabaseComputeLogManager(pg_url, local_dir=str(tmp_path / "webserver"))
    try:
        yield writer, reader
    finally:
        writer.dispose()
        reader.dispose()


def write(stream: str, text: str) -> None:
    out = sys.stdout if stream == "out" else sys.stderr
    out.write(text)
    out.flush()


def test_a_capture_is_read_from_another_host(managers, tmp_path: Path) -> None:
    writer, reader = managers
    key = ["run-a", "compute_logs", "step-a"]
    with writer.capture_logs(key):
        write("out", "hello from stdout\n")
        write("err", "and from stderr\n")
        local = Path(writer.local_manager.get_captured_local_path(key, "out"))
        assert local.read_text() == "hello from stdout\n"  # captured locally first
        assert not reader.is_capture_complete(key)
    assert reader.is_capture_complete(key)
    data = reader.get_log_data(key)
    assert data.stdout == b"hello from stdout\n" and data.stderr == b"and from stderr\n"
    assert data.cursor == f"{len(data.stdout)}:{len(data.stderr)}"
    # Nothing is left on the worker's disk, not even the run's directory.
    assert not local.exists() and not (tmp_path / "worker" / "run-a").exists()
    metadata = reader.get_log_metadata(key)
    assert TABLE_NAME in (metadata.stdout_location or "")
    assert metadata.stdout_download_url == "/logs/run-a/compute_logs/step-a/out"
    # What the webserver's download link serves: the stored stream copied out on its own host.
    reader.download_from_cloud_storage(key, ComputeIOType.STDERR)
    assert Path(reader.local_manager.get_captured_local_path(key, "err")).read_bytes() == data.stderr
    assert reader.get_log_data(["run-a", "compute_logs", "nothing"]).stdout is None


def test_a_running_step_is_read_live_and_by_offset(managers) -> None:
    writer, reader = managers
    key = ["run-b", "compute_logs", "step-b"]
    expected = b""
    with writer.capture_logs(key):
        for i in range(5):
            line = f"line {i} " + "x" * (10 + i) + "\n"
            write("out", line)
            expected += line.encode()
            writer.on_progress(key)  # what the upload thread does every upload_interval
            assert reader.get_log_data(key).stdout == expected
            assert not reader.is_capture_complete(key)
    assert reader.is_capture_complete(key)
    rows = reader._execute(
        sa.text(f"SELECT count(*) FROM {TABLE_NAME} WHERE log_key = 'run-b/compute_logs/step-b'")
    )
    assert rows[0][0] >= 5 + 1  # a chunk per upload, and stderr's (empty, final)
    # Read in small pieces across the chunk boundaries: the same bytes, the cursor moving on.
    for size in (1, 7, 23, 1000):
        got, offset = b"", 0
        while True:
            piece, offset = reader.get_log_data_for_type(key, ComputeIOType.STDOUT, offset, size)
            if not piece:
                break
            assert len(piece) <= size
            got += piece
        assert got == expected and offset == len(expected)
    piece, offset = reader.get_log_data_for_type(key, ComputeIOType.STDOUT, 3, 10)
    assert piece == expected[3:13] and offset == 13


def test_a_runaway_stream_is_stored_up_to_its_bound_with_a_marker(pg_url: str, tmp_path: Path) -> None:
    writer = DatabaseComputeLogManager(
        pg_url, local_dir=str(tmp_path / "w"), upload_interval=0, max_bytes=1000
    )
    key = ["run-c", "compute_logs", "step-c"]
    try:
        with writer.capture_logs(key):
            write("out", "a" * 600)
            writer.on_progress(key)
            write("out", "b" * 600)
            writer.on_progress(key)  # crosses the bound: the first 1000 bytes and the marker
            write("out", "c" * 100_000)
            write("err", "short\n")
        stdout, _ = writer.get_log_data_for_type(key, ComputeIOType.STDOUT, 0, None)
        assert stdout == b"a" * 600 + b"b" * 400 + truncation_marker(1000)
        assert writer.get_log_data(key).stderr == b"short\n"
        assert writer.is_capture_complete(key)
    finally:
        writer.dispose()


def test_a_live_subscription_sees_the_output_and_ends_with_the_capture(managers) -> None:
    writer, reader = managers
    writer._upload_interval = 0.2  # the live uploads' thread, as a worker runs it
    key = ["run-d", "compute_logs", "step-d"]
    seen: list[bytes] = []
    subscription = None
    try:
        with writer.capture_logs(key):
            write("out", "first\n")
            poll(lambda: reader.get_log_data(key).stdout, 10, 0.1, "the first upload")
            subscription = reader.subscribe(key)(lambda data: seen.append(data.stdout or b""))
            assert b"".join(seen) == b"first\n" and not subscription.is_complete
            write("out", "second\n")
            poll(lambda: b"second" in b"".join(seen), 15, 0.1, "the subscription to see more")
        poll(lambda: subscription.is_complete, 15, 0.1, "the subscription to end")
        assert b"".join(seen) == b"first\nsecond\n"
    finally:
        if subscription is not None:
            subscription.dispose()


def test_deleting_logs_by_key_and_prefix(managers) -> None:
    writer, reader = managers
    keys = [
        ["run-e", "compute_logs", "one"],
        ["run-e", "compute_logs", "two"],
        ["run-e_x", "compute_logs", "z"],
    ]
    for key in keys:
        with writer.capture_logs(key):
            write("err", "x\n")
    assert sorted(
        reader.get_log_keys_for_log_key_prefix(["run-e", "compute_logs"], ComputeIOType.STDERR)
    ) == [
        keys[0],
        keys[1],
    ]
    reader.delete_logs(log_key=keys[0])
    assert not reader.is_capture_complete(keys[0]) and reader.is_capture_complete(keys[1])
    reader.delete_logs(prefix=["run-e"])  # "_" is not a wildcard: run-e_x stays
    assert not reader.is_capture_complete(keys[1]) and reader.is_capture_complete(keys[2])


def test_a_dagster_run_stores_its_step_output(pg_url: str, tmp_path: Path) -> None:
    """Through Dagster's own execution: the LOGS_CAPTURED event's key reads the op's prints."""

    @dg.op
    def talk(context: dg.OpExecutionContext) -> None:
        print("printed by the op")
        context.log.info("logged by the op")

    @dg.job
    def talking() -> None:
        talk()

    overrides = {
        "compute_logs": {
            "module": "etl_pipelines.framework.compute_logs",
            "class": "DatabaseComputeLogManager",
            "config": {"database_url": pg_url, "local_dir": str(tmp_path / "local")},
        }
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        started = time.monotonic()
        result = talking.execute_in_process(instance=instance)
        assert result.success and time.monotonic() - started < 30
        (captured,) = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED)
        data: Any = captured.dagster_event.event_specific_data  # type: ignore[union-attr]
        manager = instance.compute_log_manager
        assert isinstance(manager, DatabaseComputeLogManager)
        log_key = [result.run_id, "compute_logs", data.file_key]
        assert manager.is_capture_complete(log_key)
        logs = manager.get_log_data(log_key)
        assert b"printed by the op" in (logs.stdout or b"")
        assert b"logged by the op" in (logs.stderr or b"")


def test_a_database_out_of_reach_loses_the_upload_never_the_step(tmp_path: Path) -> None:
    """The step ends normally; its output stays on the worker's disk for an operator."""
    nowhere = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
    writer = DatabaseComputeLogManager(nowhere, local_dir=str(tmp_path / "w"), upload_interval=0.1)
    key = ["run-f", "compute_logs", "step-f"]
    try:
        with writer.capture_logs(key):
            write("out", "kept locally\n")
            time.sleep(0.3)  # live uploads fail too, quietly
        assert Path(writer.local_manager.get_captured_local_path(key, "out")).read_text() == "kept locally\n"
        assert not writer._uploads  # nothing held for a capture that is over
    finally:
        writer.dispose()


def test_a_sensor_ticks_log_is_stored_only_when_it_logged(managers) -> None:
    """Schedules and sensors open a stream per evaluation (open_log_stream): stored if written to."""
    writer, reader = managers
    quiet, talkative = ["sensors", "tick-1"], ["sensors", "tick-2"]
    with writer.open_log_stream(quiet, ComputeIOType.STDERR):
        pass
    with writer.open_log_stream(talkative, ComputeIOType.STDERR) as stream:
        assert stream is not None
        stream.write("2026-12-02 - dagster - INFO - due_retries - nothing due\n")
    assert not reader.cloud_storage_has_logs(quiet, ComputeIOType.STDERR, partial=True)
    assert reader.is_capture_complete(talkative)
    assert (
        reader.get_log_data(talkative).stderr == b"2026-12-02 - dagster - INFO - due_retries - nothing due\n"
    )


def test_an_upload_that_fails_is_sent_again_whole(managers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live upload lost to the database (a blip): the next one starts where it did, so the stored
    stream has no hole and a reader never sees bytes twice."""
    writer, reader = managers
    key = ["run-f", "compute_logs", "step-f"]
    real = writer._execute
    failures = iter([True])

    def flaky(statement: Any, rows: Any = None) -> Any:
        if rows and next(failures, False):
            raise sa.exc.OperationalError("INSERT INTO etl_compute_logs", {}, Exception("connection reset"))
        return real(statement, rows)

    with writer.capture_logs(key):
        write("out", "AAAA\n")
        monkeypatch.setattr(writer, "_execute", flaky)
        with pytest.raises(sa.exc.OperationalError):
            writer.on_progress(key)
        write("out", "BBBB\n")
        writer.on_progress(key)
        monkeypatch.setattr(writer, "_execute", real)
    got, offset = b"", 0
    while (piece := reader.get_log_data_for_type(key, ComputeIOType.STDOUT, offset, 3))[0]:
        got, offset = got + piece[0], piece[1]
    assert got == b"AAAA\nBBBB\n" and offset == 10


def test_a_stored_upload_whose_reply_was_lost_is_kept_once_and_longest(managers) -> None:
    writer, reader = managers
    key = ["run-g", "compute_logs", "step-g"]
    with writer.capture_logs(key):
        write("out", "AAAA\n")
        writer.on_progress(key)
        # As if that upload's reply were lost: the next starts from the same place, with more.
        writer._uploads[("run-g/compute_logs/step-g", ComputeIOType.STDOUT)].read = 0
        writer._uploads[("run-g/compute_logs/step-g", ComputeIOType.STDOUT)].stored = 0
        write("out", "BBBB\n")
        writer.on_progress(key)
    assert reader.get_log_data(key).stdout == b"AAAA\nBBBB\n"


def test_a_failed_poll_does_not_end_live_logs(managers, monkeypatch: pytest.MonkeyPatch) -> None:
    """One poll that cannot reach the database: the webserver's live logs go on at the next."""
    writer, reader = managers
    key = ["run-h", "compute_logs", "step-h"]
    seen: list[bytes] = []
    failed: list[bool] = []
    real = reader.is_capture_complete

    def flaky(log_key: Any) -> bool:
        if threading.current_thread() is not threading.main_thread() and not failed:
            failed.append(True)  # the polling thread's first check
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection reset"))
        return real(log_key)

    monkeypatch.setattr(reader, "is_capture_complete", flaky)
    subscription = reader.subscribe(key)(lambda data: seen.append(data.stdout or b""))
    try:
        with writer.capture_logs(key):
            write("out", "after a failed poll\n")
        poll(lambda: subscription.is_complete, 20, 0.1, "the subscription to see the output and end")
        assert b"".join(seen) == b"after a failed poll\n" and failed
    finally:
        subscription.dispose()
