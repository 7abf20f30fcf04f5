"""Logins: who a browser is, held server-side, named by a signed cookie.

A session keeps the user's API key and an `AsyncClient` made with it in this process's
memory, never in the browser: the cookie carries only a random session id, signed
(itsdangerous) so a guessed or altered id is refused before any lookup. Restarting the
dashboard therefore logs everyone out (nothing to revoke, nothing to leak from a cookie jar).
A session ends after `IDLE_SECONDS` without a request, or at logout.

CSRF: each session has a random token that every form carries (`csrf`); a POST without the
session's token is refused with 403. The login form, made before there is a session, uses a
double-submit token: a signed random value in a short-lived cookie and in the form, equal.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from itsdangerous import BadSignature, Signer

from conveyor.client import AsyncClient

SESSION_COOKIE = "conveyor_session"
LOGIN_COOKIE = "conveyor_login"
# A session not used for this long is gone (its client closed at the next sweep).
IDLE_SECONDS = 8 * 3600


@dataclass
class Session:
    """One logged-in browser: its key's client, whether the key is an admin's, its CSRF
    token and when it was last used. `api_key`: the key itself, for the clients of other
    servers than the API (each worker's WorkerControl, `conveyor.dashboard.workers`)."""

    client: AsyncClient
    admin: bool
    api_key: str = field(default="", repr=False)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), token.encode())


class Sessions:
    """The live sessions of this process, by id, and the cookie signer.

    `clock` is for tests of expiry; the secret is random per process on purpose (see the
    module's docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._signer = Signer(secrets.token_bytes(32), salt="conveyor-dashboard")
        self._by_id: dict[str, Session] = {}
        self._clock = clock

    def sign(self, value: str) -> str:
        return self._signer.sign(value).decode()

    def unsign(self, cookie: str | None) -> str | None:
        """The value a cookie of ours carries, or None for none or a forged one."""
        if not cookie:
            return None
        try:
            return self._signer.unsign(cookie).decode()
        except BadSignature:
            return None

    def open(self, client: AsyncClient, *, admin: bool, api_key: str = "") -> tuple[str, Session]:
        """A new session for a key just checked (`client` made with it); its cookie value
        and itself."""
        session_id = secrets.token_urlsafe(32)
        session = Session(client, admin, api_key, seen=self._clock())
        self._by_id[session_id] = session
        return self.sign(session_id), session

    def find(self, cookie: str | None) -> Session | None:
        """The session a cookie names, if it is ours and not idle too long (touched)."""
        session_id = self.unsign(cookie)
        session = self._by_id.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > IDLE_SECONDS:
            return None  # its client is closed by `sweep`
        session.seen = now
        return session

    async def close(self, cookie: str | None) -> None:
        """Log out: forget the session and close its client (its open streams end)."""
        session_id = self.unsign(cookie)
        session = self._by_id.pop(session_id, None) if session_id else None
        if session is not None:
            await session.client.close()

    async def sweep(self) -> int:
        """Close the sessions idle too long; how many."""
        now = self._clock()
        stale = [sid for sid, s in self._by_id.items() if now - s.seen > IDLE_SECONDS]
        for session_id in stale:
            await self._by_id.pop(session_id).client.close()
        return len(stale)

    async def close_all(self) -> None:
        for session in self._by_id.values():
            await session.client.close()
        self._by_id.clear()

    def login_token(self) -> tuple[str, str]:
        """A fresh login-form token: (the form's value, the cookie's signed value)."""
        token = secrets.token_urlsafe(32)
        return token, self.sign(token)

    def login_token_ok(self, cookie: str | None, submitted: str) -> bool:
        """Whether the login form's token is the one its cookie signed."""
        expected = self.unsign(cookie)
        return expected is not None and hmac.compare_digest(expected.encode(), submitted.encode())
