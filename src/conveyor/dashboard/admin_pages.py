"""The dashboard's admin pages that change settings: a queue's limits (UpdateQueueLimits)
and API keys (ApiKeyService: list, create, revoke, limits).

As everywhere in the dashboard, the API decides: every handler here calls it with the
session's key, so a user key gets PermissionDenied there and a 403 here on every route,
whatever it posts. The pages only turn forms into calls:

- A limits form carries, beside each input, the value it was drawn with (`was_<name>`),
  and sends only the limits whose value the admin changed, named in the update mask
  (AIP-134). Two admins editing different limits of one queue or key at once therefore
  both get their change; the one who submits second does not put back the other's old
  value.
- What the API refuses (InvalidArgument's field violations, a queue's shards that cannot
  shrink) is shown beside the input it names, on the form as submitted, with status 400
  (409 for the shards), and nothing changes. A value that is not a number is refused here
  the same way, before any call.
- A new key's secret is in the answer to the POST that made it and nowhere else: never in
  a URL or a redirect, and the answer says `cache-control: no-store`, so neither the
  history nor a cache can show it again.
- Revoking takes a confirmation page first. Revoking the session's own key ends the
  session at its next request (the API says Unauthenticated, which `Dashboard.error`
  turns into the login page).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from conveyor.dashboard.paging import paging
from conveyor.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from conveyor.v1 import api_key_service_pb2 as akpb
from conveyor.v1 import queue_pb2

if TYPE_CHECKING:
    from conveyor.dashboard.app import Dashboard
    from conveyor.dashboard.sessions import Session

KEYS_PAGE_SIZE = 50
# Keys scanned (1000 a page) to find one by id: there is no GetApiKey RPC.
MAX_KEY_PAGES = 20
# The largest number input read (the API's own bounds are all far below it).
MAX_NUMBER = 1e10
# How an input is read: its value, or ValueError saying why it is refused.
Reader = Callable[[str], float | None]
# Which input an API field violation is about ("limits.max_running" → "max_running", …).
KEY_INPUTS = {
    "submit_limit.per_second": "submit_rate",
    "submit_limit.burst": "submit_burst",
    "read_limit.per_second": "read_rate",
    "read_limit.burst": "read_burst",
    "description": "name",
}
ROLES = ("user", "admin")

Errors = dict[str, str]


class AdminPages:
    """The routes of the queue-limits and key pages, on the dashboard's sessions and
    templates."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard
        dashboard.templates.env.globals.update(key_role=key_role, key_rate=key_rate)

    def routes(self) -> list[Route]:
        """Their routes; they go before `/queues/{queue}/{action}`, which would take
        `limits` as an action."""
        return [
            Route("/queues/{queue}/limits", self.queue_limits_form, methods=["GET"]),
            Route("/queues/{queue}/limits", self.queue_limits, methods=["POST"]),
            Route("/keys", self.keys, methods=["GET"]),
            Route("/keys", self.key_create, methods=["POST"]),
            Route("/keys/{key_id}", self.key, methods=["GET"]),
            Route("/keys/{key_id}/limits", self.key_limits, methods=["POST"]),
            Route("/keys/{key_id}/revoke", self.key_revoke_confirm, methods=["GET"]),
            Route("/keys/{key_id}/revoke", self.key_revoke, methods=["POST"]),
        ]

    # -- queue limits ---------------------------------------------------------------------

    async def queue_limits_form(self, request: Request) -> Response:
        session = self.d.session(request)
        name = request.path_params["queue"]
        [stats] = await session.client.queue_stats(name)
        values = queue_values(stats.limits)
        return self._queue_page(request, session, stats, values, values, {})

    async def queue_limits(self, request: Request) -> Response:
        session, form = await self.d.posted(request)
        name = request.path_params["queue"]
        changed, errors = _changed(form, QUEUE_LIMITS)
        status = 400
        if not errors and changed:
            try:
                await session.client.update_queue_limits(name, **changed)
                return RedirectResponse("/queues", 303)
            except InvalidArgument as exc:
                errors = _by_input(exc.violations, {})
            except FailedPrecondition as exc:
                errors, status = {"shards": str(exc)}, 409
        [stats] = await session.client.queue_stats(name)  # an admin's call, whatever is sent
        if not errors:  # nothing changed
            return RedirectResponse("/queues", 303)
        was = _was(form, QUEUE_LIMITS)
        return self._queue_page(request, session, stats, form, was, errors, status)

    def _queue_page(
        self,
        request: Request,
        session: Session,
        stats: queue_pb2.QueueStats,
        values: Mapping[str, str],
        was: Mapping[str, str],
        errors: Errors,
        status: int = 200,
    ) -> Response:
        """The queue's limits form: `values` in its inputs, `was` in their `was_` (the
        limits as the form first showed them, kept when it comes back refused, so that a
        limit another admin changed meanwhile is still not sent unless changed here)."""
        context = {"queue": stats, "values": values, "was": was, "errors": errors}
        return self.d.page(request, "queues_limits.html", context, status, session)

    # -- keys -----------------------------------------------------------------------------

    async def keys(self, request: Request) -> Response:
        return await self._keys_page(request, self.d.session(request), {}, {})

    async def _keys_page(
        self,
        request: Request,
        session: Session,
        values: Mapping[str, str],
        errors: Errors,
        status: int = 200,
    ) -> Response:
        """The listing (the query's owner, revoked and page) with the new-key form."""
        query = request.query_params
        owner, revoked = query.get("owner", "").strip(), query.get("revoked", "") == "1"
        answer = await session.client.list_api_keys(
            owner=owner, include_revoked=revoked, page_size=KEYS_PAGE_SIZE,
            page_token=query.get("page", ""),
        )  # fmt: skip
        keep = {"owner": owner, "revoked": "1" if revoked else ""}
        context = {
            "keys": answer.keys, "paging": paging("/keys", query, keep, answer.next_page_token),
            "owner": owner, "revoked": revoked, "values": values, "errors": errors,
            "roles": ROLES,
        }  # fmt: skip
        return self.d.page(request, "keys.html", context, status, session)

    async def key_create(self, request: Request) -> Response:
        """Make the key and answer with its secret, this once (see the module)."""
        session, form = await self.d.posted(request)
        role = form.get("role", "user")
        if role not in ROLES:
            return await self._keys_page(
                request, session, form, {"role": "choose user or admin"}, 400
            )
        try:
            made = await session.client.create_api_key(
                form.get("owner", "").strip(), role="admin" if role == "admin" else "user",
                description=form.get("name", "").strip(),
            )  # fmt: skip
        except InvalidArgument as exc:
            errors = _by_input(exc.violations, KEY_INPUTS)
            return await self._keys_page(request, session, form, errors, 400)
        response = self.d.page(
            request, "keys_created.html", {"key": made.key, "secret": made.secret},
            session=session,
        )  # fmt: skip
        response.headers["cache-control"] = "no-store"
        return response

    async def key(self, request: Request) -> Response:
        session = self.d.session(request)
        key = await _find_key(session, request.path_params["key_id"])
        values = key_values(key)
        return self._key_page(request, session, key, values, values, {})

    async def key_limits(self, request: Request) -> Response:
        session, form = await self.d.posted(request)
        key_id = request.path_params["key_id"]
        changed, errors = _key_changes(form)
        if not errors and changed:
            try:
                await session.client.update_api_key_limits(key_id, **changed)
                return RedirectResponse(f"/keys/{key_id}", 303)
            except InvalidArgument as exc:
                errors = _by_input(exc.violations, KEY_INPUTS)
        key = await _find_key(session, key_id)  # an admin's call, whatever is sent
        if not errors:  # nothing changed
            return RedirectResponse(f"/keys/{key_id}", 303)
        return self._key_page(request, session, key, form, _was(form, KEY_LIMITS), errors, 400)

    def _key_page(
        self,
        request: Request,
        session: Session,
        key: akpb.ApiKey,
        values: Mapping[str, str],
        was: Mapping[str, str],
        errors: Errors,
        status: int = 200,
    ) -> Response:
        """The key's page and limits form (`values` and `was` as for `_queue_page`)."""
        context = {"key": key, "values": values, "was": was, "errors": errors}
        return self.d.page(request, "keys_one.html", context, status, session)

    async def key_revoke_confirm(self, request: Request) -> Response:
        session = self.d.session(request)
        key = await _find_key(session, request.path_params["key_id"])
        return self.d.page(request, "keys_revoke.html", {"key": key}, session=session)

    async def key_revoke(self, request: Request) -> Response:
        session, _ = await self.d.posted(request)
        key = await session.client.revoke_api_key(request.path_params["key_id"])
        return RedirectResponse(f"/keys/{key.id}", 303)


