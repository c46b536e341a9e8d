"""The failure alert's body carries the job table's scrubbed error, never SQL parameters (no services)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from etl_pipelines.lifecycle import NewJob, RetrySchedule, events
from etl_pipelines.sensors import post_alert
from etl_pipelines.store import JobStore

SECRET_ERROR = (
    "IntegrityError: (psycopg2.errors.UniqueViolation) duplicate key\n"
    "DETAIL:  Key (email)=(bob@example.com) already exists.\n"
    "[SQL: INSERT INTO users (email) VALUES (%(email)s)]\n"
    "[parameters: {'email': 'bob@example.com'}]"
)


def _post(record) -> dict:
    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        post_alert(f"http://127.0.0.1:{server.server_port}/hook", record)
    finally:
        thread.join(10)
        server.server_close()
    return json.loads(received[0])


def test_alert_body_has_the_scrubbed_error() -> None:
    store = JobStore.in_memory()
    job = NewJob(
        id="j1",
        job_type="data_import",
        job_class="x",
        queue="low",
        payload={},
        schedule=RetrySchedule.explicit(()),
    )
    events.bootstrap(store, job, "j1")
    events.started(store, "j1", "j1")
    failed = events.attempt_failed(
        store, store.require("j1"), "j1", error=SECRET_ERROR, traceback=None, schedule=job.schedule
    )
    body = _post(failed)
    assert body["event"] == "job_failed" and body["job_id"] == "j1" and body["status"] == "failed"
    assert "bob@example.com" not in json.dumps(body)
    assert body["error"] == store.require("j1").error and "[parameters hidden]" in body["error"]


def test_alert_body_scrubs_an_error_stored_before_the_store_did() -> None:
    store = JobStore.in_memory()
    job = NewJob(
        id="j2", job_type="x", job_class="x", queue="low", payload={}, schedule=RetrySchedule.explicit(())
    )
    record = events.bootstrap(store, job, "j2")
    record.error = SECRET_ERROR  # as an older version wrote it, not through the store's bounds
    body = _post(record)
    assert "bob@example.com" not in body["error"] and "Key (email)=(...)" in body["error"]
