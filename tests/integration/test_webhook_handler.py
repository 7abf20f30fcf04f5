"""The `http.request` job type against a real HTTP server on 127.0.0.1: what arrives (body,
signature, idempotency key, Host), how each outcome is classified (success, retry, permanent),
the private-address guard, bounded responses, https through a pinned address, and refusals of
bad payloads at submit. No mocks: a stdlib ThreadingHTTPServer records every request."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

import conveyor.builtins.webhook  # noqa: F401 - registers http.request
from conveyor.builtins.webhook import WebhookRetry, sign, verify_signature, why_refused
from conveyor.config import Settings
from conveyor.embedded import free_port
from conveyor.errors import InvalidArgument
from conveyor.handlers import PermanentError
from conveyor.testing import HandlerRun, run_handler

SECRET = "test-webhook-secret"
OPEN = Settings(webhook_secret=SECRET, http_allow_private=True)
GUARDED = Settings(webhook_secret=SECRET, http_allow_private=False)
BIG = 2 << 20  # bytes the /big route answers with: more than the handler reads
SITE = "https://example.com/"  # only in payloads refused before anything connects


@dataclass(frozen=True)
class Seen:
    """One request as the receiver got it."""

    method: str
    path: str
    headers: Message[str, str]
    body: bytes


class Receiver:
    """A webhook receiver on 127.0.0.1 that records requests and answers by path:
    `/status/<code>`, `/slow` (waits for `release`), `/big` (2 MiB), else 200 with JSON."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Seen] = []
        self.release = threading.Event()
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append(Seen(self.command, self.path, self.headers, body))
                receiver.answer(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test output is for failures."""

        return Handler

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            extra = {"Location": "/moved"} if 300 <= code < 400 else {"Retry-After": "7"}
            _respond(request, code, f"status {code} body".encode(), "text/plain", extra)
        elif path == "/slow":
            self.release.wait(10)
            _respond(request, 200, b"late", "text/plain")
        elif path == "/big":
            _respond(request, 200, b"x" * BIG, "text/plain; charset=utf-8")
        else:
            answer = json.dumps({"received": len(self.requests)}).encode()
            _respond(request, 200, answer, "application/json")


def _respond(
    request: BaseHTTPRequestHandler,
    code: int,
    body: bytes,
    content_type: str,
    extra: dict[str, str] | None = None,
) -> None:
    try:
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client stopped reading (the /big route) or gave up (/slow)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    yield server
    server.stop()


def deliver(
    payload: dict[str, Any], tmp_path: Path, settings: Settings = OPEN, attempt: int = 1
) -> HandlerRun:
    return run_handler(
        "http.request", payload, settings=settings, attempt=attempt, objects=tmp_path
    )


def test_a_json_post_arrives_signed_with_the_job_id_as_idempotency_key(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The receiver gets the exact JSON bytes, a signature over them that verifies, the job id
    as Idempotency-Key (stable across retries) and the attempt; the result is JSON-safe."""
    document = {"event": "order.paid", "amount": 12.5, "tags": ["a", "ü"]}
    run = deliver(
        {"url": receiver.url(), "json": document, "headers": {"X-Tenant": "acme"}},
        tmp_path,
        attempt=2,
    )
    [seen] = receiver.requests
    assert seen.method == "POST" and seen.path == "/hook"
    assert json.loads(seen.body) == document
    assert seen.headers["Content-Type"] == "application/json"
    assert verify_signature(SECRET, seen.headers["X-Conveyor-Signature"], seen.body)
    assert seen.headers["Idempotency-Key"] == run.job_id
    assert seen.headers["X-Conveyor-Job-Id"] == run.job_id
    assert seen.headers["X-Conveyor-Attempt"] == "2"
    assert seen.headers["User-Agent"].startswith("conveyor/")
    assert seen.headers["X-Tenant"] == "acme"
    assert run.result["status"] == 200
    assert json.loads(run.result["body"]) == {"received": 1}
    assert run.result["headers"]["content-type"] == "application/json"
    assert run.result["truncated"] is False
    assert json.loads(json.dumps(run.result)) == run.result
    assert [p for p, _ in run.progress] == [50, 100]


def test_a_text_body_and_no_secret_means_no_signature(receiver: Receiver, tmp_path: Path) -> None:
    """`body` is sent as UTF-8 text with the method asked for; without a configured secret no
    signature header is sent (rather than one made with an empty key)."""
    settings = Settings(http_allow_private=True)
    run = deliver({"url": receiver.url(), "method": "PUT", "body": "héllo"}, tmp_path, settings)
    [seen] = receiver.requests
    assert (seen.method, seen.body) == ("PUT", "héllo".encode())
    assert seen.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "X-Conveyor-Signature" not in seen.headers
    assert run.result["status"] == 200


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (503, WebhookRetry, "HTTP 503"),
        (500, WebhookRetry, "status 500 body"),
        (429, WebhookRetry, "Retry-After: 7"),
        (408, WebhookRetry, "HTTP 408"),
        (404, PermanentError, "status 404 body"),
        (400, PermanentError, "HTTP 400"),
        (302, PermanentError, "redirects are not followed"),
    ],
)
def test_statuses_outside_expect_are_retried_or_permanent(
    receiver: Receiver, tmp_path: Path, status: int, error: type[Exception], words: str
) -> None:
    """408, 429 and 5xx may pass later, so they are retried; any other refusal is permanent,
    and a redirect is not followed (the receiver sees one request, never /moved)."""
    with pytest.raises(error) as failure:
        deliver({"url": receiver.url(f"/status/{status}")}, tmp_path)
    assert words in str(failure.value)
    assert [seen.path for seen in receiver.requests] == [f"/status/{status}"]


