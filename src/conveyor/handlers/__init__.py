"""Job handlers: the registry decorator, the context a handler gets, and the built-ins."""

from conveyor.handlers.context import BaseContext, JobContext, SyncJobContext
from conveyor.handlers.registry import (
    HandlerSpec,
    PermanentError,
    RateLimited,
    Registry,
    default_registry,
    handler,
    load_modules,
)
from conveyor.jobs.retry import retry

__all__ = [
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
]