def queue_values(limits: queue_pb2.QueueLimits) -> dict[str, str]:
    """A queue's limits as the form's inputs show them (the rate window in seconds)."""
    window = limits.rate_interval.ToTimedelta().total_seconds()
    return {
        "max_running": str(limits.max_running),
        "max_running_per_owner": str(limits.max_running_per_owner),
        "max_running_per_key": str(limits.max_running_per_key),
        "rate_jobs": str(limits.rate_jobs),
        "rate_interval": f"{window:g}",
        "shards": str(limits.shards or 1),
    }


def key_values(key: akpb.ApiKey) -> dict[str, str]:
    """A key's limits as the form's inputs show them ("" rate: the server's default)."""
    values = {"max_running_jobs": str(key.max_running_jobs)}
    for field, prefix in (("submit_limit", "submit"), ("read_limit", "read")):
        limit: akpb.RateLimit = getattr(key, field)
        given = key.HasField(field)
        values[f"{prefix}_rate"] = f"{limit.per_second:g}" if given else ""
        values[f"{prefix}_burst"] = f"{limit.burst:g}" if given else ""
    return values


def key_role(key: akpb.ApiKey) -> str:
    return "admin" if key.role == akpb.API_KEY_ROLE_ADMIN else "user"


def key_rate(key: akpb.ApiKey, field: str) -> str:
    """A key's rate limit as the pages say it."""
    if not key.HasField(field):
        return "server default"
    limit: akpb.RateLimit = getattr(key, field)
    return f"{limit.per_second:g}/s, burst {limit.burst:g}" if limit.per_second else "unlimited"


