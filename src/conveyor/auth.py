"""API keys and the principal a call runs as.

Keys are `cvk_` + 256 random bits. With that much entropy a fast hash (SHA-256) is as strong
as a slow one (nobody can guess a preimage), and it lets every call be checked by one indexed
lookup; the secret itself is never stored or logged. Lookups are cached per process for a
second, so revocation takes effect within a second while the database sees one read per key
per second, not one per call.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from conveyor.errors import PermissionDenied, Unauthenticated, Unavailable
from conveyor.store.keys import KeyStore

KEY_PREFIX = "cvk_"
CACHE_SECONDS = 1.0
# How long a verified key keeps working while the database cannot be reached.
OUTAGE_GRACE_SECONDS = 300.0


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call runs as: the owner of its jobs and what it may do."""

    owner: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this call needs an admin key")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The key from `authorization: Bearer <key>` metadata, or UNAUTHENTICATED."""
    for name, value in metadata or ():
        if name.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise Unauthenticated("missing or malformed 'authorization: Bearer <key>' metadata")


class Authenticator:
    """Resolves keys to principals through the KeyStore, with a one-second cache.

    While the database cannot be reached, a key verified within the last
    `OUTAGE_GRACE_SECONDS` keeps its last verdict, so clients can still read hot state and
    watch their jobs from Redis during a database outage (no key can be revoked meanwhile
    anyway); an unknown key is then UNAVAILABLE, never accepted.
    """

    def __init__(self, keys: KeyStore, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self.keys = keys
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        key_hash = hash_key(bearer_token(metadata))
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and now - cached[0] < self.cache_seconds:
            principal = cached[1]
        else:
            principal = await self._lookup(key_hash, now, cached)
        if principal is None:
            raise Unauthenticated("unknown or revoked API key")
        return principal

    async def _lookup(
        self, key_hash: str, now: float, cached: tuple[float, Principal | None] | None
    ) -> Principal | None:
        try:
            stored = await self.keys.find(key_hash)
        except Unavailable:
            if cached is None or now - cached[0] > OUTAGE_GRACE_SECONDS:
                raise
            return cached[1]  # the last verdict; not refreshed, so the grace runs out
        principal = Principal(stored.owner, Role(stored.role)) if stored else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_hash] = (now, principal)
        return principal

    async def create_key(self, owner: str, role: Role = Role.USER) -> str:
        """Make a key for `owner`; the secret is returned once and only its hash is stored."""
        key = generate_key()
        await self.keys.add(hash_key(key), owner, role.value)
        return key

    async def ensure_key(self, key: str, owner: str, role: Role) -> None:
        """Accept a given key (dev mode's), idempotently."""
        await self.keys.add(hash_key(key), owner, role.value)
