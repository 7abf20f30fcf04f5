"""Huge payloads, strings and bulks meet the size limits."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from conveyor.v1 import job_service_pb2 as pb
from tests.security.fuzz.checks import check_survived, walk_pages
from tests.security.fuzz.engine import Engine
from tests.security.fuzz.ledger import FuzzStack
from tests.security.fuzz.rpcs import MILLION, PAGE_LIMIT, PAYLOAD_LIMIT, Code, bearer, make_probe


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
