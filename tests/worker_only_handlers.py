"""A handler only some test workers load (`CONVEYOR_HANDLERS=tests.handlers,
tests.worker_only_handlers`) and the test API does not: a type the API learns of only from
the live workers that announce it (see `conveyor.api.known_names`)."""

from __future__ import annotations

from typing import Any

from conveyor.handlers import JobContext, handler

WORKER_ONLY_TYPE = "test.worker_only"


@handler(WORKER_ONLY_TYPE)
async def worker_only(payload: dict[str, Any], ctx: JobContext) -> dict[str, bool]:
    """Succeeds at once."""
    return {"ran": True}
