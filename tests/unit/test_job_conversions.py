"""The job model's conversions made cheaper for bulk submits (issue 21) against what they
replaced: the request fingerprint (the same hash values, so keys reused across versions
still compare), the proto (`FromMilliseconds` on every time), the Redis hot state (the
same strings the queue wrote), and the validation of a request (the same spec, or the same
violations)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import compact_json
from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs import model
from conveyor.jobs.blocked import Blocked
from conveyor.jobs.model import (
    NO_OVERRIDES,
    Job,
    JobSpec,
    JobState,
    duration_ms,
    now_ms,
    spec_from_proto,
    timestamp_ms,
)
from conveyor.jobs.retry import RetryOverrides, RetryPolicy
from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb

TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=12)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
MS = st.integers(0, 2**43)
OPTIONAL_MS = st.none() | MS

# Fingerprints the versions before issue 21 stored (computed by that code): a reused key
# must compare equal with them.
STORED_HASHES = [
    (JobSpec(type="noop"), "7e56d28510191eb02bda13f1b6b971e2c8d40bba4bd76dad8dee579e659f4638"),
    (
        JobSpec(
            type="email.send",
            payload={
                "to": "a@b.c", "n": 3, "x": 1.5, "big": 1e16, "tags": ["é", "\x7f"],
                "nested": {"z": None, "a": True},
            },
            queue="mail", priority=9, max_attempts=4, timeout_ms=30000,
        ),
        "4dc4c857cec4a7433214c057d97348ec6c697e28b7ec4aa896fb6c422dbaceee",
    ),
    (
        JobSpec(
            type="noop", run_at=1796540371011, retention_ms=60000,
            retry=RetryOverrides(initial_ms=100, max_ms=1000, multiplier=1.5, jitter=0.25),
        ),
        "eeb0f04a2af462d04f578a34ba795a6f2fb3d83905b47034a2b6fc0457879ea9",
    ),
    (
        JobSpec(type="noop", delay_ms=5000),
        "8ad897d2eee3ba5c0becb6391bd21aa160577b6ad3a847d5e274b33dfbf30b81",
    ),
]  # fmt: skip


def reference_hash(spec: JobSpec) -> str:
    """The fingerprint as it was computed before: `json.dumps` of the same document."""
    r = spec.retry
    doc = [
        spec.type, spec.payload, spec.queue, spec.priority, spec.run_at, spec.max_attempts,
        *([spec.delay_ms] if spec.delay_ms else []),
        *([["retention", spec.retention_ms]] if spec.retention_ms else []),
        spec.timeout_ms, [r.initial_ms, r.max_ms, r.multiplier, r.jitter],
    ]  # fmt: skip
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


def test_fingerprints_are_the_ones_older_versions_stored() -> None:
    for spec, stored in STORED_HASHES:
        assert spec.request_hash() == stored == reference_hash(spec)


SPECS = st.builds(
    JobSpec,
    type=TEXT,
    payload=st.dictionaries(TEXT, JSON, max_size=6),
    queue=TEXT,
    priority=st.integers(0, 9),
    run_at=OPTIONAL_MS,
    delay_ms=st.integers(0, 10**9),
    max_attempts=st.integers(0, 100),
    timeout_ms=st.integers(0, 10**9),
    retry=st.builds(
        RetryOverrides,
        initial_ms=st.none() | MS,
        max_ms=st.none() | MS,
        multiplier=st.none() | st.floats(1, 100),
        jitter=st.none() | st.floats(0, 1),
    ),
    retention_ms=st.integers(0, 10**12),
)


@settings(max_examples=300, deadline=None)
@given(SPECS)
def test_the_fingerprint_is_the_json_dumps_one(spec: JobSpec) -> None:
    assert spec.request_hash() == reference_hash(spec)


def reference_proto(job: Job, payload: bool = True) -> job_pb2.Job:
    """`Job.to_proto` as it was before: every field set, every time by FromMilliseconds."""
    msg = job_pb2.Job(
        id=job.id, owner=job.owner, type=job.type, queue=job.queue,
        state=job.state.value,  # type: ignore[arg-type]
        priority=job.priority, attempt=job.attempt, max_attempts=job.max_attempts,
        progress=job.progress, progress_message=job.progress_message, error=job.error,
        idempotency_key=job.idempotency_key or "", retry=job.retry.to_proto(),
    )  # fmt: skip
    if job.blocked is not None:
        msg.blocked_reason = job.blocked.text
        msg.blocked.CopyFrom(job.blocked.to_proto())
    if payload and job.payload:
        msg.payload.update(job.payload)
    msg.run_at.FromMilliseconds(job.run_at)
    msg.create_time.FromMilliseconds(job.create_time)
    if job.start_time is not None:
        msg.start_time.FromMilliseconds(job.start_time)
    if job.finish_time is not None:
        msg.finish_time.FromMilliseconds(job.finish_time)
    msg.timeout.FromMilliseconds(job.timeout_ms)
    if job.retention_ms is not None:
        msg.retention.FromMilliseconds(job.retention_ms)
        if job.finish_time is not None and job.state.terminal:
            msg.expire_time.FromMilliseconds(job.finish_time + job.retention_ms)
    return msg


def reference_hot(job: Job) -> dict[str, str]:
    """The hot state as the queue wrote it before: `to_hot`'s values, each made a str."""
    hot: dict[str, Any] = {
        "id": job.id, "owner": job.owner, "type": job.type, "queue": job.queue,
        "state": int(job.state), "priority": job.priority,
        "payload": compact_json.dumps(job.payload), "max_attempts": job.max_attempts,
        "timeout_ms": job.timeout_ms, "create_time": job.create_time, "run_at": job.run_at,
        "attempt": job.attempt, "progress": job.progress,
        "progress_message": job.progress_message, "error": job.error,
        "retry": compact_json.dumps(job.retry.to_doc()), "fence": job.fence,
        "key_id": job.key_id, "key_cap": job.key_cap,
    }  # fmt: skip
    for name in ("idempotency_key", "start_time", "finish_time", "retention_ms"):
        if getattr(job, name) is not None:
            hot[name] = getattr(job, name)
    if job.trace_parent:
        hot["trace_parent"] = job.trace_parent
    return {name: str(value) for name, value in hot.items()}


