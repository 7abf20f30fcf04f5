"""What a worker and an isolated attempt's child process say to each other.

One `multiprocessing.Pipe` (a Unix socket pair) joins them. The child uses the pipe's own
`Connection` (blocking, pickle frames); the worker reads the same frames on its event loop
(`read_frame`/`write_frame`), so waiting for a child never takes one of its threads.

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
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from conveyor.config import Settings
from conveyor.handlers.context import AttemptFacts

# The exit code of a child whose attempt ran past its memory limit (a MemoryError under
# RLIMIT_AS): the worker names the limit in the attempt's error.
MEMORY_EXIT = 86
# The exit code of a child stopped by SIGTERM (the worker's cancel or timeout).
TERMINATED_EXIT = 143

# What a child sends once it is prepared and waits for its attempt.
READY = "ready"

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
class Progress:
    percent: float
    message: str


@dataclass(frozen=True, slots=True)
class Call:
    """A request the child cannot serve itself; the worker answers with a Reply."""

    op: str  # "once", "record", "find"
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


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next object a `Connection.send` wrote; IncompleteReadError at the end."""
    (size,) = _SHORT.unpack(await reader.readexactly(_SHORT.size))
    if size == -1:
        (size,) = _LONG.unpack(await reader.readexactly(_LONG.size))
    return pickle.loads(await reader.readexactly(size))


def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    """Send an object that `Connection.recv` reads."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    header = _SHORT.pack(len(data)) if len(data) <= 0x7FFFFFFF else _SHORT.pack(-1)
    if len(data) > 0x7FFFFFFF:
        header += _LONG.pack(len(data))
    writer.write(header + data)
