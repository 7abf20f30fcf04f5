"""The object store: where artifacts and large results live (DESIGN.md section 2).

One interface, two backends chosen by configuration:
- `S3Store` (the `minio` SDK) against MinIO or any S3, when `CONVEYOR_S3_ENDPOINT` is set;
  download links are S3's own presigned URLs, so artifact bytes never pass through the API.
- `LocalStore`, a folder (dev mode's default, `CONVEYOR_DATA_DIR/objects`); its download
  links are signed by Conveyor and served by the API's small download server
  (`conveyor.objects.downloads`), with the same expiry rules.

The interface is synchronous on purpose: the minio SDK is, and the built-in handlers that
stream large objects run in the worker's thread pool. Async code calls it through
`asyncio.to_thread`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.config import Settings

# S3's smallest multipart part; a stream of unknown length is uploaded in parts this large,
# which bounds what an upload holds in memory.
PART_SIZE = 8 << 20


class ObjectNotFound(LookupError):
    """No object under that key."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    content_type: str = "application/octet-stream"


class ObjectStore(abc.ABC):
    """Objects by key: put (streamed), open (streamed), stat, delete, and a download URL."""

    @abc.abstractmethod
    def ensure_ready(self) -> None:
        """Create the bucket or folder if it is missing (idempotent)."""

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: IO[bytes],
        *,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> StoredObject:
        """Store what `data` yields under `key` (replacing it); -1: length unknown, read
        until EOF in parts of PART_SIZE."""

    @abc.abstractmethod
    def open(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A stream of the object's bytes; raises ObjectNotFound."""

    @abc.abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """The object's size and type, or None when there is none."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove these objects; keys without an object are ignored."""

    @abc.abstractmethod
    def url(
        self, key: str, *, expires: timedelta, filename: str = "", content_type: str = ""
    ) -> str:
        """A link that downloads the object until `expires` from now, and not after, saved
        as `filename` and served as `content_type` when given."""

    def read(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def iter_chunks(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as stream:
            while block := stream.read(chunk):
                yield block


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings name: S3 when an endpoint is set, else the local folder."""
    if settings.s3_endpoint:
        from conveyor.objects.s3 import S3Store

        return S3Store.from_settings(settings)
    from conveyor.objects.local import LocalStore

    return LocalStore.from_settings(settings)


__all__ = ["PART_SIZE", "ObjectNotFound", "ObjectStore", "StoredObject", "open_store"]
