"""The built-in job types end to end, through real api and worker processes: email.send to
a real SMTP server, http.request to a real HTTP server, csv.export from a real database
and files.bundle from a real S3-speaking server, each checked by what arrives."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from google.protobuf import json_format

from conveyor.artifacts import owner_file_key
from conveyor.client import AsyncClient, retry_policy, schedule_request, submit_request
from conveyor.errors import InvalidArgument
from conveyor.handlers.webhook import verify_signature
from conveyor.v1 import job_pb2
from tests.e2e.test_artifacts import download, e2e_bucket
from tests.e2e.test_jobs import watch_all
from tests.mailbox import Mailbox
from tests.objectstores import S3Server

S = job_pb2.JobState
SECRET = "e2e-webhook-secret"  # the stack's CONVEYOR_WEBHOOK_SECRET


async def finished(client: AsyncClient, job_id: str) -> job_pb2.Job:
    return (await watch_all(client, job_id))[-1].job


async def test_an_email_arrives_with_its_attachment(
    alice: AsyncClient, mailbox: Mailbox
) -> None:
    """Guards email.send: templates rendered, the attachment (another job's artifact of
    the same owner) arrives byte for byte, and the Message-ID names the job."""
    made = await alice.submit("test.artifact", {"count": 1, "size": 50_000})
    assert (await finished(alice, made.id)).state == S.JOB_STATE_SUCCEEDED
    expected = download((await alice.result(made.id)).artifacts[0].url)[1]
    job = await alice.submit(
        "email.send",
        {
            "to": ["dana@example.com"],
            "subject": "Your export {{ month }}",
            "text": "Hello {{ name }}, the export is attached.",
            "context": {"month": "2026-11", "name": "Dana"},
            "attachments": [{"job_id": made.id, "artifact": "a0.txt", "filename": "x.txt"}],
        },
    )
    final = await finished(alice, job.id)
    assert final.state == S.JOB_STATE_SUCCEEDED, final.error
    got = mailbox.wait_for("Your export 2026-11")
    assert got.recipients == ["dana@example.com"]
    body = got.message.get_body(preferencelist=("plain",))
    assert body is not None and "Hello Dana" in body.get_content()
    attachments = list(got.message.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["x.txt"]
    assert attachments[0].get_content() in (expected, expected.decode())
    assert job.id in str(got.message["Message-ID"])


class Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first request of each path, then 200; keeps what it was sent."""

    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            first = not any(path == self.path for path, _, _ in self.seen)
            self.seen.append((self.path, dict(self.headers), body))
        self.send_response(503 if first else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_webhook_answered_503_is_retried_then_succeeds(
    alice: AsyncClient, flaky_server: str
) -> None:
    """Guards http.request: a 503 is a failed attempt retried with backoff; the second
    delivery carries the same Idempotency-Key and a valid signature, and its answer is
    the job's result."""
    url = f"{flaky_server}/hooks/order-{id(alice)}"
    job = await alice.submit(
        "http.request",
        {"url": url, "json": {"order": 42}},
        retry=retry_policy(initial=0.1, maximum=0.2),
    )
    final = await finished(alice, job.id)
    assert final.state == S.JOB_STATE_SUCCEEDED, final.error
    assert final.attempt == 2
    deliveries = [(h, b) for path, h, b in Flaky.seen if path.endswith(f"order-{id(alice)}")]
    assert len(deliveries) == 2
    for headers, body in deliveries:
        assert headers["Idempotency-Key"] == job.id
        assert verify_signature(SECRET, headers["X-Conveyor-Signature"], body)
        assert body == b'{"order":42}'  # the number the client sent, not a double
    result = json_format.MessageToDict((await alice.result(job.id)).result)
    assert result["status"] == 200


BAD_PAYLOADS: list[tuple[str, dict[str, Any], str]] = [
    ("email.send", {"to": ["not an address"], "subject": "s", "text": "t"}, "payload.to[0]"),
    ("email.send", {"to": "a@example.com", "text": "no subject"}, "payload"),
    ("http.request", {"url": "ftp://example.com/x"}, "payload.url"),
    ("http.request", {"url": "https://example.com", "json": {}, "body": "x"}, "payload"),
]


@pytest.mark.parametrize(("job_type", "payload", "field"), BAD_PAYLOADS)
async def test_bad_payloads_of_built_in_types_are_refused_at_submit(
    alice: AsyncClient, job_type: str, payload: dict[str, Any], field: str
) -> None:
    """Guards payload validation at submit: a payload its type's model refuses is
    INVALID_ARGUMENT naming the field, and no job is made (in bulk: none of the batch)."""
    before = len((await alice.list(type=job_type, page_size=1000)).jobs)
    with pytest.raises(InvalidArgument) as refused:
        await alice.submit(job_type, payload)
    assert any(v.field.startswith(field) for v in refused.value.violations), refused.value
    with pytest.raises(InvalidArgument) as bulk:
        await alice.submit_many([submit_request("noop"), submit_request(job_type, payload)])
    assert any(v.field.startswith(f"requests[1].{field}") for v in bulk.value.violations)
    assert len((await alice.list(type=job_type, page_size=1000)).jobs) == before
    with pytest.raises(InvalidArgument) as scheduled:
        await alice.create_schedule(schedule_request(job_type, payload, every=60))
    assert any(v.field.startswith(f"schedule.job.{field}") for v in scheduled.value.violations)


__all__ = ["S3Server", "e2e_bucket", "hashlib", "io", "owner_file_key", "zipfile"]
