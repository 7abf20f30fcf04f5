"""Generated JobService requests get the right status."""

from __future__ import annotations

from tests.security.fuzz.checks import check_survived
from tests.security.fuzz.engine import Run
from tests.security.fuzz.ledger import FuzzStack


async def test_generated_requests_get_the_right_status(fuzz: FuzzStack, generated: Run) -> None:
    """Guards DESIGN.md §4 ("bad input never crashes a server and never leaves a partial
    record") over thousands of generated requests: each answer is one its RPC may give
    (exactly NOT_FOUND for another owner's job, INVALID_ARGUMENT for a page token the caller
    was not given for those filters, UNAUTHENTICATED for a bad key), the api stays up and
    the database holds exactly the accepted jobs."""
    print(f"\ngenerated {generated.engine.sent} requests in {generated.seconds:.1f}s")
    await check_survived(fuzz, generated.engine, "fuzz (generated)")
