"""Configuration: one `Settings`, read from `CONVEYOR_*` environment variables.

Every knob a service reads lives here, so the README's configuration table and the code
cannot drift apart: `conveyor --help-env` style tooling and the docs both come from this class.
Timing knobs (lease, heartbeat, backoff, claim wait) are settings so that fault tests can run
in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor.jobs.queues import QueueChoice
from conveyor.jobs.retry import RetryPolicy


class ConfigurationError(ValueError):
    """Conveyor is configured wrongly; the message names the variable and never its value.
    Entry points print it and exit 2 instead of showing a traceback."""


class Settings(BaseSettings):
    """All of Conveyor's configuration; see the README's table for each variable."""

    # Errors never echo the input: it holds every variable read, API keys and passwords too.
    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", extra="ignore", hide_input_in_errors=True
    )

    api_addr: str = Field("127.0.0.1:50051", description="Where the API serves gRPC.")
    api_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes serving CONVEYOR_API_ADDR together (SO_REUSEPORT): more "
        "than 1 uses more cores of one machine; see the README's Performance section.",
    )
    api_process_index: int = Field(
        -1,
        ge=-1,
        le=63,
        description="Set by `conveyor api --processes N` for each of its processes (0 to N-1); "
        "not for you to set.",
    )
    worker_addr: str = Field(
        "127.0.0.1:50052", description="Where a worker serves WorkerControl (port 0: any free)."
    )
    worker_advertise_addr: str = Field(
        "",
        description="host:port that others (the dashboard, scripts) dial for this worker's "
        "WorkerControl, announced in ListWorkers' control_address, like Kafka's advertised "
        "listeners: set it when they reach the worker through NAT, a proxy or a name. Empty: "
        "the port CONVEYOR_WORKER_ADDR bound, with its host, or this machine's address "
        "(its hostname's) when that host is 0.0.0.0, :: or empty.",
    )
    scheduler_addr: str = Field(
        "127.0.0.1:50053", description="Where the scheduler serves gRPC health."
    )
    dashboard_addr: str = Field(
        "127.0.0.1:8080",
        description="Where `conveyor dashboard` serves the web dashboard (HTTP; port 0: any "
        "free). It reaches the API at CONVEYOR_API_ADDR with each user's own key.",
    )
    database_url: str = Field(
        "sqlite:///.conveyor/conveyor.db",
        description="postgresql+psycopg://user:pass@host/db or sqlite:///path.",
    )
    redis_url: str = Field(
        "",
        description="redis://host:port/db; dev mode starts one if unset. With "
        "CONVEYOR_REDIS_CLUSTER, any node (or several, comma-separated).",
    )
    redis_cluster: bool = Field(
        False, description="Redis Cluster: CONVEYOR_REDIS_URL names seed nodes."
    )
    data_dir: Path = Field(Path(".conveyor"), description="Dev mode's folder.")
    dev_api_key: str = Field(
        "", description="The key `conveyor dev` accepts (unset: the one it stored last run)."
    )
    api_key: str = Field("", description="The key the CLI and client send.")
    worker_concurrency: int = Field(10, ge=1, le=10_000, description="Jobs a worker runs at once.")
    default_max_running_per_owner: int = Field(
        100,
        ge=0,
        description="Jobs one owner may run at once in a queue whose limits set no "
        "per-owner cap (0: none).",
    )
    process_pool_size: int = Field(
        -1,
        ge=-1,
        le=10_000,
        description="Children a worker keeps forked ahead of need for process-isolated "
        "handlers (-1: as many as its concurrency, up to 4).",
    )
    kill_grace_seconds: float = Field(
        0.5,
        ge=0,
        description="How long a process-isolated attempt has after SIGTERM (cancel, timeout) "
        "before SIGKILL.",
    )
    worker_queues: str = Field(
        "default",
        description="Queues a worker serves: `a,b` in strict order, or `a:3,b:1` by weight.",
    )
    handlers: str = Field("", description="Extra handler modules to load, comma separated.")
    worker_id: str = Field("", description="A worker's id (host-pid-random if unset).")

    lease_seconds: float = Field(30.0, gt=0, description="How long a claim holds a job.")
    heartbeat_seconds: float = Field(
        0.0, ge=0, description="Lease renewal interval (0: a third of the lease)."
    )
    worker_announce_seconds: float = Field(
        1.0,
        gt=0,
        description="How often a worker announces itself in the registry; one silent for "
        "three intervals is dead and its leases are released at once.",
    )
    claim_wait_seconds: float = Field(
        5.0, gt=0, description="Longest a worker blocks waiting for work before checking again."
    )
    default_max_attempts: int = Field(3, ge=1, le=100, description="Attempts when a job sets 0.")
    default_timeout_seconds: float = Field(3600.0, gt=0, description="Attempt time limit default.")
    backoff_base_seconds: float = Field(1.0, ge=0, description="First retry delay.")
    backoff_max_seconds: float = Field(300.0, ge=0, description="Longest retry delay.")
    backoff_multiplier: float = Field(2.0, ge=1, le=100, description="Retry delay growth.")
    backoff_jitter: float = Field(
        0.5, ge=0, le=1, description="Random fraction of each retry delay."
    )
    enqueue_retry_max_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Longest wait between an API's retries of enqueues Redis refused.",
    )
    enqueue_retry_limit: int = Field(
        100_000,
        ge=0,
        description="Jobs an API process retries enqueueing at most; more wait for the reconciler.",
    )
    reconcile_interval_seconds: float = Field(
        60.0, gt=0, description="How often the scheduler checks every unfinished job's Redis state."
    )
    redis_check_seconds: float = Field(
        1.0, gt=0, description="How often the scheduler looks for a flushed or restarted Redis."
    )
    schedule_misfire_seconds: float = Field(
        60.0,
        ge=0,
        description="A schedule's bucket older than this when first seen counts as missed.",
    )
    scheduler_clock_offset_seconds: float = Field(
        0.0, description="Added to a scheduler's clock; for testing clock skew only."
    )
    hot_state_ttl_seconds: int = Field(
        3_600,
        ge=1,
        description="How long Redis keeps a finished job's hot state and events (PostgreSQL "
        "answers after it).",
    )
    event_stream_maxlen: int = Field(1000, ge=10, description="Events kept per job for resumes.")
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="SIGTERM drain time.")
    max_payload_bytes: int = Field(1 << 20, ge=1024, description="Largest payload accepted.")
    max_message_bytes: int = Field(16 << 20, ge=1 << 16, description="Largest gRPC message.")
    max_result_bytes: int = Field(
        1 << 20, ge=1024, description="Largest result (a handler's return value, as JSON)."
    )
    max_page_bytes: int = Field(
        4 << 20,
        ge=1 << 16,
        description="Largest ListJobs or ListJobAttempts page; 4 MiB, what stock clients take.",
    )
    max_concurrent_rpcs: int = Field(
        20_000,
        ge=0,
        description="Calls a server runs at once; beyond: RESOURCE_EXHAUSTED (0: no cap).",
    )
    max_streams_per_owner: int = Field(
        2_000,
        ge=0,
        description="WatchJob streams one owner may hold open per API process (0: no cap).",
    )
    max_schedules_per_owner: int = Field(
        1_000,
        ge=0,
        description="Schedules one owner may have; beyond: RESOURCE_EXHAUSTED (0: no cap).",
    )
    secret_key: str = Field(
        "", description="Signs page tokens; unset: a random key kept in Redis for all replicas."
    )
    submit_rate: float = Field(
        20_000.0, ge=0, description="Jobs an owner may submit per second by default (0: no limit)."
    )
    submit_burst: float = Field(
        40_000.0, ge=0, description="Jobs an owner may submit at once by default."
    )
    read_rate: float = Field(
        20_000.0, ge=0, description="Reads (get, list, watch) an owner may make per second."
    )
    read_burst: float = Field(40_000.0, ge=0, description="Reads an owner may make at once.")
    rate_limit_hold_seconds: float = Field(
        0.1,
        ge=0,
        le=10,
        description="How long a call that ignored its RetryInfo waits for its refusal (0: none).",
    )
    # Object store (artifacts, large results): S3 when an endpoint is set, else a folder.
    s3_endpoint: str = Field(
        "", description="MinIO/S3 endpoint, http://host:9000 (unset: a folder in the data dir)."
    )
    s3_access_key: str = Field("", description="S3 access key.")
    s3_secret_key: str = Field("", description="S3 secret key.")
    s3_bucket: str = Field("conveyor", description="Bucket for artifacts and large results.")
    s3_region: str = Field("us-east-1", description="S3 region (links are signed for it).")
    s3_public_endpoint: str = Field(
        "", description="Endpoint clients download from, when not the services' one."
    )
    download_addr: str = Field(
        "127.0.0.1:50054", description="Where the API serves folder-store downloads."
    )
    download_url: str = Field(
        "", description="Public base of folder-store links (default http://DOWNLOAD_ADDR)."
    )
    download_header_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="A download connection's request must arrive within this, else it is closed.",
    )
    download_idle_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A download whose client takes nothing this long ends."
    )
    download_max_connections: int = Field(
        2048, ge=1, le=100_000, description="Download connections open at once, at most."
    )
    artifact_url_seconds: int = Field(
        900, ge=1, le=7 * 86_400, description="How long a download link works."
    )
    max_stored_result_bytes: int = Field(
        8 << 20,
        ge=1024,
        description="Largest result; above MAX_RESULT_BYTES it is kept in the object store.",
    )
    retention_seconds: float = Field(
        7 * 86_400.0,
        ge=0,
        description="How long a finished job, its result and artifacts are kept (0: forever).",
    )
    sweep_interval_seconds: float = Field(
        60.0, gt=0, description="How often the scheduler deletes expired jobs."
    )
    sweep_batch: int = Field(500, ge=1, le=10_000, description="Jobs deleted per sweep statement.")
    # Built-in job types.
    smtp_host: str = Field("127.0.0.1", description="email.send: SMTP server.")
    smtp_port: int = Field(25, ge=1, le=65535, description="email.send: SMTP port.")
    smtp_username: str = Field("", description="email.send: SMTP login (unset: no AUTH).")
    smtp_password: str = Field("", description="email.send: SMTP password.")
    smtp_starttls: bool = Field(False, description="email.send: upgrade with STARTTLS.")
    smtp_ssl: bool = Field(False, description="email.send: connect with implicit TLS.")
    smtp_from: str = Field("conveyor@localhost", description="email.send: default sender.")
    smtp_ca_file: str = Field(
        "",
        description="email.send: PEM CA bundle to verify the SMTP server with (unset: system).",
    )
    smtp_timeout_seconds: float = Field(30.0, gt=0, description="email.send: SMTP timeout.")
    email_templates_dir: str = Field(
        "", description="email.send: folder of named templates (<name>.subject/.txt/.html)."
    )
    max_attachment_bytes: int = Field(
        25 << 20, ge=1024, description="email.send: largest total of attachments."
    )
    webhook_secret: str = Field(
        "", description="http.request: HMAC-SHA256 key for the X-Conveyor-Signature header."
    )
    http_allow_private: bool = Field(
        False, description="http.request: allow loopback and private addresses."
    )
    export_database_url: str = Field(
        "", description="csv.export: read-only database that `query` exports run against."
    )
    log_format: str = Field("json", description="json or console.")
    log_level: str = Field("INFO", description="Python logging level.")
    metrics_addr: str = Field(
        "",
        description="Where Prometheus /metrics is served (host:port); empty: the service's "
        "own (api 127.0.0.1:9464, worker :9465, scheduler :9466); off: not served.",
    )

    # TLS: servers (api, worker, scheduler) serve TLS when tls_cert and tls_key are set, and
    # require client certificates when tls_client_ca is set too. Clients (CLI, Python client)
    # connect with TLS when tls, tls_ca, tls_client_cert or tls_server_name is set.
    tls_cert: str = Field(
        "", description="Servers: PEM certificate chain to serve TLS with (needs the key)."
    )
    tls_key: str = Field("", description="Servers: PEM private key of CONVEYOR_TLS_CERT.")
    tls_client_ca: str = Field(
        "",
        description="Servers: PEM CA bundle that client certificates must chain to; "
        "set: mutual TLS, calls without such a certificate are refused.",
    )
    tls: bool = Field(
        False,
        description="Clients: connect with TLS (implied by the other client TLS settings); "
        "servers: refuse to start without CONVEYOR_TLS_CERT.",
    )
    tls_ca: str = Field(
        "",
        description="Clients: PEM CA bundle to verify servers with (unset: gRPC's default roots).",
    )
    tls_client_cert: str = Field(
        "", description="Clients: PEM certificate chain to present under mutual TLS."
    )
    tls_client_key: str = Field(
        "", description="Clients: PEM private key of the client certificate."
    )
    tls_server_name: str = Field(
        "", description="Clients: the name the server's certificate must carry (default: the host)."
    )

    @model_validator(mode="after")
    def _tls_pairs(self) -> Self:
        """A certificate without its key (or the reverse) is a configuration error at start."""
        for cert, key in (("tls_cert", "tls_key"), ("tls_client_cert", "tls_client_key")):
            has_cert, has_key = bool(getattr(self, cert)), bool(getattr(self, key))
            if has_cert != has_key:
                given, missing = (cert, key) if has_cert else (key, cert)
                raise ValueError(
                    f"CONVEYOR_{given.upper()} is set but CONVEYOR_{missing.upper()} is not: "
                    "a certificate and its private key go together"
                )
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError(
                "CONVEYOR_TLS_CLIENT_CA (mutual TLS) needs the server's own certificate: "
                "set CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY too"
            )
        return self

    @property
    def effective_heartbeat_seconds(self) -> float:
        """The heartbeat interval: explicit, or a third of the lease so two beats may miss."""
        return self.heartbeat_seconds or self.lease_seconds / 3

    @property
    def retry_policy(self) -> RetryPolicy:
        """The server's default retry policy (a job type's registration may override it)."""
        return RetryPolicy(
            initial_ms=int(self.backoff_base_seconds * 1000),
            max_ms=int(max(self.backoff_max_seconds, self.backoff_base_seconds) * 1000),
            multiplier=self.backoff_multiplier,
            jitter=self.backoff_jitter,
        )

    @field_validator("worker_queues")
    @classmethod
    def _queues_parse(cls, value: str) -> str:
        QueueChoice.parse(value)  # a ValueError becomes a ConfigurationError naming it
        return value

    @field_validator("worker_advertise_addr")
    @classmethod
    def _advertised_is_dialable(cls, value: str) -> str:
        """An advertised address is dialled as it is: a host and a real port, or nothing."""
        host, _, port = value.strip().rpartition(":")
        if value and not (host.strip("[]") and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("must be host:port (a port from 1 to 65535), or empty")
        return value.strip()

    @property
    def objects_dir(self) -> Path:
        """The folder store's root (when no S3 endpoint is set)."""
        return self.data_dir / "objects"

    @property
    def download_base_url(self) -> str:
        return self.download_url or f"http://{self.download_addr}"

    @property
    def effective_process_pool_size(self) -> int:
        """Children kept forked ahead of need: explicit, or the concurrency up to 4 (a
        child costs about 20 MiB of its own while it waits)."""
        if self.process_pool_size >= 0:
            return self.process_pool_size
        return min(self.worker_concurrency, 4)

    @property
    def queue_choice(self) -> QueueChoice:
        return QueueChoice.parse(self.worker_queues)

    @property
    def queue_list(self) -> list[str]:
        return list(self.queue_choice.names)

    @property
    def handler_modules(self) -> list[str]:
        return [m.strip() for m in self.handlers.split(",") if m.strip()]

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read the environment; keyword overrides (from CLI flags) win. A bad value is a
        `ConfigurationError` that names each variable and what is wrong with it."""
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None


def configuration_failure(exc: ConfigurationError) -> int:
    """Say what is misconfigured on stderr; the exit code for it (2, as for bad usage)."""
    print(f"conveyor: configuration error: {exc}", file=sys.stderr)
    return 2


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"CONVEYOR_{field.upper()}" if field else "settings"
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)
