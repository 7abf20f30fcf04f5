"""The Go and Node example clients (examples/go, examples/node) against the live stack: each
submits a job with an idempotency key (twice: the same job comes back), waits out the
RESOURCE_EXHAUSTED its key's rate limit answers as the RetryInfo says, drops its first
WatchJob stream and resumes after the last sequence it saw, and prints the BadRequest field
violations of an invalid submit.

A language whose toolchain or libraries are missing is skipped with the reason: `node` with
`npm ci` (run here once if examples/node/node_modules is missing), `go` with Debian's Go
packages (examples/go/build-offline.sh; the Go module proxy is not needed) or a module cache
that holds the dependencies. `make examples-deps` installs both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as jpb
from conveyor.v1.job_service_pb2_grpc import JobServiceStub
from tests.processes import ROOT, Keys, Stack

EXAMPLES = ROOT / "examples"
LANGUAGES = ["node", "go"]
# The clients in other languages see the API, whatever Redis is behind it.
pytestmark = pytest.mark.one_redis_shape


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    """`node client.mjs`, with its packages installed from the lock file if they are not."""
    folder, node = EXAMPLES / "node", shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH (apt-get install nodejs, or `make examples-deps`)")
    if not (folder / "node_modules" / "@grpc" / "grpc-js").is_dir():
        if shutil.which("npm") is None:
            pytest.skip("examples/node/node_modules is missing and npm is not on PATH")
        try:
            installed = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=folder, capture_output=True, text=True, timeout=180,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.skip("`npm ci` in examples/node did not finish in 180 s")
        if installed.returncode != 0:
            pytest.skip(f"`npm ci` in examples/node failed:\n{_tail(installed)}")
    return [node, str(folder / "client.mjs")]


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Go example, built once: against Debian's Go packages when they are installed
    (no module proxy needed), else in module mode from the module cache."""
    folder = EXAMPLES / "go"
    if shutil.which("go") is None:
        pytest.skip("go is not on PATH (apt-get install golang-go, or `make examples-deps`)")
    binary = tmp_path_factory.mktemp("go-example") / "conveyor-example"
    debian = Path("/usr/share/gocode/src/google.golang.org/grpc").is_dir()
    build = [str(folder / "build-offline.sh"), str(binary)] if debian else (
        ["go", "build", "-mod=mod", "-o", str(binary), "."]
    )  # fmt: skip
    try:
        built = subprocess.run(build, cwd=folder, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("building examples/go did not finish in 300 s")
    # With Debian's packages present a failed build is the example's fault; without them it
    # is most likely the module proxy out of reach.
    assert built.returncode == 0 or not debian, built.stdout + built.stderr
    if built.returncode != 0:
        pytest.skip(f"examples/go does not build from the Go module proxy:\n{_tail(built)}")
    return [str(binary)]


@pytest.fixture(params=LANGUAGES)
def example(request: pytest.FixtureRequest) -> list[str]:
    """The command that runs one language's example client."""
    argv: list[str] = request.getfixturevalue(f"{request.param}_client")
    return argv


def environment(stack: Stack, key: str) -> dict[str, str]:
    env = {"CONVEYOR_API_ADDR": stack.api_addr, "CONVEYOR_API_KEY": key}
    return {"PATH": os.environ["PATH"], **env}


def run(example: list[str], stack: Stack, key: str, *args: str) -> str:
    result = subprocess.run(
        [*example, *args], env=environment(stack, key), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def get_job(stack: Stack, key: str, job_id: str) -> job_pb2.Job:
    with grpc.insecure_channel(stack.api_addr) as channel:
        reply = JobServiceStub(channel).GetJob(
            jpb.GetJobRequest(id=job_id), metadata=(("authorization", f"Bearer {key}"),)
        )
    return reply.job  # type: ignore[no-any-return]


def watch_across_the_drop(
    example: list[str], stack: Stack, keys: Keys, key: str, name: str
) -> tuple[str, str]:
    """Runs the example with `--drop-first-stream` on the paused "default" queue, which is
    resumed as soon as the example says it dropped its stream: (stdout, stderr)."""
    args = ["--drop-first-stream", "--idempotency-key", name]
    with subprocess.Popen(
        [*example, *args], env=environment(stack, key), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        out = ""
        for line in proc.stdout:  # up to the drop (or the end, if the example failed first)
            out += line
            if line.startswith("dropped the stream"):
                break
        stack.cli("queues", "resume", "default", key=keys.admin)
        rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + rest + err
    return out + rest, err


def test_example_submits_waits_out_the_rate_limit_and_resumes_its_watch(
    example: list[str], stack: Stack, keys: Keys
) -> None:
    """Guards the examples' main path: with a key allowed one submit per two seconds, the
    resubmit with the same idempotency key is refused RESOURCE_EXHAUSTED, waited out as its
    RetryInfo says and answered with the same job; the watch stream dropped after its first
    update resumes after that sequence (every later update newer, none twice) and ends at
    SUCCEEDED, which the server confirms. The job's queue stays paused until the example
    has dropped its first stream, so the job cannot finish before the watch begins."""
    name = f"examples-{uuid.uuid4().hex[:8]}"
    made = json.loads(stack.cli("keys", "create", "--owner", name, "--json").stdout)
    stack.cli("keys", "limits", made["id"], "--submit-rate", "0.5", "--submit-burst", "1")
    # The stack's worker serves "default" only; paused, the job waits there (QUEUED) until
    # the example has dropped its first stream. Tests run one at a time on the stack.
    stack.cli("queues", "pause", "default", key=keys.admin)
    try:
        out, _ = watch_across_the_drop(example, stack, keys, made["key"], name)
    finally:
        stack.cli("queues", "resume", "default", key=keys.admin)

    job_id = re.search(rf"^submitted job (\S+) \(idempotency key {name}\)$", out, re.M)
    assert job_id, out
    assert re.search(r"^rate limited: retrying in (1\.[5-9]|2\.0)\d*s$", out, re.M), out
    assert f"submitted again: same job {job_id[1]}" in out
    assert re.search(r"^update \d+ JOB_STATE_QUEUED 0%\ndropped the stream after", out, re.M), out
    dropped = re.search(r"^dropped the stream after sequence (\d+); resuming$", out, re.M)
    assert dropped, out
    sequences = [int(s) for s in re.findall(r"^update (\d+) ", out, re.M)]
    assert sequences[0] == int(dropped[1]) and sequences == sorted(set(sequences)), out
    assert len(sequences) > 2, out  # RUNNING and SUCCEEDED came on the resumed stream
    assert out.rstrip().endswith(f"finished {job_id[1]} JOB_STATE_SUCCEEDED"), out

    job = get_job(stack, made["key"], job_id[1])
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED and job.idempotency_key == name


def test_example_prints_bad_request_field_violations(example: list[str], stack: Stack) -> None:
    """Guards the examples' error path: a submit with priority 99 comes back
    INVALID_ARGUMENT and the example prints the BadRequest violation on `priority`."""
    key = stack.create_key("examples")
    out = run(example, stack, key, "--bad")
    assert "invalid argument:" in out
    assert re.search(r"^field violation priority: .*0.*9", out, re.M), out


def test_the_committed_go_stubs_are_fresh(tmp_path: Path) -> None:
    """Guards examples/go/gen against drifting from protos/: `buf generate` (buf.gen.yaml,
    what `make examples-gen` runs) writes the same files, the plugins' version lines aside."""
    if not (shutil.which("protoc-gen-go") and shutil.which("protoc-gen-go-grpc")):
        pytest.skip("protoc-gen-go / protoc-gen-go-grpc are not on PATH (`make examples-deps`)")
    buf = Path(sys.executable).parent / "buf"
    subprocess.run([str(buf), "generate", "-o", str(tmp_path)], cwd=ROOT, check=True, timeout=60)

    def stubs(folder: Path) -> dict[str, str]:
        versions = re.compile(r"^// (\tprotoc-gen-go|- protoc-gen-go-grpc|\tprotoc) .*$", re.M)
        return {
            str(p.relative_to(folder)): versions.sub("", p.read_text())
            for p in sorted(folder.rglob("*.go"))
        }

    fresh, committed = stubs(tmp_path / "examples/go/gen"), stubs(EXAMPLES / "go/gen")
    assert fresh == committed, "stale examples/go/gen; run `make examples-gen`"