def whole(text: str) -> int:
    """A count input ("" is 0), within an int32: the API checks its own bounds, but a
    value the message field cannot hold would fail before the call is made."""
    try:
        value = int(text.strip() or "0")
    except ValueError:
        raise ValueError("must be a whole number") from None
    if not -(2**31) <= value < 2**31:
        raise ValueError("is out of range")
    return value


def number(text: str) -> float:
    """A number input ("" is 0), finite and within what a Duration of seconds holds."""
    try:
        value = float(text.strip() or "0")
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise ValueError("is out of range")
    return value


def rate(text: str) -> float | None:
    """A key's rate input: "" is None, the server's default (0 is unlimited)."""
    return number(text) if text.strip() else None


# The form's inputs of a queue's limits (the rate window in seconds) and of a key's.
QUEUE_LIMITS: dict[str, Reader] = {
    "max_running": whole,
    "max_running_per_owner": whole,
    "max_running_per_key": whole,
    "rate_jobs": whole,
    "rate_interval": number,
    "shards": whole,
}
KEY_LIMITS: dict[str, Reader] = {
    "max_running_jobs": whole,
    "submit_rate": rate,
    "submit_burst": number,
    "read_rate": rate,
    "read_burst": number,
}


def _changed(
    form: Mapping[str, str], inputs: Mapping[str, Reader]
) -> tuple[dict[str, Any], Errors]:
    """The inputs whose value differs from the one the form was drawn with (`was_…`), as
    their readers read them; and why each input that cannot be read is refused."""
    changed: dict[str, Any] = {}
    errors: Errors = {}
    for name, read in inputs.items():
        try:
            value = read(form.get(name, ""))
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        try:
            was: object = read(form.get(f"was_{name}", ""))
        except ValueError:
            was = object()  # a was_ we never drew: the input counts as changed
        if value != was:
            changed[name] = value
    return changed, errors


def _was(form: Mapping[str, str], inputs: Mapping[str, Reader]) -> dict[str, str]:
    """The values a posted form was first drawn with, to draw it again with them."""
    return {name: form.get(f"was_{name}", "") for name in inputs}


def _key_changes(form: Mapping[str, str]) -> tuple[dict[str, Any], Errors]:
    """The key limits the form changes, as `update_api_key_limits` takes them: a rate
    and its burst go together (a RateLimit is set whole), an empty rate is the server's
    default."""
    changed, errors = _changed(form, KEY_LIMITS)
    limits: dict[str, Any] = {}
    if "max_running_jobs" in changed:
        limits["max_running_jobs"] = changed["max_running_jobs"]
    for prefix in ("submit", "read"):
        rate_input, burst_input = f"{prefix}_rate", f"{prefix}_burst"
        if errors.keys() & {rate_input, burst_input}:
            continue
        if not changed.keys() & {rate_input, burst_input}:
            continue
        per_second = rate(form.get(rate_input, ""))
        burst = number(form.get(burst_input, ""))
        limits[f"{prefix}_limit"] = "default" if per_second is None else (per_second, burst)
    return limits, errors


def _by_input(violations: list[FieldViolation], inputs: Mapping[str, str]) -> Errors:
    """The API's field violations by the input they are about (`inputs` maps the API's
    field names to ours where they differ; `limits.` is dropped)."""
    errors: Errors = {}
    for v in violations:
        field = v.field.removeprefix("limits.")
        name = inputs.get(field, field)
        errors[name] = f"{errors[name]}; {v.description}" if name in errors else v.description
    return errors


async def _find_key(session: Session, key_id: str) -> akpb.ApiKey:
    """The key with this id, revoked or not, from the listing (there is no GetApiKey);
    NotFound (404) if it is not among the newest MAX_KEY_PAGES thousand."""
    token = ""
    for _ in range(MAX_KEY_PAGES):
        answer = await session.client.list_api_keys(
            include_revoked=True, page_size=1000, page_token=token
        )
        for key in answer.keys:
            if key.id == key_id:
                return key
        token = answer.next_page_token
        if not token:
            break
    raise NotFound(f"API key {key_id} not found")
