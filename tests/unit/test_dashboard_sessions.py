"""The dashboard's sessions (conveyor.dashboard.sessions): a cookie names a session only if
this process signed it, a session ends after IDLE_SECONDS unused (its client closed), and
CSRF tokens compare equal only to the session's own."""

from __future__ import annotations

from conveyor.client import AsyncClient
from conveyor.dashboard.sessions import IDLE_SECONDS, Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_forged_or_foreign_cookies_name_no_session() -> None:
    sessions, other = Sessions(), Sessions()
    cookie, session = sessions.open(AsyncClient("127.0.0.1:1"), admin=False)
    assert sessions.find(cookie) is session
    session_id = cookie.rsplit(".", 1)[0]
    assert sessions.find(session_id) is None  # unsigned
    assert sessions.find(session_id + ".forged") is None
    assert sessions.find(None) is None
    # Another process (a restarted dashboard) signed with another secret.
    assert other.find(other.sign(session_id)) is None
    await sessions.close_all()


async def test_idle_sessions_expire_and_are_swept() -> None:
    clock = Clock()
    sessions = Sessions(clock)
    cookie, _ = sessions.open(AsyncClient("127.0.0.1:1"), admin=True)
    clock.now += IDLE_SECONDS - 1
    assert sessions.find(cookie) is not None  # used: its idle time starts again
    clock.now += IDLE_SECONDS - 1
    assert sessions.find(cookie) is not None
    clock.now += IDLE_SECONDS + 1
    assert sessions.find(cookie) is None
    assert await sessions.sweep() == 1
    assert await sessions.sweep() == 0


async def test_logout_forgets_the_session() -> None:
    sessions = Sessions()
    cookie, _ = sessions.open(AsyncClient("127.0.0.1:1"), admin=False)
    await sessions.close(cookie)
    assert sessions.find(cookie) is None


async def test_csrf_tokens() -> None:
    sessions = Sessions()
    _, session = sessions.open(AsyncClient("127.0.0.1:1"), admin=False)
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok("")
    assert not session.csrf_ok(session.csrf[:-1] + "x")
    token, cookie = sessions.login_token()
    assert sessions.login_token_ok(cookie, token)
    assert not sessions.login_token_ok(cookie, "forged")
    assert not sessions.login_token_ok(None, token)
    assert not sessions.login_token_ok(token, token)  # the cookie must be signed
    await sessions.close_all()
