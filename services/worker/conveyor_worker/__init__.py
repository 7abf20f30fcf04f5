"""The worker service: runs `conveyor.worker.runner.Worker` and serves
`conveyor.v1.WorkerControl`."""
