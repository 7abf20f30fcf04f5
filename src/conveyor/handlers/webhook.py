"""`verify_signature` for receivers of `http.request` deliveries, at the public path the
README shows (`from conveyor.handlers.webhook import verify_signature`); the job type itself
lives in `conveyor.builtins.webhook`."""

from conveyor.builtins.webhook import verify_signature

__all__ = ["verify_signature"]
