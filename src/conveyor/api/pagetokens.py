"""Page tokens: opaque, tamper-proof cursors for list calls.

A token is the listing's cursor and a fingerprint of its filters and caller, signed with
HMAC-SHA256 and base64url-encoded. A token that was altered, forged, made for other filters
or by another owner fails its signature or fingerprint check and is INVALID_ARGUMENT; it
never moves a cursor. The signing key is `CONVEYOR_SECRET_KEY` when set, else a random key
that the first API process stores in Redis (SET NX) and every replica then shares; if Redis
loses it, outstanding tokens stop working and clients start their listing again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs.model import valid_job_id
from conveyor.redis.connection import AnyRedis
from conveyor.redis.keys import PREFIX
from conveyor.redis.queue import unavailable_on_redis_errors

SECRET_KEY = f"{PREFIX}:secret:page-tokens"
MAC_BYTES = 16
MAX_TOKEN_CHARS = 1024
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


class HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=HasId)
U = TypeVar("U")  # an item of a listing in any keyset order
C = TypeVar("C")  # its cursor, as the store reads it


def page_limit(page_size: int, default: int = DEFAULT_PAGE_SIZE) -> int:
    """How many items a page of `page_size` holds (0: `default`), or INVALID_ARGUMENT."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            [FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")]
        )
    return page_size or default


class PageTokens:
    def __init__(self, redis: AnyRedis, secret: str = "") -> None:
        self.redis = redis
        self._key = secret.encode() if secret else b""

    async def _signing_key(self) -> bytes:
        if not self._key:
            async with unavailable_on_redis_errors():
                await self.redis.set(SECRET_KEY, secrets.token_hex(32), nx=True)
                self._key = str(await self.redis.get(SECRET_KEY)).encode()
        return self._key

    async def encode(self, cursor: str, scope: list[Any]) -> str:
        """A token carrying `cursor`, valid only for the same `scope` (filters and caller)."""
        body = json.dumps({"c": cursor, "s": scope}, separators=(",", ":")).encode()
        mac = hmac.new(await self._signing_key(), body, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    async def decode(self, token: str, scope: list[Any]) -> str:
        """The cursor of a token issued for this `scope`, or INVALID_ARGUMENT."""
        bad = InvalidArgument([FieldViolation("page_token", "is not a token this listing issued")])
        if len(token) > MAX_TOKEN_CHARS:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, binascii.Error):
            raise bad from None
        mac, body = raw[:MAC_BYTES], raw[MAC_BYTES:]
        expected = hmac.new(await self._signing_key(), body, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise bad
        doc = json.loads(body)
        if doc.get("s") != scope or not isinstance(doc.get("c"), str):
            raise bad
        return str(doc["c"])

    async def page(
        self,
        scope: list[Any],
        token: str,
        limit: int,
        fetch: Callable[[int, str | None], Awaitable[Sequence[T]]],
    ) -> tuple[list[T], str]:
        """One page of a keyset listing newest first by id: `fetch(n, before_id)` reads up
        to n items; the page is `limit` of them and the token of the next ("" if last)."""
        return await self.page_by(scope, token, limit, fetch, _id_of, _job_id_cursor)

    async def page_by(
        self,
        scope: list[Any],
        token: str,
        limit: int,
        fetch: Callable[[int, C | None], Awaitable[Sequence[U]]],
        cursor_of: Callable[[U], str],
        parse: Callable[[str], C | None],
    ) -> tuple[list[U], str]:
        """One page of any keyset listing: `fetch(n, after)` reads up to n items past the
        cursor `after` (None: from the start) in the listing's order, which must be unique
        so that a cursor names one place. `cursor_of(item)` writes the cursor a page ends
        on into its token, and `parse` reads it back (None: not a cursor of this listing,
        INVALID_ARGUMENT like any other token the listing did not issue)."""
        after = None
        if token:
            after = parse(await self.decode(token, scope))
            if after is None:
                raise InvalidArgument([FieldViolation("page_token", "is not a valid cursor")])
        found = list(await fetch(limit + 1, after))
        if len(found) <= limit:
            return found, ""
        found = found[:limit]
        return found, await self.encode(cursor_of(found[-1]), scope)


def _id_of(item: HasId) -> str:
    return item.id


def _job_id_cursor(value: str) -> str | None:
    return value if valid_job_id(value) else None
