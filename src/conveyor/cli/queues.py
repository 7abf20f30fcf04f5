"""`conveyor queues …` and `conveyor workers`: what an admin key sees of queues and workers
and how it holds them back (GetQueueStats, PauseQueue, ResumeQueue, UpdateQueueLimits,
ListWorkers)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from conveyor.cli.common import AddrOption, JsonFlag, call, err, message_dict
from conveyor.v1 import queue_pb2

queues_app = typer.Typer(
    help="Queue depth, limits and pausing across all workers (admin key).", no_args_is_help=True
)


def _describe(stats: queue_pb2.QueueStats) -> str:
    limits = stats.limits
    held = ["PAUSED"] if stats.paused else []
    if limits.max_running:
        held.append(f"max {limits.max_running} running")
    if limits.max_running_per_owner:
        held.append(f"max {limits.max_running_per_owner} per owner")
    if limits.max_running_per_key:
        held.append(f"max {limits.max_running_per_key} per concurrency key")
    if limits.rate_per_key_jobs:
        held.append(f"{_per_key_rate(limits)} per rate key")
    if limits.shards > 1:
        held.append(f"{limits.shards} shards")
    if limits.rate_jobs:
        held.append(
            f"{limits.rate_jobs} per {limits.rate_interval.ToTimedelta().total_seconds():g}s"
        )
    by_priority = " ".join(f"p{p}={n}" for p, n in enumerate(stats.queued_by_priority) if n)
    oldest = (
        f"{stats.oldest_wait.ToTimedelta().total_seconds():.1f}s"
        if stats.HasField("oldest_wait")
        else "-"
    )
    return (
        f"{stats.queue:<20} queued={stats.queued} running={stats.running} "
        f"scheduled={stats.scheduled} retrying={stats.retrying} oldest_wait={oldest} "
        f"done/s={stats.throughput_per_second:.2f} failure_rate={stats.failure_rate:.1%}"
        + (f"  [{', '.join(held)}]" if held else "")
        + (f"\n{'':<20} {by_priority}" if by_priority else "")
    )


def _print(found: list[queue_pb2.QueueStats], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"queues": [message_dict(s) for s in found]}))
        return
    for stats in found:
        print(_describe(stats))


@queues_app.command("stats")
def stats(
    queue: Annotated[str, typer.Argument(help="One queue; all known queues if left out.")] = "",
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Depth by state and priority, oldest wait, limits and the last minute's throughput."""
    _print(call(addr, lambda c: c.queue_stats(queue)), as_json)


