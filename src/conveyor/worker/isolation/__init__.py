"""Process isolation: a handler declared `@handler(..., isolation="process")` runs each
attempt in a child process of its own, which the worker can kill.

Why: a sync handler runs in one of the worker's threads and an async one on its event loop,
and neither can be stopped from outside. A handler past its timeout, or cancelled, keeps its
thread until it returns; a template or query that loops forever, or allocates without
bound, takes the worker (and every other owner's jobs on it) down with it. A child process
can be given a memory limit and be killed: SIGTERM, then SIGKILL after
`CONVEYOR_KILL_GRACE_SECONDS`, on cancel and on timeout; the worker survives, and the slot
is free again as soon as the child is gone.

What a handler sees is the same in a child: `ctx.progress`, `ctx.once`, `ctx.artifacts`,
`ctx.cancelled`, its logger, its result or exception. `pool` is the worker's side, `child`
the child's, `wire` what they say to each other.
"""

from conveyor.worker.isolation.pool import PoolStats, ProcessPool, describe_exit
from conveyor.worker.isolation.wire import Attempt, Call, Outcome, Progress, Setup

__all__ = [
    "Attempt",
    "Call",
    "Outcome",
    "PoolStats",
    "ProcessPool",
    "Progress",
    "Setup",
    "describe_exit",
]
