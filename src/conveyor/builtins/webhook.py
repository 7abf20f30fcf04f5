"""The built-in job type `http.request`: deliver one HTTP request (a webhook) and report the answer.

Payload (checked at submit; unknown fields are refused):

    url              http:// or https:// URL, at most 2048 characters, no user:password@
    method           GET, POST (default), PUT, PATCH or DELETE
    headers          at most 50 {name: value}; names are HTTP tokens, values printable ASCII
                     (no CR/LF). Host, Content-Length, Transfer-Encoding, Idempotency-Key and
                     X-Conveyor-* are Conveyor's to set and are refused.
    json             any JSON value, sent as application/json          } at most one of
    body             text, sent as text/plain; charset=utf-8           } the two
    timeout_seconds  0 < t <= 300 (default 30): the whole attempt, from name lookup to the
                     last byte of the response read
    expect           status codes that count as success (default: any 2xx)

A Content-Type header in `headers` replaces the default one; so does User-Agent. Every request
also carries:

    X-Conveyor-Job-Id     the job id
    X-Conveyor-Attempt    1 for the first delivery, 2 for the first retry, ...
    Idempotency-Key       the job id: the same on every retry, so a receiver that has seen
                          it can answer 2xx and drop the duplicate
    User-Agent            conveyor/<version>
    X-Conveyor-Signature  t=<unix seconds>,v1=<hex HMAC-SHA256>, when the worker has
                          CONVEYOR_WEBHOOK_SECRET set (see "Verifying a delivery" below)

Result (JSON):

    {"status": 200, "headers": {"content-type": ..., "content-length": ..., "location": ...},
     "body": "<the response as text, at most 64 KiB>", "truncated": false,
     "body_bytes": 1234, "elapsed_ms": 42}

`headers` holds only those three, when the response has them. The body is decoded with the
response's charset (else UTF-8, bad bytes replaced). At most 1 MiB of the response is read:
`body_bytes` counts what was read, and `truncated` says the body did not fit in 64 KiB.

Retries (5 attempts by default, backoff from 1 s up to 60 s):
- retried (raises `WebhookRetry`): name lookup failures, refused or broken connections, TLS
  failures, timeouts, and the statuses 408, 429 and 5xx (unless listed in `expect`);
- permanent (no more attempts): any other status outside `expect`. Redirects are not
  followed: a 3xx outside `expect` is permanent, with the Location in the message; send the
  job to the final URL instead.
A retried delivery may reach the receiver twice (a timeout after the receiver acted on it):
receivers should drop repeats of an Idempotency-Key they have seen.

Private addresses: unless the worker has CONVEYOR_HTTP_ALLOW_PRIVATE=true, the host is looked
up first and the request is refused (permanently) if ANY of its addresses is loopback, private,
link-local (cloud metadata services), multicast, reserved, unspecified or otherwise not
globally routable, including IPv4 addresses embedded in IPv6 ones. The connection then goes to
an address that was checked, never to a second lookup of the name, so a DNS answer that
changes between check and connect (DNS rebinding) cannot redirect it. The Host header and, for
https, the TLS server name (SNI) and the certificate check still use the URL's host name.
Proxy variables (HTTP_PROXY, ...) are ignored, as a proxy would connect elsewhere unchecked.
TLS trusts the certifi bundle, or the SSL_CERT_FILE / SSL_CERT_DIR of the worker when set.

Verifying a delivery (the receiver's side). The signature is HMAC-SHA256, keyed with the
shared secret, of the ASCII timestamp, a dot, and the exact body bytes received:

    expected = hmac.new(secret, f"{t}.".encode() + raw_body, hashlib.sha256).hexdigest()

A receiver recomputes it over the raw body (before any JSON parsing), compares it in constant
time with each v1 value, and rejects a timestamp more than a few minutes from its own clock,
so a captured delivery cannot be replayed later. `verify_signature` here does all three:

    from conveyor.handlers.webhook import verify_signature
    if not verify_signature(secret, request.headers["X-Conveyor-Signature"], raw_body):
        return 400

Limits: HTTP/1.1 only; one request per attempt; responses over 1 MiB are cut off; a response
compressed despite `Accept-Encoding: identity` is decompressed a network chunk at a time.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import importlib.metadata
import ipaddress
import json
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from conveyor.handlers.context import JobContext
from conveyor.handlers.registry import PermanentError, handler
from conveyor.handlers.webhook import sign, verify_signature
from conveyor.jobs.retry import retry

__all__ = [
    "HttpRequestPayload",
    "WebhookRetry",
    "http_request",
    "sign",
    "verify_signature",
    "why_refused",
]

MAX_URL = 2048
MAX_HEADERS = 50
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
MAX_BODY_CHARS = 1 << 20
MAX_TIMEOUT_SECONDS = 300.0
READ_LIMIT = 1 << 20  # bytes of a response read at most
KEEP_LIMIT = 64 << 10  # bytes of a response kept in the result
SNIPPET_CHARS = 200  # of a failed response's body, in the error message
RETRY_STATUSES = frozenset({408, 429})
RESULT_HEADERS = ("content-type", "content-length", "location")
# Headers whose values Conveyor sets (or the HTTP library must compute from the body).
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "idempotency-key"})
RESERVED_PREFIX = "x-conveyor-"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The most telling name first: 169.254.169.254 is "link-local" before it is "private".
_REFUSED_KINDS = ("loopback", "link_local", "unspecified", "multicast", "reserved", "private")


def _version() -> str:
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:  # a checkout run without installing
        return "0"


USER_AGENT = f"conveyor/{_version()}"


class WebhookRetry(Exception):
    """A delivery that failed in a way a later attempt may not (network, timeout, 408/429/5xx).

    A plain exception on purpose: anything but PermanentError makes the worker retry with
    backoff, and the type tells a reader of the job's error which case it was."""


