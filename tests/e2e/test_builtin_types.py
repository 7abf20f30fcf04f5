"""The built-in job types end to end, through real api and worker processes: email.send to
a real SMTP server, http.request to a real HTTP server, csv.export from a real database
and files.bundle from a real S3-speaking server, each checked by what arrives."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import os
import threading
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import create_engine, text

from conveyor.builtins.webhook import verify_signature
from conveyor.client import (
    AsyncClient,
    Job,
    JobState,
    retry_policy,
    schedule_request,
    submit_request,
)
from conveyor.db import sync_url
from conveyor.errors import InvalidArgument, NotFound
from conveyor.jobs.artifacts import owner_file_key
from tests.e2e.test_artifacts import download, e2e_bucket
from tests.e2e.test_jobs import watch_all
from tests.mailbox import Mailbox
from tests.objectstores import S3Server

S = JobState
SECRET = "e2e-webhook-secret"  # the stack's CONVEYOR_WEBHOOK_SECRET
# The handlers' outputs (files, mail, requests) do not depend on Redis's shape; the
# queue paths they go through are tested on both shapes in test_jobs.
pytestmark = pytest.mark.one_redis_shape


async def finished(client: AsyncClient, job_id: str) -> Job:
    return (await watch_all(client, job_id))[-1].job


async def test_an_email_arrives_with_its_attachment(alice: AsyncClient, mailbox: Mailbox) -> None:
    """Guards email.send: templates rendered, the attachment (another job's artifact of
    the same owner) arrives byte for byte, and the Message-ID names the job. (The month is
    unique to the run: the mailbox is shared by the runs on each Redis shape.)"""
    month = f"2026-{uuid.uuid4().hex[:6]}"
    made = await alice.submit("test.artifact", {"count": 1, "size": 50_000})
    assert (await finished(alice, made.id)).state == S.SUCCEEDED
    expected = download((await alice.result(made.id)).artifacts[0].url)[1]
    job = await alice.submit(
        "email.send",
        {
            "to": ["dana@example.com"],
            "subject": "Your export {{ month }}",
            "text": "Hello {{ name }}, the export is attached.",
            "context": {"month": month, "name": "Dana"},
            "attachments": [{"job_id": made.id, "artifact": "a0.txt", "filename": "x.txt"}],
        },
    )
    final = await finished(alice, job.id)
    assert final.state == S.SUCCEEDED, final.error
    got = mailbox.wait_for(f"Your export {month}")
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
    assert final.state == S.SUCCEEDED, final.error
    assert final.attempt == 2
    deliveries = [(h, b) for path, h, b in Flaky.seen if path.endswith(f"order-{id(alice)}")]
    assert len(deliveries) == 2
    for headers, body in deliveries:
        assert headers["Idempotency-Key"] == job.id
        assert verify_signature(SECRET, headers["X-Conveyor-Signature"], body)
        assert body == b'{"order":42}'  # the number the client sent, not a double
    result = (await alice.result(job.id)).result
    assert result is not None and result["status"] == 200


def _orders(url: str, count: int) -> None:
    """A table of `count` orders in the export database (made once per session)."""
    engine = create_engine(sync_url(url))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS orders"))
        conn.execute(
            text("CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2))")
        )
        conn.execute(
            text(
                "INSERT INTO orders SELECT i, 'c' || (i % 97), (i % 1000) / 100.0 "
                "FROM generate_series(1, :n) AS i"
            ),
            {"n": count},
        )
    engine.dispose()


async def test_a_100000_row_export_streams_to_a_csv_artifact_with_progress(
    alice: AsyncClient, export_database_url: str
) -> None:
    """Guards csv.export: a query read through a server-side cursor becomes a CSV artifact
    whose downloaded bytes are exactly the rows, with progress reported by rows on the way
    and the artifact's SHA-256 matching what was downloaded."""
    count = 100_000
    await asyncio.to_thread(_orders, export_database_url, count)
    job = await alice.submit(
        "csv.export",
        {"query": "SELECT id, customer, amount FROM orders ORDER BY id", "name": "orders.csv"},
    )
    updates = await watch_all(alice, job.id)
    final = updates[-1].job
    assert final.state == S.SUCCEEDED, final.error
    progress = [u.job.progress for u in updates if u.job.state == S.RUNNING]
    assert any(0 < p < 100 for p in progress), progress
    assert progress == sorted(progress)
    assert any("of 100000 rows" in u.job.progress_message for u in updates)
    found = await alice.result(job.id)
    (artifact,) = found.artifacts
    status, body = download(artifact.url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == artifact.sha256
    expected = "id,customer,amount\r\n" + "".join(
        f"{i},c{i % 97},{(i % 1000) / 100:.2f}\r\n" for i in range(1, count + 1)
    )
    assert body == expected.encode()
    result = found.result
    assert result is not None
    assert result["rows"] == count and result["bytes"] == len(body)


async def test_a_bundle_of_200_objects_downloads_as_the_right_zip(
    alice: AsyncClient, bob: AsyncClient, s3_server: S3Server
) -> None:
    """Guards files.bundle, the bulk-download case: 200 of the owner's files become one zip
    artifact, progress by bytes; its presigned link downloads a valid zip holding exactly
    those files; another owner gets no result and no link."""
    bucket = e2e_bucket(s3_server)
    files = {f"photos/{i:03d}.jpg": os.urandom(1000 + i) for i in range(200)}
    for path, data in files.items():
        bucket.put(owner_file_key("alice", path), io.BytesIO(data), length=len(data))
    job = await alice.submit(
        "files.bundle", {"files": [{"key": path} for path in files], "name": "photos.zip"}
    )
    updates = await watch_all(alice, job.id)
    assert updates[-1].job.state == S.SUCCEEDED, updates[-1].job.error
    assert any("bytes" in u.job.progress_message for u in updates)
    (artifact,) = (await alice.result(job.id)).artifacts
    assert artifact.name == "photos.zip" and artifact.content_type == "application/zip"
    assert "X-Amz-Expires=900" in artifact.url
    status, body = download(artifact.url)
    assert status == 200 and len(body) == artifact.size
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(p.split("/")[-1] for p in files)
        for path, data in files.items():
            assert archive.read(path.split("/")[-1]) == data
    with pytest.raises(NotFound):
        await bob.result(job.id)
    stolen = await bob.submit(
        "files.bundle", {"files": [{"job_id": job.id, "artifact": "photos.zip"}]}
    )
    refused = (await watch_all(bob, stolen.id))[-1].job
    assert refused.state == S.DEAD and "photos.zip" in refused.error


BAD_PAYLOADS: list[tuple[str, dict[str, Any], str]] = [
    ("email.send", {"to": ["not an address"], "subject": "s", "text": "t"}, "payload.to[0]"),
    ("email.send", {"to": "a@example.com", "text": "no subject"}, "payload"),
    ("http.request", {"url": "ftp://example.com/x"}, "payload.url"),
    ("http.request", {"url": "https://example.com", "json": {}, "body": "x"}, "payload"),
    ("csv.export", {"rows": [{"a": 1}], "query": "SELECT 1"}, "payload"),
    ("csv.export", {"query": "SELECT 1", "name": "../x.csv"}, "payload.name"),
    ("files.bundle", {"files": []}, "payload.files"),
    ("files.bundle", {"files": [{"key": "../../bob/secret.pdf"}]}, "payload.files[0]"),
]


@pytest.mark.parametrize(("job_type", "payload", "field"), BAD_PAYLOADS)
async def test_bad_payloads_of_built_in_types_are_refused_at_submit(
    alice: AsyncClient, job_type: str, payload: dict[str, Any], field: str
) -> None:
    """Guards payload validation at submit: a payload its type's model refuses is
    INVALID_ARGUMENT naming the field, and no job is made (in bulk: none of the batch)."""
    before = len((await alice.list(type=job_type, page_size=1000)).items)
    with pytest.raises(InvalidArgument) as refused:
        await alice.submit(job_type, payload)
    assert any(v.field.startswith(field) for v in refused.value.violations), refused.value
    with pytest.raises(InvalidArgument) as bulk:
        await alice.submit_many([submit_request("noop"), submit_request(job_type, payload)])
    assert any(v.field.startswith(f"requests[1].{field}") for v in bulk.value.violations)
    assert len((await alice.list(type=job_type, page_size=1000)).items) == before
    with pytest.raises(InvalidArgument) as scheduled:
        await alice.create_schedule(schedule_request(job_type, payload, every=60))
    assert any(
        v.field.startswith(f"schedule.job_template.{field}") for v in scheduled.value.violations
    )
