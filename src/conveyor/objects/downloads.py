"""The download server for `LocalStore` links (dev mode and single-machine installs).

S3 serves its own presigned URLs; a folder cannot, so the API serves them itself, on its
own event loop beside gRPC. It answers GET and HEAD for
`/objects/<key>?expires=…&filename=…&type=…&signature=…`, streams the file, and refuses
(403) a link that is expired or whose signature does not match: the same promise as S3's.
HTTP/1.1 is parsed by `h11`; one request per connection (`Connection: close`).

Anyone who can reach the port can open connections before any signature is checked, so
every connection is bounded (the thread server this replaces held a thread per connection
for as long as the client liked, behind a listen backlog of 5):

- **Header timeout.** The request line and headers must arrive within `header_timeout`
  seconds of the connection, and be at most 16 KiB (h11's limit; 431 past it). A client
  that dribbles them, or sends none, is closed.
- **Idle timeout.** An answer must keep moving: a reader that takes nothing for
  `idle_timeout` seconds is cut off.
- **Connection cap.** At most `max_connections` are open. Past it, the connection that has
  waited longest for its headers is closed to make room (a slowloris cannot crowd out a
  real download); when every slot is serving an answer, the newcomer gets 503 at once.
  The process's soft open-file limit is raised to fit the cap when the hard limit allows.
- **Listen backlog** of 1,024 (the kernel caps it at `net.core.somaxconn`).

A connection's failure (a timeout, a reset, garbage, a broken pipe) is one debug line
through the structured logger naming the peer, never a traceback; files are read in a
thread a chunk at a time, so a large download never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlsplit

import h11

from conveyor.objects import ObjectNotFound
from conveyor.objects.local import LocalStore

if TYPE_CHECKING:
    from conveyor.config import Settings

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # read from the file (in a thread) and written per step
RECEIVE = 16 * 1024
MAX_HEAD = 16 * 1024  # request line and headers; h11 answers 431 past it
BACKLOG = 1024
FD_HEADROOM = 256  # open files the rest of the process may need beside the connections
WARN_EVERY = 60.0  # seconds between warnings that the cap was reached
LINGER = 1.0  # seconds to wait for the client to close after the answer (see _close)
MAX_REFUSING = 64  # 503s in flight past the cap; beyond them a newcomer is closed at once
SERVER = "conveyor-downloads"
MAX_REASON = 200  # characters of a dropped connection's reason (h11 quotes what it got)


class _Dropped(Exception):
    """The connection ends without an answer (for the log line's reason)."""


@dataclass
class _Answer:
    """What to send: a status with a short text, or a file."""

    status: int
    text: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    stream: IO[bytes] | None = None
    size: int = 0


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    task: asyncio.Task[None]
    parser: h11.Connection
    # Set when the server ends the connection itself (cap or shutdown): the log's reason.
    ended: str = ""


class DownloadServer:
    """Serves a LocalStore's signed links on `addr` ("host:port"; port 0: any free one).

    `await start()` binds and serves on the running loop; `await stop()` closes the
    listening socket and every open connection."""

    def __init__(
        self,
        store: LocalStore,
        addr: str,
        *,
        header_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        max_connections: int = 2048,
    ) -> None:
        host, _, port = addr.rpartition(":")
        self.store = store
        self.host = host or "127.0.0.1"
        self.requested_port = int(port)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._live: set[_Connection] = set()  # every connection, for stop()
        self._open: set[_Connection] = set()  # the ones counted against the cap
        # Connections still reading their request, oldest first (the ones to drop at the cap).
        self._waiting: dict[_Connection, None] = {}
        self._refusing = 0
        self._warned = -WARN_EVERY

    @classmethod
    def from_settings(cls, store: LocalStore, settings: Settings) -> DownloadServer:
        return cls(
            store,
            settings.download_addr,
            header_timeout=settings.download_header_timeout_seconds,
            idle_timeout=settings.download_idle_timeout_seconds,
            max_connections=settings.download_max_connections,
        )

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> int:
        """Listen and serve; the port. OSError when the address is taken."""
        self.max_connections = fit_open_files(self.max_connections)
        self._server = await asyncio.start_server(
            self._connected, self.host, self.requested_port, backlog=BACKLOG
        )
        log.info("artifact downloads on port %d", self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is None:
            return
        self._server.close()
        live = list(self._live)
        for conn in live:
            conn.ended = "server stopping"
            conn.task.cancel()
        await asyncio.gather(*(c.task for c in live), return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(
            reader, writer, _peer(writer), task, h11.Connection(h11.SERVER, MAX_HEAD)
        )
        self._live.add(conn)
        try:
            if self._make_room():
                await self._serve_counted(conn)
            else:
                await self._refuse_busy(conn)
        except asyncio.CancelledError:
            if not conn.ended:
                raise
            _dropped(conn, conn.ended)
        except (_Dropped, TimeoutError, OSError, h11.ProtocolError) as exc:
            _dropped(conn, _reason(exc))
        except Exception:
            log.error("download failed", extra={"peer": conn.peer}, exc_info=True)
        finally:
            self._live.discard(conn)
            writer.transport.abort()  # a no-op once closed; else what a failure left open

    async def _serve_counted(self, conn: _Connection) -> None:
        self._open.add(conn)
        self._waiting[conn] = None
        try:
            await self._serve(conn)
        finally:
            self._open.discard(conn)
            self._waiting.pop(conn, None)

    def _make_room(self) -> bool:
        """True when a new connection may be served: below the cap, or after dropping the
        connection that has waited longest for its headers."""
        if len(self._open) < self.max_connections:
            return True
        self._warn_full()
        if not self._waiting:
            return False
        oldest = next(iter(self._waiting))
        del self._waiting[oldest]
        self._open.discard(oldest)  # its slot is the newcomer's from now on
        oldest.ended = "dropped for a newer connection: connection cap reached"
        oldest.task.cancel()
        return True

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "download connections at their cap (%d): dropping those still sending their "
                "request, refusing the rest with 503",
                self.max_connections,
            )

    async def _refuse_busy(self, conn: _Connection) -> None:
        """503 at once, without waiting for the request. At most MAX_REFUSING of these
        linger (see `_close`); past them the newcomer is closed without a word."""
        if self._refusing >= MAX_REFUSING:
            raise _Dropped("closed at once: every connection slot is serving an answer")
        self._refusing += 1
        try:
            await self._send(conn, _Answer(503, "too many connections"), body=True)
            await self._close(conn)
        finally:
            self._refusing -= 1
        _dropped(conn, "refused (503): every connection slot is serving an answer")

    async def _serve(self, conn: _Connection) -> None:
        try:
            async with asyncio.timeout(self.header_timeout):
                request = await self._request(conn)
        except TimeoutError:
            raise _Dropped(f"no complete request within {self.header_timeout:g} s") from None
        except h11.RemoteProtocolError as exc:
            if conn.reader.at_eof():
                raise _Dropped("closed in the middle of its request") from None
            status = exc.error_status_hint
            await self._send(conn, _Answer(status, http.HTTPStatus(status).phrase.lower()), True)
            await self._close(conn)
            raise
        self._waiting.pop(conn, None)
        answer = await self._answer(request)
        try:
            await self._send(conn, answer, body=request.method != b"HEAD")
        finally:
            if answer.stream is not None:
                answer.stream.close()
        log.debug(
            "download answered",
            # The path only: the query's signature is as good as the link to whoever reads logs.
            extra={
                "peer": conn.peer,
                "status": answer.status,
                "path": urlsplit(_target(request)).path,
            },
        )
        await self._close(conn)

    async def _close(self, conn: _Connection) -> None:
        """End the connection without losing the answer's tail: send FIN, then read (and
        drop) what the client still sends until it closes too, for up to LINGER seconds.
        Closing with its bytes unread would reset the connection, and a reset can discard
        the answer before the client has read it. The answer was sent: a client that
        resets now is not worth a log line."""
        with contextlib.suppress(OSError):
            if conn.writer.can_write_eof():
                conn.writer.write_eof()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER):
                    while await conn.reader.read(RECEIVE):
                        pass
            conn.writer.close()  # sends what is still buffered first
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_timeout):
                    await conn.writer.wait_closed()

    async def _request(self, conn: _Connection) -> h11.Request:
        while True:
            event = conn.parser.next_event()
            if event is h11.NEED_DATA:
                conn.parser.receive_data(await conn.reader.read(RECEIVE))
            elif isinstance(event, h11.Request):
                return event
            else:  # ConnectionClosed: nothing else comes before a request
                raise _Dropped("closed before sending a request")

    async def _answer(self, request: h11.Request) -> _Answer:
        if request.method not in (b"GET", b"HEAD"):
            return _Answer(405, "method not allowed", (("Allow", "GET, HEAD"),))
        parts = urlsplit(_target(request))
        if not parts.path.startswith("/objects/"):
            return _Answer(404, "not found")
        key = unquote(parts.path.removeprefix("/objects/"))
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        filename, content_type = query.get("filename", ""), query.get("type", "")
        why = self.store.signer.check(
            key, query.get("expires", ""), filename, content_type, query.get("signature", "")
        )
        if why:
            return _Answer(403, why)
        try:
            stream, size = await asyncio.to_thread(self._open_object, key)
        except (ObjectNotFound, OSError):
            return _Answer(404, "no such object")
        headers = [("Content-Type", content_type or "application/octet-stream")]
        if filename:
            headers.append(
                ("Content-Disposition", f"attachment; filename*=UTF-8''{quote(filename)}")
            )
        return _Answer(200, headers=tuple(headers), stream=stream, size=size)

    def _open_object(self, key: str) -> tuple[IO[bytes], int]:
        stream = self.store.path(key).open("rb")
        return stream, os.fstat(stream.fileno()).st_size

    async def _send(self, conn: _Connection, answer: _Answer, body: bool) -> None:
        if answer.stream is None:
            for data in _head_and_text(conn.parser, answer, body=body):
                await self._write(conn, data)
            return
        headers = [*_common(answer.size), *answer.headers]
        await self._write(conn, conn.parser.send(_response(answer.status, headers)))
        while body and (chunk := await asyncio.to_thread(answer.stream.read, CHUNK)):
            await self._write(conn, conn.parser.send(h11.Data(data=chunk)))
        await self._write(conn, conn.parser.send(h11.EndOfMessage()))

    async def _write(self, conn: _Connection, data: bytes | None) -> None:
        """Write and wait until the client takes it, for at most the idle timeout."""
        if conn.writer.transport.is_closing():
            # The peer went away (uvloop refuses writes then): drain says why.
            await conn.writer.drain()
            raise ConnectionResetError("connection lost")
        if data:
            conn.writer.write(data)
        try:
            async with asyncio.timeout(self.idle_timeout):
                await conn.writer.drain()
        except TimeoutError:
            raise _Dropped(f"took nothing for {self.idle_timeout:g} s") from None


