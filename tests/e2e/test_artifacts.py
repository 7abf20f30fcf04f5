"""Results, artifacts and retention end to end: real api, worker and scheduler processes, a
real S3-speaking server, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from conveyor.client import AsyncClient, JobState
from conveyor.db import sync_url
from conveyor.errors import NotFound
from conveyor.objects.s3 import S3Store
from tests.e2e.test_jobs import watch_all
from tests.objectstores import ACCESS_KEY, SECRET_KEY, S3Server
from tests.processes import Stack

S = JobState


def download(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def e2e_bucket(s3_server: S3Server) -> S3Store:
    return S3Store(
        endpoint=s3_server.endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        bucket="conveyor-e2e",
    )


def row(stack: Stack, sql: str, **params: object) -> tuple[object, ...] | None:
    engine = create_engine(sync_url(stack.env["CONVEYOR_DATABASE_URL"]))
    try:
        with engine.connect() as conn:
            found = conn.execute(text(sql), params).first()
            return tuple(found) if found is not None else None
    finally:
        engine.dispose()


async def test_a_result_too_large_for_the_row_is_kept_in_the_object_store(
    alice: AsyncClient, stack: Stack, s3_server: S3Server
) -> None:
    """Guards results by reference: above CONVEYOR_MAX_RESULT_BYTES the result goes to the
    object store (the row keeps only its key) and GetJobResult returns it whole."""
    job = await alice.submit("test.result", {"bytes": 2_000_000})
    final = (await watch_all(alice, job.id))[-1].job
    assert final.state == S.SUCCEEDED, final.error
    got = await alice.result(job.id)
    assert got.result == {"text": "x" * 2_000_000}
    stored = row(stack, "SELECT result, result_ref FROM jobs WHERE id = :id", id=job.id)
    assert stored == (None, f"jobs/{job.id}/result.json")
    found = e2e_bucket(s3_server).stat(f"jobs/{job.id}/result.json")
    assert found is not None and found.size > 2_000_000


async def test_artifacts_are_listed_with_links_for_their_owner_only(
    alice: AsyncClient, bob: AsyncClient
) -> None:
    """Guards GetJobResult's artifacts: each is listed with its size, type and SHA-256 and
    a presigned link that downloads exactly its bytes until it expires; another owner
    learns nothing (NOT_FOUND, no link)."""
    job = await alice.submit("test.artifact", {"count": 2, "size": 300_000})
    final = (await watch_all(alice, job.id))[-1].job
    assert final.state == S.SUCCEEDED, final.error
    before = time.time()
    got = await alice.result(job.id)
    assert [a.name for a in got.artifacts] == ["a0.txt", "a1.txt"]
    for artifact in got.artifacts:
        status, body = download(artifact.url)
        assert status == 200 and len(body) == artifact.size == 300_000
        assert hashlib.sha256(body).hexdigest() == artifact.sha256
        assert artifact.content_type == "text/plain"
        assert "X-Amz-Expires=900" in artifact.url and "X-Amz-Signature=" in artifact.url
        assert artifact.url_expire_time is not None
        expires = artifact.url_expire_time.timestamp()
        assert before + 890 <= expires <= time.time() + 910
    with pytest.raises(NotFound):
        await bob.result(job.id)


async def test_finished_jobs_are_deleted_with_their_objects_after_retention(
    alice: AsyncClient, stack: Stack, s3_server: S3Server
) -> None:
    """Guards retention: a job submitted with a 1 s retention shows its expire time once it
    finished; the scheduler's sweeper then deletes its row, attempts, artifacts (in the
    object store too) and hot state; a job kept for a day is left alone."""
    short = await alice.submit("test.artifact", {"count": 1}, retention=timedelta(seconds=1))
    kept = await alice.submit("test.artifact", {"count": 1}, retention=timedelta(days=1))
    for job in (short, kept):
        final = (await watch_all(alice, job.id))[-1].job
        assert final.state == S.SUCCEEDED, final.error
    done = await alice.get(short.id)
    assert done.retention == timedelta(seconds=1)
    assert done.finish_time is not None
    assert done.expire_time == done.finish_time + timedelta(seconds=1)
    bucket = e2e_bucket(s3_server)
    assert bucket.stat(f"jobs/{short.id}/artifacts/a0.txt") is not None
    scheduler = stack.start("scheduler", env={"CONVEYOR_SWEEP_INTERVAL_SECONDS": "0.2"})
    try:
        for _ in range(300):  # the sweeper's interval decides when; nothing to wait on
            if row(stack, "SELECT id FROM jobs WHERE id = :id", id=short.id) is None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the expired job was not deleted within 30 s")
    finally:
        assert scheduler.stop() == 0
    assert bucket.stat(f"jobs/{short.id}/artifacts/a0.txt") is None
    assert row(stack, "SELECT count(*) FROM job_attempts WHERE job_id = :id", id=short.id) == (0,)
    with pytest.raises(NotFound):
        await alice.get(short.id)
    assert (await alice.get(kept.id)).state == S.SUCCEEDED
    assert bucket.stat(f"jobs/{kept.id}/artifacts/a0.txt") is not None
