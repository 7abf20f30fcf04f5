"""`conveyor batches get ID`: a batch (the jobs of one SubmitJobs with `on_complete`) and
how many of its jobs ended how (GetBatch). Batches are made with the SDK's `submit_batch`;
their jobs carry the batch's id (`conveyor get ID` shows it as `batch=`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from conveyor.cli.common import AddrOption, JsonFlag, call, message_dict, when

if TYPE_CHECKING:
    from conveyor.client import Batch

batches_app = typer.Typer(
    help="Batches: jobs submitted together with a callback that runs once they all ended.",
    no_args_is_help=True,
)


@batches_app.command("get")
def batches_get(batch_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Print a batch: its jobs' outcomes so far and its callback job."""
    batch = call(addr, lambda client: client.get_batch(batch_id))
    if as_json:
        print(json.dumps(message_dict(batch.raw)))
        return
    print(_line(batch))


def _line(batch: Batch) -> str:
    """One line: the counts by final state, what is left, and the callback to follow."""
    state = "ended" if batch.ended else f"{batch.unfinished} unfinished"
    return (
        f"{batch.id}  {batch.job_count} jobs: {batch.succeeded} succeeded, {batch.dead} dead, "
        f"{batch.cancelled} cancelled, {state}  callback={batch.callback_job_id}  "
        f"created {when(batch.create_time)}"
    )
