"""`LocalStore`: objects as files in a folder, for `conveyor dev` and single-machine use.

Writes go to a temporary file that is renamed into place, so a reader never sees half an
object. Download links are signed by `DownloadSigner` and served by the API's download
server (`conveyor.objects.downloads`); the signing key is kept in the folder itself, so
links survive a restart of the API and every process using the folder agrees on it.

Symlinks below the folder are never followed: a key is reached one component at a time
from an open descriptor of the folder, each folder opened with `O_NOFOLLOW | O_DIRECTORY`
and the file itself with `O_NOFOLLOW` (`openat`), so a symlink anywhere in the key, even
one swapped in while the key is being opened, is refused (ObjectNotFound to a reader, an
OSError to a writer) instead of being a way to read or write another object or a file
outside the folder; a write over a symlink replaces the link, never its target. `path()`
can only check (with `lstat`), so read through `open()`, which the race-free walk serves.
The folder's own path (CONVEYOR_DATA_DIR) may go through symlinks: the operator's choice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import quote, urlencode

from conveyor.objects import PART_SIZE, ObjectNotFound, ObjectStore, StoredObject

if TYPE_CHECKING:
    from conveyor.config import Settings

KEY_FILE = ".download-key"
# How a folder of a key is opened: never through a symlink.
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# How an object is opened: never through a symlink, and never blocking on a planted FIFO.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What opening through a symlink, or a path whose folder is a file or missing, fails with.
_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


class DownloadSigner:
    """Signs and checks download links: HMAC-SHA256 over key, expiry, filename and type."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def in_folder(cls, root: Path) -> DownloadSigner:
        path = root / KEY_FILE
        if not path.exists():
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
            with contextlib.suppress(FileExistsError):  # a concurrent first start won
                os.link(path.with_suffix(".tmp"), path)
            path.with_suffix(".tmp").unlink(missing_ok=True)
        return cls(path.read_bytes())

    def signature(self, key: str, expires: int, filename: str, content_type: str) -> str:
        message = "\n".join((key, str(expires), filename, content_type)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def query(self, key: str, expires: int, filename: str, content_type: str) -> str:
        signature = self.signature(key, expires, filename, content_type)
        fields = {"expires": expires, "filename": filename, "type": content_type}
        return urlencode({**fields, "signature": signature})

    def check(
        self, key: str, expires: str, filename: str, content_type: str, signature: str
    ) -> str:
        """'' when the link is genuine and current, else why it is refused."""
        if not expires.isdigit():
            return "malformed link"
        want = self.signature(key, int(expires), filename, content_type)
        if not hmac.compare_digest(want, signature):
            return "bad signature"
        if int(expires) < time.time():
            return "link expired"
        return ""


class LocalStore(ObjectStore):
    def __init__(self, root: Path, *, base_url: str) -> None:
        self.root = root.resolve()
        self.base_url = base_url.rstrip("/")
        self.ensure_ready()
        self.signer = DownloadSigner.in_folder(self.root)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStore:
        return cls(settings.objects_dir, base_url=settings.download_base_url)

    def path(self, key: str) -> Path:
        """The file behind a key; a key that would leave the folder, or that goes through a
        symlink, is not found. A check only (a symlink swapped in afterwards is not seen):
        read through `open`."""
        parts = _parts(key)
        path = self.root
        for part in parts:
            path = path / part
            try:
                mode = path.lstat().st_mode
            except (FileNotFoundError, NotADirectoryError):
                break  # nothing further down to follow
            if stat.S_ISLNK(mode):
                raise ObjectNotFound(key)
        return path

    @contextlib.contextmanager
    def _folder(self, key: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """The open folder that holds `key`'s file, and the file's name in it, reached one
        component at a time from the root without following a symlink. Reading, a symlink
        or a missing folder is ObjectNotFound; writing (`create`), missing folders are
        made and a symlink is an OSError (ELOOP)."""
        *folders, name = _parts(key)
        fd = os.open(self.root, _FOLDER)
        try:
            for part in folders:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                try:
                    child = os.open(part, _FOLDER, dir_fd=fd)
                except OSError as exc:
                    if create and _is_symlink(part, fd):
                        raise OSError(
                            errno.ELOOP, "a symlink is in the way (never followed)", key
                        ) from None
                    if not create and exc.errno in _NOT_THERE:
                        raise ObjectNotFound(key) from None
                    raise
                os.close(fd)
                fd = child
            yield fd, name
        finally:
            os.close(fd)

    def ensure_ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def put(
        self,
        key: str,
        data: IO[bytes],
        *,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> StoredObject:
        with self._folder(key, create=True) as at:
            size = _write(at, data, PART_SIZE if length < 0 else min(length, PART_SIZE))
        return StoredObject(key, size, content_type)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        with self._folder(key) as (folder, name):
            try:
                fd = os.open(name, _READ, dir_fd=folder)
            except OSError as exc:
                if exc.errno in _NOT_THERE:
                    raise ObjectNotFound(key) from None
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a FIFO, a device
            os.close(fd)
            raise ObjectNotFound(key)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as stream:
            yield stream

    def stat(self, key: str) -> StoredObject | None:
        try:
            with self._folder(key) as (folder, name):
                found = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except (ObjectNotFound, FileNotFoundError):
            return None
        return StoredObject(key, found.st_size) if stat.S_ISREG(found.st_mode) else None

    def delete(self, keys: Iterable[str]) -> None:
        """Remove the objects (a symlink in their place is removed, never followed), and
        their folder once it is empty."""
        for key in keys:
            with contextlib.suppress(ObjectNotFound, FileNotFoundError):
                with self._folder(key) as (folder, name):
                    os.unlink(name, dir_fd=folder)
                if "/" in key:  # leave no empty job folders behind
                    folder_key = key.rsplit("/", 1)[0]
                    with self._folder(folder_key) as (parent, name), contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=parent)

    def url(
        self, key: str, *, expires: timedelta, filename: str = "", content_type: str = ""
    ) -> str:
        self.path(key)
        until = int(time.time() + expires.total_seconds())
        return self.link(key, until, filename, content_type)

    def link(self, key: str, until: int, filename: str, content_type: str) -> str:
        query = self.signer.query(key, until, filename, content_type)
        return f"{self.base_url}/objects/{quote(key)}?{query}"


def _parts(key: str) -> list[str]:
    """The key's path components; a key that could leave the folder (empty, absolute, `.`,
    `..`) or name the signing key is not found."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\0" in p for p in parts) or KEY_FILE in parts:
        raise ObjectNotFound(key)
    return parts


def _is_symlink(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _write(at: tuple[int, str], data: IO[bytes], chunk: int) -> int:
    """Copy `data` to a temporary file in the folder, then rename it to the name (a rename
    replaces a symlink there instead of following it); the bytes written."""
    folder, name = at
    temporary = f".part-{secrets.token_hex(8)}"
    fd = os.open(temporary, _WRITE, 0o600, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(data, out, chunk)
            out.flush()
            size = os.fstat(out.fileno()).st_size
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)
        raise
    return size
