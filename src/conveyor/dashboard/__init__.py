"""The web dashboard (`conveyor dashboard`, services/dashboard): a browser's view of jobs,
queues, workers and schedules.

It is one more client of the API: every page is made from JobService calls made with the
logged-in user's own key (`conveyor.client.AsyncClient`), so what a user may see and do is
what the API lets that key see and do; the dashboard holds no database or Redis connection.
Modules: `sessions` (logins, cookies, CSRF), `live` (WatchJob as server-sent events),
`app` (routes, pages and security headers), templates/ and static/ (no script inline, nothing
fetched from elsewhere at run time).
"""
