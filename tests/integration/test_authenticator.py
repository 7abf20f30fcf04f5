"""The authenticator's cache on a real key store: a key verified a moment ago is not hashed
again, a revoked key stops working once its verdict expires, and the cache never holds a
token."""

from __future__ import annotations

import pytest

from conveyor.db import Database
from conveyor.db.keys import KeyStore
from conveyor.server import auth
from conveyor.server.auth import Authenticator, Role


async def test_a_cached_verdict_costs_no_key_digest(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls within the cache time reuse the verdict without computing the stored form's
    HMAC-SHA256 again (issue 21: every call rehashed the key it had just verified)."""
    authn = Authenticator(KeyStore(db), cache_seconds=60)
    made = await authn.create_key("alice", Role.USER)
    digests = 0
    real = auth.digest

    def counted(secret: str) -> str:
        nonlocal digests
        digests += 1
        return real(secret)

    monkeypatch.setattr(auth, "digest", counted)
    first = await authn.principal_for(made.token)
    assert first is not None and first.owner == "alice"
    assert digests == 1  # the lookup checks the secret against the stored digest
    for _ in range(100):
        assert await authn.principal_for(made.token) == first
    assert digests == 1
    assert made.token not in repr(authn._cache) and made.token.encode() not in authn._cache


async def test_a_revoked_key_fails_once_its_verdict_expires(db: Database) -> None:
    """The cache only delays a revocation by its own time (0 here: every call looks)."""
    store = KeyStore(db)
    authn = Authenticator(store, cache_seconds=0)
    made = await authn.create_key("bob", Role.USER)
    assert await authn.principal_for(made.token) is not None
    await store.revoke(made.stored.id)
    assert await authn.principal_for(made.token) is None
