"""The `conveyor` command line (its commands are in `conveyor.cli.app`)."""

from __future__ import annotations

import gc
import sys

# Commands that run a service until it is stopped (see `conveyor.server.service.service_main`).
SERVICE_COMMANDS = frozenset({"api", "worker", "scheduler", "dashboard"})


def main() -> None:
    """The `conveyor` console script.

    For a service command the cyclic garbage collector is off while modules are imported:
    start-up allocates some 140,000 objects that live as long as the process, and
    collecting young objects every 700 allocations among them was about 15 % of the time
    from spawn to SERVING (~0.2 s). `conveyor.server.service.tune_collector` freezes what start-up
    made and turns the collector back on."""
    if sys.argv[1:2] and sys.argv[1] in SERVICE_COMMANDS:
        gc.disable()
    from conveyor.cli.app import main as run

    run()


__all__ = ["SERVICE_COMMANDS", "main"]
