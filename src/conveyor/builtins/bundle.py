"""`files.bundle`: many stored objects into one zip artifact (the bulk-download case).

Payload:
- `files`: 1 to 10,000 entries, each one of
  - `{"key": "reports/2026/a.pdf"}`: a file of the job's owner (`files/<owner>/<key>` in the
    bucket; a key cannot leave that folder);
  - `{"job_id": "...", "artifact": "export.csv"}`: an artifact of one of the owner's jobs;
  and an optional `path`, the entry's name inside the zip (default: the key's last part, or
  the artifact's name). Paths are relative: no leading `/`, no `.` or `..` parts, no
  backslashes; two entries cannot share a path, nor can a path be another's folder.
- `name`: the artifact's name (default "bundle.zip").
- `compression`: "deflate" (default) or "store" (for contents that are compressed already).

Result: `{"artifact": name, "files": n, "bytes": zip size, "input_bytes": total}`.
Progress is by bytes copied: `"<done> of <total> bytes"`, reported about every MiB.

Every source is resolved and its size read before anything is written, so a missing file
or an artifact that is not the owner's fails the job at once (PermanentError, naming the
entry: another owner's artifact reads as missing, so a job learns nothing about it), and
the sizes give the progress total. A source that vanishes while the zip is written is
permanent too. Store errors and anything else are retried with backoff; a retry builds the
whole zip again (same name: it replaces whatever a failed attempt left).

Memory stays bounded (a few MiB plus the store's upload part, PART_SIZE) whatever the
bundle's size: a writer thread runs `zipfile` over a bounded pipe (at most PIPE_DEPTH
chunks of PIPE_CHUNK bytes in flight), copying each source in chunks, while the handler's
thread uploads what comes out of the pipe's other end. The zip is written as a stream, so
each entry carries a data descriptor and ZIP64 sizes (any entry may exceed 4 GiB); every
common unzip reads that. An error on either side ends the other: the pipe carries a
writer's error to the uploader (which aborts the upload), and a failed upload makes the
writer stop at its next chunk; the writer's error is the one the job reports.

Cancellation: `ctx.cancelled` is checked between chunks; once set, the writer stops,
nothing is stored (the upload is aborted) and the handler returns None.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conveyor.errors import InvalidArgument, NotFound
from conveyor.handlers.context import SyncJobContext
from conveyor.handlers.registry import PermanentError, handler
from conveyor.jobs.artifacts import ArtifactName, owner_file_key
from conveyor.objects import ObjectNotFound, ObjectStore

TIMEOUT_SECONDS = 3600
MAX_FILES = 10_000
MAX_PATH = 1024
PIPE_CHUNK = 1 << 20
PIPE_DEPTH = 8
COPY_CHUNK = 1 << 20
PROGRESS_BYTES = 1 << 20
RESOLVERS = 8  # sources looked up at once (each is a round trip to the store)


class _Stopped(Exception):
    """The job stops early: it was cancelled (or, in the writer, the upload gave up)."""


def relative_path(path: str) -> str:
    """`path` if it is a safe relative path inside a zip or a folder; ValueError else."""
    if not path or len(path) > MAX_PATH:
        raise ValueError(f"must be 1 to {MAX_PATH} characters")
    if path.startswith("/") or "\\" in path:
        raise ValueError("must be a relative path with '/' separators, like a/b.pdf")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError("must not have empty, '.' or '..' parts")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError("must not contain control characters")
    return path


class BundleFile(BaseModel):
    """One entry: an owner's file (`key`) or a job's artifact (`job_id` + `artifact`)."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    job_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    artifact: ArtifactName | None = None
    path: str | None = None

    @field_validator("key", "path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        return None if value is None else relative_path(value)

    @model_validator(mode="after")
    def _one_source(self) -> BundleFile:
        by_key = self.key is not None
        by_job = self.job_id is not None or self.artifact is not None
        if by_key == by_job or (by_job and (self.job_id is None or self.artifact is None)):
            raise ValueError("give `key`, or `job_id` and `artifact`")
        return self

    @property
    def zip_path(self) -> str:
        """The entry's name inside the zip."""
        if self.path is not None:
            return self.path
        if self.key is not None:
            return self.key.rsplit("/", 1)[-1]
        return self.artifact or ""


class BundlePayload(BaseModel):
    """The payload of `files.bundle` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    files: list[BundleFile] = Field(min_length=1, max_length=MAX_FILES)
    name: ArtifactName = "bundle.zip"
    compression: Literal["deflate", "store"] = "deflate"

    @field_validator("files")
    @classmethod
    def _distinct_paths(cls, files: list[BundleFile]) -> list[BundleFile]:
        """Two entries with one path (or a file where another needs a folder) would make a
        zip that unpacks to something else than was asked for."""
        seen: dict[str, int] = {}
        for index, entry in enumerate(files):
            if entry.zip_path in seen:
                raise ValueError(
                    f"files[{index}] and files[{seen[entry.zip_path]}] both have the path "
                    f"{entry.zip_path!r}; give one of them another `path`"
                )
            seen[entry.zip_path] = index
        for index, entry in enumerate(files):
            parts = entry.zip_path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder in seen:
                    raise ValueError(
                        f"files[{seen[folder]}] has the path {folder!r}, which files[{index}] "
                        "needs as a folder"
                    )
        return files


@dataclass(frozen=True, slots=True)
class Source:
    """A resolved entry: where its bytes are, how many, and its name in the zip."""

    index: int
    key: str
    size: int
    path: str
    label: str


def _resolve(ctx: SyncJobContext, index: int, entry: BundleFile) -> Source:
    """Find one entry's object and its size; a missing one is permanent, naming it."""
    if ctx.cancelled:
        raise _Stopped
    store = ctx.artifacts.store
    if entry.key is not None:
        label = f"files[{index}] (file {entry.key!r})"
        try:
            key = owner_file_key(ctx.owner, entry.key)
        except InvalidArgument:
            raise PermanentError(f"{label}: not a file path") from None
    else:
        label = f"files[{index}] (artifact {entry.artifact!r} of job {entry.job_id})"
        try:
            key = ctx.artifacts.find(entry.artifact or "", job_id=entry.job_id or "").key
        except NotFound:
            raise PermanentError(f"{label}: no such artifact") from None
    found = store.stat(key)
    if found is None:
        raise PermanentError(f"{label}: not found")
    return Source(index, key, found.size, entry.zip_path, label)


def resolve_all(ctx: SyncJobContext, files: Sequence[BundleFile]) -> list[Source]:
    """Every entry resolved, in order, a few at a time (10,000 one by one would be slow)."""
    with ThreadPoolExecutor(RESOLVERS, thread_name_prefix="bundle-resolve") as pool:
        futures = [pool.submit(_resolve, ctx, i, entry) for i, entry in enumerate(files)]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:  # after the first failure the rest are not needed
                future.cancel()


# -- the pipe between the zip writer and the upload ----------------------------------------


class _Failed:
    """What the writer sends instead of end-of-file when it failed."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class WriterFailed(OSError):
    """The upload's read side: the zip writer failed (its own error is reported instead)."""


class Pipe:
    """A bounded one-way byte pipe from one thread to another.

    The writer's bytes are gathered into chunks of `chunk` bytes and at most `depth` chunks
    wait in the queue, so memory stays bounded and a slow reader slows the writer down.
    Either side can end it: `finish()`/`fail(error)` (the writer: end of file, or an error
    the reader raises), `abort()` (the reader gave up: the writer's later writes are
    dropped at once, and it is told by `aborted` to stop).
    """

    def __init__(self, chunk: int = PIPE_CHUNK, depth: int = PIPE_DEPTH) -> None:
        self._chunk = chunk
        self._queue: queue.Queue[bytes | _Failed | None] = queue.Queue(maxsize=depth)
        self._buffer = bytearray()
        self._aborted = threading.Event()
        self._pending = memoryview(b"")
        self._ended = False  # the reader saw end of file or the failure
        self._closed = False  # the writer finished or failed: later writes are dropped

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    # the writer's side (zipfile's file object: write, flush, close)
    def write(self, data: bytes) -> int:
        if not (self.aborted or self._closed):
            self._buffer += data
            while len(self._buffer) >= self._chunk:
                self._send(bytes(self._buffer[: self._chunk]))
                del self._buffer[: self._chunk]
        return len(data)

    def flush(self) -> None:
        """Nothing to do: chunks are sent when full, the rest at `finish`."""

    def close(self) -> None:
        """zipfile never closes a file object it was given; `finish` ends the stream."""

    def finish(self) -> None:
        """End of file (once; after `fail` it does nothing)."""
        if not self._closed:
            if self._buffer:
                self._send(bytes(self._buffer))
            self._close(None)

    def fail(self, error: BaseException) -> None:
        """End with `error`, which the reader raises as WriterFailed (once)."""
        if not self._closed:
            self._close(_Failed(error))

    def _close(self, last: _Failed | None) -> None:
        self._closed = True
        self._buffer.clear()
        self._send(last)

    def _send(self, item: bytes | _Failed | None) -> None:
        """Queue an item, waiting while the queue is full, unless the reader is gone."""
        while not self.aborted:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # the reader's side
    def reader(self) -> io.BufferedReader:
        """A binary stream of what the writer writes, ending at `finish`, raising at `fail`."""
        return io.BufferedReader(_PipeReader(self), buffer_size=64 << 10)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._ended:
            item = self._queue.get()
            if isinstance(item, _Failed):
                self._ended = True
                raise WriterFailed(f"the zip writer failed: {item.error!r}")
            if item is None:
                self._ended = True
            else:
                self._pending = memoryview(item)
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def abort(self) -> None:
        """The reader stops: drop what is queued so a blocked writer wakes up and sees it."""
        self._aborted.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class _PipeReader(io.RawIOBase):
    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._pipe.readinto(buffer)


# -- the zip writer ------------------------------------------------------------------------


class _Copied:
    """Bytes copied so far, reported as progress about every PROGRESS_BYTES."""

    def __init__(self, ctx: SyncJobContext, total: int) -> None:
        self._ctx = ctx
        self.total = total
        self.done = 0
        self._next = 0

    def add(self, count: int) -> None:
        self.done += count
        if self.done >= self._next:
            self._next = self.done + PROGRESS_BYTES
            self.report()

    def report(self) -> None:
        total = max(self.total, self.done)  # a source may have grown since it was sized
        percent = 100.0 * self.done / total if total else 100.0
        self._ctx.progress(percent, f"{self.done} of {total} bytes")


class ZipWriter(threading.Thread):
    """Writes the zip of `sources` into `pipe`; its error (if any) is kept in `error`."""

    def __init__(
        self,
        ctx: SyncJobContext,
        sources: list[Source],
        pipe: Pipe,
        compression: int,
        copied: _Copied,
    ) -> None:
        super().__init__(name=f"files.bundle-writer-{ctx.job_id}", daemon=True)
        self._ctx = ctx
        self._store: ObjectStore = ctx.artifacts.store
        self._sources = sources
        self._pipe = pipe
        self._compression = compression
        self.copied = copied
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # every error must reach the reader, or it waits
            self.error = exc
            self._pipe.fail(exc)
        else:
            self._pipe.finish()

    def _write(self) -> None:
        archive = zipfile.ZipFile(self._pipe, "w", compression=self._compression)
        try:
            for source in self._sources:
                self._copy(archive, source)
        except BaseException as exc:
            self._pipe.fail(exc)  # first: the zip's closing bytes below are then dropped
            with contextlib.suppress(Exception):
                archive.close()
            raise
        archive.close()  # the central directory: what makes the stream a zip

    def _copy(self, archive: zipfile.ZipFile, source: Source) -> None:
        """One entry, copied a chunk at a time; stops at the first chunk after a cancel
        (or after the upload gave up)."""
        info = zipfile.ZipInfo(source.path, date_time=time.localtime()[:6])
        info.compress_type = self._compression
        info.external_attr = 0o644 << 16  # rw-r--r-- when unpacked
        with contextlib.ExitStack() as stack:
            try:
                stream = stack.enter_context(self._store.open(source.key))
            except ObjectNotFound:
                raise PermanentError(f"{source.label}: gone from the store") from None
            entry = stack.enter_context(archive.open(info, "w", force_zip64=True))
            while block := stream.read(COPY_CHUNK):
                if self._ctx.cancelled or self._pipe.aborted:
                    raise _Stopped
                entry.write(block)
                self.copied.add(len(block))


@handler("files.bundle", payload=BundlePayload, timeout=TIMEOUT_SECONDS)
def files_bundle(payload: BundlePayload, ctx: SyncJobContext) -> dict[str, Any] | None:
    """Zip the entries into one artifact; None if cancelled."""
    try:
        sources = resolve_all(ctx, payload.files)
    except _Stopped:
        return None
    copied = _Copied(ctx, sum(source.size for source in sources))
    copied.report()
    compression = zipfile.ZIP_DEFLATED if payload.compression == "deflate" else zipfile.ZIP_STORED
    pipe = Pipe()
    writer = ZipWriter(ctx, sources, pipe, compression, copied)
    writer.start()
    try:
        artifact = ctx.artifacts.put(payload.name, pipe.reader(), content_type="application/zip")
    except BaseException as exc:
        pipe.abort()
        writer.join()
        if isinstance(writer.error, _Stopped) and not isinstance(exc, WriterFailed):
            raise  # the upload failed first; the writer only stopped because of it
        if isinstance(writer.error, _Stopped):
            ctx.log.info("files.bundle cancelled; nothing stored")
            return None
        if writer.error is not None:
            raise writer.error from None
        raise
    writer.join()
    if writer.error is not None:  # pragma: no cover - the reader raises before EOF then
        raise writer.error
    copied.report()
    return {
        "artifact": artifact.name,
        "files": len(sources),
        "bytes": artifact.size,
        "input_bytes": copied.done,
    }
