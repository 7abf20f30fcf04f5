"""`S3Store`: objects in a MinIO or S3 bucket through the `minio` SDK.

Download links are S3 presigned GET URLs (signature version 4, computed locally: no round
trip). When clients reach the store under another address than the services do (compose:
`minio:9000` inside, `localhost:9000` outside), `CONVEYOR_S3_PUBLIC_ENDPOINT` names the
outside one and links are signed for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import IO, TYPE_CHECKING, BinaryIO, cast
from urllib.parse import quote

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from conveyor.objects import PART_SIZE, ObjectNotFound, ObjectStore, StoredObject

if TYPE_CHECKING:
    from conveyor.config import Settings

_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}
_DELETE_BATCH = 1000  # S3's limit per DeleteObjects request


def _endpoint(url: str) -> tuple[str, bool]:
    """'http://host:9000' -> ('host:9000', False); a bare 'host:port' is https."""
    if url.startswith("http://"):
        return url.removeprefix("http://").rstrip("/"), False
    return url.removeprefix("https://").rstrip("/"), True


def _http_client() -> urllib3.PoolManager:
    """minio's own default waits up to five minutes to connect; a store that cannot be
    reached should fail an attempt (to be retried) in seconds, not hold a worker slot."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=120),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),  # as minio does
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class S3Store(ObjectStore):
    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        public_endpoint: str = "",
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint

        def client(url: str) -> Minio:
            host, secure = _endpoint(url)
            return Minio(
                host,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,  # set: signing never asks the store (or the public address)
                http_client=_http_client(),
            )

        self.client = client(endpoint)
        self.signer = client(public_endpoint) if public_endpoint else self.client

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        return cls(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            public_endpoint=settings.s3_public_endpoint,
        )

    def ensure_ready(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            with contextlib.suppress(S3Error):  # another process made it first
                self.client.make_bucket(self.bucket)

    def put(
        self,
        key: str,
        data: IO[bytes],
        *,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> StoredObject:
        self.client.put_object(
            self.bucket,
            key,
            cast(BinaryIO, data),
            length,
            content_type=content_type,
            part_size=PART_SIZE if length < 0 else 0,
        )
        found = self.stat(key)
        if found is None:  # pragma: no cover - S3 acknowledged the write
            raise ObjectNotFound(key)
        return found

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise ObjectNotFound(key) from None
            raise
        try:
            yield cast(IO[bytes], response)
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str) -> StoredObject | None:
        try:
            found = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise
        return StoredObject(
            key, int(found.size or 0), found.content_type or "application/octet-stream"
        )

    def delete(self, keys: Iterable[str]) -> None:
        batch = [DeleteObject(k) for k in keys]
        for start in range(0, len(batch), _DELETE_BATCH):
            errors = self.client.remove_objects(self.bucket, batch[start : start + _DELETE_BATCH])
            for error in errors:  # the call is lazy: iterating it performs the deletes
                if error.code not in _MISSING:
                    raise RuntimeError(f"could not delete {error.name}: {error.message}")

    def url(
        self, key: str, *, expires: timedelta, filename: str = "", content_type: str = ""
    ) -> str:
        headers: dict[str, str | list[str] | tuple[str]] = {}
        if filename:
            headers["response-content-disposition"] = (
                f"attachment; filename*=UTF-8''{quote(filename)}"
            )
        if content_type:
            headers["response-content-type"] = content_type
        return self.signer.presigned_get_object(
            self.bucket, key, expires=expires, response_headers=headers or None
        )
