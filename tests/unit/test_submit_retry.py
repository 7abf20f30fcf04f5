"""The SDK's submit retry decision (`conveyor.client.SubmitRetry`): which answers are
retried, how long it waits (never less than the server's RetryInfo), and where it stops.
The errors are grpc's own `AioRpcError`, with the rich status in its trailing metadata as
the channel delivers it."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from conveyor.client import SubmitRetry, submit_request
from conveyor.client._client import bulk_request
from conveyor.client._retries import retry_info_delay
from conveyor.v1 import job_service_pb2 as pb


def failure(code: grpc.StatusCode, retry_after: float | None = None) -> grpc.aio.AioRpcError:
    """An answer with `code`, carrying a RetryInfo of `retry_after` seconds if given."""
    trailing = grpc.aio.Metadata()
    if retry_after is not None:
        detail = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(code=code.value[0], message="later", details=[detail])
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, "later", "")


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_ambiguous_answers_are_retried_with_capped_jittered_backoff(
    code: grpc.StatusCode,
) -> None:
    """The wait after try n is within [d/2, d], d = 0.1 s * 2**(n-1) capped at 2 s."""
    policy = SubmitRetry()
    for tries, ceiling in [(1, 0.1), (2, 0.2), (5, 1.6), (6, 2.0), (9, 2.0)]:
        wait = policy.delay(failure(code), tries, since_failure=0.0)
        assert wait is not None and ceiling / 2 <= wait <= ceiling, (tries, wait)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # the caller's backpressure to heed, not hide
        grpc.StatusCode.INTERNAL,
    ],
)
def test_verdicts_on_the_request_are_not_retried(code: grpc.StatusCode) -> None:
    assert SubmitRetry().delay(failure(code, retry_after=0.1), 1, since_failure=0.0) is None


def test_retry_info_sets_the_least_wait() -> None:
    """A server that says how long to wait is believed, above the backoff."""
    error = failure(grpc.StatusCode.UNAVAILABLE, retry_after=1.5)
    assert retry_info_delay(error) == pytest.approx(1.5)
    assert SubmitRetry().delay(error, 1, since_failure=0.0) == pytest.approx(1.5)
    assert retry_info_delay(failure(grpc.StatusCode.UNAVAILABLE)) == 0.0


def test_tries_and_time_are_bounded() -> None:
    """No try past `attempts`, none that would start past `total` after the first failure."""
    policy = SubmitRetry(attempts=3, total=5.0)
    error = failure(grpc.StatusCode.UNAVAILABLE)
    assert policy.delay(error, 2, since_failure=0.0) is not None
    assert policy.delay(error, 3, since_failure=0.0) is None
    assert policy.delay(error, 1, since_failure=4.99) is None
    assert SubmitRetry(attempts=1).delay(error, 1, since_failure=0.0) is None


def test_a_bulk_keys_its_copies_once_and_leaves_the_callers_requests() -> None:
    """Keys are fixed when the bulk request is built (every retry sends that message), one
    per job; a job's own key is kept; the caller's requests stay as they were."""
    mine = submit_request("noop", idempotency_key="mine")
    given = [submit_request("noop"), submit_request("noop"), mine]
    request = bulk_request(given, pb.JOB_VIEW_BASIC, idempotency_keys=True)
    keys = [item.idempotency_key for item in request.requests]
    assert keys[0].startswith("sdk-") and keys[1].startswith("sdk-") and keys[0] != keys[1]
    assert keys[2] == "mine"
    assert [item.idempotency_key for item in given] == ["", "", "mine"]
    unkeyed = bulk_request(given, pb.JOB_VIEW_BASIC, idempotency_keys=False)
    assert [item.idempotency_key for item in unkeyed.requests] == ["", "", "mine"]


@pytest.mark.parametrize(
    "bad", [{"attempts": 0}, {"initial": -1.0}, {"multiplier": 0.5}, {"jitter": 2.0}]
)
def test_a_policy_that_cannot_work_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SubmitRetry(**bad)  # type: ignore[arg-type]
