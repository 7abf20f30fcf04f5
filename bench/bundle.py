"""`files.bundle` memory: a worker zips 1 GiB of objects from a real S3-speaking server into
one artifact while its resident memory is sampled every 20 ms. The zip is streamed from
the sources into a multipart upload, so the peak should not grow with the bundle's size:
it is the worker's own footprint plus a few upload parts.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import psutil

from conveyor.client import AsyncClient, JobState
from conveyor.embedded import free_port
from conveyor.jobs.artifacts import owner_file_key
from conveyor.objects.s3 import S3Store
from tests.objectstores import ACCESS_KEY, SECRET_KEY, S3Server
from tests.processes import Stack

BUCKET = "conveyor-bench"
MiB = 1 << 20


def _inputs(store: S3Store, owner: str, files: int, size: int) -> list[dict[str, str]]:
    """Upload `files` objects of `size` bytes (random, so nothing compresses away)."""
    block = os.urandom(size)
    names = []
    for i in range(files):
        data = block[i:] + block[:i]  # each file different, no new randomness needed
        key = owner_file_key(owner, f"in/{i:04d}.bin")
        store.put(key, io.BytesIO(data), length=len(data))
        names.append({"key": f"in/{i:04d}.bin"})
    return names


async def bundle_rss(env: dict[str, str], folder: Path, key: str, total_mib: int) -> dict[str, Any]:
    """Run one bundle of `total_mib` MiB on its own api + worker pointed at a fresh S3
    server; the worker's RSS before, at peak, and the throughput."""
    (folder / "s3").mkdir(parents=True, exist_ok=True)
    s3 = S3Server(folder / "s3")
    s3.start()
    store = S3Store(
        endpoint=s3.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, bucket=BUCKET
    )
    store.ensure_ready()
    stack_env = {
        **env,
        **s3.env(BUCKET),
        "CONVEYOR_API_ADDR": f"127.0.0.1:{free_port()}",
        "CONVEYOR_WORKER_ADDR": f"127.0.0.1:{free_port()}",
        "CONVEYOR_DOWNLOAD_ADDR": f"127.0.0.1:{free_port()}",
    }
    stack = Stack(stack_env, folder)
    try:
        stack.start("api")
        worker = stack.start("worker", "--queues", "bundles", "--concurrency", "2")
        files = max(total_mib // 16, 1)
        sources = await asyncio.to_thread(_inputs, store, "bench", files, 16 * MiB)
        proc = psutil.Process(worker.proc.pid)
        before = proc.memory_info().rss
        async with AsyncClient(stack.api_addr, api_key=key) as client:
            start = time.perf_counter()
            job = await client.submit(
                "files.bundle",
                {"files": sources, "compression": "store", "name": "all.zip"},
                queue="bundles",
            )
            peak = before
            while True:
                peak = max(peak, proc.memory_info().rss)
                state = (await client.get(job.id)).state
                if state in (JobState.SUCCEEDED, JobState.DEAD):
                    break
                await asyncio.sleep(0.02)  # a sampler: memory has no event to wait on
            elapsed = time.perf_counter() - start
            done = await client.get(job.id)
            assert done.state == JobState.SUCCEEDED, done.error
            (artifact,) = (await client.result(job.id)).artifacts
        return {
            "input_mib": files * 16,
            "zip_mib": round(artifact.size / MiB, 1),
            "seconds": round(elapsed, 2),
            "mib_per_s": round(files * 16 / elapsed, 1),
            "rss_before_mib": round(before / MiB, 1),
            "rss_peak_mib": round(peak / MiB, 1),
        }
    finally:
        stack.stop_all()
        s3.stop()