@queues_app.command("pause")
def pause(queue: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Stop every worker from starting the queue's jobs (running jobs go on)."""
    _print([call(addr, lambda c: c.pause_queue(queue))], as_json)


@queues_app.command("resume")
def resume(queue: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Let workers start the queue's jobs again, at once."""
    _print([call(addr, lambda c: c.resume_queue(queue))], as_json)


MaxRunningOption = Annotated[
    int | None, typer.Option(help="Jobs running at once over all workers (0: no cap).")
]
MaxPerOwnerOption = Annotated[
    int | None,
    typer.Option(help="Jobs of one owner running at once (0: the workers' default)."),
]
MaxPerKeyOption = Annotated[
    int | None,
    typer.Option(help="Jobs with one concurrency key running at once (0: no cap)."),
]
RateOption = Annotated[
    int | None,
    typer.Option(
        help="Jobs that may start per --per window (0: none); alone, it keeps the queue's window."
    ),
]
PerOption = Annotated[float | None, typer.Option(help="The rate window in seconds.")]
# The per-key rate's pair, named after the queue's (--rate/--per) but apart from it: both
# may be set in one call, and `--per` already means the queue's window.
RatePerKeyOption = Annotated[
    int | None,
    typer.Option(
        help="Jobs with one rate key that may start per --per-key-interval window (0: none); "
        "alone, it keeps the queue's per-key window."
    ),
]
PerKeyIntervalOption = Annotated[
    float | None, typer.Option(help="The per-key rate window in seconds.")
]
ShardsOption = Annotated[
    int | None,
    typer.Option(
        help="Spread the queue over N Redis hash tags (on Redis Cluster, over several "
        "primaries); shards can be added, never removed."
    ),
]


@queues_app.command("create")
def create(
    queue: str,
    shards: ShardsOption = 1,
    max_running: MaxRunningOption = None,
    max_per_owner: MaxPerOwnerOption = None,
    rate: RateOption = None,
    per: PerOption = None,
    max_per_key: MaxPerKeyOption = None,
    rate_per_key: RatePerKeyOption = None,
    per_key_interval: PerKeyIntervalOption = None,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Give a queue settings of its own: its shard count and any limits given (an existing
    queue keeps the limits not given; its shards can only grow)."""
    named = _named(
        max_running, max_per_owner, rate, per, shards, max_per_key, rate_per_key, per_key_interval
    )
    _print([call(addr, lambda c: c.update_queue_limits(queue, **named))], as_json)


@queues_app.command("limits")
def limits(
    queue: str,
    max_running: MaxRunningOption = None,
    max_per_owner: MaxPerOwnerOption = None,
    rate: RateOption = None,
    per: PerOption = None,
    shards: ShardsOption = None,
    max_per_key: MaxPerKeyOption = None,
    rate_per_key: RatePerKeyOption = None,
    per_key_interval: PerKeyIntervalOption = None,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Change the queue's limits given as options and keep its others (0 removes one);
    with none given, show its limits."""
    named = _named(
        max_running, max_per_owner, rate, per, shards, max_per_key, rate_per_key, per_key_interval
    )
    if not named:
        found = call(addr, lambda c: c.queue_stats(queue))
        if as_json:
            _print(found, as_json)
        else:
            print(_describe_limits(found[0]))
        err.print(
            f"change them with: conveyor queues limits {queue} [--max-running N] "
            "[--max-per-owner N] [--max-per-key N] [--rate N --per SECONDS] "
            "[--rate-per-key N --per-key-interval SECONDS] [--shards N] (the options given "
            "change, the others stay; 0 removes a limit)"
        )
        return
    _print([call(addr, lambda c: c.update_queue_limits(queue, **named))], as_json)


def _named(
    max_running: int | None,
    max_per_owner: int | None,
    rate: int | None,
    per: float | None,
    shards: int | None,
    max_per_key: int | None = None,
    rate_per_key: int | None = None,
    per_key_interval: float | None = None,
) -> dict[str, int | float]:
    """The limits given, by their QueueLimits names (the update mask's paths)."""
    given = {
        "max_running": max_running,
        "max_running_per_owner": max_per_owner,
        "rate_jobs": rate,
        "rate_interval": per,
        "shards": shards,
        "max_running_per_key": max_per_key,
        "rate_per_key_jobs": rate_per_key,
        "rate_per_key_interval": per_key_interval,
    }
    return {name: value for name, value in given.items() if value is not None}


def _describe_limits(stats: queue_pb2.QueueStats) -> str:
    """The queue's limits, every one (`none` where it has no such limit; a per-owner cap
    left 0 is the workers' CONVEYOR_DEFAULT_MAX_RUNNING_PER_OWNER)."""
    limits = stats.limits
    rate = (
        f"{limits.rate_jobs} per {limits.rate_interval.ToTimedelta().total_seconds():g}s"
        if limits.rate_jobs
        else "none"
    )
    return (
        f"{stats.queue}: max_running={limits.max_running or 'none'} "
        f"max_per_owner={limits.max_running_per_owner or 'default'} rate={rate}"
        + (f" max_per_key={limits.max_running_per_key}" if limits.max_running_per_key else "")
        + (f" rate_per_key={_per_key_rate(limits)}" if limits.rate_per_key_jobs else "")
        + (f" shards={limits.shards}" if limits.shards > 1 else "")
        + ("  PAUSED" if stats.paused else "")
    )


def _per_key_rate(limits: queue_pb2.QueueLimits) -> str:
    window = limits.rate_per_key_interval.ToTimedelta().total_seconds()
    return f"{limits.rate_per_key_jobs} per {window:g}s"


def workers(
    queue: Annotated[str, typer.Option(help="Only workers serving this queue.")] = "",
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List live workers: queues, handlers, concurrency, running jobs, last heartbeat."""
    found: list[queue_pb2.Worker] = call(addr, lambda c: c.workers(queue))
    if as_json:
        print(json.dumps({"workers": [message_dict(w) for w in found]}))
        return
    for w in found:
        print(
            f"{w.worker_id:<36} host={w.host} queues={','.join(w.queues)} "
            f"types={','.join(w.types) or '-'} running={w.running}/{w.concurrency} "
            f"last_heartbeat={w.last_heartbeat.ToDatetime().isoformat(timespec='seconds')}Z"
        )
