"""What a child may say to its worker: JSON of a handful of messages, decoded into exactly
those. A child runs what a user wrote; one that a template or query subverted must not get
code run in the worker, as unpickling its bytes would."""

from __future__ import annotations

import os
import pickle

import pytest

from conveyor.jobs.artifacts import Artifact
from conveyor.worker.isolation.wire import READY, Call, Outcome, Progress, decode, encode

MESSAGES = [
    READY,
    Progress(42.5, "half"),
    Call("once", ("welcome",)),
    Call("find", ("", "out.csv")),
    Call("record", (Artifact("j", "out.csv", "jobs/j/artifacts/out.csv", 3, "text/csv", "ab", 1),)),
    Outcome(result={"rows": 3}),
    Outcome(error="RuntimeError: no", traceback="...", permanent=True, failed=True),
    Outcome(error="RateLimited: rate limited: retry after 500 ms", retry_after_ms=500),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_crosses_as_itself(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/conveyor-pwned",))


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(Boom()),
        pickle.dumps(Outcome(result={"rows": 3})),
        b'{"kind": "exec", "code": "1"}',
        b'{"kind": "call", "op": "shell", "args": ["ls"]}',
        b'{"kind": "call", "op": "record", "args": [{"job_id": "j"}]}',
        b'{"kind": "outcome", "result": [1], "error": "", "traceback": "", '
        b'"permanent": false, "failed": false}',
        b'{"kind": "progress"}',
        b"[]",
    ],
)
def test_anything_else_is_refused_and_nothing_is_run(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)
    assert not os.path.exists("/tmp/conveyor-pwned")
