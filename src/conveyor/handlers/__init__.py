"""Job handlers: the registry decorator, the context a handler gets, and the built-ins."""

from conveyor.handlers.context import JobContext
from conveyor.handlers.registry import (
    HandlerSpec,
    PermanentError,
    Registry,
    default_registry,
    handler,
    load_modules,
)

__all__ = [
    "HandlerSpec",
    "JobContext",
    "PermanentError",
    "Registry",
    "default_registry",
    "handler",
    "load_modules",
]
