"""The public import paths (README, docs/handlers.md) and every name they export: a name
that disappears or moves breaks users' code, so any change to these lists is deliberate.
Everything else in `conveyor` may move (see the README's layout section)."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "conveyor.client": [
        "Artifact",
        "AsyncClient",
        "AsyncWorkerControl",
        "Attempt",
        "AttemptOutcome",
        "Batch",
        "Blocked",
        "BlockedKind",
        "BulkAction",
        "BulkOperation",
        "BulkOperationState",
        "Client",
        "DependencyFailurePolicy",
        "Job",
        "JobResult",
        "JobState",
        "JobUpdate",
        "Page",
        "RetriedJob",
        "RetryPolicy",
        "SubmitRetry",
        "SubmittedBatch",
        "limits_request",
        "retry_policy",
        "schedule_request",
        "submit_request",
    ],
    "conveyor.errors": [
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
    ],
    "conveyor.handlers": [
        "BaseContext",
        "HandlerSpec",
        "JobContext",
        "PermanentError",
        "RateLimited",
        "Registry",
        "SyncJobContext",
        "default_registry",
        "handler",
        "load_modules",
        "retry",
    ],
    "conveyor.handlers.webhook": ["SIGNATURE_TOLERANCE_SECONDS", "sign", "verify_signature"],
    "conveyor.testing": ["HandlerRun", "RunFixture", "run_handler", "run_handler_async"],
}


@pytest.mark.parametrize("path", sorted(PUBLIC))
def test_a_public_module_exports_exactly_its_pinned_names(path: str) -> None:
    module = importlib.import_module(path)
    assert sorted(module.__all__) == PUBLIC[path]
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"{path}.{name} is listed but missing"
