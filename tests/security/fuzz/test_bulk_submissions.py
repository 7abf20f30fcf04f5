"""Concurrent bulk and single submissions keep every acknowledged job."""

from __future__ import annotations

from conveyor.v1 import job_service_pb2 as pb
from tests.security.fuzz.checks import check_survived
from tests.security.fuzz.engine import Engine
from tests.security.fuzz.ledger import FuzzStack
from tests.security.fuzz.rpcs import Code, Probe, bearer, make_probe


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
