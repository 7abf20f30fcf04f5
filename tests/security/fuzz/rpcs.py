"""What the fuzz sends: the JobService RPCs, what each may answer, and a probe (one call's
bytes, caller and the codes it may get back)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message

from conveyor.v1 import job_service_pb2 as pb

Code = grpc.StatusCode

GENERATED_REQUESTS = 8_000
RAW_REQUESTS = 2_500
TOTAL_AT_LEAST = 10_000
IN_FLIGHT = 32
PER_EXAMPLE = 20  # probes drawn per hypothesis example
CHANNELS = 4
CALL_TIMEOUT = 30.0
# A WatchJob stream that resumes after a sequence it has already seen may rightly stay quiet.
WATCH_WAIT = 2.0
SERVER_MAX_MESSAGE = 16 << 20  # CONVEYOR_MAX_MESSAGE_BYTES' default
PAYLOAD_LIMIT = 1 << 20  # CONVEYOR_MAX_PAYLOAD_BYTES' default
# FUZZ_RANDOM=1 draws new requests each run (for hunting; CI draws the same ones).
RANDOM_DRAWS = os.environ.get("FUZZ_RANDOM") == "1"
PAGE_LIMIT = 4 << 20  # CONVEYOR_MAX_PAGE_BYTES' default
CLIENT_MAX_MESSAGE = 64 << 20  # so that the server is the one that refuses
MILLION = 1_000_000
OWNERS = ("alice", "bob")
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SERVICE = "conveyor.v1.JobService"

REQUEST_TYPES: dict[str, type[Message]] = {
    "SubmitJob": pb.SubmitJobRequest,
    "SubmitJobs": pb.SubmitJobsRequest,
    "GetJob": pb.GetJobRequest,
    "ListJobs": pb.ListJobsRequest,
    "WatchJob": pb.WatchJobRequest,
    "CancelJob": pb.CancelJobRequest,
    "RetryJob": pb.RetryJobRequest,
    "ListJobAttempts": pb.ListJobAttemptsRequest,
}
RESPONSE_TYPES: dict[str, type[Message]] = {
    "SubmitJob": pb.SubmitJobResponse,
    "SubmitJobs": pb.SubmitJobsResponse,
    "GetJob": pb.GetJobResponse,
    "ListJobs": pb.ListJobsResponse,
    "WatchJob": pb.WatchJobResponse,
    "CancelJob": pb.CancelJobResponse,
    "RetryJob": pb.RetryJobResponse,
    "ListJobAttempts": pb.ListJobAttemptsResponse,
}
# What each RPC may answer to any request of an authenticated caller.
ALLOWED: dict[str, frozenset[grpc.StatusCode]] = {
    "SubmitJob": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED}
    ),
    "SubmitJobs": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED}
    ),
    "GetJob": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}),
    "ListJobs": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}),
    "WatchJob": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}
    ),
    "CancelJob": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
    ),
    "RetryJob": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION}
    ),
    "ListJobAttempts": frozenset(
        {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}
    ),
}
# Bytes the server cannot parse are INVALID_ARGUMENT (grpcserver.Undecodable; grpc-python
# alone would answer UNKNOWN), checked before the key, with a detail that says so.
UNDECODABLE = frozenset({Code.INVALID_ARGUMENT})
DECODE_FAILURE_DETAILS = "not a valid protobuf message"
TOO_BIG = frozenset({Code.RESOURCE_EXHAUSTED})

# Protobuf's valid ranges for well-known types (outside them, its conversions raise).
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
DURATION_SECONDS = 315_576_000_000

# Types whose payload may be anything: a valid-mode request draws any payload for them
# (`sleep` checks its own at submit, so it is not among them).
VALID_TYPES = ("noop", "fail", "report.build", "csv-export_2", "a" * 128)
VALID_QUEUES = ("", "default", "q1", "fuzz.low", "Z" * 64)
NOW = int(time.time())  # fixed, so that each strategy draws the same way every time
IDEMPOTENCY_POOL = ("k1", "k2", "k3", "nightly-2026-11-23", "ключ-🙂")


# -- probes: one call each ----------------------------------------------------------------


@dataclass(repr=False)
class Probe:
    """One call to make: the bytes to send, who sends them, and what may come back."""

    rpc: str
    body: bytes
    caller: str  # an owner, or "intruder" (hostile authorization metadata)
    metadata: tuple[tuple[str, str], ...]
    expected: frozenset[grpc.StatusCode]
    tags: frozenset[str]
    request: Message | None  # None: the bytes do not parse
    may_stay_silent: bool = False
    raw: bool = False
    filters: tuple[int, str, str, str] | None = None  # ListJobs: for the tokens it hands out

    def __repr__(self) -> str:
        return f"<{self.rpc} by {self.caller}, {len(self.body)} bytes, {sorted(self.tags)}>"


@dataclass
class Failure:
    probe: Probe
    code: str
    details: str


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def decodes(rpc: str, body: bytes) -> Message | None:
    try:
        return REQUEST_TYPES[rpc].FromString(body)
    except DecodeError:
        return None


def make_probe(
    rpc: str,
    request: Message | bytes,
    caller: str,
    metadata: tuple[tuple[str, str], ...],
    tags: Iterable[str],
    expected: frozenset[grpc.StatusCode] | None = None,
    *,
    may_stay_silent: bool = False,
    raw: bool | None = None,
) -> Probe:
    """A probe whose expected codes follow from how the server must read it: too big for
    the server, then unparseable, then unauthenticated, then what the RPC may answer
    (narrowed by `expected` where the request says more). Bytes count as raw unless
    `raw` says otherwise."""
    raw = isinstance(request, bytes) if raw is None else raw
    body = request if isinstance(request, bytes) else request.SerializeToString()
    parsed = decodes(rpc, body)
    all_tags = set(tags) | ({"raw"} if raw else set())
    if len(body) > SERVER_MAX_MESSAGE:
        allowed, all_tags = TOO_BIG, all_tags | {"over-message-limit"}
    elif parsed is None:
        allowed, all_tags = UNDECODABLE, all_tags | {"undecodable"}
    elif caller == "intruder":
        allowed = expected or frozenset({Code.UNAUTHENTICATED})
    else:
        allowed = expected if expected is not None else ALLOWED[rpc]
    if raw and isinstance(parsed, pb.WatchJobRequest) and parsed.after_sequence > 0:
        may_stay_silent = True  # resuming a stream of the caller's job may wait for news
    filters = None
    if rpc == "ListJobs" and parsed is not None:
        assert isinstance(parsed, pb.ListJobsRequest)
        filters = (int(parsed.state), parsed.queue, parsed.type, parsed.owner)
    return Probe(
        rpc,
        body,
        caller,
        metadata,
        allowed,
        frozenset(all_tags),
        parsed,
        may_stay_silent=may_stay_silent,
        raw=raw,
        filters=filters,
    )
