"""After all the fuzzing, the server is up and kept no partial records."""

from __future__ import annotations

import asyncio

from conveyor.v1 import job_service_pb2 as pb
from tests.security.fuzz.checks import healthy, partial_records
from tests.security.fuzz.engine import Engine, Run
from tests.security.fuzz.ledger import FuzzStack
from tests.security.fuzz.rpcs import TOTAL_AT_LEAST, Code, bearer, make_probe


async def test_the_server_survived_and_kept_no_partial_records(
    fuzz: FuzzStack, generated: Run, malformed: Run
) -> None:
    """Guards issue 5's "done when": at least 10,000 fuzzed requests over this package with
    0 server crashes and 0 partial records (the generated and raw runs, which the fixtures
    make once whatever runs first, plus whatever other tests of the package ran), and after
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
