"""The SDK's typed view of the API's messages (conveyor.client.types): states as enums that
still equal the proto's numbers, payloads and results with their ints, times as UTC
datetimes with unset ones None, and the raw message kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from conveyor.client.types import (
    Attempt,
    AttemptOutcome,
    Batch,
    BlockedKind,
    DependencyFailurePolicy,
    Job,
    JobResult,
    JobState,
    JobUpdate,
    Page,
)
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb

CREATED = datetime(2026, 12, 6, 12, 0, 0, 250_000, tzinfo=UTC)


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    made = timestamp_pb2.Timestamp()
    made.FromDatetime(when)
    return made


def waiting_job() -> job_pb2.Job:
    payload = struct_pb2.Struct()
    payload.update({"rows": 2, "ratio": 0.5, "nested": {"count": 3}, "tags": ["a", 1]})
    return job_pb2.Job(
        id="0193", owner="alice", type="report.build", queue="reports",
        state=job_pb2.JOB_STATE_QUEUED, priority=5, payload=payload, max_attempts=5,
        create_time=stamp(CREATED), run_at=stamp(CREATED),
        timeout=duration_pb2.Duration(seconds=600),
        blocked_reason="queue 'reports' is paused",
        blocked=job_pb2.BlockedReason(kind=job_pb2.BLOCKED_KIND_PAUSED, queue="reports"),
    )  # fmt: skip


def test_a_job_reads_as_python_and_keeps_its_message() -> None:
    msg = waiting_job()
    job = Job.from_proto(msg)
    assert job.state is JobState.QUEUED and job.state == int(job_pb2.JOB_STATE_QUEUED)
    assert job.state.waiting and not job.state.terminal
    assert job.payload == {"nested": {"count": 3}, "ratio": 0.5, "rows": 2, "tags": ["a", 1]}
    assert type(job.payload["rows"]) is int, "a Struct's 2.0 is the 2 the client sent"
    assert job.create_time == CREATED and job.create_time.tzinfo is UTC
    assert job.start_time is None and job.finish_time is None and job.expire_time is None
    assert job.timeout == timedelta(minutes=10) and job.retention is None
    assert job.blocked is not None and job.blocked.kind is BlockedKind.PAUSED
    assert job.blocked.queue == "reports" and job.blocked.jobs_ahead is None
    assert job.raw is msg and "raw" not in repr(job)
    assert repr(job) == (
        "Job(id='0193', type='report.build', queue='reports', state=QUEUED, attempt=0,"
        " progress=0.0)"
    )


def test_a_job_is_a_view_of_its_message() -> None:
    """Making a Job copies nothing (a bulk of 1,000 pays for what is read); it reads the
    message as it is, and equals another Job of an equal message."""
    msg = waiting_job()
    job = Job(msg)
    msg.state = job_pb2.JOB_STATE_RUNNING
    assert job.state is JobState.RUNNING
    assert Job(waiting_job()) == Job(waiting_job()) and job != Job(waiting_job())
    assert job.payload is job.payload, "the payload is converted once"


def test_updates_results_and_attempts() -> None:
    done = waiting_job()
    done.state = job_pb2.JOB_STATE_SUCCEEDED
    done.ClearField("blocked")
    done.finish_time.CopyFrom(stamp(CREATED + timedelta(seconds=3)))
    update = JobUpdate.from_proto(pb.WatchJobResponse(sequence=7, job=done))
    assert update.sequence == 7 and update.job.state.terminal and update.job.blocked is None
    result = struct_pb2.Struct()
    result.update({"rows": 2})
    answer = pb.GetJobResultResponse(
        job=done, result=result, artifacts=[job_pb2.Artifact(name="report.txt", size=12)]
    )
    found = JobResult.from_proto(answer)
    assert found.result == {"rows": 2} and type(found.result["rows"]) is int
    assert [(a.name, a.size, a.url_expire_time) for a in found.artifacts] == [
        ("report.txt", 12, None)
    ]
    assert JobResult.from_proto(pb.GetJobResultResponse(job=done)).result is None
    attempt = job_pb2.JobAttempt(
        job_id="0193", attempt=1, outcome=job_pb2.ATTEMPT_OUTCOME_FAILED,
        start_time=stamp(CREATED), error="boom",
    )  # fmt: skip
    tried = Attempt.from_proto(attempt)
    assert tried.outcome is AttemptOutcome.FAILED and tried.start_time == CREATED
    assert tried.finish_time is None and tried.duration is None
    attempt.finish_time.CopyFrom(stamp(CREATED + timedelta(seconds=1.5)))
    assert Attempt.from_proto(attempt).duration == timedelta(seconds=1.5)
    assert update.raw.sequence == 7 and found.raw is answer and tried.raw is attempt


def test_a_page_iterates_its_items() -> None:
    page = Page([1, 2, 3], next_page_token="t")
    assert list(page) == [1, 2, 3] and len(page) == 3 and page.next_page_token == "t"


def test_every_blocked_kind_of_the_proto_reads_as_an_enum() -> None:
    """A job held by a concurrency or rate key (issue 25, items 3 and 4) made `job.blocked`
    raise ValueError: BlockedKind lacked their numbers. Every kind the proto has is one."""
    for name, number in job_pb2.BlockedKind.items():
        assert BlockedKind(number).name == name.removeprefix("BLOCKED_KIND_")
    held = Job(
        job_pb2.Job(
            blocked=job_pb2.BlockedReason(
                kind=job_pb2.BLOCKED_KIND_CONCURRENCY_KEY, concurrency_key="acme", limit=1
            )
        )
    )
    assert held.blocked is not None and held.blocked.kind is BlockedKind.CONCURRENCY_KEY
    assert (held.blocked.concurrency_key, held.blocked.limit) == ("acme", 1)


def test_a_job_waiting_for_dependencies_reads_them() -> None:
    """Guards issue 25, item 6: depends_on, the failure policy, the batch, and the blocked
    reason's counts and pending ids, typed."""
    msg = job_pb2.Job(
        state=job_pb2.JOB_STATE_SCHEDULED, depends_on=["a", "b", "c"], batch_id="b-1",
        dependency_failure_policy=job_pb2.DEPENDENCY_FAILURE_POLICY_RUN_ANYWAY,
        blocked=job_pb2.BlockedReason(
            kind=job_pb2.BLOCKED_KIND_DEPENDENCIES, dependencies_pending=2,
            dependencies_total=3, waiting_for=["b", "c"],
        ),
    )  # fmt: skip
    job = Job(msg)
    assert job.depends_on == ["a", "b", "c"] and job.batch_id == "b-1"
    assert job.dependency_failure_policy is DependencyFailurePolicy.RUN_ANYWAY
    job.depends_on.append("x")
    assert list(msg.depends_on) == ["a", "b", "c"], "a copy"
    blocked = job.blocked
    assert blocked is not None and blocked.kind is BlockedKind.DEPENDENCIES
    assert (blocked.dependencies_pending, blocked.dependencies_total) == (2, 3)
    assert blocked.waiting_for == ("b", "c")
    plain = Job(job_pb2.Job())
    assert plain.depends_on == [] and plain.batch_id == ""
    assert plain.dependency_failure_policy is DependencyFailurePolicy.UNSPECIFIED


def test_a_batch_reads_its_counts_and_times() -> None:
    msg = job_pb2.Batch(
        id="b-1", owner="alice", job_count=3, succeeded=1, dead=1, unfinished=1,
        callback_job_id="j-cb", create_time=stamp(CREATED),
    )  # fmt: skip
    batch = Batch.from_proto(msg)
    assert (batch.job_count, batch.succeeded, batch.dead, batch.cancelled) == (3, 1, 1, 0)
    assert not batch.ended and batch.create_time == CREATED and batch.raw is msg
    msg.unfinished = 0
    assert Batch.from_proto(msg).ended
