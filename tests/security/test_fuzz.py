"""Hostile input against a live api: generated requests, malformed bytes, huge messages and
forged page tokens. The server must answer each with the right status, stay up, and leave
no partial record behind.

The api here runs alone (its own Redis and database, no worker), so nothing runs and every
accepted job stays inspectable: afterwards every row of `jobs` must be a complete job that
some call was told was accepted (and each of those must be there, in Redis too).

- `test_generated_requests_get_the_right_status`: hypothesis builds JobService requests
  (unicode with NULs, huge and negative numbers, NaN and infinity in payloads, deep nesting,
  unknown enum numbers, out-of-range times, other owners' job ids, forged and borrowed page
  tokens, hostile `authorization` metadata), sent 32 at a time over a few channels.
- `test_malformed_bytes_are_refused`: raw bytes on the wire (truncated varints, wrong wire
  types, invalid UTF-8 and encoded surrogates in string fields, huge length prefixes, open
  groups, nesting bombs, random bytes).
- `test_huge_messages`: 10 and 20 MB payloads, million-character ids, keys, types and
  tokens, a bulk of nearly 1 MB jobs, and listing them back.
- `test_page_tokens_are_tamper_proof`: tokens are bound to their owner and filters and
  cannot be forged or edited.
- `test_concurrent_bulk_submissions_keep_every_acknowledged_job`: valid requests only,
  bulk and single submissions at the same time (what the generated test does by chance),
  so that a failure there is told apart from a failure on hostile input.
- `test_the_server_survived_and_kept_no_partial_records`: the totals, and a plain job
  submitted afterwards is committed.

An answer outside the RPC's expected codes (never INTERNAL, UNAVAILABLE, UNKNOWN, or no
answer at all) is a failure; failures are
grouped by RPC, code and what their requests had in common, with the smallest request and
the api log's tracebacks by kind and place. Run with `-s` for the counts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import math
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import grpc
import psycopg
import pytest
import redis
from google.protobuf import duration_pb2, struct_pb2, text_format, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conveyor.embedded import EmbeddedRedis
from conveyor.queue.keys import QueueKeys
from conveyor.store import migrate
from conveyor.store.bulk import psycopg_dsn
from conveyor.v1 import job_pb2, job_service_pb2_grpc
from conveyor.v1 import job_service_pb2 as pb
from tests.processes import ROOT, Service, Stack, fresh_database, make_env

T = TypeVar("T")
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

VALID_TYPES = ("noop", "sleep", "fail", "report.build", "csv-export_2", "a" * 128)
VALID_QUEUES = ("", "default", "q1", "fuzz.low", "Z" * 64)
NOW = int(time.time())  # fixed, so that each strategy draws the same way every time
IDEMPOTENCY_POOL = ("k1", "k2", "k3", "nightly-2026-11-23", "ключ-🙂")


# -- the stack ----------------------------------------------------------------------------


@dataclass
class Accepted:
    owner: str
    type: str
    queue: str
    via: str = ""  # the call that was told so


@dataclass(frozen=True)
class Token:
    """A page token the server issued: to whom, for which filters."""

    owner: str
    filters: tuple[int, str, str, str]  # state, queue, type, owner
    value: str


@dataclass
class Ledger:
    """What the server said it accepted, and what the fuzzer has learned to reuse."""

    jobs: dict[str, Accepted] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OWNERS})
    tokens: list[Token] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    raw: int = 0
    reported: set[str] = field(default_factory=set)  # problems an earlier test reported

    def accept(self, job: job_pb2.Job, via: str = "") -> None:
        if job.id not in self.jobs:
            self.jobs[job.id] = Accepted(job.owner, job.type, job.queue, via)
            if job.owner in self.ids:
                self.ids[job.owner].append(job.id)


@dataclass(repr=False)
class FuzzStack:
    """The stack of this module's tests and what they have learned about it."""

    stack: Stack
    api: Service
    redis_url: str
    database_url: str
    keys: dict[str, str]
    ledger: Ledger

    def __repr__(self) -> str:  # pytest prints arguments of failed tests
        return f"<api at {self.stack.api_addr}, {len(self.ledger.jobs)} jobs accepted>"


@pytest.fixture(scope="module")
def fuzz(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    """An api of its own (no worker: nothing runs, so state stays as the calls left it)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("fuzz-redis"))
    server.start()
    api: Service | None = None
    try:
        url = fresh_database(database_url, "conveyor_fuzz")
        migrate(url)
        stack = Stack(make_env(server.url, url), tmp_path_factory.mktemp("fuzz-logs"))
        api = stack.start("api")
        keys = {owner: stack.create_key(owner) for owner in OWNERS}
        yield FuzzStack(stack, api, server.url, url, keys, Ledger())
        assert api.stop() == 0, f"unclean api shutdown:\n{api.tail()}"
    finally:
        if api is not None and api.proc.poll() is None:
            api.kill()
        server.stop()


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


# -- hypothesis strategies ----------------------------------------------------------------

SPECIAL_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x00" * 64,
    "default\x00",
    "noop\x00",
    "\ufeff",
    "\u202e",
    "\U0001f642" * 10,
    "ǅ",
    "İ",
    "\u0301a",
    "{default}",
    "{",
    "}",
    "cv:{x}:job:1",
    "../..",
    "' OR 1=1 --",
    "%s%n",
    "$(reboot)",
    "\r\n",
    "\t",
    "a" * 129,
    "a" * 65,
    "a" * 257,
    "NaN",
    "null",
    "-0",
    "1e309",
    "\x7f",
    "\u0085",
    "\u2028",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "\U0010ffff",
)
BIG_SIZES = (300, 1_000, 5_000, 65_536)  # a million: test_huge_messages
PAYLOAD_KINDS = ("none", "none", *["json"] * 8, "deep", "deep", "big")


@functools.cache
def big_text() -> st.SearchStrategy[str]:
    """Long strings, made without drawing every character."""
    return st.builds(
        lambda c, n: c * n,
        st.sampled_from(["a", "\x00", "é", "\U0001f642", "-"]),
        st.sampled_from(BIG_SIZES),
    )


@functools.cache
def hostile_text(max_size: int = 40, *, long: bool = True) -> st.SearchStrategy[str]:
    """Any unicode (NULs and control characters included; lone surrogates cannot be sent
    as proto3 strings, the raw test sends them encoded), special cases and (unless `long`
    is false) long strings."""
    short = [
        st.text(max_size=max_size),
        st.sampled_from(SPECIAL_STRINGS),
        st.text(alphabet=st.characters(codec="ascii"), max_size=max_size),
        st.text(max_size=max_size),
        st.sampled_from(SPECIAL_STRINGS),
        st.text(alphabet=st.characters(codec="ascii"), max_size=max_size),
    ]
    return st.one_of(*short, big_text()) if long else st.one_of(*short)


@functools.cache
def int32s() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-(2**31), 2**31 - 1),
        st.sampled_from([0, 1, -1, 9, 10, 99, 100, 101, 1000, 1001, 2**31 - 1, -(2**31)]),
    )


@functools.cache
def int64s() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([0, 1, -1, 2, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]),
    )


@functools.cache
def hostile_floats() -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(
            [
                math.nan,
                math.inf,
                -math.inf,
                -0.0,
                5e-324,
                1.7976931348623157e308,
                2.0**53 + 1,
                1e-300,
            ]
        ),
    )


JsonValue = Any


@functools.cache
def json_values() -> st.SearchStrategy[JsonValue]:
    """What a Struct can carry: null, booleans, doubles (NaN and infinity too), strings,
    lists and objects, nested a few levels."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        hostile_floats(),
        st.integers(-(2**64), 2**64),
        hostile_text(20, long=False),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(hostile_text(12, long=False), children, max_size=4),
        ),
        max_leaves=10,
    )


# Any character but NUL (and the surrogates st.text never draws).
NO_NUL = st.characters(codec="utf-8", exclude_characters="\x00")


