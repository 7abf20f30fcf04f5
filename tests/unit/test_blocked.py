"""Why a waiting job waits (`conveyor.jobs.blocked`): every `BlockedKind` has a constructor
that the library calls, each kind's text keeps its wording, and its message sets exactly
the fields that job.proto's comment on the kind promises a client author."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from conveyor.jobs.blocked import Blocked, BlockedKind
from conveyor.jobs.model import Job, JobState
from conveyor.v1 import job_pb2

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "src" / "conveyor"
JOB_PROTO = ROOT / "protos" / "conveyor" / "v1" / "job.proto"
UNTIL = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z

# One example per constructor, every detail it takes set (so every field it can set is
# set), and the text it must render.
EXAMPLES: dict[str, tuple[Blocked, str]] = {
    "scheduled": (Blocked.scheduled(UNTIL), "scheduled for 2026-01-01T00:00:00.123Z"),
    "backoff": (
        Blocked.backoff(UNTIL, 2, 5),
        "waiting for backoff until 2026-01-01T00:00:00.123Z after attempt 2 of 5 failed",
    ),
    "paused": (Blocked.paused("q"), "queue 'q' is paused"),
    "queue_concurrency_limit": (
        Blocked.queue_concurrency_limit("q", 3, 3),
        "queue 'q' is at its concurrency limit (3 of 3 running)",
    ),
    "owner_concurrency_limit": (
        Blocked.owner_concurrency_limit("q", "alice", 2, 2),
        "owner 'alice' is at its concurrency limit in queue 'q' (2 of 2 running)",
    ),
    "api_key_concurrency_limit": (
        Blocked.api_key_concurrency_limit("q", "k1", 1, 1),
        "API key k1 is at its concurrency limit in queue 'q' (1 of 1 running)",
    ),
    "concurrency_key_limit": (
        Blocked.concurrency_key_limit("q", "cust-1", 1, 1),
        "concurrency key 'cust-1' is at its concurrency limit in queue 'q' (1 of 1 running)",
    ),
    "rate_key_limited": (
        Blocked.rate_key_limited("q", "partner-a", 5, 1000, UNTIL),
        "rate key 'partner-a' is rate limited (5 per 1000 ms) until 2026-01-01T00:00:00.123Z",
    ),
    "rate_limited": (
        Blocked.rate_limited("q", 5, 1000, UNTIL),
        "queue 'q' is rate limited (5 per 1000 ms) until 2026-01-01T00:00:00.123Z",
    ),
    "queue_never_served": (
        Blocked.queue_never_served("q"),
        "no worker has ever served queue 'q' and no admin configured it: the job waits "
        "until a worker serves that queue",
    ),
    "no_worker": (
        Blocked.no_worker("q", "t", type_unverified=True),
        "no live worker serves queue 'q', and job type 't' cannot be checked until one does "
        "(the API does not load it and no live worker announces it)",
    ),
    "no_worker_for_type": (
        Blocked.no_worker_for_type("q", "t"),
        "no live worker on queue 'q' handles job type 't'",
    ),
    "in_line": (
        Blocked.in_line("q", 0),
        "waiting for a worker slot (0 job(s) ahead in queue 'q')",
    ),
    "enqueue_pending": (
        Blocked.enqueue_pending("redis refused it (out of memory)"),
        "committed; waiting to be enqueued: redis refused it (out of memory)",
    ),
    "queue_unreachable": (Blocked.queue_unreachable(), "the queue (redis) cannot be reached"),
    "dependencies": (
        Blocked.dependencies(2, 3, ("a", "b")),
        "waiting for 2 of 3 dependencies: a, b",
    ),
}


def constructors() -> set[str]:
    """Blocked's classmethods: the one way each kind is made."""
    return {name for name, value in vars(Blocked).items() if isinstance(value, classmethod)}


def promised_fields() -> dict[str, set[str]]:
    """BlockedKind value name -> the fields its comment in job.proto says it sets."""
    text = JOB_PROTO.read_text()
    body = text[text.index("enum BlockedKind {") :]
    body = body[: body.index("\n}")]
    promised: dict[str, set[str]] = {}
    comment: list[str] = []
    for line in body.splitlines()[1:]:
        line = line.strip()
        if line.startswith("//"):
            comment.append(line.removeprefix("//").strip())
            continue
        value = re.match(r"BLOCKED_KIND_(\w+) = \d+;", line)
        assert value, line
        said = " ".join(comment)
        sets = said[said.index("Sets") :] if "Sets" in said else ""
        promised[value.group(1)] = set(re.findall(r"`(\w+)`", sets))
        comment = []
    return promised


