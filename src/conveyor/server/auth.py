"""API keys, the principal a call runs as, and how keys are checked and revoked.

A key (the token a caller sends) reads `cvk_<key id>_<secret>`: the id (public, 32 hex
digits) finds the key's row, and the secret (256 random bits) is checked against the stored
HMAC-SHA256 digest with a constant-time comparison. Neither the secret nor anything it could
be recovered from is stored or logged: with 256 bits of entropy a fast keyed hash is as
strong as a slow one (nobody can search that space), and it keeps every check one
primary-key read. Keys given in full by configuration (dev mode's `CONVEYOR_DEV_API_KEY`,
any string) have no id part and are found by the digest of the whole string.

Verdicts are cached per process for half a second, so a revoked key stops working within
a second (the database sees two reads per key per second, not one per call); `StreamGuard`
ends the open streams of a revoked key within the same second. The cache is keyed by a
BLAKE2b of the token under a key made at random when the process starts, not by the token
(nothing a memory dump could replay) nor by the stored digest: a call whose verdict is
cached pays one BLAKE2b of 80 bytes (2.6 us here), not the HMAC-SHA256 a lookup needs
(9.2 us, most of it Python's `hmac` module around the hash).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conveyor.db.keys import KeyStore, StoredKey
from conveyor.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "cvk_"
CACHE_SECONDS = 0.5
# How long a verified key keeps working while the database cannot be reached.
OUTAGE_GRACE_SECONDS = 300.0
MAX_TOKEN_CHARS = 512
# Domain separation for the digest: a key's digest means nothing outside Conveyor.
_DIGEST_KEY = b"conveyor.api-key.v1"
_TOKEN_RE = re.compile(r"^cvk_([0-9a-f]{32})_([A-Za-z0-9_-]{43})\Z")


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call runs as: the owner of its jobs and what it may do."""

    owner: str
    role: Role
    key_id: str = ""
    # Rate limit overrides of the key, (per second, burst); None: the server's default.
    submit_limit: tuple[float, float] | None = None
    read_limit: tuple[float, float] | None = None
    # Jobs submitted with the key that may run at once per queue (0: no cap).
    max_running: int = 0

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("this call needs an admin key")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: `token` is the whole key (`cvk_<id>_<secret>`), shown once. (The
    API's `CreateApiKeyResponse.secret` carries this token: its name predates the rule that
    "secret" is only the random part.)"""

    stored: StoredKey
    token: str


# The cache's key (see the module): random per process, so a cache key means nothing outside it.
_CACHE_KEY = secrets.token_bytes(32)


def cache_key(token: str) -> bytes:
    """What the verdict cache files a token under: a keyed hash, never the token itself."""
    return hashlib.blake2b(token.encode(), key=_CACHE_KEY, digest_size=16).digest()


def digest(secret: str) -> str:
    """The stored form of a secret (hex HMAC-SHA256)."""
    return hmac.new(_DIGEST_KEY, secret.encode(), hashlib.sha256).hexdigest()


def generate_key(key_id: str) -> tuple[str, str]:
    """A new key for row `key_id`: the whole token, and its secret part."""
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}{uuid.UUID(key_id).hex}_{secret}", secret


def random_dev_key() -> str:
    """A key for dev mode to accept and print (a configured key: no id part)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The key from `authorization: Bearer <key>` metadata, or UNAUTHENTICATED."""
    for name, value in metadata or ():
        if name.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token and len(token) <= MAX_TOKEN_CHARS:
                return token
            break
    raise Unauthenticated("missing or malformed 'authorization: Bearer <key>' metadata")


class Authenticator:
    """Resolves keys to principals through the KeyStore, with a short cache.

    While the database cannot be reached, a key verified within the last
    `OUTAGE_GRACE_SECONDS` keeps its last verdict, so clients can still read hot state and
    watch their jobs from Redis during a database outage (no key can be revoked meanwhile
    anyway); an unknown key is then UNAVAILABLE, never accepted.
    """

    def __init__(
        self,
        keys: KeyStore,
        *,
        cache_seconds: float = CACHE_SECONDS,
        max_streams_per_owner: int = 0,
    ) -> None:
        self.keys = keys
        self.cache_seconds = cache_seconds
        self.max_streams_per_owner = max_streams_per_owner
        # Keyed by `cache_key(token)`, never the token itself.
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        # At most one lookup per key at a time: when a busy key's verdict expires, the
        # calls that arrive meanwhile wait for the one lookup instead of each making theirs.
        self._looking: dict[bytes, asyncio.Future[Principal | None]] = {}
        self.guard = StreamGuard(self)

    async def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        principal = await self.principal_for(bearer_token(metadata))
        if principal is None:
            raise Unauthenticated("unknown or revoked API key")
        return principal

    async def principal_for(self, token: str) -> Principal | None:
        """The principal a token stands for now (cached for a second); None if none."""
        key = cache_key(token)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            principal = await self._lookup_once(key, token)
        except Unavailable:
            if cached is None or now - cached[0] > OUTAGE_GRACE_SECONDS:
                raise
            return cached[1]  # the last verdict; not refreshed, so the grace runs out
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now, principal)
        return principal

    async def _lookup_once(self, key: bytes, token: str) -> Principal | None:
        looking = self._looking.get(key)
        if looking is None:
            looking = asyncio.ensure_future(self._lookup(token))
            self._looking[key] = looking
            looking.add_done_callback(lambda _: self._looking.pop(key, None))
        return await asyncio.shield(looking)

    async def _lookup(self, token: str) -> Principal | None:
        match = _TOKEN_RE.match(token)
        if match is None:  # a configured key: found by the digest of the whole string
            stored = await self.keys.find(digest(token))
            return None if stored is None else _principal(stored)
        key_id, secret = str(uuid.UUID(match.group(1))), match.group(2)
        found = await self.keys.get(key_id)
        if found is None or found.revoke_time is not None:
            return None
        if not hmac.compare_digest(found.key_hash, digest(secret)):
            return None
        return _principal(found)

    async def create_key(self, owner: str, role: Role = Role.USER, description: str = "") -> NewKey:
        """Make a key for `owner`; the token is returned once and only its digest stored."""
        key_id = str(uuid.uuid4())
        token, secret = generate_key(key_id)
        stored = await self.keys.add(digest(secret), owner, role.value, key_id=key_id,
                                     description=description)  # fmt: skip
        return NewKey(stored, token)

    async def ensure_key(self, key: str, owner: str, role: Role) -> None:
        """Accept a given key (dev mode's), idempotently."""
        await self.keys.add(digest(key), owner, role.value, description="configured key")


def _principal(stored: StoredKey) -> Principal:
    return Principal(
        stored.owner,
        Role(stored.role),
        stored.id,
        stored.submit_limit,
        stored.read_limit,
        stored.max_running,
    )


@dataclass(eq=False)
class _Watched:
    """One open stream: its task, the token it was opened with, and whether its key was
    revoked under it."""

    task: asyncio.Task[Any]
    token: str
    owner: str
    revoked: bool = False


@dataclass(eq=False)
class StreamGuard:
    """Ends the open streams of a key once it is revoked, within about a second.

    One checker task per process, running only while streams are open, looks each distinct
    key up every `cache_seconds` (through the authenticator's cache, so the database sees the
    same reads however many streams a key has) and cancels the streams of keys that no longer
    authenticate; the stream decorator then ends them with UNAUTHENTICATED.
    """

    auth: Authenticator
    # Open streams by the token they were opened with: the checker's pass is one lookup per
    # distinct key, however many streams each holds (10,000 streams of one key: one).
    _by_token: dict[str, set[_Watched]] = field(default_factory=dict)
    _per_owner: Counter[str] = field(default_factory=Counter)
    _checker: asyncio.Task[None] | None = None

    def watch(self, token: str, owner: str) -> _Watched:
        """Track the current task's stream; RESOURCE_EXHAUSTED beyond the owner's cap."""
        cap = self.auth.max_streams_per_owner
        if cap and self._per_owner[owner] >= cap:
            raise ResourceExhausted(
                f"{owner!r} already holds {cap} open streams on this server", retry_after_seconds=1
            )
        task = asyncio.current_task()
        assert task is not None
        entry = _Watched(task, token, owner)
        self._by_token.setdefault(token, set()).add(entry)
        self._per_owner[owner] += 1
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_loop(), name="stream-guard")
        return entry

    def forget(self, entry: _Watched) -> None:
        streams = self._by_token.get(entry.token)
        if streams is None or entry not in streams:
            return
        streams.discard(entry)
        if not streams:
            del self._by_token[entry.token]
        self._per_owner[entry.owner] -= 1
        if not self._per_owner[entry.owner]:
            del self._per_owner[entry.owner]

    async def _check_loop(self) -> None:
        while self._by_token:
            await asyncio.sleep(self.auth.cache_seconds)
            for token in list(self._by_token):
                try:
                    alive = await self.auth.principal_for(token) is not None
                except Unavailable:
                    continue  # cannot tell now; the outage grace applies
                if not alive:
                    self._revoke(token)

    def _revoke(self, token: str) -> None:
        for entry in list(self._by_token.get(token, ())):
            entry.revoked = True
            entry.task.cancel()
            self.forget(entry)
