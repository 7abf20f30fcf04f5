"""Conveyor: asynchronous job processing over gRPC."""