def test_expect_replaces_the_2xx_rule(receiver: Receiver, tmp_path: Path) -> None:
    """Listed statuses are success (a 302 kept as a result with its Location); an unlisted
    200 then is not."""
    run = deliver({"url": receiver.url("/status/302"), "expect": [302]}, tmp_path)
    assert run.result["status"] == 302
    assert run.result["headers"]["location"] == "/moved"
    with pytest.raises(PermanentError, match="HTTP 200"):
        deliver({"url": receiver.url(), "expect": [201, 204]}, tmp_path)


def test_a_server_slower_than_the_timeout_is_retried(receiver: Receiver, tmp_path: Path) -> None:
    """A receiver that does not answer within timeout_seconds costs one attempt, not the job:
    the attempt ends at the deadline with a retryable error."""
    started = time.monotonic()
    with pytest.raises(WebhookRetry):
        deliver({"url": receiver.url("/slow"), "timeout_seconds": 0.3}, tmp_path)
    assert time.monotonic() - started < 5
    assert [seen.path for seen in receiver.requests] == ["/slow"]


def test_a_refused_connection_is_retried(tmp_path: Path) -> None:
    """Nothing listening (a receiver being deployed) is a network error: retried."""
    with pytest.raises(WebhookRetry, match="cannot connect"):
        deliver({"url": f"http://127.0.0.1:{free_port()}/hook"}, tmp_path)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "[::1]"])
