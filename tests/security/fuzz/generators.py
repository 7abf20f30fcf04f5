"""Hypothesis strategies that draw hostile JobService requests, and raw bytes that do or do
not parse as one."""

from __future__ import annotations

import base64
import functools
import json
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb
from tests.security.fuzz.ledger import Ledger
from tests.security.fuzz.rpcs import (
    ALLOWED,
    DURATION_SECONDS,
    IDEMPOTENCY_POOL,
    NOW,
    OWNERS,
    PAYLOAD_LIMIT,
    REQUEST_TYPES,
    TIMESTAMP_SECONDS,
    TOKEN_ALPHABET,
    VALID_QUEUES,
    VALID_TYPES,
    Code,
    Probe,
    bearer,
    make_probe,
)

T = TypeVar("T")
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
