"""The worker service: runs `conveyor.runner.Worker` and serves `conveyor.v1.WorkerControl`."""
