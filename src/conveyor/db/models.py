"""SQLAlchemy 2 typed models. The schema itself is made by the Alembic migrations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import text

JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """A job. Times are epoch milliseconds (UTC), the same numbers Redis and the wire carry."""

    __tablename__ = "jobs"
    __table_args__ = (
        # Idempotency is a constraint, not a check-then-insert: concurrent submits cannot race.
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        # ListJobs: an owner's jobs newest first (ids are UUIDv7, so id order is time order).
        # Deliberately no index on state: outcome updates then touch no index (HOT updates),
        # which halves their cost; see the migration.
        Index("ix_jobs_owner_id", "owner", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(64))
    state: Mapped[int] = mapped_column(SmallInteger)
    priority: Mapped[int] = mapped_column(SmallInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    attempt: Mapped[int] = mapped_column(SmallInteger, default=0)
    max_attempts: Mapped[int] = mapped_column(SmallInteger)
    timeout_ms: Mapped[int] = mapped_column(BigInteger)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    request_hash: Mapped[str] = mapped_column(String(64))
    run_at: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[int] = mapped_column(BigInteger)
    start_time: Mapped[int | None] = mapped_column(BigInteger)
    finish_time: Mapped[int | None] = mapped_column(BigInteger)
    # The fencing token: bumped when the job is handed out while an older attempt may still
    # run; an outcome carrying an older fence is refused (see JobStore.write_outcomes).
    fence: Mapped[int] = mapped_column(Integer, default=0)
    # The resolved RetryPolicy as RetryPolicy.to_doc(); None on rows from before 0002.
    retry: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    # The API key that submitted the job and its concurrency cap then (0: none); "" for
    # jobs a schedule made.
    key_id: Mapped[str] = mapped_column(String(36), default="")
    key_cap: Mapped[int] = mapped_column(Integer, default=0)
    # What the handler returned (a JSON object), once the job SUCCEEDED; read by
    # GetJobResult only, never with the rest of the row (it may be large).
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    # A result too large for the row lives in the object store under this key.
    result_ref: Mapped[str | None] = mapped_column(String(256))
    # How long the job is kept once finished (None: forever); see conveyor.jobs.retention.
    retention_ms: Mapped[int | None] = mapped_column(BigInteger)
    # The W3C traceparent of the submitting call ("" when not tracing); see
    # conveyor.telemetry.tracing.
    trace_parent: Mapped[str] = mapped_column(String(64), default="")
    # Which of its queue's shards holds the job in Redis (see conveyor.jobs.shards).
    shard: Mapped[int] = mapped_column(SmallInteger, default=0)
    # The job's labels (conveyor.jobs.labels), {} when it has none. On PostgreSQL a GIN
    # index (jsonb_path_ops) serves `labels @> {...}`, ListJobs' label filters (0009).
    labels: Mapped[dict[str, str]] = mapped_column(JsonDoc, default=dict, server_default="{}")
    # Until when a unique job (SubmitJobRequest.unique_for) holds its idempotency key;
    # None: as long as the row lives. And a debounced job's debounce (None: not one). See
    # conveyor.jobs.unique and migration 0011_unique_debounce.
    key_until: Mapped[int | None] = mapped_column(BigInteger)
    debounce_ms: Mapped[int | None] = mapped_column(BigInteger)
    # The client's key for jobs that share a per-key cap in their queue; "" when none.
    concurrency_key: Mapped[str] = mapped_column(String(256), default="", server_default="")
    # The client's key for jobs that share a start rate in their queue; "" when none.
    rate_key: Mapped[str] = mapped_column(String(256), default="", server_default="")
    # Dependencies (conveyor.jobs.dependencies; migration 0014): the ids the job waits
    # for (None: none), its DependencyFailurePolicy, how many have not ended yet (the job
    # stays out of Redis while any has not), whether any job depends on it, and its batch.
    depends_on: Mapped[list[str] | None] = mapped_column(JsonDoc)
    dependency_policy: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    dependencies_pending: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    has_dependents: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)


class DependencyRow(Base):
    """One edge of the dependency DAG: `job_id` waits for `depends_on`. `state` is
    conveyor.jobs.dependencies.Edge: pending until the dependency ends."""

    __tablename__ = "job_dependencies"
    __table_args__ = (
        Index("ix_job_dependencies_job_id", "job_id"),
        Index(
            "ix_job_dependencies_pending",
            "depends_on",
            postgresql_where=text("state = 0"),
            sqlite_where=text("state = 0"),
        ),
    )

    depends_on: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")


class BatchRow(Base):
    """A batch: the jobs of one SubmitJobs call with `on_complete`, and its callback."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    job_count: Mapped[int] = mapped_column(Integer)
    callback_job_id: Mapped[str] = mapped_column(String(36))
    create_time: Mapped[int] = mapped_column(BigInteger)


class ExpiryRow(Base):
    """When a finished job expires (finish_time + retention); see migration 0005 for why
    this is a table of its own. Written by the statement that finishes the job."""

    __tablename__ = "job_expiry"
    __table_args__ = (Index("ix_job_expiry_expire_time", "expire_time"),)

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    expire_time: Mapped[int] = mapped_column(BigInteger)