def _head_and_text(conn: h11.Connection, answer: _Answer, *, body: bool) -> list[bytes | None]:
    data = (answer.text + "\n").encode()
    headers = [
        *_common(len(data)),
        ("Content-Type", "text/plain; charset=utf-8"),
        *answer.headers,
    ]
    sent: list[bytes | None] = [conn.send(_response(answer.status, headers))]
    if body:
        sent.append(conn.send(h11.Data(data=data)))
    sent.append(conn.send(h11.EndOfMessage()))
    return sent


def _common(length: int) -> list[tuple[str, str]]:
    return [("Server", SERVER), ("Connection", "close"), ("Content-Length", str(length))]


def _response(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    return h11.Response(
        status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase.encode()
    )


def _target(request: h11.Request) -> str:
    return request.target.decode("iso-8859-1")


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, h11.RemoteProtocolError):
        return f"bad request ({exc.error_status_hint}): {exc}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def _dropped(conn: _Connection, reason: str) -> None:
    reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "…"
    log.debug("download connection dropped", extra={"peer": conn.peer, "reason": reason})


def fit_open_files(wanted: int) -> int:
    """How many connections this process can hold: raises the soft open-file limit to fit
    `wanted` when the hard limit allows (systemd and containerd give services a soft limit
    of 1,024 under a much higher hard one), else lowers the cap to what fits."""
    if sys.platform == "win32":
        return wanted
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_HEADROOM
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        log.info("open-file limit raised from %d to %d for download connections", soft, raised)
        soft = raised
    if soft >= needed:
        return wanted
    fits = max(1, soft - FD_HEADROOM)
    log.warning(
        "open-file limit %d holds %d download connections, "
        "not CONVEYOR_DOWNLOAD_MAX_CONNECTIONS=%d",
        soft,
        fits,
        wanted,
    )
    return fits
