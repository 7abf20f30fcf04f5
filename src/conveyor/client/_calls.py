"""What a call of the Python client is, apart from how it is sent (see `_client.py`).

A `Call` says everything about one unary call but the sending: the RPC, the request, how
the answer becomes what the method returns, and whether an ambiguous answer may be met by
sending the request again. A `Stream` says the same of a server stream. `AsyncClient` sends
them awaiting and `Client` blocking; neither knows any RPC by name.

A `Call` may also say how calls of its RPC merge into one call of another (`Merge`):
concurrent submits then go as one SubmitJobs of per-item results, sent by the drivers
through a `Coalescer` (below), which both share.

The generated stubs are untyped (grpcio-tools writes no `.pyi` for them), so each `Rpc`
declares its request and answer types, checked against the service's descriptor when it
is declared: a `Call` built from it is type-checked end to end, and a wrong declaration
fails on import rather than in a caller's hands.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from conveyor.errors import ConveyorError

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
        self,
        request: Req,
        extract: Callable[[Resp], T],
        *,
        retry_safe: bool = False,
        merge: Merge[Req, Resp] | None = None,
    ) -> Call[T]:
        """A unary call of this RPC that returns `extract(answer)`; `merge`: how concurrent
        calls of it may go as one."""
        return Call(self, request, extract, retry_safe, merge)

    def stream(self, request: Req, extract: Callable[[Resp], T]) -> Stream[T]:
        """A server-streaming call of this RPC that yields `extract(answer)` of each."""
        return Stream(self, request, extract)


@dataclass(slots=True)  # not frozen: made on every call, and a frozen __init__ is ~5x slower
class Call(Generic[T]):
    """One logical unary call, as both clients make it: `rpc` with `request`, the answer
    made into what the method returns by `extract`. `retry_safe`: the same request may be
    sent again after an ambiguous answer (UNAVAILABLE, DEADLINE_EXCEEDED), as
    `SubmitRetry` allows. `merge`: how concurrent calls of `rpc` may be sent as one (None:
    never). Made by `Rpc.call`, which types `extract` by the RPC's answer."""

    rpc: Rpc[Any, Any]
    request: Message
    extract: Callable[[Any], T]
    retry_safe: bool
    merge: Merge[Any, Any] | None = None


@dataclass(frozen=True, slots=True)
class Merge(Generic[Req, Resp]):
    """How calls of one RPC (requests `Req`, answers `Resp`) go as one call of `rpc`:
    `request` makes its request of theirs (at most `max_items` of them), and `split`
    answers each of them as its own call would have: the `Resp` it would get, or the
    ConveyorError it would raise."""

    rpc: Rpc[Any, Any]
    request: Callable[[list[Req]], Message]
    split: Callable[[Any, list[Req]], list[Resp | ConveyorError]]
    max_items: int


@dataclass(slots=True)
class Stream(Generic[T]):
    """One server-streaming call: `rpc` with `request`, yielding every answer as it comes,
    made into what the method yields by `extract`."""

    rpc: Rpc[Any, Any]
    request: Message
    extract: Callable[[Any], T]


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


# -- coalescing: concurrent calls of one RPC sent as one ---------------------------------


class Waiter(Protocol):
    """Where a caller waits for its answer: an `asyncio.Future` (AsyncClient) or a
    `concurrent.futures.Future` (Client), which share these methods."""

    def done(self) -> bool: ...
    def cancel(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(slots=True)
class Waiting:
    """One caller's try waiting to be sent: its call, when its try times out (monotonic
    seconds) and where it waits for the answer."""

    call: Call[Any]
    deadline: float
    waiter: Waiter


class Batch:
    """Tries sent as one call: alone, their own call (the caller gets exactly what a lone
    call would); several, one call of their `Merge`'s RPC, its answer split among them."""

    def __init__(self, items: list[Waiting]) -> None:
        self.items = items
        self.merge = items[0].call.merge

    @property
    def rpc(self) -> Rpc[Any, Any]:
        if len(self.items) == 1 or self.merge is None:
            return self.items[0].call.rpc
        return self.merge.rpc

    def request(self) -> Message:
        if len(self.items) == 1 or self.merge is None:
            return self.items[0].call.request
        return self.merge.request([item.call.request for item in self.items])

    def timeout(self) -> float:
        """What remains of the earliest deadline among the tries: no caller waits longer
        than its own timeout says."""
        return max(min(item.deadline for item in self.items) - time.monotonic(), 0.001)

    def settle(self, answer: Any) -> None:
        """Hand each caller its share of the answer: its own answer, or its error."""
        if len(self.items) == 1 or self.merge is None:
            shares: list[Any] = [answer]
        else:
            shares = self.merge.split(answer, [item.call.request for item in self.items])
        for item, share in zip(self.items, shares, strict=True):
            if item.waiter.done():  # the caller left
                continue
            if isinstance(share, ConveyorError):
                item.waiter.set_exception(share)
            else:
                item.waiter.set_result(share)

    def fail(self, error: BaseException) -> None:
        """The call failed as a whole: every caller gets its error (a `grpc.RpcError`,
        which each caller's own retry policy then judges)."""
        for item in self.items:
            if item.waiter.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                item.waiter.cancel()
            else:
                item.waiter.set_exception(error)


class Coalescer:
    """Group commit for a client's calls, with no timer (`conveyor.batching` on the server
    side is the same idea): while fewer than `slots` calls are in flight, a caller sends its
    own call at once, so a lone caller waits exactly as long as without coalescing; while
    they are all in flight, callers queue, and when one ends, everything queued goes as the
    next call (`Batch`), up to the merge's `max_items` and about `max_bytes` of requests.

    The drivers send the batches: the caller that found a free slot sends its own call in
    its own task (or thread); a queued batch is sent in a task (or on the channel's
    callback) of its own, never in one caller's, so that a caller cancelled while its try
    waits or flies takes no one else's with it. Thread-safe: `Client` calls it from many
    threads, and completes calls on gRPC's."""

    def __init__(self, slots: int, max_bytes: int) -> None:
        self.slots = slots
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._flying = 0
        self._queue: deque[Waiting] = deque()

    def enter(self, item: Waiting) -> bool:
        """True: a slot was free and is now the caller's, to send its own call in (then
        `leave` when it ends); False: the try is queued, and its waiter will get the answer."""
        with self._lock:
            if self._flying < self.slots:
                self._flying += 1
                return True
            self._queue.append(item)
            return False

    def leave(self) -> Batch | None:
        """A call ended: its slot goes to what queued meanwhile, as the batch to send now
        (None: nothing waits, and the slot is free)."""
        with self._lock:
            items = self._take()
            if not items:
                self._flying -= 1
                return None
            return Batch(items)

    def _take(self) -> list[Waiting]:
        """The next batch from the queue, in order, without callers that left meanwhile."""
        items: list[Waiting] = []
        size = 0
        queue = self._queue
        while queue:
            item = queue[0]
            if item.waiter.done():
                queue.popleft()
                continue
            merge = item.call.merge
            limit = merge.max_items if merge is not None else 1
            size += item.call.request.ByteSize()
            if items and (
                len(items) >= limit or size > self.max_bytes or merge is not items[0].call.merge
            ):
                break
            items.append(queue.popleft())
        return items