class ArtifactRow(Base):
    """A file a job made, kept in the object store under `object_key`."""

    __tablename__ = "job_artifacts"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    object_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[int] = mapped_column(BigInteger)


class AttemptRow(Base):
    """One attempt of a job and how it ended (AttemptOutcome numbers)."""

    __tablename__ = "job_attempts"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    outcome: Mapped[int] = mapped_column(SmallInteger)
    worker_id: Mapped[str] = mapped_column(String(128))
    start_time: Mapped[int | None] = mapped_column(BigInteger)
    finish_time: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[str] = mapped_column(Text, default="")
    traceback: Mapped[str] = mapped_column(Text, default="")


class EffectRow(Base):
    """A side effect a handler claimed with `ctx.once(key)`: at most one per (job, key)."""

    __tablename__ = "job_effects"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    attempt: Mapped[int] = mapped_column(SmallInteger)
    create_time: Mapped[int] = mapped_column(BigInteger)


class ApiKeyRow(Base):
    """An API key, stored as the HMAC-SHA256 digest of its secret (see conveyor.server.auth)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        # ListApiKeys: newest first by (create_time, id), every owner's or one's (0007).
        Index("ix_api_keys_create_time_id", "create_time", "id"),
        Index("ix_api_keys_owner_create_time_id", "owner", "create_time", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(256), default="")
    # Rate limit overrides (None: the server's default); see conveyor.api.ratelimit.
    submit_per_second: Mapped[float | None] = mapped_column(Float)
    submit_burst: Mapped[float | None] = mapped_column(Float)
    read_per_second: Mapped[float | None] = mapped_column(Float)
    read_burst: Mapped[float | None] = mapped_column(Float)
    # Jobs submitted with the key that may run at once per queue (0: no cap).
    max_running: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[int] = mapped_column(BigInteger)
    revoke_time: Mapped[int | None] = mapped_column(BigInteger)


class QueueRow(Base):
    """A queue's settings (PauseQueue, UpdateQueueLimits); a queue without a row has none.
    Redis holds a copy where claims read it (cv:{Q}:conf), re-applied by the reconciler."""

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    max_running: Mapped[int] = mapped_column(Integer, default=0)
    rate_jobs: Mapped[int] = mapped_column(Integer, default=0)
    rate_interval_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    max_running_per_owner: Mapped[int] = mapped_column(Integer, default=0)
    # How many Redis hash tags the queue's jobs spread over (see conveyor.jobs.shards).
    shards: Mapped[int] = mapped_column(SmallInteger, default=1)
    # Jobs with one concurrency key running at once in the queue (0: no cap).
    max_running_per_key: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Starts of one rate key's jobs in any window of rate_per_key_interval_ms (0: none).
    rate_per_key_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rate_per_key_interval_ms: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    update_time: Mapped[int] = mapped_column(BigInteger)


class ScheduleRow(Base):
    """A recurring job (ScheduleService): when it fires, the job it makes, and how far the
    schedulers have got (`next_run`: the first bucket not yet handled; None once over)."""

    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_owner_id", "owner", "id"),
        Index("ix_schedules_next_run", "next_run"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(256), default="")
    cron: Mapped[str] = mapped_column(String(256), default="")
    interval_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    # The job template: a SubmitJobRequest as protobuf JSON.
    template: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    catch_up: Mapped[int] = mapped_column(SmallInteger)
    catch_up_limit: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[int | None] = mapped_column(BigInteger)
    end_time: Mapped[int | None] = mapped_column(BigInteger)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_run: Mapped[int | None] = mapped_column(BigInteger)
    last_run: Mapped[int | None] = mapped_column(BigInteger)
    last_job_id: Mapped[str] = mapped_column(String(36), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[int] = mapped_column(BigInteger)


class BulkOperationRow(Base):
    """A bulk action (RetryJobs, CancelJobs, DeleteJobs) and how far it has got: the jobs
    it covers are those matching `filter` with ids at most `top_id` (the newest job when
    it started), walked downward; `cursor` is the last id it finished with ("" before the
    first). An API process runs it while it holds the lease (`lease_owner` until
    `lease_expire`); once that runs out, any API process may take it over and go on from
    `cursor` (see conveyor.api.bulk)."""

    __tablename__ = "bulk_operations"
    __table_args__ = (
        Index("ix_bulk_operations_owner_id", "owner", "id"),
        Index("ix_bulk_operations_state_lease", "state", "lease_expire"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    # Started with an admin key: acts on every owner's jobs the filter matches.
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    action: Mapped[int] = mapped_column(SmallInteger)
    filter: Mapped[str] = mapped_column(Text)
    state: Mapped[int] = mapped_column(SmallInteger)
    per_second: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer, default=0)
    top_id: Mapped[str] = mapped_column(String(36))
    cursor: Mapped[str] = mapped_column(String(36), default="")
    matched: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    lease_owner: Mapped[str] = mapped_column(String(64), default="")
    lease_expire: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[int] = mapped_column(BigInteger)
    finish_time: Mapped[int | None] = mapped_column(BigInteger)
