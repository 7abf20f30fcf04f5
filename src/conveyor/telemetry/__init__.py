"""What Conveyor shows of itself: logs (`logs`), traces (`tracing`) and Prometheus metrics
(`metrics`). Each service sets all three up once, in `conveyor.server.service.service_main`."""

from conveyor.telemetry.logs import bind_job, configure_logging
from conveyor.telemetry.tracing import configure_tracing

__all__ = ["bind_job", "configure_logging", "configure_tracing"]
