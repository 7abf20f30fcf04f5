"""What a worker and an isolated attempt's child process say to each other.

One `multiprocessing.Pipe` (a Unix socket pair) joins them. The child uses the pipe's own
`Connection` (blocking frames); the worker reads and writes the same frames on its event
loop (`read_child`/`write_frame`), so waiting for a child never takes one of its threads.

The two directions differ in what they trust. The worker sends pickles: the child trusts
its worker. The child sends JSON (`encode`), which the worker decodes into the few
messages below and nothing else: a child runs what a user wrote, and a child that a
template or query subverted must not get code run in the worker by a pickle.

A child is forked with a `Setup`, prepares, and says READY; a pool counts a child as
waiting only from then on. The conversation of one attempt:

    worker -> child   Attempt                       once, right after the child is taken
    child  -> worker  Progress                      any number, coalesced by the child
    child  -> worker  Call  -> worker -> child  Reply   `once`, artifact record and lookup
    child  -> worker  Outcome                       last; then the child exits

A child that exits without an Outcome was killed (by the worker on cancel or timeout, by
the kernel, or by its memory limit: see `MEMORY_EXIT`).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

from conveyor import compact_json
from conveyor.config import Settings
from conveyor.handlers.context import AttemptFacts
from conveyor.jobs.artifacts import Artifact

# The exit code of a child whose attempt ran past its memory limit (a MemoryError under
# RLIMIT_AS): the worker names the limit in the attempt's error.
MEMORY_EXIT = 86
# The exit code of a child stopped by SIGTERM (the worker's cancel or timeout).
TERMINATED_EXIT = 143


_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class Attempt:
    """Everything a child needs to run one attempt of a job."""

    module: str  # where the handler function is defined ...
    qualname: str  # ... and its name there (handlers are module-level functions)
    is_async: bool
    payload: Any  # as the handler takes it: the parsed model or the dict
    facts: AttemptFacts
    queue: str  # for the child's log lines
    memory_limit_mb: int | None = None


@dataclass(frozen=True, slots=True)
class Setup:
    """What every child of a pool is given when it is forked, before any attempt: all it
    can prepare while it waits (logging, its object store) costs the attempt nothing."""

    settings: Settings
    # Whether the worker has an object store (the child opens its own from `settings`).
    with_objects: bool
    # The worker's process: a child exits as soon as it is gone.
    worker_pid: int


@dataclass(frozen=True, slots=True)
class Ready:
    """What a child sends once it is prepared and waits for its attempt."""


READY = Ready()


@dataclass(frozen=True, slots=True)
class Progress:
    percent: float
    message: str


@dataclass(frozen=True, slots=True)
class Call:
    """A request the child cannot serve itself; the worker answers with a Reply."""

    op: str  # "once", "record", "find", "dependencies"
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the handler ended: its result document, or its failure as the owner sees it."""

    result: Any = None
    error: str = ""
    traceback: str = ""
    permanent: bool = False
    failed: bool = False
    # Set when the handler raised RateLimited: how long the job (and its key) waits.
    retry_after_ms: int | None = None


ChildMessage = Ready | Progress | Call | Outcome


def encode(message: ChildMessage) -> bytes:
    """A child's message as the JSON the worker decodes (`decode`)."""
    if isinstance(message, Call):
        args = [asdict(a) if isinstance(a, Artifact) else a for a in message.args]
        return compact_json.dumps({"kind": "call", "op": message.op, "args": args}).encode()
    kind = type(message).__name__.lower()
    return compact_json.dumps({"kind": kind, **asdict(message)}).encode()


def decode(data: bytes) -> ChildMessage:
    """A child's message; ValueError for anything else (a child that sends it is broken,
    or subverted, and is stopped)."""
    try:
        fields = json.loads(data)
        kind = fields.pop("kind")
        if kind == "ready" and not fields:
            return READY
        if kind == "progress":
            return Progress(float(fields["percent"]), str(fields["message"]))
        if kind == "outcome":
            return _outcome(fields)
        if kind == "call":
            return _call(str(fields["op"]), list(fields["args"]))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"a child sent a message that is not one: {exc}") from None
    raise ValueError(f"a child sent a message of kind {kind!r}")


def _outcome(fields: dict[str, Any]) -> Outcome:
    result = fields["result"]
    if result is not None and not isinstance(result, dict):
        raise ValueError("an outcome's result must be an object")
    return Outcome(
        result=result,
        error=str(fields["error"]),
        traceback=str(fields["traceback"]),
        permanent=bool(fields["permanent"]),
        failed=bool(fields["failed"]),
        retry_after_ms=None
        if fields.get("retry_after_ms") is None
        else int(fields["retry_after_ms"]),
    )


def _call(op: str, args: list[Any]) -> Call:
    if op == "once" and len(args) == 1:
        return Call(op, (str(args[0]),))
    if op == "dependencies" and not args:
        return Call(op, ())
    if op == "find" and len(args) == 2:
        return Call(op, (str(args[0]), str(args[1])))
    if op == "record" and len(args) == 1 and isinstance(args[0], dict):
        names = {f.name for f in fields(Artifact)}
        if set(args[0]) != names:
            raise ValueError(f"an artifact has the fields {sorted(names)}")
        return Call(op, (Artifact(**args[0]),))
    raise ValueError(f"no call {op!r} with {len(args)} arguments")


async def read_child(reader: asyncio.StreamReader) -> ChildMessage:
    """The next message a child wrote (`Connection.send_bytes` of `encode`);
    IncompleteReadError at the end, ValueError for one that is not a message."""
    (size,) = _SHORT.unpack(await reader.readexactly(_SHORT.size))
    if size == -1:
        (size,) = _LONG.unpack(await reader.readexactly(_LONG.size))
    return decode(await reader.readexactly(size))


def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    """Send an object (an Attempt, a Reply) that the child's `Connection.recv` reads."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    header = _SHORT.pack(len(data)) if len(data) <= 0x7FFFFFFF else _SHORT.pack(-1)
    if len(data) > 0x7FFFFFFF:
        header += _LONG.pack(len(data))
    writer.write(header + data)
