"""API keys: parsing the bearer metadata, and keys that are random and stored hashed."""

from __future__ import annotations

import pytest

from conveyor.auth import KEY_PREFIX, bearer_token, generate_key, hash_key
from conveyor.errors import Unauthenticated


def test_bearer_token_is_read_from_metadata() -> None:
    assert bearer_token([("x-other", "1"), ("authorization", "Bearer cvk_abc")]) == "cvk_abc"
    assert bearer_token([("Authorization", b"bearer  cvk_abc ")]) == "cvk_abc"


@pytest.mark.parametrize(
    "metadata",
    [None, [], [("authorization", "Basic abc")], [("authorization", "Bearer ")]],
)
def test_missing_or_malformed_metadata_is_unauthenticated(metadata: object) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(metadata)  # type: ignore[arg-type]


def test_keys_are_random_and_only_their_hash_is_kept() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and a.startswith(KEY_PREFIX) and len(a) > 40
    assert hash_key(a) != hash_key(b) and a not in hash_key(a) and len(hash_key(a)) == 64
