"""The folder store's download server (the API on CONVEYOR_DOWNLOAD_ADDR) against clients
that hold connections open, send garbage or vanish mid-answer.

Anyone who can reach the port can connect, before any signature is checked. A thousand
connections that never finish their request must not keep a signed download from being
answered at once; the server closes them after its header timeout; a connection that
misbehaves costs one structured log line, never a traceback; and past its connection cap
the server answers 503 and goes on serving, gRPC included. Against the real API process
(folder store, no S3), with raw sockets from this test process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import selectors
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conveyor.cli.dev import wait_serving
from conveyor.client import AsyncClient, JobState
from conveyor.embedded import free_port
from tests.e2e.test_jobs import watch_all
from tests.processes import Service, Stack, own_stack

HALF_OPEN = 1_000
HEADER_TIMEOUT = 4.0
BIG = 16 << 20  # larger than every socket buffer between a slow reader and the server
# A request that never ends its headers (no blank line).
PARTIAL = b"GET /objects/jobs/x/artifacts/a0.txt HTTP/1.1\r\nHost: downloads\r\n"
SERVICE_SOFT_LIMIT = 1024
TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True)
class Link:
    url: str
    size: int
    sha256: str

    def at(self, addr: str) -> Link:
        """The same signed link served by another API process (same folder, same key)."""
        parts = urlsplit(self.url)
        return Link(parts._replace(netloc=addr).geturl(), self.size, self.sha256)

    @property
    def request(self) -> bytes:
        parts = urlsplit(self.url)
        head = f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n"
        return head.encode()


@dataclass(frozen=True)
class Links:
    small: Link
    big: Link


@pytest.fixture(scope="module")
def folder_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API with the folder store, logging JSON at DEBUG (one-line records to check),
    started with the open-file limits systemd and containerd give a service: soft 1,024
    under a higher hard limit."""
    env = {
        "CONVEYOR_LOG_FORMAT": "json",
        "CONVEYOR_LOG_LEVEL": "DEBUG",
        "CONVEYOR_DOWNLOAD_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    }
    folder = tmp_path_factory.mktemp("downloads")
    with own_stack(database_url, folder, "conveyor_downloads", **env) as stack:
        with open_file_limit(SERVICE_SOFT_LIMIT):  # inherited by the API process
            stack.start("api")
        yield stack


@pytest.fixture(scope="module")
async def links(folder_stack: Stack) -> Links:
    """Two artifacts' signed links, as GetJobResult gives them to their owner."""
    worker = folder_stack.start("worker")
    key = folder_stack.create_key("alice")
    found = []
    async with AsyncClient(folder_stack.api_addr, api_key=key) as alice:
        for size in (300_000, BIG):
            job = await alice.submit("test.artifact", {"count": 1, "size": size})
            final = (await watch_all(alice, job.id))[-1].job
            assert final.state == JobState.SUCCEEDED, final.error
            (artifact,) = (await alice.result(job.id)).artifacts
            found.append(Link(artifact.url, artifact.size, artifact.sha256))
    assert worker.stop() == 0
    return Links(*found)


def api_of(stack: Stack) -> Service:
    return next(s for s in stack.services if s.name == "api")


def download(link: Link, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(link.url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def addr_of(link: Link) -> tuple[str, int]:
    parts = urlsplit(link.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def connect(addr: tuple[str, int], *, receive_buffer: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:  # before connecting, so the window offered is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect(addr)
    return sock


def open_half(addr: tuple[str, int], count: int, within: float) -> list[socket.socket]:
    """Open `count` connections at once and send each half a request; the ones the server
    accepted within `within` seconds."""
    return finish_half(flood(addr, count), within)


def flood(addr: tuple[str, int], count: int) -> list[socket.socket]:
    """Start `count` connections at once (non-blocking connects: every SYN is sent now)."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(addr)
        socks.append(sock)
    return socks


def finish_half(connecting: list[socket.socket], within: float) -> list[socket.socket]:
    """Send half a request on each connection as soon as it is established; the ones
    established within `within` seconds (the others are closed)."""
    held: list[socket.socket] = []
    with selectors.DefaultSelector() as selector:
        for sock in connecting:
            selector.register(sock, selectors.EVENT_WRITE, sock)
        deadline = time.monotonic() + within
        while len(held) < len(connecting) and (left := deadline - time.monotonic()) > 0:
            for sock in ready(selector, left):
                selector.unregister(sock)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                sock.send(PARTIAL)
                held.append(sock)
    for sock in set(connecting) - set(held):
        sock.close()
    return held


def ready(selector: selectors.BaseSelector, timeout: float) -> list[socket.socket]:
    """The sockets (registered with themselves as data) ready within `timeout` seconds."""
    return [key.data for key, _ in selector.select(timeout)]


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: what a crashed client or a middlebox does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """This process's soft open-file limit lowered to `soft` for the block (children
    started in it inherit it)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, before), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0: none came)."""
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


def raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def closed_by_server(socks: list[socket.socket], within: float) -> int:
    """Wait up to `within` seconds for the server to close each socket; how many it did."""
    closed = 0
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
        deadline = time.monotonic() + within
        while closed < len(socks) and (left := deadline - time.monotonic()) > 0:
            for sock in ready(selector, left):
                try:
                    if sock.recv(4096):
                        continue  # an answer before the close (none is expected)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    pass
                selector.unregister(sock)
                closed += 1
    return closed


def still_open(socks: list[socket.socket]) -> int:
    """How many sockets the server has neither answered nor closed, right now."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ, sock)
        return len(socks) - len(selector.select(0))


def log_records(service: Service) -> list[dict[str, object]]:
    """The service's log as JSON records (asserting every line is one)."""
    records = []
    for line in service.log.read_text(errors="replace").splitlines():
        assert TRACEBACK not in line and "BrokenPipeError" not in line, line
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def records_about(
    service: Service, sock_name: tuple[str, int], *, since: int = 0, within: float = 10.0
) -> list[dict[str, object]]:
    """The records naming the peer `sock_name` among those after the first `since`, once at
    least one was written. `since` matters on a shared server: an earlier test's thousand
    connections used most ephemeral ports, so a port named now may be named in older records."""
    peer = f"{sock_name[0]}:{sock_name[1]}"
    deadline = time.monotonic() + within
    while True:
        found = [r for r in log_records(service)[since:] if r.get("peer") == peer]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_thousand_half_open_connections_leave_a_download_answering_at_once(
    folder_stack: Stack, links: Links
) -> None:
    """Guards the slowloris: 1,000 connections that send half a request and wait held
    1,000 API threads forever, behind a listen backlog of 5 (a download made while they
    arrived waited for a SYN retry, over 1 s). Now a signed download made while the 1,000
    arrive, and another once all of them are held, are each answered with their bytes in
    under 1 s; the header timeout then closes every one; the API's log has no traceback."""
    raise_open_file_limit(HALF_OPEN + 200)
    connecting = flood(addr_of(links.small), HALF_OPEN)
    with ThreadPoolExecutor(1) as meanwhile:
        during = meanwhile.submit(timed_download, links.small)
        held = finish_half(connecting, within=5.0)
        took_during = during.result()
    try:
        took_after = timed_download(links.small)
        print(
            f"\n{HALF_OPEN} half-open connections: a signed download answered in "
            f"{took_during:.3f} s while they arrived, {took_after:.3f} s once held"
        )
        assert took_during < 1.0 and took_after < 1.0
        assert len(held) == HALF_OPEN, "every connection was accepted"
        assert still_open(held) == HALF_OPEN, "they were all held while it was answered"
        closed = closed_by_server(held, within=HEADER_TIMEOUT + 10)
        assert closed == HALF_OPEN, "the header timeout closes every half-open connection"
    finally:
        for sock in held:
            sock.close()
    log_records(api_of(folder_stack))


def timed_download(link: Link) -> float:
    """Seconds to download `link` whole (checked against its SHA-256); a short client
    timeout, so a server that cannot answer fails the test quickly."""
    started = time.monotonic()
    status, body = download(link, timeout=3.0)
    took = time.monotonic() - started
    assert status == 200 and hashlib.sha256(body).hexdigest() == link.sha256
    return took


def test_garbage_and_resets_cost_one_log_line_each(folder_stack: Stack, links: Links) -> None:
    """Guards the logging of a connection's failure: garbage bytes (a TLS hello) and an
    oversized head are answered 400/431 and closed; a client that resets before its
    request or in the middle of a 16 MB answer is dropped. Each is one JSON record naming
    the peer, never a traceback; the server goes on serving, and no link is logged."""
    addr = addr_of(links.big)
    api = api_of(folder_stack)
    before = len(log_records(api))

    garbage = connect(addr)
    garbage.sendall(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n"
    )
    assert status_of(answer_of(garbage)) == 400
    oversized = connect(addr)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        oversized.sendall(b"GET /objects/x HTTP/1.1\r\nX-Filler: " + b"a" * 100_000)
    assert status_of(answer_of(oversized)) == 431
    early = connect(addr)
    early.sendall(PARTIAL)
    midway = connect(addr)
    midway.sendall(links.big.request)
    assert status_of(midway.recv(65536)) == 200
    names = [s.getsockname() for s in (garbage, oversized, early, midway)]
    for sock in (garbage, oversized):
        sock.close()
    reset(early)
    reset(midway)

    for name in names:
        records = records_about(api, name, since=before)
        assert len(records) == 1, records
        assert records[0]["level"] in ("debug", "info"), records
    assert download(links.small)[0] == 200
    assert "signature=" not in api.log.read_text(), "a link is a secret: never logged"


def test_past_the_connection_cap_the_server_answers_503_and_keeps_serving(
    folder_stack: Stack, links: Links
) -> None:
    """Guards the connection cap (CONVEYOR_DOWNLOAD_MAX_CONNECTIONS=4): half-open
    connections past the cap are closed oldest first, so a download still gets through;
    four readers that stall a 16 MB answer hold every slot and the fifth connection gets
    503 at once, while gRPC on the same loop answers; the idle timeout then cuts the
    stalled readers off and downloads are served again; stopping the API closes the
    connections still open."""
    download_addr = f"127.0.0.1:{free_port()}"
    capped = folder_stack.start(
        "api",
        env={
            "CONVEYOR_API_ADDR": f"127.0.0.1:{free_port()}",
            "CONVEYOR_DOWNLOAD_ADDR": download_addr,
            "CONVEYOR_DOWNLOAD_MAX_CONNECTIONS": "4",
            "CONVEYOR_DOWNLOAD_IDLE_TIMEOUT_SECONDS": "2",
        },
    )
    small, big = links.small.at(download_addr), links.big.at(download_addr)
    addr = addr_of(small)
    socks: list[socket.socket] = []
    try:
        waiting = [connect(addr) for _ in range(10)]
        socks += waiting
        for sock in waiting:
            sock.sendall(PARTIAL)
        assert closed_by_server(waiting[:6], within=5) == 6, "the oldest six made room"
        status, body = download(small)
        assert status == 200 and hashlib.sha256(body).hexdigest() == small.sha256

        stalled = []
        for _ in range(4):  # each being answered before the next comes (else it is dropped)
            sock = connect(addr, receive_buffer=4096)
            socks.append(sock)
            sock.sendall(big.request)
            assert status_of(sock.recv(64)) == 200
            stalled.append(sock)
        started = time.monotonic()
        status, body = download(small)
        assert status == 503 and time.monotonic() - started < 1.0, body
        assert wait_serving(capped.addr, timeout=2, tls=False), "gRPC answers meanwhile"

        for sock in stalled:  # not read from: the server must give up on them by itself
            (record,) = records_about(capped, sock.getsockname())
            assert record["reason"] == "took nothing for 2 s", record
        status, body = download(small)
        assert status == 200 and hashlib.sha256(body).hexdigest() == small.sha256

        # A graceful stop closes the connections still open, answered or not.
        (held,) = open_half(addr, 1, within=5.0)
        reading = connect(addr, receive_buffer=4096)
        socks += [held, reading]
        reading.sendall(big.request)
        assert status_of(reading.recv(64)) == 200
        assert capped.stop() == 0
        assert closed_by_server([held, reading], within=5) == 2
    finally:
        for sock in socks:
            sock.close()
        capped.stop()
    log_records(capped)


def test_large_downloads_do_not_stall_grpc(folder_stack: Stack, links: Links) -> None:
    """Guards serving files on the API's event loop (read in a thread a chunk at a time):
    while four clients download 16 MB each, gRPC health checks to the same process are
    each answered within 250 ms."""
    api = api_of(folder_stack)
    socks = [connect(addr_of(links.big)) for _ in range(4)]
    for sock in socks:
        sock.sendall(links.big.request)
    waits: list[float] = []
    received = 0
    try:
        with (
            grpc.insecure_channel(api.addr) as channel,
            selectors.DefaultSelector() as selector,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connected
            for sock in socks:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, sock)
            while selector.get_map():
                started = time.monotonic()
                health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                waits.append(time.monotonic() - started)
                for sock in ready(selector, 1):
                    chunk = sock.recv(1 << 20)
                    received += len(chunk)
                    if not chunk:
                        selector.unregister(sock)
    finally:
        for sock in socks:
            sock.close()
    waits.sort()
    print(
        f"\n4 x 16 MB downloads: {len(waits)} health checks meanwhile, "
        f"median {waits[len(waits) // 2] * 1000:.1f} ms, slowest {waits[-1] * 1000:.1f} ms"
    )
    assert received > 4 * BIG, "every byte came"
    assert waits[-1] < 0.25
