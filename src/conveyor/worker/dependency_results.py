"""What `ctx.dependency_results()` answers: each dependency's result, read when a handler
asks (never with the claim: a fan-in job may wait for 10,000 jobs it never reads)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from conveyor.db.dependencies import DependencyStore
from conveyor.errors import Unavailable
from conveyor.jobs.model import JobState
from conveyor.objects import ObjectNotFound, ObjectStore


async def results_of(
    store: DependencyStore, objects: ObjectStore | None, ids: Sequence[str]
) -> dict[str, Any]:
    """Dependency id -> what its handler returned (a result too large for its row is read
    from the object store); None for one that did not succeed or no longer exists."""
    found = await store.results(ids)
    answer: dict[str, Any] = {}
    for job_id in ids:
        state, document, ref = found.get(job_id, (None, None, None))
        if state is not JobState.SUCCEEDED:
            answer[job_id] = None
        elif document is None and ref and objects is not None:
            answer[job_id] = await _stored(objects, ref)
        else:
            answer[job_id] = document
    return answer


async def _stored(objects: ObjectStore, key: str) -> Any:
    try:
        data = await asyncio.to_thread(objects.read, key)
    except ObjectNotFound:
        raise Unavailable(
            f"a dependency's result is missing from the object store ({key})"
        ) from None
    return json.loads(data)
