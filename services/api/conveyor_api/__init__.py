"""The API service: `conveyor.v1.JobService` over gRPC (wiring only; the domain is `conveyor`)."""
