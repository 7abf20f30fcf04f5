"""Artifacts: the files a job makes (a CSV export, a zip bundle), kept in the object store
and listed with the job's result.

A handler puts them through its context (`ctx.artifacts.put(name, data)`); each is stored
under `jobs/<job id>/artifacts/<name>` and recorded in the `job_artifacts` table, so
GetJobResult can hand the job's owner a download link that expires, and the retention
sweeper can delete the objects with the job. A handler may also read the artifacts of any
other job of the same owner (`open(name, job_id=…)`): that is how an email attaches an
export, or a bundle collects several. Putting the same name again replaces it (a retried
attempt overwrites what a failed one left).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import mimetypes
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

from pydantic import AfterValidator

from conveyor.errors import FieldViolation, InvalidArgument, NotFound
from conveyor.jobs.model import now_ms
from conveyor.objects import ObjectStore

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
MAX_ARTIFACTS_PER_JOB = 1000

# Where an owner's own files live in the bucket: `files.bundle` and `email.send` may read
# `files/<owner>/<path>`, and nothing else outside the owner's jobs.
FILES_PREFIX = "files"


def valid_artifact_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def checked_artifact_name(name: str) -> str:
    """`name` if it is an artifact name, else the ValueError a payload model reports."""
    if not valid_artifact_name(name):
        raise ValueError("must be 1-200 letters, digits, '.', '_' or '-', not starting with .")
    return name


# An artifact name in a payload model (checked at submit like every other field).
ArtifactName = Annotated[str, AfterValidator(checked_artifact_name)]


def artifact_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/artifacts/{name}"


def result_key(job_id: str) -> str:
    return f"jobs/{job_id}/result.json"


def owner_file_key(owner: str, path: str) -> str:
    """The object key of an owner's file; a path that tries to leave the owner's folder is
    INVALID_ARGUMENT."""
    parts = path.split("/")
    if not path or len(path) > 1024 or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument([FieldViolation("key", "must be a relative path like a/b.pdf")])
    return f"{FILES_PREFIX}/{owner}/{path}"


@dataclass(frozen=True, slots=True)
class Artifact:
    job_id: str
    name: str
    key: str
    size: int
    content_type: str
    sha256: str
    create_time: int


def guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


Data = bytes | str | Path | IO[bytes] | Iterable[bytes]


class _Hashing(io.RawIOBase):
    """A readable stream over `source` that counts and hashes what passes through."""

    def __init__(self, source: IO[bytes] | Iterator[bytes]) -> None:
        self._file = source if hasattr(source, "read") else None
        self._chunks = None if self._file is not None else source
        self._pending = b""
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self._file is not None:
            data = self._file.read(len(view))
        else:
            while not self._pending:
                try:
                    self._pending = bytes(next(self._chunks))  # type: ignore[arg-type]
                except StopIteration:
                    break
            data, self._pending = self._pending[: len(view)], self._pending[len(view) :]
        count = len(data)
        view[:count] = data
        self.digest.update(data)
        self.size += count
        return count


@contextlib.contextmanager
def _readable(data: Data) -> Iterator[IO[bytes] | Iterator[bytes]]:
    if isinstance(data, str):
        yield io.BytesIO(data.encode())
    elif isinstance(data, bytes | bytearray | memoryview):
        yield io.BytesIO(bytes(data))
    elif isinstance(data, Path):
        with data.open("rb") as stream:
            yield stream
    elif hasattr(data, "read"):
        yield data  # type: ignore[misc]
    else:
        yield iter(data)


RecordFn = Callable[[Artifact], Awaitable[None]]
FindFn = Callable[[str, str, str], Awaitable[Artifact | None]]


class Artifacts:
    """A job's artifacts, for sync code (a sync handler, or a thread of an async one).

    Uploads stream: memory stays within one part (PART_SIZE) whatever the size.
    """

    def __init__(
        self,
        *,
        job_id: str,
        owner: str,
        store: ObjectStore,
        record: RecordFn,
        find: FindFn,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.job_id = job_id
        self.owner = owner
        self.store = store
        self._record = record
        self._find = find
        self._loop = loop
        self.made: list[Artifact] = []

    def _await(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def put(self, name: str, data: Data, *, content_type: str = "") -> Artifact:
        """Store `data` (bytes, text, a path, a binary stream or an iterable of chunks) as
        the artifact `name` of this job."""
        if not valid_artifact_name(name):
            raise ValueError(f"artifact name {name!r}: use letters, digits, '.', '_', '-'")
        if len(self.made) >= MAX_ARTIFACTS_PER_JOB:
            raise ValueError(f"a job keeps at most {MAX_ARTIFACTS_PER_JOB} artifacts")
        content_type = content_type or guess_type(name)
        key = artifact_key(self.job_id, name)
        with _readable(data) as source:
            stream = _Hashing(source)
            self.store.put(key, io.BufferedReader(stream), content_type=content_type)
        artifact = Artifact(
            self.job_id, name, key, stream.size, content_type, stream.digest.hexdigest(), now_ms()
        )
        self._await(self._record(artifact))
        self.made.append(artifact)
        return artifact

    async def lookup(self, name: str, *, job_id: str = "") -> Artifact:
        """An artifact of this job, or of another job of the same owner; NotFound else (an
        artifact of another owner's job reads as missing). Runs on the event loop."""
        of_job = job_id or self.job_id
        found = await self._find(self.owner, of_job, name)
        if found is None:
            raise NotFound(f"job {of_job} has no artifact {name!r}")
        return found

    def find(self, name: str, *, job_id: str = "") -> Artifact:
        """`lookup` for sync code (a handler's thread)."""
        return self._await(self.lookup(name, job_id=job_id))  # type: ignore[no-any-return]

    def open(self, name: str, *, job_id: str = "") -> contextlib.AbstractContextManager[IO[bytes]]:
        """A stream of an artifact's bytes (see `find` for which artifacts)."""
        return self.store.open(self.find(name, job_id=job_id).key)

    def read(self, name: str, *, job_id: str = "") -> bytes:
        with self.open(name, job_id=job_id) as stream:
            return stream.read()


class AsyncArtifacts:
    """The same for async handlers: each call runs the blocking transfer in a thread."""

    def __init__(self, sync: Artifacts) -> None:
        self.sync = sync

    @property
    def made(self) -> list[Artifact]:
        return self.sync.made

    async def put(self, name: str, data: Data, *, content_type: str = "") -> Artifact:
        return await asyncio.to_thread(self.sync.put, name, data, content_type=content_type)

    async def find(self, name: str, *, job_id: str = "") -> Artifact:
        return await self.sync.lookup(name, job_id=job_id)

    async def read(self, name: str, *, job_id: str = "") -> bytes:
        artifact = await self.find(name, job_id=job_id)
        return await asyncio.to_thread(self.sync.store.read, artifact.key)
