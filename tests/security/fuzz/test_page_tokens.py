"""Page tokens are bound to their owner and filters and cannot be forged or edited."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb
from tests.security.fuzz.checks import check_survived
from tests.security.fuzz.engine import Engine
from tests.security.fuzz.ledger import FuzzStack
from tests.security.fuzz.rpcs import OWNERS, TOKEN_ALPHABET, Code, Probe, bearer, make_probe


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