# -- the payload -------------------------------------------------------------------------------


def _field_error(
    loc: tuple[str | int, ...], kind: str, message: str, value: Any
) -> ValidationError:
    """A validation error at `loc` below the field being validated, so the API names the
    exact entry (`payload.headers.Host`) instead of the whole field."""
    error = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    return ValidationError.from_exception_data("HttpRequestPayload", [error])


def _header_problem(name: str, value: str) -> str | None:
    """What is wrong with one request header, or None."""
    if not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
        return f"header names are HTTP tokens of at most {MAX_HEADER_NAME} characters"
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIX):
        return f"{name} is set by Conveyor and cannot be given"
    if not _HEADER_VALUE.fullmatch(value) or len(value) > MAX_HEADER_VALUE:
        return f"values are printable ASCII (no CR/LF), at most {MAX_HEADER_VALUE} characters"
    return None


def _url_problem(url: httpx.URL) -> str | None:
    """What makes a parsed URL unusable for a webhook, or None."""
    if url.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    host = url.raw_host.decode("ascii", "replace")
    if not host:
        return "must name a host"
    if ":" not in host and not _HOST_NAME.fullmatch(host):
        return "the host is not a valid name or address"
    if url.userinfo:
        return "must not carry user:password@ (send credentials in a header)"
    return None


class HttpRequestPayload(BaseModel):
    """The payload of `http.request`; see the module docstring for each field."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    # `json` would shadow BaseModel.json; whether it was given at all is in model_fields_set,
    # so `"json": null` sends the JSON value null.
    json_value: JsonValue = Field(None, alias="json")
    body: str | None = Field(None, max_length=MAX_BODY_CHARS)
    timeout_seconds: float = Field(30.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    expect: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        None, min_length=1, max_length=100
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            problem = _url_problem(httpx.URL(value))
        except httpx.InvalidURL as exc:
            problem = f"not a valid URL ({exc})"
        if problem:
            raise PydanticCustomError("url", problem)
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_HEADERS:
            raise PydanticCustomError("too_many", f"at most {MAX_HEADERS} headers")
        seen: set[str] = set()
        for name, text in value.items():
            problem = _header_problem(name, text)
            if problem is None and name.lower() in seen:
                problem = "given twice (header names are case-insensitive)"
            if problem:
                raise _field_error((name,), "header", problem, text)
            seen.add(name.lower())
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestPayload:
        if "json_value" in self.model_fields_set and self.body is not None:
            raise _field_error(("body",), "one_body", "give json or body, not both", self.body)
        return self

    def content(self) -> tuple[bytes, str | None]:
        """The exact bytes to send (and sign), with their default Content-Type."""
        if "json_value" in self.model_fields_set:
            text = json.dumps(self.json_value, ensure_ascii=False, separators=(",", ":"))
            return text.encode(), "application/json"
        if self.body is not None:
            return self.body.encode(), "text/plain; charset=utf-8"
        return b"", None


# -- the address guard -------------------------------------------------------------------------


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo), if any: reaching it
    may reach that IPv4 host, so it is checked too. (NAT64's 64:ff9b::/96 is reserved.)"""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def why_refused(address: str) -> str | None:
    """Why `http.request` refuses to connect to `address` (unless private addresses are
    allowed), or None when it is a public, globally routable address."""
    ip = ipaddress.ip_address(address)
    embedded = _embedded_ipv4(ip)
    candidates: list[IPAddress] = [ip] if embedded is None else [ip, embedded]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # A mapped address is the IPv4 host itself: judge only that (Python 3.11 calls all
        # of ::ffff:0:0/96 private, which would refuse mapped public addresses too).
        candidates = [ip.ipv4_mapped]
    for candidate in candidates:
        for kind in _REFUSED_KINDS:
            if getattr(candidate, f"is_{kind}"):
                return f"{candidate} is a {kind.replace('_', '-')} address"
        if not candidate.is_global:
            return f"{candidate} is not globally routable"
    return None


