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


@queues_app.command("limits")
def limits(
    queue: str,
    max_running: Annotated[
        int | None, typer.Option(help="Jobs running at once over all workers (0: no cap).")
    ] = None,
    max_per_owner: Annotated[
        int | None,
        typer.Option(help="Jobs of one owner running at once (0: the workers' default)."),
    ] = None,
    rate: Annotated[
        int | None,
        typer.Option(
            help="Jobs that may start per --per window (0: none); alone, it keeps "
            "the queue's window."
        ),
    ] = None,
    per: Annotated[float | None, typer.Option(help="The rate window in seconds.")] = None,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Change the queue's limits given as options and keep its others (0 removes one);
    with none given, show its limits."""
    given = {
        "max_running": max_running,
        "max_running_per_owner": max_per_owner,
        "rate_jobs": rate,
        "rate_interval": per,
    }
    named = {name: value for name, value in given.items() if value is not None}
    if not named:
        found = call(addr, lambda c: c.queue_stats(queue))
        if as_json:
            _print(found, as_json)
        else:
            print(_describe_limits(found[0]))
        err.print(
            f"change them with: conveyor queues limits {queue} [--max-running N] "
            "[--max-per-owner N] [--rate N --per SECONDS] (the options given change, "
            "the others stay; 0 removes a limit)"
        )
        return
    _print([call(addr, lambda c: c.update_queue_limits(queue, **named))], as_json)


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
        + ("  PAUSED" if stats.paused else "")
    )


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
            f"running={w.running}/{w.concurrency} "
            f"last_heartbeat={w.last_heartbeat.ToDatetime().isoformat(timespec='seconds')}Z"
        )