@functools.cache
def finite_json_values() -> st.SearchStrategy[JsonValue]:
    """Valid payload values: JSON has no NaN or infinity, and PostgreSQL's jsonb no NUL."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(2**53), 2**53),
        st.text(NO_NUL, max_size=20),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(NO_NUL, max_size=10), children, max_size=4),
        ),
        max_leaves=10,
    )


def walk_strings(value: JsonValue) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_strings(v)


def walk_numbers(value: JsonValue) -> Iterator[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from walk_numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_numbers(v)


def deep_struct(depth: int, via_list: bool) -> struct_pb2.Struct:
    """{"a": {"a": ...}} (or lists of lists) `depth` levels down, built without recursion."""
    top = struct_pb2.Struct()
    value = top.fields["a"]
    for _ in range(depth):
        value = value.list_value.values.add() if via_list else value.struct_value.fields["a"]
    value.string_value = "bottom"
    return top


@st.composite
def _payloads(draw: st.DrawFn, valid: bool) -> tuple[struct_pb2.Struct | None, set[str]]:
    """A payload and what is hostile about it."""
    tags: set[str] = set()
    kind = draw(st.sampled_from(PAYLOAD_KINDS))
    if kind == "none":
        return None, tags
    struct = struct_pb2.Struct()
    if kind == "deep" and not valid:
        depth = draw(st.sampled_from([20, 31, 32, 33, 34, 40, 60, 100, 300, 3000]))
        tags.add("payload-deep")
        return deep_struct(depth, draw(st.booleans())), tags
    if kind == "big" and not valid:
        size = draw(st.sampled_from([PAYLOAD_LIMIT - 64, PAYLOAD_LIMIT + 1, 3 * PAYLOAD_LIMIT]))
        struct.update({"blob": "x" * size})
        tags.add("payload-big" if struct.ByteSize() > PAYLOAD_LIMIT else "payload-large")
        return struct, tags
    doc = draw(
        st.dictionaries(
            st.text(NO_NUL, max_size=10) if valid else hostile_text(12, long=False),
            finite_json_values() if valid else json_values(),
            max_size=5,
        )
    )
    struct.update(doc)
    if any("\x00" in s for s in walk_strings(doc)):
        tags.add("payload-nul")
    if any(not math.isfinite(n) for n in walk_numbers(doc)):
        tags.add("payload-nonfinite")
    if any(abs(n) > 2**53 for n in walk_numbers(doc) if math.isfinite(n)):
        tags.add("payload-huge-number")
    return struct, tags


@functools.cache
def payloads(valid: bool) -> st.SearchStrategy[tuple[struct_pb2.Struct | None, set[str]]]:
    return _payloads(valid)


@st.composite
def _timestamps(draw: st.DrawFn, valid: bool) -> tuple[timestamp_pb2.Timestamp, set[str]]:
    now = NOW
    if valid:
        seconds = draw(
            st.one_of(
                st.integers(now - 10 * 365 * 86400, now + 300 * 86400),
                st.sampled_from([TIMESTAMP_SECONDS[0], 0, now]),
            )
        )
        nanos = draw(st.integers(0, 999_999_999))
    else:
        seconds, nanos = draw(int64s()), draw(int32s())
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    bad = not (TIMESTAMP_SECONDS[0] <= seconds <= TIMESTAMP_SECONDS[1] and 0 <= nanos < 10**9)
    return stamp, {"time-out-of-range"} if bad else set()


@functools.cache
def timestamps(valid: bool) -> st.SearchStrategy[tuple[timestamp_pb2.Timestamp, set[str]]]:
    return _timestamps(valid)


@st.composite
def _durations(
    draw: st.DrawFn, valid: bool, *, positive: bool
) -> tuple[duration_pb2.Duration, set[str]]:
    if valid:
        seconds = draw(st.integers(1 if positive else 0, 7 * 86400 - 1))
        nanos = draw(st.integers(0, 999_999_999))
    else:
        seconds, nanos = draw(int64s()), draw(int32s())
    d = duration_pb2.Duration(seconds=seconds, nanos=nanos)
    bad = not (
        abs(seconds) <= DURATION_SECONDS
        and abs(nanos) < 10**9
        and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
    )
    return d, {"time-out-of-range"} if bad else set()


@functools.cache
def durations(
    valid: bool, *, positive: bool
) -> st.SearchStrategy[tuple[duration_pb2.Duration, set[str]]]:
    return _durations(valid, positive=positive)


SUBMIT_FIELDS = (
    "type",
    "queue",
    "priority",
    "idempotency_key",
    "run_at",
    "max_attempts",
    "timeout",
    "retry",
    "payload",
)


@st.composite
def _submit_requests(draw: st.DrawFn) -> tuple[pb.SubmitJobRequest, set[str]]:
    """A SubmitJobRequest: entirely valid, valid but for one hostile field, or hostile
    throughout (each field hostile or valid at random). Returns it with its tags."""
    mode = draw(st.sampled_from(["valid", "valid", "one-bad", "one-bad", "chaos"]))
    bad_field = draw(st.sampled_from(SUBMIT_FIELDS)) if mode == "one-bad" else ""
    tags = {f"mode:{mode}"} | ({f"bad:{bad_field}"} if bad_field else set())

    chosen = {
        name: (mode == "chaos" and draw(st.booleans())) or name == bad_field
        for name in SUBMIT_FIELDS
    }

    def hostile(name: str) -> bool:
        return chosen[name]

    req = pb.SubmitJobRequest()
    req.type = draw(hostile_text() if hostile("type") else st.sampled_from(VALID_TYPES))
    req.queue = draw(hostile_text() if hostile("queue") else st.sampled_from(VALID_QUEUES))
    if hostile("priority"):
        req.priority = draw(int32s())
    elif draw(st.booleans()):
        req.priority = draw(st.integers(0, 9))
    if hostile("idempotency_key"):
        req.idempotency_key = draw(hostile_text(300))
    elif draw(st.integers(0, 3)) == 0:
        req.idempotency_key = draw(st.sampled_from(IDEMPOTENCY_POOL))
    if hostile("run_at") or draw(st.integers(0, 4)) == 0:
        stamp, bad = draw(timestamps(not hostile("run_at")))
        req.run_at.CopyFrom(stamp)
        tags |= bad
    req.max_attempts = draw(int32s() if hostile("max_attempts") else st.integers(0, 100))
    if hostile("timeout") or draw(st.integers(0, 4)) == 0:
        timeout, bad = draw(durations(not hostile("timeout"), positive=True))
        req.timeout.CopyFrom(timeout)
        tags |= bad
    if hostile("retry") or draw(st.integers(0, 4)) == 0:
        valid = not hostile("retry")
        for name in ("initial_backoff", "max_backoff"):
            if draw(st.booleans()):
                d, bad = draw(durations(valid, positive=False))
                getattr(req.retry, name).CopyFrom(d)
                tags |= bad
        req.retry.multiplier = draw(
            st.one_of(st.just(0.0), st.floats(1, 100)) if valid else hostile_floats()
        )
        if draw(st.booleans()):
            req.retry.jitter = draw(st.floats(0, 1) if valid else hostile_floats())
        if not valid:
            tags.add("retry-hostile")
    payload, bad = draw(payloads(not hostile("payload")))
    if payload is not None:
        req.payload.CopyFrom(payload)
    return req, tags | bad


@functools.cache
def submit_requests() -> st.SearchStrategy[tuple[pb.SubmitJobRequest, set[str]]]:
    return _submit_requests()


def submit_expected(tags: set[str]) -> frozenset[grpc.StatusCode] | None:
    """A valid request must be accepted (or meet an earlier job with its idempotency key);
    JSON cannot carry NaN, infinity or (in PostgreSQL) NUL, so those may be refused."""
    if any(t.startswith("mode:") and t != "mode:valid" for t in tags):
        return None
    codes = {Code.OK, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED}
    if tags & {"payload-nul", "payload-nonfinite"}:
        codes.add(Code.INVALID_ARGUMENT)
    return frozenset(codes)


def scope(filters: tuple[int, str, str, str], caller: str) -> tuple[int, str, str, str]:
    """What a listing means for a user: no `owner` is the caller's own jobs."""
    state, queue, job_type, owner = filters
    return state, queue, job_type, owner or caller