async def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order, without repeats."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRetry(f"cannot resolve {host}: {exc}") from None
    addresses: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _refuse_private(host: str, addresses: list[str]) -> None:
    """PermanentError if any address of `host` is not public: one private answer is enough
    for an attacker who controls the name's DNS."""
    for address in addresses:
        why = why_refused(address)
        if why:
            raise PermanentError(
                f"refusing {host}: {why} (private addresses are allowed only with "
                "CONVEYOR_HTTP_ALLOW_PRIVATE=true on the worker)"
            )


# -- the exchange ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back, already read and bounded."""

    status: int
    headers: dict[str, str]
    body: str
    body_bytes: int
    truncated: bool
    elapsed_ms: int
    retry_after: str = ""  # kept for the error message only

    def to_result(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": self.headers,
            "body": self.body,
            "truncated": self.truncated,
            "body_bytes": self.body_bytes,
            "elapsed_ms": self.elapsed_ms,
        }

    def snippet(self) -> str:
        """The start of the body on one line, for an error message."""
        text = " ".join(self.body[: SNIPPET_CHARS * 2].split())
        return text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else "")


@functools.lru_cache(maxsize=4)
def _tls_context_for(cert_file: str, cert_dir: str) -> ssl.SSLContext:
    del cert_file, cert_dir  # the cache key: httpx reads the same variables
    return httpx.create_ssl_context(trust_env=True)


def _tls_context() -> ssl.SSLContext:
    """httpx's default trust (certifi, or SSL_CERT_FILE/SSL_CERT_DIR), built once per process
    rather than per job: loading a CA bundle costs milliseconds. Made here because the client
    runs with trust_env=False (no proxies), which would also ignore those two variables."""
    return _tls_context_for(os.environ.get("SSL_CERT_FILE", ""), os.environ.get("SSL_CERT_DIR", ""))


def _request_headers(payload: HttpRequestPayload, ctx: JobContext, body: bytes) -> dict[str, str]:
    """The user's headers, the defaults they did not replace, and Conveyor's own."""
    _, content_type = payload.content()
    given = {name.lower() for name in payload.headers}
    headers = dict(payload.headers)
    defaults = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if content_type:
        defaults["Content-Type"] = content_type
    headers.update({k: v for k, v in defaults.items() if k.lower() not in given})
    headers["X-Conveyor-Job-Id"] = ctx.job_id
    headers["X-Conveyor-Attempt"] = str(ctx.attempt)
    headers["Idempotency-Key"] = ctx.job_id
    secret = ctx.settings.webhook_secret if ctx.settings is not None else ""
    if secret:
        headers["X-Conveyor-Signature"] = sign(secret, body)
    return headers


def _decode(data: bytes, charset: str | None, complete: bool) -> str:
    """Bytes as text; a multi-byte character cut at the end of a partial body is dropped
    rather than shown as a replacement character."""
    try:
        decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(data, final=complete)


async def _read(response: httpx.Response) -> tuple[bytes, int]:
    """The first KEEP_LIMIT bytes of the body and how many were read, stopping at READ_LIMIT.

    Reading on past what is kept lets a receiver finish writing a moderate response (some
    servers log a reset connection as a failed delivery); the limit stops a huge or endless
    one from holding the job."""
    kept = bytearray()
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if len(kept) < KEEP_LIMIT:
            kept += chunk[: KEEP_LIMIT - len(kept)]
        if total >= READ_LIMIT:
            break
    return bytes(kept), total


