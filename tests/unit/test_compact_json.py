"""The hot path's JSON text is the standard library's compact JSON, faster: the same
documents come out, and what orjson refuses is still encoded."""

from __future__ import annotations

import json

import pytest

from conveyor import compact_json

SAMPLES = [
    {"a": 1, "b": [1.5, -0.0, 1e300, None, True], "c": {"d": 'é ✓ \u2028 "q" \\'}},
    [],
    {"nested": [[{"x": "y"}]], "float": 0.1 + 0.2, "int": 2**63 - 1},
]


@pytest.mark.parametrize("value", SAMPLES)
def test_same_text_as_the_standard_library(value: object) -> None:
    text = compact_json.dumps(value)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert compact_json.loads(text) == value


@pytest.mark.parametrize("value", [{"big": 2**70}, {1: "int key"}])
def test_what_orjson_refuses_falls_back(value: object) -> None:
    text = compact_json.dumps(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert json.loads(text) == json.loads(json.dumps(value))
