"""The fuzz's api of its own, and the generated and raw runs, made once per package
whichever test asks first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor.db import migrate
from conveyor.embedded import EmbeddedRedis
from tests.processes import Service, Stack, fresh_database, make_env
from tests.security.fuzz.checks import seed
from tests.security.fuzz.engine import Engine, Run, generate_and_send
from tests.security.fuzz.generators import probes, raw_probes
from tests.security.fuzz.ledger import FuzzStack, Ledger
from tests.security.fuzz.rpcs import GENERATED_REQUESTS, OWNERS, RAW_REQUESTS


@pytest.fixture(scope="package")
def fuzz(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    """An api of its own (no worker: nothing runs, so state stays as the calls left it)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("fuzz-redis"))
    server.start()
    api: Service | None = None
    try:
        url = fresh_database(database_url, "conveyor_fuzz")
        migrate(url)
        stack = Stack(make_env(server.url, url), tmp_path_factory.mktemp("fuzz-logs"))
        api = stack.start("api")
        keys = {owner: stack.create_key(owner) for owner in OWNERS}
        yield FuzzStack(stack, api, server.url, url, keys, Ledger())
        assert api.stop() == 0, f"unclean api shutdown:\n{api.tail()}"
    finally:
        if api is not None and api.proc.poll() is None:
            api.kill()
        server.stop()


@pytest.fixture(scope="package")
async def generated(fuzz: FuzzStack) -> Run:
    """The generated requests, sent once per package whichever test asks first: their own
    test judges them and the last test counts them, in any order or selection."""
    async with Engine(fuzz, "generated") as engine:
        if not fuzz.ledger.seeded:  # whatever ran before (other tests submit jobs too)
            await seed(engine, fuzz)
        seconds = await generate_and_send(
            engine, lambda d: probes(d, fuzz.keys), GENERATED_REQUESTS
        )
    return Run(engine, seconds)


@pytest.fixture(scope="package")
async def malformed(fuzz: FuzzStack) -> Run:
    """The raw bytes, sent once per package (as `generated`)."""
    async with Engine(fuzz, "raw bytes") as engine:
        if not fuzz.ledger.seeded:  # whatever ran before (other tests submit jobs too)
            await seed(engine, fuzz)
        seconds = await generate_and_send(engine, lambda d: raw_probes(d, fuzz.keys), RAW_REQUESTS)
    return Run(engine, seconds)
