"""Conveyor's errors, and the one map between them and gRPC statuses.

    ConveyorError
     ├── InvalidArgument      INVALID_ARGUMENT   + google.rpc.BadRequest field violations
     ├── NotFound             NOT_FOUND          (also: another owner's job)
     ├── AlreadyExists        ALREADY_EXISTS     (idempotency key reused with another request)
     ├── FailedPrecondition   FAILED_PRECONDITION (illegal state transition)
     ├── Unauthenticated      UNAUTHENTICATED
     ├── PermissionDenied     PERMISSION_DENIED
     ├── ResourceExhausted    RESOURCE_EXHAUSTED + google.rpc.RetryInfo
     │    └── QuotaExceeded   RESOURCE_EXHAUSTED + google.rpc.QuotaFailure (a count at its cap)
     └── Unavailable          UNAVAILABLE        (Redis or the database unreachable)
          └── RedisRefused    UNAVAILABLE        + google.rpc.ErrorInfo + RetryInfo (Redis
                                                 answers but refuses the write: out of memory,
                                                 a read-only replica, loading its data, ...)

Servers raise these from the domain and `to_status()` turns them into a rich status at the
gRPC boundary; the client turns a status back into the same class with `from_rpc_error()`,
so callers of either side never handle `grpc.RpcError` themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AlreadyExists",
    "ConveyorError",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QuotaExceeded",
    "RedisRefused",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "from_status",
    "internal_status",
    "outage",
    "status_of",
    "to_status",
]


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `requests[3].priority`) and why."""

    field: str
    description: str


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        """The google.rpc detail messages that travel with this error."""
        return []


class InvalidArgument(ConveyorError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation], message: str = "") -> None:
        self.violations = violations
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(message or f"invalid request: {summary}")

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        return [detail]


class NotFound(ConveyorError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ConveyorError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ConveyorError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ConveyorError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ConveyorError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ConveyorError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_seconds * 1e9))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [detail]


class QuotaExceeded(ResourceExhausted):
    """An owner holds as many of something as it may (e.g. schedules): retrying later
    does not help until some are deleted, so it carries a QuotaFailure, not a RetryInfo."""

    def __init__(self, message: str, subject: str) -> None:
        super().__init__(message)
        self.subject = subject

    def details(self) -> list[any_pb2.Any]:
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=self.subject, description=self.message
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.QuotaFailure(violations=[violation]))
        return [detail]


class Unavailable(ConveyorError):
    code = grpc.StatusCode.UNAVAILABLE


class RedisRefused(Unavailable):
    """Redis answered but refused a write (`reason` in a few words, e.g. "out of memory").
    Nothing was written, and the same call is likely to succeed once Redis has room or a
    primary again, so the client is told what happened and when to try again."""

    RETRY_AFTER_SECONDS = 1.0

    def __init__(self, reason: str) -> None:
        super().__init__(f"redis refused the write ({reason}); nothing was stored, try again")
        self.reason = reason

    def details(self) -> list[any_pb2.Any]:
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason="REDIS_REFUSED", domain="conveyor", metadata={"redis": self.reason}
            )
        )
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.RETRY_AFTER_SECONDS * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [info, retry]


_BY_CODE: dict[grpc.StatusCode, type[ConveyorError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
    )
}


def outage(store: str) -> BaseException:
    """What a lost connection to `store` raises: Unavailable, unless the current task is
    being cancelled. Client libraries may turn a cancellation into a connection error
    (redis-py does, mid-read); reporting that as an outage would let a loop that retries
    outages carry on after it was told to stop, and its process ignore SIGTERM."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return asyncio.CancelledError()
    return Unavailable(f"{store} unavailable")


def status_of(error: ConveyorError) -> status_pb2.Status:
    """`error` as a google.rpc.Status: code, message and details (also what a per-item
    SubmitJobs answers for a request it refused)."""
    return status_pb2.Status(
        code=error.code.value[0], message=error.message, details=error.details()
    )


def to_status(error: ConveyorError) -> grpc.Status:
    """The rich gRPC status for `error` (code, message and google.rpc details)."""
    return rpc_status.to_status(status_of(error))


def internal_status(message: str = "internal error") -> grpc.Status:
    """A status for a bug: says nothing about internals to the caller."""
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))


def from_rpc_error(error: grpc.RpcError) -> ConveyorError:
    """Map a failed call back to the ConveyorError it stands for (client side)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return _from_parts(code, message, list(status.details) if status is not None else [])


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_status(status: status_pb2.Status) -> ConveyorError:
    """The ConveyorError a google.rpc.Status stands for (the one `from_rpc_error` raises for
    a call that failed with it): a per-item SubmitJobs result's error, client side."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _from_parts(code, status.message or code.name, list(status.details))


def _from_parts(code: grpc.StatusCode, message: str, details: list[any_pb2.Any]) -> ConveyorError:
    """The one map from a status's parts to the error class (and its details) it stands for."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations: list[FieldViolation] = []
        for detail in details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        return InvalidArgument(violations, message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = 1.0
        for detail in details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                retry_after = info.retry_delay.ToNanoseconds() / 1e9
        return ResourceExhausted(message, retry_after)
    cls = _BY_CODE.get(code)
    if cls is None:
        failure = ConveyorError(message)
        failure.code = code
        return failure
    return cls(message)
