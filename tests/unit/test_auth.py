"""API keys: parsing the bearer metadata, and keys that are random, carry their id, and are
stored as digests."""

from __future__ import annotations

import uuid

import pytest

from conveyor.errors import Unauthenticated
from conveyor.server.auth import KEY_PREFIX, bearer_token, digest, generate_key


def test_bearer_token_is_read_from_metadata() -> None:
    assert bearer_token([("x-other", "1"), ("authorization", "Bearer cvk_abc")]) == "cvk_abc"
    assert bearer_token([("Authorization", b"bearer  cvk_abc ")]) == "cvk_abc"


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        [],
        [("authorization", "Basic abc")],
        [("authorization", "Bearer ")],
        [("authorization", "Bearer " + "x" * 10_000)],
        [("authorization", b"Bearer \xff\xfe")],
    ],
)
def test_missing_or_malformed_metadata_is_unauthenticated(metadata: object) -> None:
    if metadata and isinstance(metadata[0][1], bytes):  # type: ignore[index]
        assert bearer_token(metadata)  # type: ignore[arg-type]  # decodes, never crashes
        return
    with pytest.raises(Unauthenticated):
        bearer_token(metadata)  # type: ignore[arg-type]


def test_keys_are_random_carry_their_id_and_only_a_digest_is_kept() -> None:
    key_id = str(uuid.uuid4())
    (a, secret), (b, other) = generate_key(key_id), generate_key(key_id)
    assert a != b and a == KEY_PREFIX + uuid.UUID(key_id).hex + "_" + secret
    assert digest(secret) != digest(other) and secret not in digest(secret)
    assert len(digest(secret)) == 64
