"""What a call of the Python client is, apart from how it is sent (see `_client.py`).

A `Call` says everything about one unary call but the sending: the RPC, the request, how
the answer becomes what the method returns, and whether an ambiguous answer may be met by
sending the request again. A `Stream` says the same of a server stream. `AsyncClient` sends
them awaiting and `Client` blocking; neither knows any RPC by name.

The generated stubs are untyped (grpcio-tools writes no `.pyi` for them), so each `Rpc`
declares its request and answer types, checked against the service's descriptor when it
is declared: a `Call` built from it is type-checked end to end, and a wrong declaration
fails on import rather than in a caller's hands.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Service:
    """One gRPC service of the API: its descriptor and the generated stub class that sends
    its calls."""

    def __init__(self, descriptor: ServiceDescriptor, stub: Callable[[Any], Any]) -> None:
        self.descriptor = descriptor
        self.stub = stub

    def rpc(self, name: str, request: type[Req], response: type[Resp]) -> Rpc[Req, Resp]:
        """The service's RPC `name`, which takes `request` and answers `response` (one
        message, or a stream of them); TypeError if the service says otherwise."""
        method = self.descriptor.methods_by_name[name]
        declared = (request.DESCRIPTOR.full_name, response.DESCRIPTOR.full_name)
        if (method.input_type.full_name, method.output_type.full_name) != declared:
            raise TypeError(
                f"{method.full_name} takes {method.input_type.full_name} and answers"
                f" {method.output_type.full_name}, not {declared[0]} and {declared[1]}"
            )
        return Rpc(self, name, f"/{self.descriptor.full_name}/{name}")


@dataclass(frozen=True, slots=True)
class Rpc(Generic[Req, Resp]):
    """An RPC whose request and answer types `Service.rpc` checked; `call` and `stream`
    describe one use of it."""

    service: Service
    name: str
    path: str  # "/conveyor.v1.JobService/GetJob", as spans and interceptors name it

    def call(
        self, request: Req, extract: Callable[[Resp], T], *, retry_safe: bool = False
    ) -> Call[T]:
        """A unary call of this RPC that returns `extract(answer)`."""
        return Call(self, request, extract, retry_safe)

    def stream(self, request: Req) -> Stream[Resp]:
        """A server-streaming call of this RPC that yields its answers."""
        return Stream(self, request)


@dataclass(slots=True)  # not frozen: made on every call, and a frozen __init__ is ~5x slower
class Call(Generic[T]):
    """One logical unary call, as both clients make it: `rpc` with `request`, the answer
    made into what the method returns by `extract`. `retry_safe`: the same request may be
    sent again after an ambiguous answer (UNAVAILABLE, DEADLINE_EXCEEDED), as
    `SubmitRetry` allows. Made by `Rpc.call`, which types `extract` by the RPC's answer."""

    rpc: Rpc[Any, Any]
    request: Message
    extract: Callable[[Any], T]
    retry_safe: bool


@dataclass(slots=True)
class Stream(Generic[T]):
    """One server-streaming call: `rpc` with `request`, yielding every answer as it comes."""

    rpc: Rpc[Any, Any]
    request: Message


class Stubs:
    """The generated stubs of one channel, each made when its service is first called."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._stubs: dict[str, Any] = {}
        self._senders: dict[str, Any] = {}

    def sender(self, rpc: Rpc[Any, Any]) -> Any:
        """The stub's multicallable for `rpc`: untyped, as the stubs are (`Call.extract`
        gives the answer its type back)."""
        sender = self._senders.get(rpc.path)
        if sender is None:
            service = rpc.service.descriptor.full_name
            if service not in self._stubs:
                self._stubs[service] = rpc.service.stub(self._channel)
            sender = self._senders[rpc.path] = getattr(self._stubs[service], rpc.name)
        return sender


def method_of(owner: str, op: Callable[..., Any], method: F, container: Any = None) -> F:
    """`method`, which sends what `op` describes, dressed as `owner`'s method of `op`'s
    name (what `help()`, IDEs and the twin test read): `op`'s docstring, and as signature
    `self` then `op`'s parameters, returning what `op`'s call returns (or its stream
    yields, in `container`: `Iterator`, `AsyncIterator`)."""
    method.__name__ = op.__name__
    method.__qualname__ = f"{owner}.{op.__name__}"
    method.__doc__ = op.__doc__
    described = inspect.signature(op)  # parameters as written, like any method's
    (item,) = typing.get_args(inspect.get_annotations(op, eval_str=True)["return"])
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = described.replace(
        parameters=[self, *described.parameters.values()],
        return_annotation=item if container is None else container[item],
    )
    vars(method)["__signature__"] = signature  # what inspect reads first
    return method
