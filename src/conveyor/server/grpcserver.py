"""What every Conveyor gRPC server shares: the error boundary, authentication, health,
reflection, message limits, TLS (credentials from `conveyor.tls`) and graceful shutdown on
SIGTERM/SIGINT.

Servicer methods are written as `async def Method(self, request, principal)`: the `unary` and
`streaming` decorators authenticate the call, run it, and turn a `ConveyorError` into its rich
status (anything else into a bare INTERNAL, logged with its traceback, never sent).

Servicers are added with `Server.add`, which makes request decoding tolerant: bytes that are
not a valid request reach the decorators as `Undecodable` and are answered INVALID_ARGUMENT
(grpc itself would answer UNKNOWN and log a traceback per request, so garbage would fill
the logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import signal
import socket
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from conveyor.config import Settings
from conveyor.errors import (
    ConveyorError,
    FieldViolation,
    InvalidArgument,
    Unauthenticated,
    internal_status,
    to_status,
)
from conveyor.server.auth import Authenticator, Principal, bearer_token
from conveyor.telemetry import tracing
from conveyor.tls import server_credentials

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S", bound="HasAuth")

HEALTH_PROBE_SECONDS = 1.0
# A dependency that has not answered a health check within this long counts as down: a
# database that accepts connections but never answers must not keep the last status.
HEALTH_CHECK_TIMEOUT_SECONDS = 2.0
RESPONSE_HEADROOM_BYTES = 1 << 20
# Calls that have arrived but that the server's loop has not taken up yet (see
# `server_options`), when no CONVEYOR_MAX_CONCURRENT_RPCS cap sets the figure.
PENDING_CALLS = 20_000


class CannotListen(OSError):
    """A server cannot listen on its address (in use, not this host's, not allowed).

    The message is the one line an operator needs: the address, the variable that set it
    and the reason, e.g. "cannot listen on 127.0.0.1:50052 (CONVEYOR_WORKER_ADDR): address
    already in use". `conveyor.server.service.service_main` logs it and exits 1, no traceback."""

    def __init__(self, address: str, variable: str, reason: str) -> None:
        where = f"{address} ({variable})" if variable else address
        super().__init__(f"cannot listen on {where}: {reason}")


def _tcp_address(address: str) -> tuple[str | None, int] | None:
    """(host, port) of a "host:port" or "[v6]:port" address; None for other forms (unix:)
    and for port 0, which gRPC binds anywhere."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0 or host.startswith("unix"):
        return None
    return host.strip("[]") or None, int(port)


def check_can_listen(address: str, variable: str = "", *, reuse_port: bool = False) -> None:
    """Raise `CannotListen` with the system's reason when `address` cannot be bound.

    gRPC only says "Failed to bind" (after logging a line of its own), so the address is
    tried with a plain socket first, the way gRPC binds it: SO_REUSEADDR (a port that a
    killed server left in TIME_WAIT is free at once), SO_REUSEPORT when it shares the port
    (`server_options`), every address the host resolves to, and it is enough that one of
    them binds."""
    parsed = _tcp_address(address)
    if parsed is None:
        return
    host, port = parsed
    try:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(address, variable, str(exc.strerror).lower()) from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in resolved:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                failures.append(exc)
                continue
        return
    first = failures[0] if failures else OSError(errno.EADDRNOTAVAIL, "no address")
    raise CannotListen(address, variable, (first.strerror or str(first)).lower())


class HasAuth(Protocol):
    auth: Authenticator


class Undecodable:
    """What a tolerant deserializer hands on for bytes that are not a valid request."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _refuse_undecodable(request: object) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument(
            [FieldViolation("(request)", f"not a valid protobuf message: {request.reason}")]
        )


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    parse = deserialize

    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(str(exc) or "cannot be parsed")

    return tolerant


class _TolerantRegistrar:
    """Stands in for the grpc server while a generated `add_*Servicer_to_server` registers
    a servicer, and registers its handlers with tolerant request deserializers instead."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.registered = False

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        """Ignored: the same handlers arrive through `add_registered_method_handlers`."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        safe = {
            name: handler._replace(  # type: ignore[attr-defined]
                request_deserializer=_tolerant(handler.request_deserializer)
            )
            for name, handler in handlers.items()
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, safe),))
        self.server.add_registered_method_handlers(service, safe)  # type: ignore[attr-defined]
        self.registered = True


def _status_for(exc: Exception) -> grpc.Status:
    if isinstance(exc, ConveyorError):
        return to_status(exc)
    log.exception("unhandled error in an RPC", exc_info=exc)
    return internal_status()


