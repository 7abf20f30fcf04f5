"""The dashboard's ASGI app: its routes, the pages they render and the headers every answer
carries.

Every handler works through the session's `AsyncClient`, so the API decides what a key may
see: a job another owner holds is NotFound there and a 404 here, an admin-only call a user
key makes is PermissionDenied there and a 403 here. Forms POST with the session's CSRF token
(`sessions`); the job page's live part is `live.job_events` as server-sent events, the
workers page's `workers.worker_events`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jinja2
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.client import AsyncClient, BulkOperation, JobState
from conveyor.config import Settings
from conveyor.dashboard.admin_pages import AdminPages
from conveyor.dashboard.charts import OVERVIEW_REFRESH_SECONDS, failure_chart, finished_chart
from conveyor.dashboard.live import SSE_HEADERS, job_event, job_events
from conveyor.dashboard.paging import paging
from conveyor.dashboard.sessions import LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions
from conveyor.dashboard.workers import WATCH_LIMIT, control, find_worker, worker_events
from conveyor.errors import (
    ConveyorError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

HERE = Path(__file__).parent
PAGE_SIZE = 50
MAX_FORM_BYTES = 64 * 1024
# What each bulk action does to a job, as the confirmation says it.
BULK_VERBS = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}
# The jobs page's state tabs ("" is every state).
TABS = ("", "QUEUED", "RUNNING", "RETRYING", "SCHEDULED", "SUCCEEDED", "DEAD", "CANCELLED")
# No script or style but our own files: an injected <script> or inline handler does not run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


class LoginRequired(Exception):
    """The request has no live session: its answer is the login page."""


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every answer (pages, static files, errors, events)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, sending if scope["type"] == "http" else send)


class Dashboard:
    """The routes, bound to the API's address and this process's sessions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = Sessions()
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True
        )
        env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True)
        env.filters["when"] = _when
        self.templates = Jinja2Templates(env=env)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Close every session's client when the server stops."""
        yield
        await self.sessions.close_all()

    # -- helpers ------------------------------------------------------------------------

    def session(self, request: Request) -> Session:
        found = self.sessions.find(request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise LoginRequired
        return found

    async def posted(self, request: Request) -> tuple[Session, dict[str, str]]:
        """A POST's session and form, once its CSRF token is the session's (else 403)."""
        session = self.session(request)
        form = await _form(request)
        if not session.csrf_ok(form.get("csrf", "")):
            raise HTTPException(403, "missing or wrong CSRF token")
        return session, form

    def page(
        self,
        request: Request,
        name: str,
        context: Mapping[str, Any],
        status: int = 200,
        session: Session | None = None,
    ) -> HTMLResponse:
        return self.templates.TemplateResponse(
            request, name, {"session": session, **context}, status_code=status
        )

    # -- login ----------------------------------------------------------------------------

    async def login_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        token, cookie = self.sessions.login_token()
        response = self.page(request, "login.html", {"csrf": token, "error": error}, status)
        _set_cookie(request, response, LOGIN_COOKIE, cookie, max_age=3600)
        return response

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        token, key = form.get("csrf", ""), form.get("api_key", "")
        if not self.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), token):
            raise HTTPException(403, "missing or wrong CSRF token")
        if not key.strip():
            return await self.login_form(request, "Enter an API key.", 400)
        client = AsyncClient(self.settings.api_addr, api_key=key.strip(), timeout=10.0)
        try:
            await client.list(page_size=1)  # a real call: the API says whether the key is good
            admin = await _is_admin(client)
        except ConveyorError as exc:
            await client.close()
            message = "The API refused this key." if isinstance(exc, Unauthenticated) else str(exc)
            return await self.login_form(request, message, 401)
        cookie, _ = self.sessions.open(client, admin=admin, api_key=key.strip())
        await self.sessions.sweep()
        response = RedirectResponse("/overview" if admin else "/jobs", 303)
        _set_cookie(request, response, SESSION_COOKIE, cookie)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    async def logout(self, request: Request) -> Response:
        await self.posted(request)
        await self.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- pages ----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/overview" if self.session(request).admin else "/jobs", 303)

    async def jobs(self, request: Request) -> Response:
        session = self.session(request)
        query = request.query_params
        text, state = query.get("filter", "").strip(), query.get("state", "")
        fields: dict[str, Any] = {"page_size": PAGE_SIZE, "page_token": query.get("page", "")}
        if text:
            fields["filter"] = text
        if state in JobState.__members__ and state:
            fields["state"] = int(JobState[state])
        status, error = 200, ""
        try:
            page = await session.client.list(**fields)
            jobs, next_token = page.items, page.next_page_token
        except InvalidArgument as exc:
            jobs, next_token, status, error = [], "", 400, str(exc)
        links = paging("/jobs", query, {"state": state, "filter": text}, next_token)
        context = {"jobs": jobs, "paging": links, "filter": text, "state": state}
        return self.page(
            request, "jobs.html", {**context, "tabs": TABS, "error": error}, status, session
        )

    async def job(self, request: Request) -> Response:
        session = self.session(request)
        job_id = request.path_params["job_id"]
        job = await session.client.get(job_id)
        attempts = await session.client.attempts(job_id)
        result = await session.client.result(job_id) if job.state == JobState.SUCCEEDED else None
        context = {"job": job, "live": job_event(job), "attempts": attempts, "result": result}
        return self.page(request, "job.html", context, session=session)

    async def job_live(self, request: Request) -> Response:
        session = self.session(request)
        job_id = request.path_params["job_id"]
        await session.client.get(job_id)  # 404 before the stream starts, not inside it
        return StreamingResponse(
            job_events(session.client, job_id),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    async def job_action(self, request: Request) -> Response:
        session, _ = await self.posted(request)
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action == "cancel":
            await session.client.cancel(job_id)
        elif action == "retry":
            await session.client.retry(job_id)
        else:
            raise HTTPException(404)
        return RedirectResponse(f"/jobs/{job_id}", 303)

    async def bulk_review(self, request: Request) -> Response:
        """Step one of a bulk action: its dry run, and a page that says how many jobs it
        would touch and asks to confirm (AIP-165: nothing starts without `force`)."""
        session, form = await self.posted(request)
        action, text = form.get("action", ""), _bulk_filter(form)
        act = self._bulk(session, action)
        try:
            preview = await act(text, force=False)
        except InvalidArgument as exc:
            return self.page(request, "error.html", {"message": str(exc)}, 400, session)
        context = {
            "action": action, "done_verb": BULK_VERBS[action], "filter": text,
            "count": preview.matched,
        }  # fmt: skip
        return self.page(request, "bulk_review.html", context, session=session)

    async def bulk_start(self, request: Request) -> Response:
        """Step two: the confirmed action starts, as an operation the next page follows."""
        session, form = await self.posted(request)
        act = self._bulk(session, form.get("action", ""))
        operation = await act(form.get("filter", ""), force=True)
        return RedirectResponse(f"/bulk/{operation.id}", 303)

    async def bulk_operation(self, request: Request) -> Response:
        session = self.session(request)
        operation = await session.client.get_bulk_operation(request.path_params["operation_id"])
        return self.page(request, "bulk.html", {"operation": operation}, session=session)

    def _bulk(self, session: Session, action: str) -> Callable[..., Awaitable[BulkOperation]]:
        """The session's client call for `action` (retry, cancel, delete), or 400."""
        client = session.client
        acts = {
            "retry": client.retry_jobs,
            "cancel": client.cancel_jobs,
            "delete": client.delete_jobs,
        }
        if action not in acts:
            raise HTTPException(400, "choose retry, cancel or delete")
        return acts[action]

    async def overview(self, request: Request) -> Response:
        session = self.session(request)
        queues = await session.client.queue_stats()
        context = {
            "queues": queues,
            "charts": {
                q.queue: (finished_chart(q.recent_minutes), failure_chart(q.recent_minutes))
                for q in queues
            },
            "now": datetime.now(UTC),
            "refresh_seconds": OVERVIEW_REFRESH_SECONDS,
        }
        return self.page(request, "overview.html", context, session=session)

    async def queues(self, request: Request) -> Response:
        session = self.session(request)
        queues = await session.client.queue_stats()
        return self.page(request, "queues.html", {"queues": queues}, session=session)

    async def queue_action(self, request: Request) -> Response:
        session, _ = await self.posted(request)
        name, action = request.path_params["queue"], request.path_params["action"]
        acts = {"pause": session.client.pause_queue, "resume": session.client.resume_queue}
        if action not in acts:
            raise HTTPException(404)
        await acts[action](name)
        return RedirectResponse("/queues", 303)

    # -- workers: live from each worker's own WorkerControl (see dashboard.workers) ------

    async def workers(self, request: Request) -> Response:
        session = self.session(request)
        listed = await session.client.workers()
        context = {"workers": listed[:WATCH_LIMIT], "total": len(listed), "limit": WATCH_LIMIT}
        return self.page(request, "workers.html", context, session=session)

    async def workers_live(self, request: Request) -> Response:
        """The workers page's events: a WatchWorkerStatus stream per listed worker."""
        session = self.session(request)
        listed = await session.client.workers()  # a user key's 403 before the stream starts
        return StreamingResponse(
            worker_events(listed, session.api_key),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    async def worker_action(self, request: Request) -> Response:
        """Pause, resume or drain a worker, dialled at the address ListWorkers gives for
        its id (never one from the request). Drain stops the worker for good, so it first
        answers a page that asks to confirm, whose form says `confirmed`."""
        session, form = await self.posted(request)
        worker_id, action = request.path_params["worker_id"], request.path_params["action"]
        if action not in ("pause", "resume", "drain"):
            raise HTTPException(404)
        worker = await find_worker(session.client, worker_id)
        if action == "drain" and form.get("confirmed") != "yes":
            return self.page(request, "worker_drain.html", {"worker": worker}, session=session)
        try:
            await control(worker, session.api_key, action)
        except ConveyorError as exc:  # the worker refused, or could not be reached
            message = f"Worker {worker_id} ({worker.control_address or 'no address'}): {exc}"
            return self.page(request, "error.html", {"message": message}, 502, session)
        return RedirectResponse("/workers", 303)

    async def schedules(self, request: Request) -> Response:
        session = self.session(request)
        answer = await session.client.list_schedules(
            page_size=PAGE_SIZE, page_token=request.query_params.get("page", "")
        )
        context = {"schedules": answer.schedules, "next": answer.next_page_token}
        return self.page(request, "schedules.html", context, session=session)

    async def schedule_action(self, request: Request) -> Response:
        session, _ = await self.posted(request)
        schedule_id, action = request.path_params["schedule_id"], request.path_params["action"]
        client = session.client
        acts: dict[str, Callable[[str], Awaitable[object]]] = {
            "pause": client.pause_schedule,
            "resume": client.resume_schedule,
            "trigger": client.trigger_schedule,
        }
        if action not in acts:
            raise HTTPException(404)
        await acts[action](schedule_id)
        return RedirectResponse("/schedules", 303)

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    # -- errors ---------------------------------------------------------------------------

    async def error(self, request: Request, exc: Exception) -> Response:
        """The API's refusals as HTTP statuses; a lost session as the login page."""
        if isinstance(exc, LoginRequired | Unauthenticated):
            if isinstance(exc, Unauthenticated):  # the key was revoked meanwhile
                await self.sessions.close(request.cookies.get(SESSION_COOKIE))
            return RedirectResponse("/login", 303)
        status, message = 500, "Something went wrong."
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, str(exc.detail)
        elif isinstance(exc, NotFound):
            status, message = 404, "Not found."
        elif isinstance(exc, PermissionDenied):
            status, message = 403, "This needs an admin key."
        elif isinstance(exc, InvalidArgument):
            status, message = 400, str(exc)
        elif isinstance(exc, ConveyorError):
            status, message = 502, f"The API answered: {exc}"
        found = self.sessions.find(request.cookies.get(SESSION_COOKIE))
        return self.page(request, "error.html", {"message": message}, status, found)


def _bulk_filter(form: Mapping[str, str]) -> str:
    """The filter a bulk action acts on: the jobs page's filter, within its state tab."""
    text, state = form.get("filter", "").strip(), form.get("state", "")
    if state not in JobState.__members__ or not state:
        return text
    return f"state = {state} AND ({text})" if text else f"state = {state}"


def _when(value: datetime | Timestamp | None) -> str:
    """A time as the pages show it: UTC to the second ("—" for none or an unset one)."""
    if isinstance(value, Timestamp):
        value = value.ToDatetime(tzinfo=UTC) if value.seconds or value.nanos else None
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


async def _form(request: Request) -> dict[str, str]:
    """A POSTed form's fields. Every form here is small and url-encoded (no uploads), so
    this reads it directly rather than pulling in a multipart parser."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    return dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))


async def _is_admin(client: AsyncClient) -> bool:
    """Whether the key may make admin calls (GetQueueStats is one)."""
    try:
        await client.queue_stats()
    except PermissionDenied:
        return False
    return True


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    """Our cookies: HttpOnly, SameSite=Strict, and Secure when the page came over TLS."""
    secure = request.url.scheme == "https"
    response.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="strict", secure=secure
    )


def create_app(settings: Settings) -> Starlette:
    """The dashboard for the API at `settings.api_addr`."""
    d = Dashboard(settings)
    routes = [
        Route("/", d.home),
        Route("/healthz", d.health),
        Route("/login", d.login_form, methods=["GET"]),
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/overview", d.overview),
        Route("/jobs", d.jobs),
        Route("/jobs/bulk", d.bulk_review, methods=["POST"]),
        Route("/jobs/bulk/start", d.bulk_start, methods=["POST"]),
        Route("/bulk/{operation_id}", d.bulk_operation),
        Route("/jobs/{job_id}", d.job),
        Route("/jobs/{job_id}/events", d.job_live),
        Route("/jobs/{job_id}/{action}", d.job_action, methods=["POST"]),
        Route("/queues", d.queues),
        *AdminPages(d).routes(),  # queue limits and keys; before /queues/{queue}/{action}
        Route("/queues/{queue}/{action}", d.queue_action, methods=["POST"]),
        Route("/workers", d.workers),
        Route("/workers/events", d.workers_live),
        Route("/workers/{worker_id}/{action}", d.worker_action, methods=["POST"]),
        Route("/schedules", d.schedules),
        Route("/schedules/{schedule_id}/{action}", d.schedule_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers: dict[Any, Any] = {
        exc: d.error for exc in (LoginRequired, ConveyorError, HTTPException, 404, 405)
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=d.lifespan)
    app.add_middleware(SecurityHeaders)
    return app
