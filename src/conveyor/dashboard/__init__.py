"""The web dashboard (`conveyor dashboard`, services/dashboard): a browser's view of jobs,
queues, workers and schedules.

It is one more client of the API: every page is made from JobService calls made with the
logged-in user's own key (`conveyor.client.AsyncClient`), so what a user may see and do is
what the API lets that key see and do (the workers page also calls each worker's own
WorkerControl, with the same key); the dashboard holds no database or Redis connection.
Modules: `sessions` (logins, cookies, CSRF), `live` (gRPC streams as server-sent events:
WatchJob for a job page), `workers` (each worker's WorkerControl, at the address it announces:
the workers page's WatchWorkerStatus streams, pause, resume, drain), `app` (routes, pages and
security headers), templates/ and static/ (no script inline, nothing fetched from elsewhere at
run time).
"""