async def abort(context: Any, status: grpc.Status) -> None:
    """End the call with a rich status (its details travel in the trailing metadata)."""
    await context.abort(status.code, status.details, status.trailing_metadata)


def unary(
    method: Callable[[S, Req, Principal], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    @functools.wraps(method)
    async def handle(self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            _refuse_undecodable(request)
            principal = await self.auth.authenticate(context.invocation_metadata())
            return await method(self, request, principal)
        except Exception as exc:
            status = _status_for(exc)
        await abort(context, status)
        raise AssertionError("abort returned")  # pragma: no cover

    return handle


def streaming(
    method: Callable[[S, Req, Principal], AsyncIterator[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def handle(
        self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        watched = None
        try:
            _refuse_undecodable(request)
            metadata = context.invocation_metadata()
            principal = await self.auth.authenticate(metadata)
            # Revoking the key ends the stream within a second (see auth.StreamGuard).
            watched = self.auth.guard.watch(bearer_token(metadata), principal.owner)
            async for item in method(self, request, principal):
                yield item
            return
        except asyncio.CancelledError:
            if watched is None or not watched.revoked:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            status = to_status(Unauthenticated("the API key was revoked"))
        except Exception as exc:
            status = _status_for(exc)
        finally:
            if watched is not None:
                self.auth.guard.forget(watched)
        await abort(context, status)

    return handle


def server_options(
    max_message_bytes: int, *, reuse_port: bool = False, max_pending_calls: int = PENDING_CALLS
) -> list[tuple[str, Any]]:
    """`reuse_port`: share the port with the other processes of `conveyor api --processes N`
    (the kernel spreads connections over them). Off otherwise, so that a second server on a
    taken port fails to start rather than silently sharing it.

    `max_pending_calls`: how many calls gRPC core holds for the server's loop to take up.
    grpc.aio takes up one call per turn of the loop; core queues the calls that arrive
    meanwhile and, past `grpc.server.max_pending_requests` (1,000 by default), drops them
    at random, all of them past the hard limit (3,000). A dropped call ends CANCELLED at
    its client before any of Conveyor's code saw it: thousands of WatchJob streams opened
    together on a busy API lost 1,800 of 10,000 that way (issue 21; `python -m bench.floor`
    shows it on a bare server). The server serves up to `max_concurrent_rpcs` calls at
    once anyway and refuses the rest RESOURCE_EXHAUSTED, so its backlog gets the same
    bound."""
    return [
        ("grpc.server.max_pending_requests", max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", max_pending_calls),
        ("grpc.max_receive_message_length", max_message_bytes),
        # A response echoes at most a request's worth of payload plus the job fields, so
        # SubmitJobs of a request at the limit can still be answered.
        ("grpc.max_send_message_length", max_message_bytes + RESPONSE_HEADROOM_BYTES),
        ("grpc.so_reuseport", int(reuse_port)),
        # Keepalive enforcement: a client pinging more often than every 10 s without data
        # gets a strike, and after two strikes a GOAWAY, so a ping flood costs no CPU.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


HealthCheck = Callable[[], Awaitable[bool]]


class Server:
    """A grpc.aio server with health (driven by `checks`) and reflection for `service_names`.

    `conditions` are health checks reported under their own names only (e.g. whether Redis
    takes writes, `conveyor.api.pending_writes`): a degraded part the server still serves
    around, which a probe can ask about by name without it turning the server NOT_SERVING.

    With `credentials` (see `conveyor.tls.server_credentials`) the port speaks only TLS, and
    mutual TLS when they require client certificates; without, plaintext.
    """

    def __init__(
        self,
        address: str,
        *,
        service_names: Sequence[str],
        checks: Iterable[HealthCheck],
        conditions: Mapping[str, HealthCheck] | None = None,
        max_message_bytes: int,
        credentials: grpc.ServerCredentials | None = None,
        max_concurrent_rpcs: int | None = None,
        variable: str = "",
        reuse_port: bool = False,
    ) -> None:
        self.address = address
        self.reuse_port = reuse_port
        # The setting `address` came from (CONVEYOR_API_ADDR, ...), for the bind error.
        self.variable = variable
        self.credentials = credentials
        self.service_names = list(service_names)
        self.checks = list(checks)
        self.conditions = dict(conditions or {})
        # Calls beyond `max_concurrent_rpcs` are refused with RESOURCE_EXHAUSTED at once.
        self.grpc = grpc.aio.server(
            options=server_options(
                max_message_bytes,
                reuse_port=reuse_port,
                max_pending_calls=max_concurrent_rpcs or PENDING_CALLS,
            ),
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            interceptors=tracing.server_interceptors(),
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc
        )
        self.port = 0
        self._probe: asyncio.Task[None] | None = None
        self._checks_running: dict[int, asyncio.Future[bool]] = {}

    def add(self, register: Callable[[Any, Any], None], servicer: object) -> None:
        """Add `servicer` through its generated `add_*Servicer_to_server` function, with
        tolerant request decoding (see `Undecodable`)."""
        registrar = _TolerantRegistrar(self.grpc)
        register(servicer, registrar)
        if not registrar.registered:  # pragma: no cover - a grpcio codegen change
            raise RuntimeError(f"{register.__name__} registered no method handlers")

    @classmethod
    def from_settings(
        cls,
        address: str,
        settings: Settings,
        *,
        service_names: Sequence[str],
        checks: Iterable[HealthCheck],
        conditions: Mapping[str, HealthCheck] | None = None,
        variable: str = "",
        reuse_port: bool = False,
    ) -> Server:
        """A server with the limits and TLS that `settings` configure; `variable` names the
        setting `address` came from (for the one-line error when it cannot be bound)."""
        return cls(
            address,
            variable=variable,
            service_names=service_names,
            checks=checks,
            conditions=conditions,
            max_message_bytes=settings.max_message_bytes,
            credentials=server_credentials(settings),
            max_concurrent_rpcs=settings.max_concurrent_rpcs or None,
            reuse_port=reuse_port,
        )

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0). `CannotListen`
        when the address cannot be bound.

        Health says NOT_SERVING from the moment the port listens until the checks have
        passed (grpc's health servicer starts out SERVING): a load balancer or `conveyor
        dev` that sees SERVING can rely on Redis and the database having answered."""
        check_can_listen(self.address, self.variable, reuse_port=self.reuse_port)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._bind()
        await self.grpc.start()
        await self._probe_once()
        self._probe = asyncio.create_task(self._probe_loop(), name="health-probe")
        return self.port

    def _bind(self) -> int:
        try:
            if self.credentials is None:
                port = self.grpc.add_insecure_port(self.address)
            else:
                port = self.grpc.add_secure_port(self.address, self.credentials)
        except RuntimeError:  # gRPC says only "Failed to bind"
            if self.credentials is None:
                raise CannotListen(self.address, self.variable, "gRPC could not bind it") from None
            raise CannotListen(
                self.address,
                self.variable,
                "gRPC refused the certificate and key (CONVEYOR_TLS_CERT, CONVEYOR_TLS_KEY: "
                "does the key belong to the certificate?)",
            ) from None
        if port == 0:
            raise CannotListen(self.address, self.variable, "gRPC could not bind it")
        return port

    async def _probe_once(self) -> None:
        checks = [*self.checks, *self.conditions.values()]
        results = await asyncio.gather(*(self._checked(i, c) for i, c in enumerate(checks)))
        await self._set_health(_serving(all(results[: len(self.checks)])))
        for name, result in zip(self.conditions, results[len(self.checks) :], strict=True):
            await self.health.set(name, _serving(result))

    async def _checked(self, index: int, check: HealthCheck) -> bool:
        """Whether `check` passed within HEALTH_CHECK_TIMEOUT_SECONDS. A check past that
        counts as failed but is left to finish, never cancelled: cancelling a database
        call mid-flight can leave its connection inside a transaction. Until it finishes,
        no second one of it starts, and it keeps counting as failed."""
        running = self._checks_running.get(index)
        if running is None or running.done():
            running = asyncio.ensure_future(check())
            self._checks_running[index] = running
        await asyncio.wait({running}, timeout=HEALTH_CHECK_TIMEOUT_SECONDS)
        if not running.done() or running.cancelled():
            return False
        return running.exception() is None and running.result() is True

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def _probe_loop(self) -> None:
        """NOT_SERVING while a dependency (Redis, the database) cannot be reached; each
        condition under its own name."""
        while True:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            await self._probe_once()

    async def stop(self, grace: float) -> None:
        """Say NOT_SERVING first (load balancers stop sending), then finish calls in `grace`."""
        if self._probe is not None:
            self._probe.cancel()
        for running in self._checks_running.values():
            running.cancel()  # the connections are closed next anyway
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)


def _serving(ok: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return (
        health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )


class StopSignals:
    """SIGTERM and SIGINT, caught from the moment this is entered. A service enters it
    before it listens: a stop that arrives while it is still starting (a deploy rolling
    on, a test that stops what it just started) is then a graceful stop once start-up is
    done, not the default death that loses what the process had buffered."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> StopSignals:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(sig)

    async def wait(self) -> None:
        """Return on the first SIGTERM or SIGINT (at once, if one came already)."""
        await self._stop.wait()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service's async main on uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(main())
        return
    uvloop.run(main())