def test_private_addresses_are_refused_before_connecting(
    receiver: Receiver, tmp_path: Path, host: str
) -> None:
    """Without http_allow_private, a URL whose host is or resolves to loopback (a literal, a
    name, a decimal spelling) is a permanent refusal, and no request reaches the server."""
    with pytest.raises(PermanentError, match="loopback"):
        deliver({"url": receiver.url(host=host)}, tmp_path, GUARDED)
    assert receiver.requests == []


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "240.0.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
     "::ffff:10.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::1"],
)  # fmt: skip
def test_every_non_public_range_is_refused(address: str) -> None:
    """The guard covers private, link-local (cloud metadata), shared, unspecified, multicast,
    reserved and IPv4-in-IPv6 spellings of them (checked without connecting anywhere)."""
    assert why_refused(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass_the_guard(address: str) -> None:
    """The guard is not a blanket refusal: public addresses, mapped ones too, pass."""
    assert why_refused(address) is None


def test_a_name_keeps_its_host_header_on_the_checked_address(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The connection goes to an address resolved (and checked) beforehand, not to a second
    lookup of the name, yet the receiver still sees the name in the Host header."""
    run = deliver({"url": receiver.url(host="localhost"), "method": "GET"}, tmp_path)
    [seen] = receiver.requests
    assert seen.headers["Host"] == f"localhost:{receiver.port}"
    assert seen.method == "GET" and seen.body == b""
    assert run.result["status"] == 200


def test_https_to_a_pinned_address_checks_the_name_in_the_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With https the pinned connection sends the URL's name as SNI and verifies the
    certificate against it (trusting SSL_CERT_FILE's CA), so pinning does not weaken TLS."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(tls)
    names: list[str | None] = []
    tls.sni_callback = lambda sock, name, context: names.append(name)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = Receiver(tls)
    server.start()
    try:
        run = deliver({"url": server.url(host="localhost"), "json": [1, 2]}, tmp_path)
    finally:
        server.stop()
    assert run.result["status"] == 200
    assert "localhost" in names
    assert [json.loads(seen.body) for seen in server.requests] == [[1, 2]]


def test_a_huge_response_is_cut_off_and_marked_truncated(
    receiver: Receiver, tmp_path: Path
) -> None:
    """A 2 MiB answer neither fills memory nor the result: at most 1 MiB is read and 64 KiB
    kept, flagged as truncated."""
    run = deliver({"url": receiver.url("/big"), "method": "GET"}, tmp_path)
    assert run.result["body"] == "x" * (64 << 10)
    assert run.result["truncated"] is True
    assert (64 << 10) < run.result["body_bytes"] <= (1 << 20) + (64 << 10)
    assert run.result["headers"]["content-length"] == str(BIG)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"url": "ftp://example.com/x"}, "payload.url"),
        ({"url": "http://user:pw@example.com/"}, "payload.url"),
        ({"url": SITE + "a" * 2048}, "payload.url"),
        ({"url": SITE, "json": {}, "body": "x"}, "payload.body"),
        ({"url": SITE, "headers": {"X-A": "a\r\nX-Evil: 1"}}, "payload.headers.X-A"),
        ({"url": SITE, "headers": {"Bad Name": "v"}}, "payload.headers.Bad Name"),
        ({"url": SITE, "headers": {"host": "evil"}}, "payload.headers.host"),
        ({"url": SITE, "headers": {"X-Conveyor-Job-Id": "x"}},
         "payload.headers.X-Conveyor-Job-Id"),
        ({"url": SITE, "headers": {f"X-{i}": "v" for i in range(51)}},
         "payload.headers"),
        ({"url": SITE, "timeout_seconds": 0}, "payload.timeout_seconds"),
        ({"url": SITE, "timeout_seconds": 301}, "payload.timeout_seconds"),
        ({"url": SITE, "method": "TRACE"}, "payload.method"),
        ({"url": SITE, "expect": [200, 99]}, "payload.expect[1]"),
        ({"url": SITE, "retries": 3}, "payload.retries"),
    ],
)  # fmt: skip
def test_bad_payloads_are_refused_with_the_field_named(
    tmp_path: Path, payload: dict[str, Any], field: str
) -> None:
    """What the API refuses at submit: each bad payload is InvalidArgument naming the field
    (or header) at fault, before the handler runs (example.com is never contacted)."""
    with pytest.raises(InvalidArgument) as refusal:
        deliver(payload, tmp_path)
    assert field in [violation.field for violation in refusal.value.violations]


def test_verify_signature_rejects_tampering_wrong_keys_and_old_timestamps() -> None:
    """What a receiver relies on: only the exact body, signed with its secret, recently."""
    body = b'{"event":"order.paid"}'
    header = sign(SECRET, body)
    assert verify_signature(SECRET, header, body)
    assert not verify_signature(SECRET, header, body + b" ")
    assert not verify_signature("another-secret", header, body)
    assert not verify_signature("", header, body)
    old = sign(SECRET, body, timestamp=int(time.time()) - 3600)
    assert not verify_signature(SECRET, old, body)
    assert verify_signature(SECRET, old, body, tolerance_seconds=7200)
    future = sign(SECRET, body, timestamp=int(time.time()) + 3600)
    assert not verify_signature(SECRET, future, body)
    for broken in ("", "v1=abc", "t=12", "t=x,v1=" + header.split("v1=")[1]):
        assert not verify_signature(SECRET, broken, body)
    timestamp, mac = header.split(",")
    rotated = f"{timestamp},v1={'0' * 64},{mac}"  # an old key's MAC, then the current one
    assert verify_signature(SECRET, rotated, body)
