"""A real S3-speaking server for the tests: MinIO when a `minio` binary is on PATH, else
moto's standalone server (`python -m moto.server`), in its own process on a free port.

Moto speaks the S3 protocol the `minio` SDK uses (multipart uploads, presigned URLs) but
does not check signatures or expiry; `enforces_expiry` says which kind is running, and
tests of link expiry against S3 run only where it is True (the folder store's links,
checked by Conveyor itself, are tested everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conveyor.embedded import free_port
from conveyor.objects.downloads import DownloadServer
from conveyor.objects.local import LocalStore

ACCESS_KEY = "conveyor-test"
SECRET_KEY = "conveyor-test-secret"


class S3Server:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.enforces_expiry = shutil.which("minio") is not None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, bucket: str) -> dict[str, str]:
        """The CONVEYOR_S3_* settings that point a service at this server."""
        return {
            "CONVEYOR_S3_ENDPOINT": self.endpoint,
            "CONVEYOR_S3_ACCESS_KEY": ACCESS_KEY,
            "CONVEYOR_S3_SECRET_KEY": SECRET_KEY,
            "CONVEYOR_S3_BUCKET": bucket,
        }

    def start(self) -> None:
        log = (self.directory / "s3.log").open("wb")
        env = dict(os.environ)
        if self.enforces_expiry:
            (self.directory / "data").mkdir(exist_ok=True)
            env.update(MINIO_ROOT_USER=ACCESS_KEY, MINIO_ROOT_PASSWORD=SECRET_KEY)
            command = [
                "minio", "server", str(self.directory / "data"),
                "--address", f"127.0.0.1:{self.port}",
                "--console-address", f"127.0.0.1:{free_port()}",
            ]  # fmt: skip
        else:
            command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the S3 server exited: see {self.directory / 's3.log'}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answered (403 from MinIO without credentials)
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the S3 server did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def serving_downloads(store: LocalStore) -> Iterator[DownloadServer]:
    """The folder store's download server on an event loop of its own (in a thread, as
    the API's loop is to blocking tests); the store's links point at it meanwhile."""
    server = DownloadServer(store, "127.0.0.1:0")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="downloads", daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        store.base_url = f"http://127.0.0.1:{port}"
        yield server
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