JOBS = st.builds(
    Job,
    id=st.uuids().map(str),
    owner=TEXT,
    type=TEXT,
    queue=TEXT,
    state=st.sampled_from(list(JobState)),
    priority=st.integers(0, 9),
    payload=st.dictionaries(TEXT, JSON, max_size=4),
    max_attempts=st.integers(0, 100),
    timeout_ms=st.integers(-(10**12), 10**12),
    create_time=MS,
    run_at=MS,
    attempt=st.integers(0, 100),
    progress=st.floats(0, 100),
    progress_message=TEXT,
    error=TEXT,
    idempotency_key=st.none() | TEXT,
    start_time=OPTIONAL_MS,
    finish_time=OPTIONAL_MS,
    retry=st.builds(RetryPolicy, MS, MS, st.floats(1, 100), st.floats(0, 1)),
    fence=st.integers(0, 1000),
    key_id=TEXT,
    key_cap=st.integers(0, 1000),
    retention_ms=st.none() | st.integers(-(10**12), 10**12),
    trace_parent=TEXT,
    blocked=st.none() | st.builds(Blocked.scheduled, MS),
)


@settings(max_examples=300, deadline=None)
@given(JOBS, st.booleans())
def test_the_proto_is_the_one_from_milliseconds_made(job: Job, payload: bool) -> None:
    """Negative durations included: protobuf gives their nanos the sign of the seconds."""
    assert job.to_proto(payload=payload) == reference_proto(job, payload)


