"""Bulk actions from the command line: `conveyor dead retry`, `conveyor jobs retry|cancel|
delete --filter F`, and `conveyor bulk get|cancel ID` (RetryJobs, CancelJobs, DeleteJobs,
GetBulkOperation, CancelBulkOperation).

Without `--yes` a bulk command is a dry run: it prints how many jobs the action would
touch now and what would happen, and exits 0. With `--yes` it starts the operation and
prints it; `--wait` then follows it to its end with a progress bar (exit 0 when it
SUCCEEDED, 1 otherwise)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from conveyor.cli.common import AddrOption, JsonFlag, err, fail, message_dict, when
from conveyor.cli.common import client as client_for
from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.client import BulkOperation, Client

Action = Literal["retry", "cancel", "delete"]

jobs_app = typer.Typer(
    help="Act on every job a filter matches (dry run unless --yes).", no_args_is_help=True
)
bulk_app = typer.Typer(help="Follow or stop a bulk operation.", no_args_is_help=True)

FilterOption = Annotated[
    str,
    typer.Option(
        "--filter", help='An AIP-160 filter, as `conveyor list --filter`, e.g. labels.run = "7".'
    ),
]
YesFlag = Annotated[bool, typer.Option("--yes", help="Do it (without: a dry run that counts).")]
PerSecondOption = Annotated[
    int, typer.Option("--per-second", help="Jobs acted on per second (0: the server's 500).")
]
WaitFlag = Annotated[bool, typer.Option("--wait", help="Show progress until it ends.")]
MaxAttemptsOption = Annotated[
    int, typer.Option(help="Attempts each replay may make (0: the type's default).")
]

# What each action does, for the dry run's sentence.
_WHAT = {
    "retry": "replay {n} DEAD or CANCELLED job(s)",
    "cancel": "cancel {n} unfinished job(s)",
    "delete": "delete {n} finished job(s) with their attempts and artifacts",
}
# How often --wait asks for the operation (it has no stream).
POLL_SECONDS = 0.5


def dead_retry(
    filter: Annotated[
        str, typer.Option("--filter", help="Only DEAD jobs this AIP-160 filter matches.")
    ] = "",
    yes: YesFlag = False,
    per_second: PerSecondOption = 0,
    max_attempts: MaxAttemptsOption = 0,
    wait: WaitFlag = False,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Replay the DEAD jobs (all of yours, or those --filter matches), paced."""
    dead = f"state = DEAD AND ({filter})" if filter.strip() else "state = DEAD"
    _bulk("retry", dead, yes, per_second, wait, addr, as_json, max_attempts=max_attempts)


@jobs_app.command("retry")
def jobs_retry(
    filter: FilterOption,
    yes: YesFlag = False,
    per_second: PerSecondOption = 0,
    max_attempts: MaxAttemptsOption = 0,
    wait: WaitFlag = False,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Replay every DEAD or CANCELLED job the filter matches, as `conveyor retry` does."""
    _bulk("retry", filter, yes, per_second, wait, addr, as_json, max_attempts=max_attempts)


@jobs_app.command("cancel")
def jobs_cancel(
    filter: FilterOption,
    yes: YesFlag = False,
    per_second: PerSecondOption = 0,
    wait: WaitFlag = False,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel every unfinished job the filter matches, as `conveyor cancel` does."""
    _bulk("cancel", filter, yes, per_second, wait, addr, as_json)


@jobs_app.command("delete")
def jobs_delete(
    filter: FilterOption,
    yes: YesFlag = False,
    per_second: PerSecondOption = 0,
    wait: WaitFlag = False,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete every finished job the filter matches, with its attempts and artifacts."""
    _bulk("delete", filter, yes, per_second, wait, addr, as_json)


@bulk_app.command("get")
def bulk_get(
    operation_id: str, wait: WaitFlag = False, addr: AddrOption = None, as_json: JsonFlag = False
) -> None:
    """Print a bulk operation (with --wait: follow it to its end)."""
    with client_for(addr) as client:
        try:
            op = client.get_bulk_operation(operation_id)
            if wait:
                op = _follow(client, op, as_json)
        except ConveyorError as exc:
            fail(exc)
    _print(op, as_json)
    _exit_for(op, wait)


@bulk_app.command("cancel")
def bulk_cancel(operation_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Stop a running bulk operation (what it did stays done)."""
    with client_for(addr) as client:
        try:
            _print(client.cancel_bulk_operation(operation_id), as_json)
        except ConveyorError as exc:
            fail(exc)


def _bulk(
    action: Action,
    filter: str,
    yes: bool,
    per_second: int,
    wait: bool,
    addr: str | None,
    as_json: bool,
    *,
    max_attempts: int = 0,
) -> None:
    with client_for(addr) as client:
        try:
            op = _start(client, action, filter, yes, per_second, max_attempts)
            if op.dry_run:
                _print_dry_run(action, op, as_json)
                return
            if wait:
                op = _follow(client, op, as_json)
        except ConveyorError as exc:
            fail(exc)
    _print(op, as_json)
    _exit_for(op, wait)


def _start(
    client: Client, action: Action, filter: str, force: bool, per_second: int, max_attempts: int
) -> BulkOperation:
    if action == "retry":
        return client.retry_jobs(
            filter, force=force, per_second=per_second, max_attempts=max_attempts
        )
    if action == "cancel":
        return client.cancel_jobs(filter, force=force, per_second=per_second)
    return client.delete_jobs(filter, force=force, per_second=per_second)


def _print_dry_run(action: Action, op: BulkOperation, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"dry_run": True, "count": op.matched, "filter": op.filter}))
        return
    print(f"{op.matched} job(s) match {op.filter!r}.")
    err.print(f"Would {_WHAT[action].format(n=op.matched)}; run again with --yes to do it.")


def _follow(client: Client, op: BulkOperation, as_json: bool) -> BulkOperation:
    """Poll the operation until it ends, with a progress bar on a terminal."""
    if as_json or not err.is_terminal:
        while not op.ended:
            time.sleep(POLL_SECONDS)
            op = client.get_bulk_operation(op.id)
        return op
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(op.action.name.lower(), total=op.matched or None)
        while True:
            looked = op.done + op.skipped + op.failed
            bar.update(task, completed=looked, description=f"{op.action.name.lower()} {op.id}")
            if op.ended:
                return op
            time.sleep(POLL_SECONDS)
            op = client.get_bulk_operation(op.id)


def _print(op: BulkOperation, as_json: bool) -> None:
    if as_json:
        print(json.dumps(message_dict(op.raw)))
        return
    print(
        f"{op.id}  {op.action.name} {op.state.name}  matched={op.matched} done={op.done} "
        f"skipped={op.skipped} failed={op.failed}  {op.per_second}/s  "
        f"created {when(op.create_time)} finished {when(op.finish_time)}"
    )
    if op.error:
        print(f"  error: {op.error}")


def _exit_for(op: BulkOperation, waited: bool) -> None:
    """After --wait: 0 if it SUCCEEDED, 1 otherwise."""
    from conveyor.client import BulkOperationState

    if waited and op.state is not BulkOperationState.SUCCEEDED:
        raise typer.Exit(1)
