"""Both object stores behind one interface: streamed puts of unknown length, reads,
deletes, and download links (S3 presigned, or the folder store's signed links served by
the download server), against a real S3-speaking server and a real folder."""

from __future__ import annotations

import io
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor.objects import PART_SIZE, ObjectNotFound, ObjectStore
from conveyor.objects.downloads import DownloadServer
from conveyor.objects.local import LocalStore
from conveyor.objects.s3 import S3Store
from tests.objectstores import S3Server, serving_downloads


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[tuple[LocalStore, DownloadServer]]:
    """The folder store with its download server running."""
    store = LocalStore(tmp_path / "objects", base_url="http://placeholder")
    with serving_downloads(store) as server:
        yield store, server


@pytest.fixture(params=["s3", "local"])
def store(
    request: pytest.FixtureRequest,
    s3_store: S3Store,
    local_store: tuple[LocalStore, DownloadServer],
) -> ObjectStore:
    return s3_store if request.param == "s3" else local_store[0]


def _download(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_a_stream_of_unknown_length_larger_than_a_part_round_trips(store: ObjectStore) -> None:
    data = os.urandom(PART_SIZE + 12345)
    stored = store.put("jobs/j1/artifacts/big.bin", io.BytesIO(data), content_type="x/y")
    assert stored.size == len(data)
    assert store.read("jobs/j1/artifacts/big.bin") == data
    assert b"".join(store.iter_chunks("jobs/j1/artifacts/big.bin")) == data


def test_missing_objects_and_deletes(store: ObjectStore) -> None:
    assert store.stat("jobs/none/x") is None
    with pytest.raises(ObjectNotFound), store.open("jobs/none/x"):
        pass
    store.put("jobs/j2/a", io.BytesIO(b"a"))
    store.put("jobs/j2/b", io.BytesIO(b"b"))
    store.delete(["jobs/j2/a", "jobs/j2/b", "jobs/j2/never-there"])
    assert store.stat("jobs/j2/a") is None
    assert store.stat("jobs/j2/b") is None


def test_download_links_serve_the_bytes_under_the_name_given(store: ObjectStore) -> None:
    store.put("jobs/j3/artifacts/r.csv", io.BytesIO(b"a,b\n1,2\n"), content_type="text/csv")
    url = store.url(
        "jobs/j3/artifacts/r.csv",
        expires=timedelta(minutes=5),
        filename="r.csv",
        content_type="text/csv",
    )
    status, body, headers = _download(url)
    assert (status, body) == (200, b"a,b\n1,2\n")
    assert "r.csv" in headers.get("Content-Disposition", "")


def test_folder_store_links_fail_after_expiry_and_when_altered(
    local_store: tuple[LocalStore, DownloadServer],
) -> None:
    store, _ = local_store
    store.put("jobs/j4/artifacts/x.txt", io.BytesIO(b"secret"))
    url = store.url("jobs/j4/artifacts/x.txt", expires=timedelta(seconds=1))
    assert _download(url)[:2] == (200, b"secret")
    assert _download(url.replace("x.txt", "y.txt"))[0] == 403
    assert _download(url.replace("signature=", "signature=0"))[0] == 403
    longer = url.replace("expires=", "expires=9")
    assert _download(longer)[0] == 403
    time.sleep(1.2)  # the link's lifetime is what is under test: it must run out
    status, body, _ = _download(url)
    assert (status, body) == (403, b"link expired\n")


def test_folder_store_links_answer_head_and_refuse_other_methods(
    local_store: tuple[LocalStore, DownloadServer],
) -> None:
    """The download server's HTTP contract: HEAD gives GET's headers and no body, any other
    method is 405 naming the allowed ones, a path outside /objects/ is 404, and a link to
    an object deleted since is 404."""
    store, _ = local_store
    store.put("jobs/j6/artifacts/r.csv", io.BytesIO(b"a,b\n"), content_type="text/csv")
    url = store.url(
        "jobs/j6/artifacts/r.csv",
        expires=timedelta(minutes=5),
        filename="r é.csv",
        content_type="text/csv",
    )
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as head:
        assert (head.status, head.read()) == (200, b"")
        assert head.headers["Content-Length"] == "4"
        assert head.headers["Content-Type"] == "text/csv"
        assert head.headers["Content-Disposition"] == "attachment; filename*=UTF-8''r%20%C3%A9.csv"
    post = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert (refused.value.code, refused.value.headers["Allow"]) == (405, "GET, HEAD")
    assert _download(url.replace("/objects/", "/other/"))[0] == 404
    store.delete(["jobs/j6/artifacts/r.csv"])
    assert _download(url)[:2] == (404, b"no such object\n")


def test_folder_store_keys_cannot_leave_the_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects", base_url="http://x")
    (tmp_path / "outside").write_text("no")
    for key in ("../outside", "jobs/../../outside", "/etc/passwd", ".download-key"):
        with pytest.raises(ObjectNotFound), store.open(key):
            pass


def test_an_unreachable_s3_fails_fast_instead_of_holding_the_caller() -> None:
    """minio's default client waits minutes to connect; ours gives up within seconds, so
    an attempt that needs a store that is down fails (and is retried) promptly."""
    from conveyor.embedded import free_port

    store = S3Store(
        endpoint=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="b", bucket="bkt"
    )
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - urllib3's error after its retries
        store.stat("jobs/x")
    assert time.monotonic() - started < 15


def test_links_are_signed_for_the_public_endpoint_without_asking_it(s3_store: S3Store) -> None:
    """Compose and Kubernetes reach MinIO as `minio:9000` while clients download from
    `localhost:9000`: links name the public endpoint, and making them needs no round trip
    (nothing listens on the public port here: the link is made without connecting)."""
    from conveyor.embedded import free_port

    closed = free_port()
    public = S3Store(
        endpoint=s3_store.endpoint,
        access_key="k",
        secret_key="s",
        bucket=s3_store.bucket,
        public_endpoint=f"http://127.0.0.1:{closed}",
    )
    url = public.url("jobs/j/artifacts/a.txt", expires=timedelta(minutes=1), filename="a.txt")
    assert url.startswith(f"http://127.0.0.1:{closed}/{s3_store.bucket}/jobs/j/artifacts/a.txt?")
    assert "X-Amz-Expires=60" in url and "response-content-disposition=" in url


def test_s3_links_fail_after_expiry_where_the_server_checks(
    s3_store: S3Store, s3_server: S3Server
) -> None:
    """S3 enforces a presigned link's expiry itself. moto's server does not, so this runs
    only against MinIO (a `minio` binary on PATH); the folder store's links are checked
    by Conveyor and tested above on every machine."""
    if not s3_server.enforces_expiry:
        pytest.skip("moto's S3 server does not check presigned expiry; MinIO is not on PATH")
    s3_store.put("jobs/j5/artifacts/x.txt", io.BytesIO(b"secret"))
    url = s3_store.url("jobs/j5/artifacts/x.txt", expires=timedelta(seconds=1))
    assert _download(url)[:2] == (200, b"secret")
    time.sleep(2.1)  # the link's lifetime is what is under test
    assert _download(url)[0] == 403