@dataclass(frozen=True)
class Draws:
    """Strategies that read the ledger as it grows (ids and tokens the server handed out).

    Hypothesis insists that the same choices draw the same way, so what is drawn depends
    only on earlier draws, never on the ledger: an index is drawn whether or not there is
    anything to pick, and what the ledger lacks falls back without drawing again.
    """

    ledger: Ledger

    def pick(self, draw: st.DrawFn, pool: list[T]) -> T | None:
        index = draw(st.integers(0, 2**30))
        return pool[index % len(pool)] if pool else None

    def job_id(self, draw: st.DrawFn, caller: str) -> tuple[str, set[str]]:
        kind = draw(
            st.sampled_from(["own", "own", "other", "other", "upper", "uuid", "text", "special"])
        )
        other = next(o for o in OWNERS if o != caller) if caller in OWNERS else OWNERS[0]
        if kind in ("own", "other", "upper"):
            found = self.pick(draw, self.ledger.ids.get(caller if kind == "own" else other, []))
            if found is None:
                return str(uuid.uuid4()), {"random-uuid"}
            if kind == "upper":
                return found.upper(), {"other-owner-uppercase"}
            return found, {"own-id" if kind == "own" else "other-owner"}
        if kind == "uuid":
            return str(draw(st.uuids())), {"random-uuid"}
        if kind == "special":
            known = self.pick(draw, self.ledger.ids[other]) or str(uuid.uuid4())
            forms: list[Callable[[str], str]] = [
                lambda _: "",
                lambda _: "00000000-0000-0000-0000-000000000000",
                lambda _: "ffffffff-ffff-ffff-ffff-ffffffffffff",
                lambda k: k + "\x00",
                lambda k: "{" + k + "}",
                lambda k: k.replace("-", ""),
                lambda k: "urn:uuid:" + k,
                lambda k: k[:-1],
                lambda k: k + " ",
                lambda k: " " + k[1:],
                lambda k: k.replace("-", "_"),
                lambda k: k[:8] + "%" + k[9:],
                lambda _: "g" * 36,
                lambda _: "-" * 36,
            ]
            form = draw(st.sampled_from(forms))
            return form(known), {"special-id"}
        return draw(hostile_text()), {"text-id"}

    def token(
        self, draw: st.DrawFn, caller: str, filters: tuple[int, str, str, str]
    ) -> tuple[str, set[str], tuple[int, str, str, str]]:
        """A page token and the filters to send it with; tags say whose and how made."""
        kind = draw(
            st.sampled_from(
                [
                    "none",
                    "none",
                    "genuine",
                    "other-owner",
                    "other-filter",
                    "mutated",
                    "random",
                    "forged",
                ]
            )
        )
        tokens = self.ledger.tokens
        if kind in ("genuine", "other-filter"):
            t = self.pick(draw, [t for t in tokens if t.owner == caller])
            if t is not None and kind == "genuine":
                return t.value, {"token:genuine"}, t.filters
            if t is not None and scope(filters, caller) != scope(t.filters, caller):
                return t.value, {"token:other-filter"}, filters
        elif kind == "other-owner":
            t = self.pick(draw, [t for t in tokens if t.owner != caller])
            if t is not None:
                return t.value, {"token:other-owner"}, t.filters
        elif kind == "mutated":
            t = self.pick(draw, tokens)
            at, replacement = draw(st.integers(0, 2**16)), draw(st.integers(0, 62))
            if t is not None and len(t.value) > 3:
                at %= len(t.value) - 2  # not the last two: their spare bits may be ignored
                others = TOKEN_ALPHABET.replace(t.value[at], "")
                edited = t.value[:at] + others[replacement % len(others)] + t.value[at + 1 :]
                return edited, {"token:mutated"}, t.filters
        elif kind == "random":
            text = draw(
                st.one_of(
                    st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode()),
                    hostile_text(),
                )
            )
            return text, {"token:random"} if text else set(), filters
        elif kind == "forged":
            # The shape a token had when tokens were unsigned, with a cursor no page ended on.
            cursor = str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1))))
            doc = {"b": cursor, "f": list(filters[:3])}
            raw = json.dumps(doc, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("="), {"token:forged"}, filters
        return "", set(), filters

    def list_request(self, draw: st.DrawFn, caller: str) -> tuple[pb.ListJobsRequest, set[str]]:
        state = draw(st.one_of(st.integers(0, 7), int32s()))
        queue = draw(st.one_of(st.sampled_from(VALID_QUEUES), hostile_text()))
        job_type = draw(st.one_of(st.just(""), st.sampled_from(VALID_TYPES), hostile_text()))
        owner_kind = draw(st.sampled_from(["none", "none", "none", "self", "other", "text"]))
        owner = {"none": "", "self": caller, "other": "bob" if caller == "alice" else "alice"}.get(
            owner_kind
        )
        if owner is None:
            owner = draw(hostile_text())
        page_size = draw(st.one_of(st.integers(0, 5), st.integers(0, 1000), int32s()))
        token, tags, filters = self.token(draw, caller, (state, queue, job_type, owner))
        state, queue, job_type, owner = filters  # a token is sent with its own filters
        if not 0 <= state <= 7:
            tags.add("enum-unknown")
        if any("\x00" in s for s in (queue, job_type)):
            tags.add("filter-nul")
        if owner and owner != caller:
            tags.add("owner-not-caller")
        req = pb.ListJobsRequest(
            queue=queue, type=job_type, owner=owner, page_size=page_size, page_token=token
        )
        req.state = cast(job_pb2.JobState, state)  # unknown numbers go out as they are
        return req, tags


def expected_for(rpc: str, tags: set[str]) -> frozenset[grpc.StatusCode]:
    """What the server may answer, narrowed where the request says more than its RPC."""
    base = ALLOWED[rpc]
    if tags & {"bulk-over-limit", "bulk-empty"}:
        return frozenset({Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED})
    if rpc in ("SubmitJob", "SubmitJobs"):
        if "payload-big" in tags:  # over the payload limit, under the message limit
            return frozenset({Code.INVALID_ARGUMENT})
        narrowed = submit_expected(tags)
        return narrowed if narrowed is not None else base
    if rpc == "ListJobs":
        refused = {Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}
        if "owner-not-caller" in tags:  # naming another owner needs an admin key
            return frozenset(refused | {Code.PERMISSION_DENIED})
        forged = {
            "token:other-owner",
            "token:other-filter",
            "token:mutated",
            "token:random",
            "token:forged",
        }
        if tags & forged or "enum-unknown" in tags:  # page tokens are tamper-proof (issue 5)
            return frozenset(refused)
        return base
    if "other-owner" in tags or "other-owner-uppercase" in tags:
        # Another owner's job is NOT_FOUND (bad arguments may be refused first), never
        # found, denied or "in the wrong state".
        return frozenset({Code.NOT_FOUND, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED})
    if "own-id" in tags:
        return base - {Code.NOT_FOUND}  # an accepted job is never lost
    return base


@st.composite
def intruder_metadata(draw: st.DrawFn, keys: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """`authorization` values that must not authenticate."""
    printable = st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=600
    )
    real = keys[draw(st.sampled_from(OWNERS))]
    prefix, _, secret = real.rpartition("_")
    value = draw(
        st.one_of(
            printable.map(lambda t: f"Bearer {t}"),
            printable.map(lambda t: f"Bearer cvk_{t}"),
            st.sampled_from(
                [
                    "Bearer",
                    "Bearer ",
                    "bearer",
                    "Basic " + real,
                    real,
                    "Token " + real,
                    "Bearer " + real[:-1],
                    "Bearer " + real + "=",
                    "Bearer " + prefix + "_" + secret[::-1],
                    "Bearer " + real.upper(),
                    "Bearer " + "cvk_" + "f" * 32 + "_" + secret,
                ]
            ),
        )
    )
    if value.strip() in (f"Bearer {real}", f"bearer {real}"):
        value = "Bearer " + real[:-1]
    return (("authorization", value),)


def probes(draws: Draws, keys: dict[str, str]) -> st.SearchStrategy[Probe]:
    """One generated JobService call."""

    intruders = intruder_metadata(keys)

    @st.composite
    def build(draw: st.DrawFn) -> Probe:
        rpc = draw(
            st.sampled_from(
                ["SubmitJob"] * 6
                + ["SubmitJobs"] * 2
                + ["GetJob"] * 2
                + ["ListJobs"] * 3
                + ["WatchJob", "CancelJob", "RetryJob", "ListJobAttempts"]
            )
        )
        intruder = draw(st.integers(0, 19)) == 0
        caller = "intruder" if intruder else draw(st.sampled_from(OWNERS))
        metadata = draw(intruders) if intruder else bearer(keys[caller])
        tags: set[str] = set()
        request: Message | bytes
        silent = False
        if rpc == "SubmitJob":
            request, tags = draw(submit_requests())
        elif rpc == "SubmitJobs":
            size = draw(st.sampled_from([0, 1, 2, 3, 5, 1001]))
            if size == 1001:
                request = pb.SubmitJobsRequest(requests=[pb.SubmitJobRequest(type="noop")] * 1001)
                tags = {"bulk-over-limit"}
            else:
                # Encoded by hand: a message nested past protobuf's depth limit cannot be
                # put into another one in Python (it would be parsed again).
                items = []
                for _ in range(size):
                    item, item_tags = draw(submit_requests())
                    items.append(length_delimited(1, item.SerializeToString()))
                    tags |= item_tags
                request = b"".join(items)
                if size == 0:
                    tags.add("bulk-empty")
        elif rpc == "ListJobs":
            request, tags = draws.list_request(draw, caller)
        else:
            job_id, tags = draws.job_id(draw, caller)
            if rpc == "WatchJob":
                after = draw(st.one_of(st.integers(0, 3), int64s()))
                request = pb.WatchJobRequest(id=job_id, after_sequence=after)
                silent = after > 0 and "own-id" in tags
            elif rpc == "RetryJob":
                attempts = draw(st.one_of(st.integers(0, 100), int32s()))
                request = pb.RetryJobRequest(id=job_id, max_attempts=attempts)
            else:
                request = REQUEST_TYPES[rpc](id=job_id)  # type: ignore[call-arg,unused-ignore]
        expected = None if intruder else expected_for(rpc, tags)
        return make_probe(
            rpc, request, caller, metadata, tags, expected, may_stay_silent=silent, raw=False
        )

    return build()


# -- raw bytes ----------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, data: bytes) -> bytes:
    return tag(number, 2) + varint(len(data)) + data


BAD_UTF8 = [
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
    b"ok\xfe",
    b"\x80",
    b"\xf8\x88\x80\x80\x80",
    b"a\x00\xff",
]
# The first string field of each request (ListJobsRequest's field 1 is the state enum).
STRING_FIELD = {
    "SubmitJob": 1,
    "GetJob": 1,
    "ListJobs": 2,
    "WatchJob": 1,
    "CancelJob": 1,
    "RetryJob": 1,
    "ListJobAttempts": 1,
    "SubmitJobs": 0,
}


@functools.cache
def nested_struct_bytes(depth: int) -> bytes:
    """A Struct nested `depth` levels deep, encoded directly (fields -> value -> struct)."""
    inner = b""
    for _ in range(depth):
        entry = length_delimited(1, b"a") + length_delimited(2, length_delimited(5, inner))
        inner = length_delimited(1, entry)
    return inner


@st.composite
def raw_probes(draw: st.DrawFn, draws: Draws, keys: dict[str, str]) -> Probe:
    """Bytes that are not (or only barely) a request of the RPC they are sent to."""
    rpc = draw(st.sampled_from(sorted(REQUEST_TYPES)))
    caller = draw(st.sampled_from(OWNERS))
    own = draws.pick(draw, draws.ledger.ids[caller]) or str(uuid.uuid4())
    valid = {
        "SubmitJob": pb.SubmitJobRequest(type="noop", queue="raw"),
        "SubmitJobs": pb.SubmitJobsRequest(
            requests=[pb.SubmitJobRequest(type="noop", queue="raw")]
        ),
        "ListJobs": pb.ListJobsRequest(queue="raw", page_size=2),
        "WatchJob": pb.WatchJobRequest(id=own),
        "RetryJob": pb.RetryJobRequest(id=own),
    }.get(rpc) or REQUEST_TYPES[rpc](id=own)  # type: ignore[call-arg,unused-ignore]
    base = valid.SerializeToString()
    field_number = STRING_FIELD[rpc] or 1
    kind = draw(
        st.sampled_from(
            [
                "random",
                "truncated",
                "bitflip",
                "wire-type",
                "bad-utf8",
                "huge-length",
                "overlong-varint",
                "group",
                "field-zero",
                "nesting-bomb",
                "unknown-fields",
                "concat",
            ]
        )
    )
    body: bytes
    if kind == "random":
        body = draw(st.binary(max_size=200))
    elif kind == "truncated":
        body = base[: draw(st.integers(0, 2**16)) % max(len(base), 1)]
    elif kind == "bitflip":
        data = bytearray(base or b"\x00")
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, 2**16)) % len(data)
            data[at] ^= 1 << draw(st.integers(0, 7))
        body = bytes(data)
    elif kind == "wire-type":
        wire = draw(st.sampled_from([0, 1, 3, 4, 5, 6, 7]))
        body = tag(field_number, wire) + draw(st.binary(max_size=12))
    elif kind == "bad-utf8":
        junk = draw(st.sampled_from(BAD_UTF8))
        if rpc == "SubmitJobs":  # inside the first request's type
            body = length_delimited(1, length_delimited(1, junk))
        else:
            body = base + length_delimited(field_number, junk)
    elif kind == "huge-length":
        claimed = draw(st.sampled_from([2**31 - 1, 2**31, 2**32 + 5, 2**63, 2**64 - 1, 10**9]))
        body = tag(field_number, 2) + varint(claimed) + draw(st.binary(max_size=16))
    elif kind == "overlong-varint":
        body = tag(field_number, 0) + b"\xff" * draw(st.integers(10, 12)) + b"\x01"
    elif kind == "group":
        body = base + tag(field_number, draw(st.sampled_from([3, 4]))) + draw(st.binary(max_size=4))
    elif kind == "field-zero":
        body = tag(0, draw(st.sampled_from([0, 2]))) + b"\x01\x01"
    elif kind == "nesting-bomb":
        depth = draw(st.sampled_from([50, 101, 1000, 20_000]))
        payload = nested_struct_bytes(depth)
        inner = length_delimited(1, b"noop") + length_delimited(2, payload)
        body = inner if rpc == "SubmitJob" else length_delimited(1, inner)
    elif kind == "unknown-fields":
        number = draw(st.integers(20, 2**29 - 1))
        body = base + tag(number, 2) + varint(3) + b"abc" + tag(number + 1, 0) + varint(7)
    else:
        body = base + base
    return make_probe(rpc, body, caller, bearer(keys[caller]), {f"raw:{kind}"}, None)


