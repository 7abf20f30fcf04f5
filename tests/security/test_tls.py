"""TLS and mutual TLS on real service processes, with throwaway certificates (trustme).

A TLS stack (api and worker serving TLS) and an mTLS api (client certificates required) run
against their own Redis and database. The tests guard that the right client gets through
(Python client, CLI, grpcurl, WorkerControl) and that every wrong one is refused with
UNAVAILABLE while the server stays up: plaintext to a TLS port, a server certificate from a
CA the client does not trust, and under mTLS a missing or untrusted client certificate; the
API key is still required on top of a client certificate. Misconfiguration (a certificate
without its key, an unreadable file) is a clear error, and no key material reaches a log.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pydantic
import pytest
import trustme

from conveyor.client import AsyncClient, Client, JobState
from conveyor.config import Settings
from conveyor.db import migrate
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.errors import Unauthenticated, Unavailable
from conveyor.tls import TlsConfigError, TlsOptions, open_aio_channel, server_credentials
from conveyor.v1 import worker_control_pb2 as wc
from conveyor.v1.worker_control_pb2_grpc import WorkerControlStub
from tests.processes import Service, Stack, fresh_database, make_env

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
CALL_TIMEOUT = 20.0  # refusals come at once; the slack is for a busy 2-core machine


@dataclass(frozen=True)
class Certs:
    """PEM files: a server certificate from `ca`, a client certificate from `client_ca`,
    and `other_ca` with a certificate of its own (trusted by nobody here)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path

    def client(self, *, cert: bool = True, ca: Path | None = None) -> TlsOptions:
        """Client TLS trusting `ca` (default: the server's CA), presenting the client cert."""
        if not cert:
            return TlsOptions(ca=ca or self.ca)
        return TlsOptions(ca=ca or self.ca, cert=self.client_cert, key=self.client_key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()

    def write(name: str, blob: trustme.Blob) -> Path:
        path = folder / name
        blob.write_to_path(path)
        return path

    server = ca.issue_cert("localhost", "127.0.0.1")
    client = client_ca.issue_cert("conveyor-client")
    other = other_ca.issue_cert("conveyor-client")
    return Certs(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_ca=write("client-ca.pem", client_ca.cert_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.pem", other_ca.cert_pem),
        other_cert=write("other.pem", other.cert_chain_pems[0]),
        other_key=write("other.key", other.private_key_pem),
    )


@dataclass
class TlsStacks:
    """`tls`: api and worker serving TLS. `mtls`: an api that also requires client
    certificates. Both share one Redis and database, so the keys work on either."""

    tls: Stack
    api: Service
    worker: Service
    mtls: Stack
    mtls_api: Service
    user_key: str
    admin_key: str


@pytest.fixture(scope="module")
def stacks(
    certs: Certs, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsStacks]:
    redis = EmbeddedRedis(tmp_path_factory.mktemp("tls-redis"))
    redis.start()
    url = fresh_database(database_url, "conveyor_tls")
    migrate(url)
    server_tls = {
        "CONVEYOR_TLS_CERT": str(certs.server_cert),
        "CONVEYOR_TLS_KEY": str(certs.server_key),
        # What the CLI and the readiness probe trust.
        "CONVEYOR_TLS_CA": str(certs.ca),
    }
    tls = Stack({**make_env(redis.url, url), **server_tls}, tmp_path_factory.mktemp("tls-logs"))
    mtls_env = {
        **make_env(redis.url, url),
        **server_tls,
        "CONVEYOR_TLS_CLIENT_CA": str(certs.client_ca),
        "CONVEYOR_TLS_CLIENT_CERT": str(certs.client_cert),
        "CONVEYOR_TLS_CLIENT_KEY": str(certs.client_key),
    }
    mtls = Stack(mtls_env, tmp_path_factory.mktemp("mtls-logs"))
    try:
        yield TlsStacks(
            tls=tls,
            api=tls.start("api"),
            worker=tls.start("worker", "--concurrency", "2"),
            mtls=mtls,
            mtls_api=mtls.start("api"),
            user_key=tls.create_key("tls-user"),
            admin_key=tls.create_key("tls-admin", "admin"),
        )
    finally:
        codes = {**tls.stop_all(), **{f"m{k}": v for k, v in mtls.stop_all().items()}}
        redis.stop()
    assert all(code == 0 for code in codes.values()), f"unclean shutdown: {codes}"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=60)


def assert_up(service: Service) -> None:
    assert service.proc.poll() is None, f"{service.name} died:\n{service.tail()}"


# -- TLS -------------------------------------------------------------------------------------


async def test_client_with_the_ca_submits_and_watches(stacks: TlsStacks, certs: Certs) -> None:
    """Over TLS, the client that trusts the server's CA runs a job end to end: submit, then
    watch its progress stream to SUCCEEDED (a TLS worker ran it)."""
    async with AsyncClient(
        stacks.tls.api_addr,
        api_key=stacks.user_key,
        tls=certs.client(cert=False),
        timeout=CALL_TIMEOUT,
    ) as client:
        job = await client.submit("sleep", {"seconds": 0.3, "steps": 3})
        updates = [update async for update in client.watch(job.id)]
    assert updates[-1].job.state == JobState.SUCCEEDED
    assert any(0 < u.job.progress < 100 for u in updates), "progress streamed over TLS"


def test_client_and_cli_follow_the_environment(
    stacks: TlsStacks, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only CONVEYOR_TLS_CA set, the blocking client and `conveyor submit --wait` use
    TLS by themselves; the CLI without it gets a clear UNAVAILABLE, not a hang."""
    monkeypatch.setenv("CONVEYOR_TLS_CA", str(certs.ca))
    with Client(stacks.tls.api_addr, api_key=stacks.user_key, timeout=CALL_TIMEOUT) as client:
        assert client.list(page_size=1) is not None

    out = stacks.tls.cli("submit", "noop", "--wait", "--json", key=stacks.user_key)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"

    plain = {k: v for k, v in stacks.tls.env.items() if not k.startswith("CONVEYOR_TLS")}
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "conveyor"), "list"],
        env={**plain, "CONVEYOR_API_KEY": stacks.user_key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "UNAVAILABLE" in refused.stderr, refused.stderr


async def test_plaintext_client_is_refused(stacks: TlsStacks, certs: Certs) -> None:
    """A plaintext client to the TLS port gets UNAVAILABLE (`Unavailable`), and the server
    keeps serving TLS clients afterwards."""
    async with AsyncClient(
        stacks.tls.api_addr, api_key=stacks.user_key, tls=False, timeout=CALL_TIMEOUT
    ) as plain:
        with pytest.raises(Unavailable):
            await plain.list(page_size=1)
    await still_serving(stacks.tls.api_addr, stacks.user_key, certs.client(cert=False))
    assert_up(stacks.api)


async def test_untrusted_server_certificate_is_refused(stacks: TlsStacks, certs: Certs) -> None:
    """A client that trusts another CA, or expects another server name, refuses the
    server's certificate (UNAVAILABLE); the server stays up."""
    for tls in (
        certs.client(cert=False, ca=certs.other_ca),
        TlsOptions(ca=certs.ca, server_name="api.elsewhere.example"),
    ):
        async with AsyncClient(
            stacks.tls.api_addr, api_key=stacks.user_key, tls=tls, timeout=CALL_TIMEOUT
        ) as client:
            with pytest.raises(Unavailable):
                await client.list(page_size=1)
    await still_serving(stacks.tls.api_addr, stacks.user_key, certs.client(cert=False))
    assert_up(stacks.api)


async def still_serving(addr: str, key: str, tls: TlsOptions) -> None:
    async with AsyncClient(addr, api_key=key, tls=tls, timeout=CALL_TIMEOUT) as client:
        await client.list(page_size=1)


async def test_worker_control_over_tls(stacks: TlsStacks, certs: Certs) -> None:
    """WorkerControl serves TLS too: GetWorkerStatus works for an admin who trusts the CA;
    a plaintext channel is refused with UNAVAILABLE."""
    admin = (("authorization", f"Bearer {stacks.admin_key}"),)
    async with open_aio_channel(stacks.worker.addr, certs.client(cert=False)) as channel:
        reply = await WorkerControlStub(channel).GetWorkerStatus(
            wc.GetWorkerStatusRequest(), metadata=admin, timeout=CALL_TIMEOUT
        )
    assert reply.status.worker_id and reply.status.concurrency == 2
    async with open_aio_channel(stacks.worker.addr, False) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await WorkerControlStub(channel).GetWorkerStatus(
                wc.GetWorkerStatusRequest(), metadata=admin, timeout=CALL_TIMEOUT
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert_up(stacks.worker)


def test_grpcurl_with_cacert(stacks: TlsStacks, certs: Certs) -> None:
    """grpcurl reaches the TLS API with `-cacert` (reflection and health) and fails with
    `-plaintext`."""
    listed = grpcurl("-cacert", str(certs.ca), stacks.tls.api_addr, "list")
    assert listed.returncode == 0, listed.stderr
    assert "conveyor.v1.JobService" in listed.stdout.split()
    health = grpcurl("-cacert", str(certs.ca), stacks.tls.api_addr, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    # grpcurl retries a closed connection until its connect timeout: keep that short.
    plain = grpcurl("-plaintext", "-connect-timeout", "2", stacks.tls.api_addr, "list")
    assert plain.returncode != 0


# -- mutual TLS ------------------------------------------------------------------------------


async def test_mtls_accepts_a_client_certificate_from_the_client_ca(
    stacks: TlsStacks, certs: Certs
) -> None:
    """Under mTLS, a client presenting a certificate from CONVEYOR_TLS_CLIENT_CA (and a
    key) submits and reads jobs."""
    async with AsyncClient(
        stacks.mtls.api_addr, api_key=stacks.user_key, tls=certs.client(), timeout=CALL_TIMEOUT
    ) as client:
        job = await client.submit("noop", queue="mtls-parked")
        assert (await client.get(job.id)).id == job.id


async def test_mtls_refuses_missing_and_untrusted_client_certificates(
    stacks: TlsStacks, certs: Certs
) -> None:
    """Under mTLS, no client certificate, or one from a CA the server does not trust, is
    refused in the handshake (UNAVAILABLE, whatever the API key); the server stays up."""
    untrusted = TlsOptions(ca=certs.ca, cert=certs.other_cert, key=certs.other_key)
    for tls in (certs.client(cert=False), untrusted):
        async with AsyncClient(
            stacks.mtls.api_addr, api_key=stacks.user_key, tls=tls, timeout=CALL_TIMEOUT
        ) as client:
            with pytest.raises(Unavailable):
                await client.list(page_size=1)
    await still_serving(stacks.mtls.api_addr, stacks.user_key, certs.client())
    assert_up(stacks.mtls_api)


async def test_mtls_still_requires_the_api_key(stacks: TlsStacks, certs: Certs) -> None:
    """A client certificate authenticates the connection, not the caller: without an API
    key the call is UNAUTHENTICATED."""
    async with AsyncClient(
        stacks.mtls.api_addr, api_key="", tls=certs.client(), timeout=CALL_TIMEOUT
    ) as client:
        with pytest.raises(Unauthenticated):
            await client.list(page_size=1)


def test_grpcurl_under_mtls(stacks: TlsStacks, certs: Certs) -> None:
    """grpcurl needs `-cert`/`-key` besides `-cacert` under mTLS."""
    ca = ["-cacert", str(certs.ca)]
    mine = ["-cert", str(certs.client_cert), "-key", str(certs.client_key)]
    health = grpcurl(*ca, *mine, stacks.mtls.api_addr, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}, health.stderr
    refused = grpcurl(*ca, "-connect-timeout", "5", stacks.mtls.api_addr, "list")
    assert refused.returncode != 0


# -- configuration and logs ------------------------------------------------------------------


def test_no_key_material_in_the_logs(stacks: TlsStacks, certs: Certs) -> None:
    """Servers log which certificate files they use, never what is in them."""
    for service in (stacks.api, stacks.worker, stacks.mtls_api):
        log = service.log.read_text(errors="replace")
        assert str(certs.server_cert) in log, service.tail()
        assert "PRIVATE KEY" not in log and "BEGIN CERTIFICATE" not in log
    assert str(certs.client_ca) in stacks.mtls_api.log.read_text(errors="replace")


def test_certificate_without_key_stops_the_service(certs: Certs, tmp_path: Path) -> None:
    """`conveyor api` with CONVEYOR_TLS_CERT but no key exits non-zero at start and says
    which variable is missing (and not the API key it was given)."""
    env = make_env("redis://127.0.0.1:1/0", f"sqlite:///{tmp_path / 'unused.db'}")
    env.update(
        CONVEYOR_TLS_CERT=str(certs.server_cert),
        CONVEYOR_API_KEY="cvk_not_for_logs",
        CONVEYOR_API_ADDR=f"127.0.0.1:{free_port()}",
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "conveyor"), "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "CONVEYOR_TLS_KEY" in done.stderr, done.stderr
    assert "cvk_not_for_logs" not in done.stderr + done.stdout


def test_settings_and_files_are_checked(
    certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a pair, mTLS without a server certificate, and unreadable or wrong files are
    clear errors naming the variable and the path."""
    with pytest.raises(pydantic.ValidationError, match="CONVEYOR_TLS_CERT"):
        Settings(tls_key=str(certs.server_key))
    with pytest.raises(pydantic.ValidationError, match="CONVEYOR_TLS_CLIENT_KEY"):
        Settings(tls_client_cert=str(certs.client_cert))
    with pytest.raises(pydantic.ValidationError, match="needs the server's own certificate"):
        Settings(tls_client_ca=str(certs.client_ca))

    missing = tmp_path / "missing.pem"
    with pytest.raises(
        TlsConfigError, match=rf"CONVEYOR_TLS_CERT: cannot read .*{re.escape(str(missing))}"
    ):
        server_credentials(Settings(tls_cert=str(missing), tls_key=str(certs.server_key)))
    with pytest.raises(TlsConfigError, match=r"CONVEYOR_TLS_KEY: .* holds no PEM private key"):
        server_credentials(Settings(tls_cert=str(certs.server_cert), tls_key=str(certs.ca)))
    with pytest.raises(TlsConfigError, match="CONVEYOR_TLS is set but CONVEYOR_TLS_CERT"):
        server_credentials(Settings(tls=True))
    with pytest.raises(
        TlsConfigError, match=rf"CONVEYOR_TLS_CA: cannot read .*{re.escape(str(missing))}"
    ):
        TlsOptions(ca=missing).credentials()

    with caplog.at_level(logging.INFO, logger="conveyor.tls"):
        assert server_credentials(Settings()) is None
        server_credentials(Settings(tls_cert=str(certs.server_cert), tls_key=str(certs.server_key)))
    assert str(certs.server_key) in caplog.text and "PRIVATE KEY" not in caplog.text
