"""`conveyor schedules …`: recurring jobs (ScheduleService). Each bucket of a schedule makes
one job, however many schedulers run."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from conveyor.cli.common import (
    AddrOption,
    JsonFlag,
    call,
    err,
    message_dict,
    parse_payload,
    parse_time,
)
from conveyor.v1 import schedule_service_pb2 as pb

schedules_app = typer.Typer(
    help="Recurring jobs: cron (with a time zone) or a fixed interval.", no_args_is_help=True
)


def _print(schedule: pb.Schedule, as_json: bool) -> None:
    if as_json:
        print(json.dumps(message_dict(schedule)))
        return
    timing = (
        f"cron {schedule.cron!r} {schedule.time_zone}"
        if schedule.WhichOneof("timing") == "cron"
        else f"every {schedule.interval.ToTimedelta().total_seconds():g}s"
    )
    upcoming = ", ".join(t.ToDatetime().isoformat() + "Z" for t in schedule.next_run_times[:3])
    state = "PAUSED" if schedule.paused else f"next: {upcoming or 'none (over)'}"
    print(f"{schedule.id}  {schedule.job_template.type:<16} {timing}  {state}")


@schedules_app.command("create")
def create(
    type: Annotated[str, typer.Argument(help="Job type each bucket makes.")],
    cron: Annotated[str, typer.Option(help="Cron expression, e.g. '0 3 * * *'.")] = "",
    every: Annotated[float, typer.Option(help="Or a fixed interval in seconds.")] = 0.0,
    tz: Annotated[str, typer.Option("--tz", help="IANA time zone of --cron.")] = "UTC",
    payload: Annotated[str, typer.Option(help="Payload as a JSON object.")] = "{}",
    queue: Annotated[str, typer.Option(help="Queue name.")] = "",
    priority: Annotated[int | None, typer.Option(help="0-9, higher first.")] = None,
    catch_up: Annotated[
        str, typer.Option(help="Missed buckets after downtime: skip, once or all.")
    ] = "skip",
    catch_up_limit: Annotated[int, typer.Option(help="With --catch-up all: at most.")] = 0,
    start: Annotated[str, typer.Option(help="No bucket before (ISO 8601).")] = "",
    end: Annotated[str, typer.Option(help="No bucket after (ISO 8601).")] = "",
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a schedule and print it with its next run times."""
    from conveyor.client import schedule_request

    if catch_up not in ("skip", "once", "all"):
        err.print("--catch-up must be skip, once or all")
        raise typer.Exit(2)
    request = schedule_request(
        type,
        parse_payload(payload),
        cron=cron,
        every=every,
        time_zone=tz,
        catch_up=catch_up,
        catch_up_limit=catch_up_limit,
        start=parse_time(start, "--start"),
        end=parse_time(end, "--end"),
        description=description,
        queue=queue,
        priority=priority,
    )
    _print(call(addr, lambda c: c.create_schedule(request)), as_json)


@schedules_app.command("list")
def list_schedules(
    page_size: Annotated[int, typer.Option(help="Schedules per page.")] = 50,
    page_token: Annotated[str, typer.Option(help="From a previous page.")] = "",
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Your schedules, newest first."""
    page = call(addr, lambda c: c.list_schedules(page_size=page_size, page_token=page_token))
    if as_json:
        found = [message_dict(s) for s in page.schedules]
        print(json.dumps({"schedules": found, "next_page_token": page.next_page_token}))
        return
    for schedule in page.schedules:
        _print(schedule, False)
    if page.next_page_token:
        err.print(f"more: --page-token {page.next_page_token}")


@schedules_app.command("get")
def get(schedule_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """A schedule and its next run times (every one the API gives: five)."""
    schedule = call(addr, lambda c: c.get_schedule(schedule_id))
    _print(schedule, as_json)
    if not as_json and not schedule.paused:
        for at in schedule.next_run_times:
            print(f"  next run {at.ToDatetime().isoformat()}Z")


@schedules_app.command("pause")
def pause(schedule_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Stop making jobs (buckets passed while paused are not caught up)."""
    _print(call(addr, lambda c: c.pause_schedule(schedule_id)), as_json)


@schedules_app.command("resume")
def resume(schedule_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Make jobs again from the next bucket."""
    _print(call(addr, lambda c: c.resume_schedule(schedule_id)), as_json)


@schedules_app.command("trigger")
def trigger(schedule_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Make one job from the schedule now and print its id."""
    job = call(addr, lambda c: c.trigger_schedule(schedule_id))
    print(json.dumps(message_dict(job)) if as_json else job.id)


@schedules_app.command("delete")
def delete(schedule_id: str, addr: AddrOption = None) -> None:
    """Delete a schedule (the jobs it made stay)."""
    call(addr, lambda c: c.delete_schedule(schedule_id))
    print(f"deleted schedule {schedule_id} (the jobs it made stay)")
