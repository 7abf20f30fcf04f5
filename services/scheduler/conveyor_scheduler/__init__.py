"""The scheduler service: cron and interval schedules and the reconciler (coming issues).

Today it serves gRPC health and holds its place in the process layout, so deployments and
`conveyor dev` already run it.
"""