async def _exchange(client: httpx.AsyncClient, request: httpx.Request, ctx: JobContext) -> Reply:
    """Send one request and read its response, bounded."""
    started = time.monotonic()
    ctx.progress(50, f"{request.method} sent")
    response = await client.send(request, stream=True)
    try:
        data, total = await _read(response)
    finally:
        await response.aclose()
    truncated = total > KEEP_LIMIT
    return Reply(
        status=response.status_code,
        headers={k: response.headers[k] for k in RESULT_HEADERS if k in response.headers},
        body=_decode(data, response.charset_encoding, complete=not truncated),
        body_bytes=total,
        truncated=truncated,
        elapsed_ms=round((time.monotonic() - started) * 1000),
        retry_after=response.headers.get("retry-after", "")[:SNIPPET_CHARS],
    )


def _pinned(
    client: httpx.AsyncClient,
    payload: HttpRequestPayload,
    url: httpx.URL,
    address: str,
    headers: dict[str, str],
    body: bytes,
) -> httpx.Request:
    """A request to `address` itself that still names the URL's host: in the Host header,
    and for https in the TLS server name, which the certificate is checked against."""
    host = url.raw_host.decode("ascii")
    extensions: dict[str, Any] = {}
    if url.scheme == "https" and not _is_ip(host):
        extensions["sni_hostname"] = host
    return client.build_request(
        payload.method,
        url.copy_with(host=address.partition("%")[0]),
        headers={**headers, "Host": url.netloc.decode("ascii")},
        content=body or None,
        extensions=extensions,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _deliver(
    payload: HttpRequestPayload, headers: dict[str, str], body: bytes, ctx: JobContext
) -> Reply:
    """Look the host up, check its addresses, and send to the first that accepts a
    connection (a refused connection is safe to try elsewhere: nothing was sent)."""
    url = httpx.URL(payload.url)
    host = url.raw_host.decode("ascii")
    addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
    if not (ctx.settings is not None and ctx.settings.http_allow_private):
        _refuse_private(host, addresses)
    failure: Exception | None = None
    async with httpx.AsyncClient(
        verify=_tls_context(),
        trust_env=False,
        follow_redirects=False,
        timeout=payload.timeout_seconds,
    ) as client:
        for address in addresses:
            request = _pinned(client, payload, url, address, headers, body)
            try:
                return await _exchange(client, request, ctx)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc
    raise WebhookRetry(f"cannot connect to {host} ({', '.join(addresses)}): {failure}")


def _judge(payload: HttpRequestPayload, host: str, reply: Reply) -> None:
    """Raise unless the reply counts as success: retry what may pass, refuse the rest."""
    expected = reply.status in payload.expect if payload.expect else 200 <= reply.status < 300
    if expected:
        return
    if reply.status in RETRY_STATUSES or reply.status >= 500:
        hint = f" (Retry-After: {reply.retry_after})" if reply.retry_after else ""
        raise WebhookRetry(f"HTTP {reply.status} from {host}{hint}: {reply.snippet()}")
    if 300 <= reply.status < 400:
        location = reply.headers.get("location", "")[:SNIPPET_CHARS]
        raise PermanentError(
            f"HTTP {reply.status} from {host}: redirects are not followed (Location: "
            f"{location or 'none'}); send to the final URL, or list {reply.status} in expect"
        )
    raise PermanentError(f"HTTP {reply.status} from {host}: {reply.snippet()}")


@handler(
    "http.request",
    payload=HttpRequestPayload,
    max_attempts=5,
    retry=retry(initial=1.0, maximum=60.0),
)
async def http_request(payload: HttpRequestPayload, ctx: JobContext) -> dict[str, Any]:
    """Deliver the request once; the result, WebhookRetry or PermanentError as documented
    in the module docstring."""
    body, _ = payload.content()
    headers = _request_headers(payload, ctx, body)
    host = httpx.URL(payload.url).host
    try:
        async with asyncio.timeout(payload.timeout_seconds):
            reply = await _deliver(payload, headers, body, ctx)
    except TimeoutError:
        raise WebhookRetry(f"no answer from {host} within {payload.timeout_seconds:g}s") from None
    except httpx.TimeoutException as exc:
        raise WebhookRetry(f"timed out talking to {host}: {type(exc).__name__}") from None
    except httpx.LocalProtocolError as exc:
        raise PermanentError(f"cannot send this request to {host}: {exc}") from None
    except httpx.TransportError as exc:
        raise WebhookRetry(f"delivery to {host} failed: {type(exc).__name__}: {exc}") from None
    ctx.log.info("http.request %s %s -> %d", payload.method, host, reply.status)
    _judge(payload, host, reply)
    ctx.progress(100, f"HTTP {reply.status}")
    return reply.to_result()