@st.composite
def fresh_jobs(draw: st.DrawFn) -> Job:
    """A job as submitted (what `to_proto` copies from a template), of one of a few kinds."""
    job: Job = draw(JOBS)
    job.attempt, job.progress, job.progress_message, job.error = 0, 0.0, "", ""
    job.start_time = job.finish_time = job.blocked = None
    job.owner = draw(st.sampled_from(["alice", "bob"]))
    job.type, job.queue, job.priority = "noop", "default", draw(st.sampled_from([5, 9]))
    return job


@settings(max_examples=300, deadline=None)
@given(st.lists(fresh_jobs(), min_size=1, max_size=5), st.booleans())
def test_a_submitted_job_copied_from_its_template_is_the_one_built(
    jobs: list[Job], payload: bool
) -> None:
    """Jobs of one kind share a template: each still gets its own id, key and times."""
    for job in jobs:
        assert job.to_proto(payload=payload) == reference_proto(job, payload)


@settings(max_examples=300, deadline=None)
@given(JOBS)
def test_the_hot_state_is_the_strings_the_queue_wrote(job: Job) -> None:
    assert job.to_hot() == reference_hot(job)


def reference_spec(req: pb.SubmitJobRequest, limit: int) -> JobSpec | list[FieldViolation]:
    """`spec_from_proto` as it was before (every field read, and looked at, every time):
    the spec, or the violations."""
    bad: list[FieldViolation] = []

    def violation(name: str, why: str) -> None:
        bad.append(FieldViolation(name, why))

    if not req.type:
        violation("type", "required")
    elif not model._TYPE_RE.match(req.type):
        violation("type", "must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
    queue = req.queue or model.DEFAULT_QUEUE
    if not model._QUEUE_RE.match(queue):
        violation("queue", "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    priority = req.priority if req.HasField("priority") else model.DEFAULT_PRIORITY
    if not 0 <= priority <= model.MAX_PRIORITY:
        violation("priority", f"must be between 0 and {model.MAX_PRIORITY}")
    key = req.idempotency_key or None
    if key is not None and (len(key) > model.MAX_IDEMPOTENCY_KEY or not key.isprintable()):
        violation("idempotency_key", "must be printable, at most 256 characters")
    if not 0 <= req.max_attempts <= model.MAX_ATTEMPTS_LIMIT:
        violation("max_attempts", "must be between 0 (default) and 100")
    timeout_ms = duration_ms(req.timeout) if req.HasField("timeout") else 0
    if timeout_ms is None or (
        req.HasField("timeout") and not 0 < timeout_ms <= model.MAX_TIMEOUT_MS
    ):
        violation("timeout", "must be a valid duration, positive and at most 7 days")
    run_at = timestamp_ms(req.run_at) if req.HasField("run_at") else None
    if req.HasField("run_at") and (run_at is None or run_at > now_ms() + model.MAX_DELAY_MS):
        violation("run_at", "must be a valid time within a year")
    delay_ms = duration_ms(req.delay) if req.HasField("delay") else 0
    if delay_ms is None or not 0 <= delay_ms <= model.MAX_DELAY_MS:
        violation("delay", "must be a valid duration, not negative and at most a year")
    elif delay_ms and req.HasField("run_at"):
        violation("delay", "set run_at or delay, not both")
    retention_ms = duration_ms(req.retention) if req.HasField("retention") else 0
    if retention_ms is None or not 0 <= retention_ms <= model.MAX_RETENTION_MS:
        violation("retention", "must be a valid duration, not negative and at most 10 years")
    payload = model._payload(req.payload, limit, violation) if req.HasField("payload") else {}
    try:
        retry = RetryOverrides.from_proto(req.retry) if req.HasField("retry") else NO_OVERRIDES
    except ValueError:
        violation("retry", "holds an invalid duration")
        retry = NO_OVERRIDES
    bad += retry.violations("retry.")
    if bad:
        return bad
    return JobSpec(
        type=req.type, payload=payload, queue=queue, priority=priority, idempotency_key=key,
        run_at=run_at, delay_ms=delay_ms or 0, max_attempts=req.max_attempts,
        timeout_ms=timeout_ms or 0, retry=retry, retention_ms=retention_ms or 0,
    )  # fmt: skip


NAMES = st.sampled_from(["", "noop", "email.send", "bad name", "q-1", "{x}"])
SECONDS = st.integers(-(10**9), 10**9) | st.sampled_from([0, 1, 60, 8 * 24 * 3600])
NANOS = st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 500_000_000])


