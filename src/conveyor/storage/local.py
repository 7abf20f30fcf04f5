"""`LocalStore`: objects as files in a folder, for `conveyor dev` and single-machine use.

Writes go to a temporary file that is renamed into place, so a reader never sees half an
object. Download links are signed by `DownloadSigner` and served by the API's download
server (`conveyor.storage.downloads`); the signing key is kept in the folder itself, so
links survive a restart of the API and every process using the folder agrees on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import quote, urlencode

from conveyor.storage import PART_SIZE, ObjectNotFound, ObjectStore, StoredObject

if TYPE_CHECKING:
    from conveyor.config import Settings

KEY_FILE = ".download-key"


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
        """The file behind a key; a key that would leave the folder is not found."""
        path = (self.root / key).resolve()
        if not key or self.root not in path.parents or path.name == KEY_FILE:
            raise ObjectNotFound(key)
        return path

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
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(data, out, PART_SIZE if length < 0 else min(length, PART_SIZE))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key, path.stat().st_size, content_type)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        try:
            stream = self.path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        with stream:
            yield stream

    def stat(self, key: str) -> StoredObject | None:
        try:
            path = self.path(key)
            return StoredObject(key, path.stat().st_size) if path.is_file() else None
        except (ObjectNotFound, FileNotFoundError):
            return None

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            with contextlib.suppress(ObjectNotFound, FileNotFoundError):
                path = self.path(key)
                path.unlink()
                with contextlib.suppress(OSError):  # leave no empty job folders behind
                    path.parent.rmdir()

    def url(
        self, key: str, *, expires: timedelta, filename: str = "", content_type: str = ""
    ) -> str:
        self.path(key)
        until = int(time.time() + expires.total_seconds())
        return self.link(key, until, filename, content_type)

    def link(self, key: str, until: int, filename: str, content_type: str) -> str:
        query = self.signer.query(key, until, filename, content_type)
        return f"{self.base_url}/objects/{quote(key)}?{query}"
