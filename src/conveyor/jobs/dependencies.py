"""Jobs that wait for other jobs: a DAG of dependencies, and batches with a callback.

How a dependency works (the database is the truth; Redis never sees a waiting job):

- A job submitted with `depends_on` is stored with one edge per dependency
  (`job_dependencies`) and `dependencies_pending`, the number not yet ended. While that is
  above 0 the job is SCHEDULED, out of Redis, and the reconciler leaves it alone; GetJob
  says BLOCKED_KIND_DEPENDENCIES. A dependency that already ended when the job is
  submitted counts at once (its row is locked while the edges are written, so it cannot
  end unseen in between).
- When a job ends (its outcome, a cancel), whoever committed that end resolves its edges
  in a transaction of its own right after (`conveyor.db.dependencies.resolve`): each
  dependent counts it off, is CANCELLED if it failed and the dependent's policy cancels
  (which ends the dependent too, so its own dependents are resolved in the same
  transaction), and is released (QUEUED, or SCHEDULED for a later run_at, and enqueued)
  when its count reaches 0. The edge's state changes once (PENDING to another), so a
  resolution done twice counts nothing twice. If the process dies between the end and
  its resolution, the reconciler finds the ended dependencies with pending edges and
  resolves them; a job released but not enqueued is an unfinished job Redis lacks, which
  it puts in line as any other.
- A cycle cannot be made: a new job can only name jobs that exist, or earlier requests of
  its own SubmitJobs call.
- A batch (SubmitJobsRequest.on_complete) is the same mechanism: its callback depends on
  every job of the call with RUN_ANYWAY, and when it is released its payload gains the
  batch's `batch` document (`batch_doc`), in the transaction that releases it, so the
  callback is made once and runs with the final counts whoever ends the batch's last job.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.jobs.model import Job

# At most this many dependencies per job (depends_on and depends_on_requests together):
# a fan-in of 10,000 parents is supported; the ids of 10,000 make a 380 KB request.
MAX_DEPENDENCIES = 10_000
# At most this many of a waiting job's pending dependencies are named in its blocked reason.
WAITING_FOR_SHOWN = 10


class Policy(enum.IntEnum):
    """Mirror of `conveyor.v1.DependencyFailurePolicy`: what a failed dependency does."""

    UNSPECIFIED = 0  # as CANCEL
    CANCEL = 1
    RUN_ANYWAY = 2


class Edge(enum.IntEnum):
    """`job_dependencies.state`: how the dependency ended, as far as the dependent goes."""

    PENDING = 0
    MET = 1  # succeeded (or ended otherwise, for a RUN_ANYWAY dependent)
    FAILED = 2  # ended DEAD or CANCELLED, and did not cancel the dependent (it had ended)
    CANCELLED_DEPENDENT = 3  # ended DEAD or CANCELLED and cancelled the dependent


@dataclass(slots=True)
class Resolution:
    """What resolving ended jobs did: dependents released (to enqueue now) and cancelled
    (waiting jobs, which Redis never had: their watchers are told)."""

    released: list[Job] = field(default_factory=list)
    cancelled: list[Job] = field(default_factory=list)


def dependency_violations(
    depends_on: Sequence[str],
    requests: Sequence[int],
    policy: int,
    *,
    keyed: bool,
    valid_id: Callable[[str], bool],
) -> Iterator[tuple[str, str]]:
    """What is wrong with a request's dependencies, as (field, why): ids that are not job
    ids, repeats, too many, an unknown policy, or dependencies on a unique or debounced
    job (whose submit may answer an existing job instead of making one)."""
    bad_ids = [i for i, job_id in enumerate(depends_on) if not valid_id(job_id)]
    for i in bad_ids[:5]:
        yield f"depends_on[{i}]", "must be a job id"
    if len(set(depends_on)) != len(depends_on):
        yield "depends_on", "names a job more than once"
    if len(set(requests)) != len(requests):
        yield "depends_on_requests", "names a request more than once"
    if len(depends_on) + len(requests) > MAX_DEPENDENCIES:
        yield "depends_on", f"at most {MAX_DEPENDENCIES} dependencies per job"
    if policy not in tuple(Policy):
        yield "dependency_failure_policy", "must be CANCEL or RUN_ANYWAY"
    if keyed and (depends_on or requests):
        yield "depends_on", "a unique or debounced job cannot have dependencies"


def request_violations(index: int, requests: Sequence[int]) -> Iterator[tuple[str, str]]:
    """In-call references of request `index` of a SubmitJobs call: each must name an
    earlier request (a later one, or itself, could close a cycle)."""
    for i, ref in enumerate(requests):
        if not 0 <= ref < index:
            yield f"depends_on_requests[{i}]", f"must name an earlier request (0 to {index - 1})"


def failed_error(dependency_id: str, state_label: str) -> str:
    """The error of a job a failed dependency cancelled (its wording is relied on)."""
    return f"cancelled: dependency {dependency_id} ended {state_label}"


def batch_doc(batch_id: str, counts: Mapping[str, int], job_ids: Sequence[str]) -> dict[str, Any]:
    """The `batch` document a batch's callback finds in its payload."""
    return {"id": batch_id, "counts": dict(counts), "job_ids": list(job_ids)}