def test_the_domain_kinds_mirror_the_proto_enum() -> None:
    """Guards the mirror: same names, same numbers, both ways."""
    assert {k.name: k.value for k in BlockedKind} == {
        name.removeprefix("BLOCKED_KIND_"): number for name, number in job_pb2.BlockedKind.items()
    }


def test_every_kind_is_made_by_a_constructor_the_library_calls() -> None:
    """Guards against a dead enum value: every BlockedKind but UNSPECIFIED comes out of a
    constructor of Blocked, and every constructor is called by a producer in the library
    (outside conveyor.jobs.blocked itself), so a kind no code path reports cannot stay."""
    assert constructors() == set(EXAMPLES), "each constructor has an example here"
    made = {blocked.kind for blocked, _ in EXAMPLES.values()}
    assert made == set(BlockedKind) - {BlockedKind.UNSPECIFIED}
    called: set[str] = set()
    for path in LIBRARY.rglob("*.py"):
        if path.parent.name == "v1" or path.name == "blocked.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "Blocked"
            ):
                called.add(node.func.attr)
    assert constructors() - called == set(), "constructors no producer calls"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_kind_renders_its_text_and_sets_what_its_comment_promises(name: str) -> None:
    """Guards both renderings of one value: the text keeps today's wording, and the
    message sets the kind and exactly the detail fields job.proto's comment names."""
    blocked, text = EXAMPLES[name]
    assert blocked.text == text
    msg = blocked.to_proto()
    assert msg.kind == blocked.kind.value
    set_fields = {field.name for field, _ in msg.ListFields()} - {"kind"}
    assert set_fields == promised_fields()[blocked.kind.name]


def test_the_details_reach_the_message() -> None:
    """Guards the values, not just which fields: times, durations, counts and names."""
    rated = Blocked.rate_limited("q", 5, 1500, UNTIL).to_proto()
    assert rated.until.ToMilliseconds() == UNTIL
    assert rated.rate_interval.ToMilliseconds() == 1500 and rated.rate_jobs == 5
    key = Blocked.api_key_concurrency_limit("q", "k1", 1, 2).to_proto()
    assert (key.queue, key.api_key_id, key.running, key.limit) == ("q", "k1", 1, 2)
    pushed = Blocked.rate_key_limited("q", "partner-a", 0, 0, UNTIL)
    assert pushed.text == (
        "rate key 'partner-a' was pushed back by a handler until 2026-01-01T00:00:00.123Z"
    )
    assert (pushed.to_proto().rate_key, pushed.to_proto().until.ToMilliseconds()) == (
        "partner-a",
        UNTIL,
    )
    backoff = Blocked.backoff(UNTIL, 2, 5).to_proto()
    assert (backoff.attempt, backoff.max_attempts) == (2, 5)


def test_an_unknown_place_in_line_and_a_checked_type_are_told_apart() -> None:
    """Guards the two variants: `jobs_ahead` unset (not 0) when the place is unknown, and
    a queue without workers whose job type is known says only that."""
    unknown = Blocked.in_line("q", None)
    assert unknown.text == "waiting for a worker"
    assert not unknown.to_proto().HasField("jobs_ahead")
    assert Blocked.in_line("q", 0).to_proto().HasField("jobs_ahead")
    checked = Blocked.no_worker("q", "t", type_unverified=False)
    assert checked.text == "no live worker serves queue 'q'"
    assert not checked.to_proto().type_unverified


def job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {
        "id": "0190f3c4-0000-7000-8000-000000000000", "owner": "alice", "type": "noop",
        "queue": "q", "state": JobState.QUEUED, "priority": 5, "payload": {},
        "max_attempts": 3, "timeout_ms": 1000, "create_time": UNTIL, "run_at": UNTIL,
    }  # fmt: skip
    return Job(**(defaults | fields))


def test_a_job_carries_text_and_message_together_or_neither() -> None:
    """Guards Job.to_proto: `blocked_reason` and `blocked` come from one value, so a job
    has both (saying the same) or neither (running, finished)."""
    waiting = job(blocked=Blocked.paused("q")).to_proto()
    assert waiting.blocked_reason == "queue 'q' is paused"
    assert waiting.blocked == job_pb2.BlockedReason(kind=job_pb2.BLOCKED_KIND_PAUSED, queue="q")
    running = job(state=JobState.RUNNING).to_proto()
    assert running.blocked_reason == "" and not running.HasField("blocked")
