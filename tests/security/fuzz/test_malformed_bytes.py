"""Bytes that do not parse as the request are refused."""

from __future__ import annotations

from tests.security.fuzz.checks import check_survived
from tests.security.fuzz.engine import Run
from tests.security.fuzz.ledger import FuzzStack


async def test_malformed_bytes_are_refused(fuzz: FuzzStack, malformed: Run) -> None:
    """Guards the wire boundary: bytes that do not parse as the RPC's request are refused
    with INVALID_ARGUMENT, before the key is checked, without reaching the database, and
    bytes that happen to parse are served like any request."""
    print(f"\nsent {malformed.engine.raw} raw requests in {malformed.seconds:.1f}s")
    await check_survived(fuzz, malformed.engine, "fuzz (raw bytes)")