# A Duration or Timestamp's fields (None: unset), in range or not.
MOMENTS = st.none() | st.fixed_dictionaries({"seconds": SECONDS, "nanos": NANOS})


@st.composite
def requests(draw: st.DrawFn) -> pb.SubmitJobRequest:
    req = pb.SubmitJobRequest(
        type=draw(NAMES), queue=draw(NAMES), idempotency_key=draw(TEXT),
        max_attempts=draw(st.integers(-5, 120)),
    )  # fmt: skip
    if draw(st.booleans()):
        req.priority = draw(st.integers(-3, 12))
    for name in ("timeout", "delay", "retention"):
        value = draw(MOMENTS)
        if value is not None:
            getattr(req, name).CopyFrom(duration_pb2.Duration(**value))
    when = draw(MOMENTS)
    if when is not None:
        req.run_at.CopyFrom(timestamp_pb2.Timestamp(**when))
    if draw(st.booleans()):
        req.payload.update(draw(st.dictionaries(TEXT, JSON, max_size=3)))
    if draw(st.booleans()):
        req.retry.multiplier = draw(st.floats(0, 200))
        backoff = draw(MOMENTS)
        if backoff is not None:
            req.retry.initial_backoff.CopyFrom(duration_pb2.Duration(**backoff))
    return req


@settings(max_examples=500, deadline=None)
@given(requests())
def test_validation_gives_what_it_gave_before(req: pb.SubmitJobRequest) -> None:
    """The same spec for a valid request, the same violations for any other."""
    expected = reference_spec(req, 200)
    try:
        got: JobSpec | list[FieldViolation] = spec_from_proto(req, max_payload_bytes=200)
    except InvalidArgument as refused:
        got = refused.violations
    assert got == expected


def test_labels_travel_with_the_job_and_count_in_its_request() -> None:
    """Guards issue 24, item 1: a request's labels reach its job's proto, its hot state and
    back; they count when an idempotency key is reused (an unlabelled request keeps the
    fingerprint it always had); and a job copied from a kind's template never shows the
    labels of the job that made the template."""
    request = pb.SubmitJobRequest(type="noop", labels={"team": "billing", "run": "7"})
    spec = spec_from_proto(request, max_payload_bytes=1024)
    assert spec.labels == {"team": "billing", "run": "7"}
    assert spec.request_hash() != JobSpec(type="noop").request_hash()
    assert JobSpec(type="noop").request_hash() == STORED_HASHES[0][1]
    defaults = model.JobDefaults(max_attempts=3, timeout_ms=1000, retry=model.FALLBACK_RETRY)
    model._FRESH.clear()  # the labelled job below makes its kind's template
    labelled = spec.new_job("alice", defaults=defaults, now=now_ms())
    plain = JobSpec(type="noop").new_job("alice", defaults=defaults, now=now_ms())
    assert dict(labelled.to_proto().labels) == spec.labels
    assert dict(plain.to_proto().labels) == {}, "not the template-maker's labels"
    assert Job.from_hot(labelled.to_hot()).labels == spec.labels
    assert "labels" not in plain.to_hot()
    bad = pb.SubmitJobRequest(type="noop", labels={"Team": "x", "ok": "y" * 257})
    with pytest.raises(InvalidArgument) as refused:
        spec_from_proto(bad, max_payload_bytes=1024, prefix="requests[2].")
    assert sorted(v.field for v in refused.value.violations) == [
        'requests[2].labels["Team"]',
        'requests[2].labels["ok"]',
    ]
