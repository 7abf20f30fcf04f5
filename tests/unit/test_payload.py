"""The payload walk (`conveyor.jobs.payload`) against what it replaced: protobuf's JSON
printer, then whole numbers made ints and keys sorted. Same dict for any payload, and the
same refusals (NaN, infinity, NUL in a key or a string)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.jobs.payload import EXACT, HasNul, NotFinite, payload_from_struct

TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def reference(struct: struct_pb2.Struct) -> dict[str, Any]:
    """What the API did before: protobuf's printer, then ints and sorted keys."""

    def integral(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < EXACT:
            return int(value)
        if isinstance(value, dict):
            return {k: integral(value[k]) for k in sorted(value)}
        if isinstance(value, list):
            return [integral(v) for v in value]
        return value

    result: dict[str, Any] = integral(json_format.MessageToDict(struct))
    return result


def struct_of(payload: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(payload)
    return struct


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, JSON, max_size=8))
def test_the_walk_gives_what_the_json_printer_gave(payload: dict[str, Any]) -> None:
    struct = struct_of(payload)
    walked = payload_from_struct(struct)
    assert walked == reference(struct)
    assert list(walked) == sorted(walked)  # keys in order, as every process reads them


def test_whole_numbers_are_ints_until_a_double_cannot_hold_them() -> None:
    walked = payload_from_struct(struct_of({"n": 3, "x": 2.5, "big": float(2**60), "no": None}))
    assert walked == {"big": float(2**60), "n": 3, "no": None, "x": 2.5}
    assert type(walked["n"]) is int and type(walked["big"]) is float


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_numbers_json_cannot_hold_are_refused(number: float) -> None:
    with pytest.raises(NotFinite):
        payload_from_struct(struct_of({"deep": [{"n": number}]}))


@pytest.mark.parametrize("payload", [{"a\x00": 1}, {"a": "b\x00c"}, {"a": [{"b": "\x00"}]}])
def test_nul_characters_are_refused_in_keys_and_strings(payload: dict[str, Any]) -> None:
    with pytest.raises(HasNul):
        payload_from_struct(struct_of(payload))


def test_the_text_of_an_escaped_nul_is_an_ordinary_string() -> None:
    """A backslash, then `u0000`, is six ordinary characters (PostgreSQL stores them)."""
    assert payload_from_struct(struct_of({"a": "\\u0000"})) == {"a": "\\u0000"}
