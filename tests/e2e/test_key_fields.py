"""The two request fields that put a job under a per-key limit of its queue (issue 25,
items 3 and 4): `concurrency_key` (max_running_per_key) and `rate_key` (rate_per_key_*).
Both travel the same way, from the request through its checks and fingerprint to the
job's hot state, its row, the Job message, ListJobs' filter, the CLI and schedule
templates, so one set of checks, run for each field, guards both. What each limit does
with its key is in test_concurrency_keys.py and test_rate_keys.py."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor.client import AsyncClient, Job, schedule_request
from conveyor.errors import AlreadyExists, InvalidArgument
from conveyor.v1 import schedule_service_pb2
from tests.processes import Keys, Stack


@dataclass(frozen=True)
class KeyField:
    """A key field: its name on SubmitJobRequest, Job, JobTemplate and in ListJobs'
    filter (the SDK's keyword too), and `conveyor submit`'s option for it."""

    name: str
    cli_option: str

    def given(self, key: str) -> dict[str, Any]:
        """The SDK's keyword arguments that set the field to `key`."""
        return {self.name: key}

    def on(self, holder: Job | schedule_service_pb2.JobTemplate) -> str:
        """The field's value on a job or a schedule's job template."""
        value: str = getattr(holder, self.name)
        return value


KEY_FIELDS = [
    KeyField("concurrency_key", "--concurrency-key"),
    KeyField("rate_key", "--rate-key"),
]
each_key_field = pytest.mark.parametrize("field", KEY_FIELDS, ids=[f.name for f in KEY_FIELDS])


@each_key_field
async def test_a_key_is_checked_echoed_fingerprinted_and_found_by_its_filter(
    stack: Stack, keys: Keys, alice: AsyncClient, field: KeyField
) -> None:
    """Guards the field's way through a submit: a key is checked (printable, at most 256;
    INVALID_ARGUMENT on the field otherwise), echoed on the job and read back from its hot
    state, part of the request an idempotency key is compared with (the same key: the
    same job; another: ALREADY_EXISTS), found in the job's row by ListJobs' filter
    `<field> = "..."`, and kept by `conveyor submit`'s option for it."""
    queue = f"keys-{uuid.uuid4().hex[:8]}"
    for key in ("x" * 257, "tab\there"):
        with pytest.raises(InvalidArgument) as refused:
            await alice.submit("noop", queue=queue, **field.given(key))
        assert [v.field for v in refused.value.violations] == [field.name]
    first = {**field.given("k-1"), "idempotency_key": f"ik-{queue}"}
    job = await alice.submit("noop", queue=queue, **first)
    assert field.on(job) == "k-1"
    assert field.on(await alice.get(job.id)) == "k-1"
    again = await alice.submit("noop", queue=queue, **first)
    assert again.id == job.id
    with pytest.raises(AlreadyExists):
        await alice.submit("noop", queue=queue, **{**first, **field.given("k-2")})
    listed = await alice.list(filter=f'{field.name} = "k-1" AND queue = "{queue}"')
    assert [j.id for j in listed.items] == [job.id]
    made = stack.cli("submit", "noop", "--queue", queue, field.cli_option, "cli-key", "--json",
                     key=keys.alice)  # fmt: skip
    assert json.loads(made.stdout)[field.name] == "cli-key"


@each_key_field
async def test_a_schedules_jobs_carry_its_key(alice: AsyncClient, field: KeyField) -> None:
    """Guards JobTemplate's key field: the schedule keeps it and each job it makes (here by
    TriggerSchedule) has it, so a recurring job shares its key's cap or rate."""
    made = await alice.create_schedule(
        schedule_request("noop", every=3600, queue="parked", **field.given("nightly"))
    )
    assert field.on(made.job_template) == "nightly"
    job = await alice.trigger_schedule(made.id)
    assert field.on(job) == "nightly"
    await alice.delete_schedule(made.id)