# -- sending ------------------------------------------------------------------------------


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    reply: bytes | None = None
    silent: bool = False


class Engine:
    """Sends probes `in_flight` at a time over a few channels, judges every answer and keeps
    the ledger (accepted jobs, issued page tokens) and the failures."""

    def __init__(self, fuzz: FuzzStack, name: str, *, in_flight: int = IN_FLIGHT) -> None:
        self.fuzz = fuzz
        self.name = name
        self.ledger = fuzz.ledger
        self.in_flight = in_flight
        self.failures: list[Failure] = []
        self.codes: Counter[str] = Counter()
        self.sent = 0
        self.raw = 0
        self._channels: list[grpc.aio.Channel] = []
        self._turn = 0
        self.started = time.monotonic()
        self.outcomes: list[tuple[str, frozenset[str], str]] = []  # rpc, tags, code

    async def __aenter__(self) -> Engine:
        options = [
            ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
            ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE),
        ]
        self._channels = [
            grpc.aio.insecure_channel(self.fuzz.stack.api_addr, options=options)
            for _ in range(CHANNELS)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def call(self, probe: Probe) -> Answer:
        channel = self._channels[self._turn % len(self._channels)]
        self._turn += 1
        path = f"/{SERVICE}/{probe.rpc}"
        try:
            if probe.rpc == "WatchJob":
                stream = channel.unary_stream(path, None, None)(
                    probe.body, metadata=probe.metadata, timeout=CALL_TIMEOUT
                )
                try:
                    first = await asyncio.wait_for(stream.read(), WATCH_WAIT)
                except TimeoutError:
                    return Answer(Code.OK, "", silent=True)
                finally:
                    stream.cancel()
                reply = first if isinstance(first, bytes) else None
                return Answer(Code.OK, "", reply)
            unary = channel.unary_unary(path, None, None)
            reply = await unary(probe.body, metadata=probe.metadata, timeout=CALL_TIMEOUT)
            assert isinstance(reply, bytes)
            return Answer(Code.OK, "", reply)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")

    async def send(self, probe: Probe) -> None:
        try:
            answer = await self.call(probe)
        except Exception as exc:  # the client refused to send it: the probe is at fault
            self.failures.append(Failure(probe, "client error", repr(exc)[:300]))
            return
        self.sent += 1
        self.raw += probe.raw
        self.codes[answer.code.name] += 1
        self.outcomes.append((probe.rpc, probe.tags, answer.code.name))
        self.ledger.requests += 1
        self.ledger.raw += probe.raw
        self.ledger.codes[answer.code.name] += 1
        wrong = self.judge(probe, answer)
        if wrong is not None:
            self.failures.append(Failure(probe, wrong, answer.details[:300]))

    def judge(self, probe: Probe, answer: Answer) -> str | None:
        """None if the answer is right; else what was wrong, and keep what was accepted."""
        if answer.silent and not probe.may_stay_silent:
            return f"no answer in {WATCH_WAIT}s"
        if answer.code not in probe.expected:
            return answer.code.name
        if "undecodable" in probe.tags and DECODE_FAILURE_DETAILS not in answer.details:
            return f"{answer.code.name} without saying the bytes do not parse"
        if answer.code != Code.OK or answer.reply is None:
            return None
        reply = RESPONSE_TYPES[probe.rpc].FromString(answer.reply)
        jobs: list[job_pb2.Job] = []
        if isinstance(reply, pb.SubmitJobsResponse | pb.ListJobsResponse):
            jobs = list(reply.jobs)
        else:
            jobs = [value for fd, value in reply.ListFields() if fd.name == "job"]
        if isinstance(reply, pb.ListJobsResponse) and reply.next_page_token:
            assert probe.filters is not None
            self.ledger.tokens.append(Token(probe.caller, probe.filters, reply.next_page_token))
        strangers = [j.id for j in jobs if j.owner != probe.caller]
        if strangers:
            return f"OK with another owner's jobs {strangers[:3]}"
        if probe.rpc in ("SubmitJob", "SubmitJobs"):
            elapsed = time.monotonic() - self.started
            via = f"{probe.rpc} ({len(jobs)} jobs) in test {self.name!r} at {elapsed:.2f}s"
            for job in jobs:
                self.ledger.accept(job, via)
        return None

    async def run_list(self, items: list[Probe]) -> None:
        """Send `items`, `in_flight` at a time."""
        pending = iter(items)

        async def worker() -> None:
            for probe in pending:  # one iterator shared by the workers
                await self.send(probe)

        await asyncio.gather(*(worker() for _ in range(max(min(self.in_flight, len(items)), 1))))

    async def consume(self, source: AsyncIterator[Probe]) -> None:
        async for probe in source:
            await self.send(probe)


async def generate_and_send(
    engine: Engine, make: Callable[[Draws], st.SearchStrategy[Probe]], count: int
) -> float:
    """Draw `count` probes with hypothesis in a thread while the engine sends them; the
    seconds spent."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Probe | None] = asyncio.Queue(maxsize=4 * IN_FLIGHT)
    strategy = make(Draws(engine.ledger))
    stop = threading.Event()
    made = 0
    started = time.monotonic()

    @settings(  # derandomized: CI draws the same requests every run, so a red run reproduces
        max_examples=count // PER_EXAMPLE + 1,
        derandomize=not RANDOM_DRAWS,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw_some(data: st.DataObject) -> None:
        nonlocal made
        for _ in range(PER_EXAMPLE):  # always as many: drawing must not depend on `made`
            if stop.is_set():
                return
            probe = data.draw(strategy)
            asyncio.run_coroutine_threadsafe(queue.put(probe), loop).result()
            made += 1

    def generate() -> None:
        try:
            while made < count and not stop.is_set():
                draw_some()
        finally:
            for _ in range(engine.in_flight):
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    async def source() -> AsyncIterator[Probe]:
        while (probe := await queue.get()) is not None:
            yield probe

    producer = asyncio.ensure_future(asyncio.to_thread(generate))
    consumers = [asyncio.ensure_future(engine.consume(source())) for _ in range(engine.in_flight)]
    try:
        await asyncio.gather(producer, *consumers)
    finally:
        # However this ends (a failure, a timeout), let the drawing thread finish.
        stop.set()
        for consumer in consumers:
            consumer.cancel()
        while not producer.done():
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            await asyncio.sleep(0.01)
    return time.monotonic() - started


# -- checks -------------------------------------------------------------------------------


def describe(request: Message | None, body: bytes) -> str:
    if request is None:
        return f"raw bytes ({len(body)}): {body[:120]!r}"
    text = text_format.MessageToString(request, as_one_line=True, as_utf8=True)
    return text if len(text) <= 400 else text[:400] + f"... ({len(body)} bytes)"


NUMBERS = re.compile(r"-?\d+")
EXCEPTION_LINE = re.compile(r"^(?:[a-z_]+\.)*[A-Z]\w*(?:Error|Exception|Nesting|Character)\b")
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT", re.M)
PROJECT_FRAME = re.compile(
    rf'File "{re.escape(str(ROOT))}/((?:src|services)/[^"]+)", line (\d+), in (\w+)'
)


def log_errors(api: Service) -> Counter[str]:
    """The api log's tracebacks, by exception (numbers elided) and the deepest frame of
    Conveyor's own code."""
    text = api.log.read_text(errors="replace") if api.log.exists() else ""
    found: Counter[str] = Counter()
    starts = [m.start() for m in RECORD_START.finditer(text)] + [len(text)]
    for begin, end in itertools.pairwise(starts):
        record = text[begin:end]
        if "Traceback (most recent call last)" not in record:
            continue
        raised = [line for line in record.splitlines() if EXCEPTION_LINE.match(line)]
        last = raised[-1] if raised else record.strip().splitlines()[-1]
        frames = PROJECT_FRAME.findall(record)
        where = ":".join(frames[-1]) if frames else "grpc (no Conveyor frame)"
        found[f"{NUMBERS.sub('N', last)[:150]} at {where}"] += 1
    return found


def report(failures: list[Failure], api: Service) -> str:
    """Failures grouped by RPC and answer, with the tags all of a group's requests share,
    the smallest request of the group, and the api log's tracebacks by kind and place."""
    groups: dict[tuple[str, str], list[Failure]] = {}
    for failure in failures:
        groups.setdefault((failure.probe.rpc, failure.code), []).append(failure)
    lines = []
    for (rpc, code), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        common = set.intersection(*(set(f.probe.tags) for f in items))
        counts = Counter(t for f in items for t in f.probe.tags).most_common(6)
        smallest = min(items, key=lambda f: len(f.probe.body))
        lines.append(
            f"{len(items)} x {rpc} -> {code} (expected "
            f"{'/'.join(sorted(c.name for c in smallest.probe.expected))}); shared tags "
            f"{sorted(common)}; frequent {counts}\n"
            f"    smallest ({smallest.probe.caller}): "
            f"{describe(smallest.probe.request, smallest.probe.body)}\n"
            f"    details: {smallest.details!r}"
        )
        # Valid submissions answered wrongly: refused for what other requests carried.
        innocent = [
            f
            for f in items
            if f.probe.rpc.startswith("Submit") and Code.INVALID_ARGUMENT not in f.probe.expected
        ]
        if innocent:
            example = min(innocent, key=lambda f: len(f.probe.body))
            lines.append(
                f"    of which {len(innocent)} to valid requests with nothing hostile in them, "
                f"e.g. {describe(example.probe.request, example.probe.body)}"
            )
    errors = log_errors(api)
    if errors:
        lines.append(f"api log: {sum(errors.values())} logged tracebacks:")
        lines += [f"  {n:5d} x {what}" for what, n in errors.most_common(15)]
    return "\n".join(lines)


async def healthy(addr: str) -> bool:
    async with grpc.aio.insecure_channel(addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


JOB_COLUMNS = (
    "id, owner, type, queue, state, priority, payload, max_attempts, timeout_ms, "
    "run_at, create_time, retry, attempt"
)


def partial_records(fuzz: FuzzStack) -> list[str]:
    """Every row in `jobs` must be a complete job some call was told was accepted, and every
    accepted job must be in the database and in Redis (nothing runs here, nothing expires)."""
    problems: list[str] = []
    with psycopg.connect(psycopg_dsn(fuzz.database_url)) as conn:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs").fetchall()
        attempts = conn.execute("SELECT count(*) FROM job_attempts").fetchone()
        # No call is in flight now, so a connection inside a transaction for seconds was
        # left there, and nothing it writes from now on is ever committed. (A health check's
        # `SELECT 1` is inside its transaction for a millisecond, once a second.)
        stuck = conn.execute(
            "SELECT pid, xact_start, left(query, 80) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%' "
            "AND xact_start < now() - interval '3 seconds'"
        ).fetchall()
    stored: dict[str, tuple[Any, ...]] = {row[0]: row for row in rows}
    accepted = fuzz.ledger.jobs
    for job_id in stored.keys() - accepted.keys():
        problems.append(f"row {job_id} was never accepted: {stored[job_id][:4]}")
    for job_id in accepted.keys() - stored.keys():
        problems.append(f"accepted job {job_id} has no row (told by {accepted[job_id].via})")
    for (
        job_id,
        owner,
        type_,
        queue,
        state,
        priority,
        payload,
        max_attempts,
        timeout_ms,
        run_at,
        create_time,
        retry,
        attempt,
    ) in rows:
        bad = []
        if not 1 <= state <= 7:
            bad.append(f"state {state}")
        if not (owner and type_ and queue) or owner not in OWNERS:
            bad.append(f"owner/type/queue {owner!r}/{type_!r}/{queue!r}")
        if not isinstance(payload, dict):
            bad.append(f"payload {type(payload).__name__}")
        if not max_attempts >= 1 or not 0 <= priority <= 9 or not timeout_ms > 0:
            bad.append(f"max_attempts {max_attempts} priority {priority} timeout {timeout_ms}")
        if not (create_time > 0 and run_at > 0 and isinstance(retry, dict) and attempt == 0):
            bad.append(f"times {create_time}/{run_at} retry {retry} attempt {attempt}")
        mine = accepted.get(job_id)
        if mine is not None and (mine.owner, mine.type, mine.queue) != (owner, type_, queue):
            bad.append(f"accepted as {mine}, stored as {(owner, type_, queue)}")
        if bad:
            problems.append(f"row {job_id} incomplete: {'; '.join(bad)}")
    for pid, since, query in stuck:
        problems.append(
            f"database connection {pid} is idle inside a transaction begun at {since:%H:%M:%S} "
            f"(last statement {query!r}): nothing it writes is committed"
        )
    if attempts is not None and attempts[0]:
        problems.append(f"{attempts[0]} attempt rows, but nothing ran")
    client = redis.Redis.from_url(fuzz.redis_url, decode_responses=True)
    try:
        ids = list(accepted)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = client.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(QueueKeys(accepted[job_id].queue).job(job_id), "owner", "state")
            for job_id, (owner, state) in zip(chunk, pipe.execute(), strict=True):
                if owner != accepted[job_id].owner or not state or not 1 <= int(state) <= 7:
                    problems.append(
                        f"accepted job {job_id} missing or wrong in redis: {owner!r} {state!r}"
                    )
    finally:
        client.close()
    return problems


async def walk_pages(
    addr: str, meta: tuple[tuple[str, str], ...], first: pb.ListJobsRequest
) -> tuple[list[int], list[str]]:
    """Every page of a listing through its tokens: the pages' sizes and the jobs' ids."""
    sizes, ids = [], []
    request = pb.ListJobsRequest()
    request.CopyFrom(first)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(addr, options=options) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        while True:
            reply = await stub.ListJobs(request, metadata=meta, timeout=CALL_TIMEOUT)
            sizes.append(reply.ByteSize())
            ids += [job.id for job in reply.jobs]
            if not reply.next_page_token:
                return sizes, ids
            request.page_token = reply.next_page_token


async def check_survived(fuzz: FuzzStack, engine: Engine, what: str) -> None:
    """The api is alive and healthy, the answers were right, its log holds no traceback
    (hostile input is refused, not logged as a fault), and no partial record appeared since
    the previous check (the last test checks them all); prints the counts either way."""
    crashed = fuzz.api.proc.poll() is not None
    serving = not crashed and await healthy(fuzz.stack.api_addr)
    found = await asyncio.to_thread(partial_records, fuzz)
    problems = [p for p in found if p not in fuzz.ledger.reported]  # new since the last test
    fuzz.ledger.reported.update(problems)
    print(
        f"\n{what}: {engine.sent} requests ({engine.raw} raw), codes {dict(engine.codes)}, "
        f"{len(engine.failures)} wrong answers, {int(crashed)} server crashes, "
        f"{len(problems)} new partial records ({len(found)} in all, "
        f"{len(fuzz.ledger.jobs)} jobs accepted so far)"
    )
    messages = []
    if engine.failures:
        messages.append(
            f"{len(engine.failures)} wrong answers:\n{report(engine.failures, fuzz.api)}"
        )
    if crashed or not serving:
        messages.append(f"api {'exited' if crashed else 'not SERVING'}:\n{fuzz.api.tail(60)}")
    if problems:
        messages.append(f"{len(problems)} partial records:\n" + "\n".join(problems[:20]))
    tracebacks = log_errors(fuzz.api)
    if tracebacks and not engine.failures:  # with failures, `report` lists them already
        messages.append(
            f"api log: {sum(tracebacks.values())} logged tracebacks:\n"
            + "\n".join(f"  {n:5d} x {what}" for what, n in tracebacks.most_common(15))
        )
    if messages:
        print("\n".join(messages))
    assert not messages, "\n\n".join(messages)


async def seed(engine: Engine, fuzz: FuzzStack) -> None:
    """A few jobs and page tokens per owner, so ids and tokens exist to be reused."""
    items = []
    for owner in OWNERS:
        for i in range(12):
            request = pb.SubmitJobRequest(type=VALID_TYPES[i % 3], queue=VALID_QUEUES[i % 3])
            items.append(
                make_probe("SubmitJob", request, owner, bearer(fuzz.keys[owner]), ["seed"])
            )
    await engine.run_list(items)
    items = []
    for owner in OWNERS:
        for queue in VALID_QUEUES[:3]:
            listing = pb.ListJobsRequest(queue=queue, page_size=1)
            items.append(make_probe("ListJobs", listing, owner, bearer(fuzz.keys[owner]), ["seed"]))
    await engine.run_list(items)


# -- the tests ----------------------------------------------------------------------------


@dataclass
class Run:
    """One fuzz run's engine (its counts and wrong answers) and how long it took."""

    engine: Engine
    seconds: float


@pytest.fixture(scope="module")
async def generated(fuzz: FuzzStack) -> Run:
    """The generated requests, sent once per module whichever test asks first: their own
    test judges them and the last test counts them, in any order or selection."""
    async with Engine(fuzz, "generated") as engine:
        if not fuzz.ledger.jobs:
            await seed(engine, fuzz)
        seconds = await generate_and_send(
            engine, lambda d: probes(d, fuzz.keys), GENERATED_REQUESTS
        )
    return Run(engine, seconds)


@pytest.fixture(scope="module")
async def malformed(fuzz: FuzzStack) -> Run:
    """The raw bytes, sent once per module (as `generated`)."""
    async with Engine(fuzz, "raw bytes") as engine:
        if not fuzz.ledger.jobs:
            await seed(engine, fuzz)
        seconds = await generate_and_send(engine, lambda d: raw_probes(d, fuzz.keys), RAW_REQUESTS)
    return Run(engine, seconds)


async def test_generated_requests_get_the_right_status(fuzz: FuzzStack, generated: Run) -> None:
    """Guards DESIGN.md §4 ("bad input never crashes a server and never leaves a partial
    record") over thousands of generated requests: each answer is one its RPC may give
    (exactly NOT_FOUND for another owner's job, INVALID_ARGUMENT for a page token the caller
    was not given for those filters, UNAUTHENTICATED for a bad key), the api stays up and
    the database holds exactly the accepted jobs."""
    print(f"\ngenerated {generated.engine.sent} requests in {generated.seconds:.1f}s")
    await check_survived(fuzz, generated.engine, "fuzz (generated)")


async def test_malformed_bytes_are_refused(fuzz: FuzzStack, malformed: Run) -> None:
    """Guards the wire boundary: bytes that do not parse as the RPC's request are refused
    with INVALID_ARGUMENT, before the key is checked, without reaching the database, and
    bytes that happen to parse are served like any request."""
    print(f"\nsent {malformed.engine.raw} raw requests in {malformed.seconds:.1f}s")
    await check_survived(fuzz, malformed.engine, "fuzz (raw bytes)")


async def test_huge_messages(fuzz: FuzzStack) -> None:
    """Guards the size limits: a 10 MB payload is INVALID_ARGUMENT (payload limit), a 20 MB
    request RESOURCE_EXHAUSTED (message limit), million-character strings in every string
    field are refused or (filters) match nothing, and jobs just under the payload limit are
    accepted and can be read and listed back, also when a page of them would be larger than
    the message limit."""
    key = fuzz.keys["alice"]
    meta = bearer(key)
    huge = "x" * MILLION
    own = fuzz.ledger.ids["alice"][0] if fuzz.ledger.ids["alice"] else str(uuid.uuid4())
    invalid = frozenset({Code.INVALID_ARGUMENT})

    def payload(size: int, fields: int = 1) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        if fields == 1:
            struct.update({"blob": "y" * size})
        else:
            struct.update({f"k{i}": "z" * (size // fields) for i in range(fields)})
        return struct

    ten_mb = 10 << 20
    cases: list[tuple[str, Message, frozenset[grpc.StatusCode] | None, str]] = [
        (
            "SubmitJob",
            pb.SubmitJobRequest(type="noop", payload=payload(ten_mb)),
            invalid,
            "10MB payload",
        ),
        (
            "SubmitJob",
            pb.SubmitJobRequest(type="noop", payload=payload(ten_mb, 100_000)),
            invalid,
            "10MB payload, 100k fields",
        ),
        (
            "SubmitJob",
            pb.SubmitJobRequest(type="noop", payload=payload(20 << 20)),
            None,
            "20MB payload",
        ),
        (
            "SubmitJobs",
            pb.SubmitJobsRequest(
                requests=[pb.SubmitJobRequest(type="noop", payload=payload(PAYLOAD_LIMIT + 10))]
                * 12
            ),
            invalid,
            "12 x 1MB+ bulk",
        ),
        (
            "SubmitJob",
            pb.SubmitJobRequest(type="noop", idempotency_key=huge),
            invalid,
            "1M-char idempotency key",
        ),
        ("SubmitJob", pb.SubmitJobRequest(type=huge), invalid, "1M-char type"),
        ("SubmitJob", pb.SubmitJobRequest(type="noop", queue=huge), invalid, "1M-char queue"),
        (
            "SubmitJob",
            pb.SubmitJobRequest(type="noop", queue="bigkey", payload=_struct({huge: 1})),
            frozenset({Code.OK}),
            "1M-char payload key (under 1 MiB)",
        ),
        (
            "SubmitJob",
            pb.SubmitJobRequest(type="noop", payload=_struct({"x" * PAYLOAD_LIMIT: 1})),
            invalid,
            "1 MiB payload key",
        ),
        ("GetJob", pb.GetJobRequest(id=huge), invalid, "1M-char id"),
        ("CancelJob", pb.CancelJobRequest(id=huge), invalid, "1M-char id"),
        ("RetryJob", pb.RetryJobRequest(id=huge), invalid, "1M-char id"),
        ("ListJobAttempts", pb.ListJobAttemptsRequest(id=huge), invalid, "1M-char id"),
        ("WatchJob", pb.WatchJobRequest(id=huge), invalid, "1M-char id"),
        ("WatchJob", pb.WatchJobRequest(id=own + huge), invalid, "id + 1M chars"),
        ("ListJobs", pb.ListJobsRequest(page_token=huge), invalid, "1M-char page token"),
        ("ListJobs", pb.ListJobsRequest(queue=huge), None, "1M-char queue filter"),
        ("ListJobs", pb.ListJobsRequest(type=huge), None, "1M-char type filter"),
    ]
    items = [
        make_probe(rpc, request, "alice", meta, {f"huge:{label}"}, expected)
        for rpc, request, expected, label in cases
    ]
    near_limit = pb.SubmitJobRequest(type="noop", queue="big", payload=payload(PAYLOAD_LIMIT - 64))
    assert near_limit.payload.ByteSize() <= PAYLOAD_LIMIT
    ok = frozenset({Code.OK})
    bulk = pb.SubmitJobsRequest(requests=[near_limit] * 15)  # 15 MB, under the message limit
    async with Engine(fuzz, "huge messages", in_flight=2) as engine:
        await engine.run_list(items)
        await engine.run_list([make_probe("SubmitJobs", bulk, "alice", meta, {"huge:bulk"}, ok)])
        big = [j for j, a in fuzz.ledger.jobs.items() if a.queue == "big"]
        if big:  # else the bulk's wrong answer is reported below
            reads = [
                make_probe("GetJob", pb.GetJobRequest(id=big[0]), "alice", meta, {"huge:get"}, ok),
                make_probe(
                    "WatchJob", pb.WatchJobRequest(id=big[0]), "alice", meta, {"huge:watch"}, ok
                ),
                make_probe(
                    "ListJobs",
                    pb.ListJobsRequest(queue="big", page_size=15),
                    "alice",
                    meta,
                    {"huge:list 15 x 1MB"},
                    ok,
                ),
            ]
            await engine.run_list(reads)
            more = pb.SubmitJobsRequest(requests=[near_limit] * 5)
            await engine.run_list(
                [make_probe("SubmitJobs", more, "alice", meta, {"huge:bulk"}, ok)]
            )
            # Twenty of them are 20 MB: a page of twenty cannot fit in a 16 MB message, so
            # pages are cut at CONVEYOR_MAX_PAGE_BYTES (4 MiB) and the tokens walk them all.
            page = pb.ListJobsRequest(queue="big", page_size=100)
            listed = make_probe("ListJobs", page, "alice", meta, {"huge:list 20 x 1MB"}, ok)
            await engine.run_list([listed])
            sizes, ids = await walk_pages(fuzz.stack.api_addr, meta, page)
            expected_ids = {j for j, a in fuzz.ledger.jobs.items() if a.queue == "big"}
            print(f"\nlisting {len(ids)} jobs of ~1 MB: {len(sizes)} pages, largest "
                  f"{max(sizes) / 2**20:.2f} MiB")  # fmt: skip
            assert max(sizes) <= PAGE_LIMIT and len(sizes) > 1
            assert sorted(ids) == sorted(expected_ids)
        # grpc refuses headers this large itself (RESOURCE_EXHAUSTED) before Conveyor sees them.
        hostile_key = (("authorization", "Bearer " + "k" * 200_000),)
        await engine.run_list(
            [
                make_probe(
                    "GetJob",
                    pb.GetJobRequest(id=own),
                    "intruder",
                    hostile_key,
                    {"huge:200k-char key"},
                    frozenset({Code.UNAUTHENTICATED, Code.RESOURCE_EXHAUSTED}),
                )
            ]
        )
        print()
        for rpc, tags, code in engine.outcomes:
            label = next((t[5:] for t in tags if t.startswith("huge:")), "")
            print(f"  {rpc:<16} {label:<34} -> {code}")
        await check_survived(fuzz, engine, "fuzz (huge messages)")


def _struct(doc: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(doc)
    return struct


def edits(token: str) -> Iterator[str]:
    """Single-character edits of a token, away from its last characters (whose spare bits a
    base64 decoder may ignore)."""
    rng = random.Random(token)
    alphabet = TOKEN_ALPHABET
    for at in sorted(rng.sample(range(max(len(token) - 2, 1)), min(12, max(len(token) - 2, 1)))):
        yield token[:at] + rng.choice(alphabet.replace(token[at], "")) + token[at + 1 :]


async def test_page_tokens_are_tamper_proof(fuzz: FuzzStack) -> None:
    """Guards issue 5's "page tokens are opaque and tamper-proof": a token works only for
    the owner it was given to and the filters it was issued for; edited, forged, random and
    other owners' tokens are INVALID_ARGUMENT."""
    invalid = frozenset({Code.INVALID_ARGUMENT})
    ok = frozenset({Code.OK})
    async with Engine(fuzz, "page tokens", in_flight=4) as engine:
        items = []
        for owner in OWNERS:
            request = pb.SubmitJobsRequest(
                requests=[pb.SubmitJobRequest(type="noop", queue="pages")] * 4
            )
            items.append(
                make_probe("SubmitJobs", request, owner, bearer(fuzz.keys[owner]), {"pages"}, ok)
            )
        await engine.run_list(items)
        first = [
            make_probe(
                "ListJobs",
                pb.ListJobsRequest(queue="pages", page_size=1),
                owner,
                bearer(fuzz.keys[owner]),
                {"pages"},
                ok,
            )
            for owner in OWNERS
        ]
        before = len(fuzz.ledger.tokens)
        await engine.run_list(first)
        issued = {
            t.owner: t for t in fuzz.ledger.tokens[before:] if t.filters == (0, "pages", "", "")
        }
        if set(issued) != set(OWNERS):  # the submits or listings above failed: say why
            await check_survived(fuzz, engine, "fuzz (page tokens)")
            pytest.fail(f"no page tokens were issued to both owners: {issued}")
        alice, bob = issued["alice"], issued["bob"]
        meta = bearer(fuzz.keys["alice"])

        def listing(
            token: str, label: str, expected: frozenset[grpc.StatusCode], **filters: Any
        ) -> Probe:
            request = pb.ListJobsRequest(
                page_size=1, page_token=token, **({"queue": "pages"} | filters)
            )
            return make_probe("ListJobs", request, "alice", meta, {f"token:{label}"}, expected)

        forged_doc = {"b": str(uuid.UUID(int=2**127 + 12345)), "f": [0, "pages", ""]}
        forged = base64.urlsafe_b64encode(json.dumps(forged_doc, separators=(",", ":")).encode())
        checks = [
            listing(alice.value, "genuine", ok),
            listing(bob.value, "other owner's", invalid),
            listing(alice.value, "other filter (queue)", invalid, queue="default"),
            listing(alice.value, "other filter (state)", invalid, state=job_pb2.JOB_STATE_QUEUED),
            listing(alice.value, "other filter (type)", invalid, type="noop"),
            listing(forged.decode().rstrip("="), "forged", invalid),
            listing(alice.value + "A", "appended", invalid),
            listing(alice.value[:-4], "truncated", invalid),
            listing(base64.urlsafe_b64encode(b"\x00" * 40).decode(), "random", invalid),
            listing("\x00", "NUL", invalid),
            *(listing(edited, "edited", invalid) for edited in edits(alice.value)),
        ]
        await engine.run_list(checks)
        await check_survived(fuzz, engine, "fuzz (page tokens)")


async def test_concurrent_bulk_submissions_keep_every_acknowledged_job(fuzz: FuzzStack) -> None:
    """Guards the durability contract under concurrency, with valid requests only: bulk
    submissions (some ending ALREADY_EXISTS on a reused idempotency key, which rolls the
    whole bulk back) run beside single submissions; every acknowledged job is committed, a
    refused bulk leaves nothing, and no answer is INTERNAL."""
    alice, bob = bearer(fuzz.keys["alice"]), bearer(fuzz.keys["bob"])
    ok, conflict = frozenset({Code.OK}), frozenset({Code.ALREADY_EXISTS})

    def bulk(*requests: pb.SubmitJobRequest) -> pb.SubmitJobsRequest:
        return pb.SubmitJobsRequest(requests=requests)

    keys = [f"conflict-{i}" for i in range(40)]
    firsts = [
        make_probe(
            "SubmitJobs",
            bulk(pb.SubmitJobRequest(type="noop", queue="c", idempotency_key=key)),
            "alice",
            alice,
            {"concurrent:first"},
            ok,
        )
        for key in keys
    ]
    mixed: list[Probe] = []
    for key in keys:
        clash = bulk(
            pb.SubmitJobRequest(type="noop", queue="c"),
            pb.SubmitJobRequest(type="sleep", queue="c", idempotency_key=key),
        )
        mixed.append(
            make_probe("SubmitJobs", clash, "alice", alice, {"concurrent:clash"}, conflict)
        )
        single = pb.SubmitJobRequest(type="noop", queue="c")
        mixed += [make_probe("SubmitJob", single, "bob", bob, {"concurrent:single"}, ok)] * 3
    async with Engine(fuzz, "concurrent bulks", in_flight=16) as engine:
        await engine.run_list(firsts)
        await engine.run_list(mixed)
        await check_survived(fuzz, engine, "fuzz (concurrent bulks)")


async def test_the_server_survived_and_kept_no_partial_records(
    fuzz: FuzzStack, generated: Run, malformed: Run
) -> None:
    """Guards issue 5's "done when": at least 10,000 fuzzed requests over this module with
    0 server crashes and 0 partial records (the generated and raw runs, which the fixtures
    make once whatever runs first, plus whatever other tests of the module ran), and after
    all of it a plain submission is still committed before it is acknowledged."""
    crashed = fuzz.api.proc.poll() is not None
    async with Engine(fuzz, "afterwards", in_flight=1) as engine:
        plain = pb.SubmitJobRequest(type="noop", queue="afterwards")
        alice = bearer(fuzz.keys["alice"])
        await engine.run_list(
            [make_probe("SubmitJob", plain, "alice", alice, {"afterwards"}, frozenset({Code.OK}))]
        )
    fresh = [j for j, a in fuzz.ledger.jobs.items() if a.queue == "afterwards"]
    problems = await asyncio.to_thread(partial_records, fuzz)
    ledger = fuzz.ledger
    print(
        f"\nfuzz: {ledger.requests} requests ({ledger.raw} raw), codes {dict(ledger.codes)}, "
        f"{int(crashed)} server crashes, {len(problems)} partial records"
    )
    assert not crashed, fuzz.api.tail(60)
    assert await healthy(fuzz.stack.api_addr)
    assert len(fresh) == 1 and not engine.failures, engine.failures
    lost = [p for p in problems if fresh[0] in p]
    assert not lost, f"a plain job acknowledged after the fuzzing is not in the database: {lost}"
    assert not problems, "\n".join(problems[:20])
    assert ledger.requests >= TOTAL_AT_LEAST, f"only {ledger.requests} requests were sent"
    assert not {"INTERNAL", "UNAVAILABLE"} & set(ledger.codes), ledger.codes
