"""A job's payload from the `google.protobuf.Struct` a request carries, in one walk.

`json_format.MessageToDict` goes through protobuf's generic JSON printer, a Python function
call or three per value, and the payload then needed a second walk (whole numbers back to
ints, keys sorted) and a JSON encoding to look for NUL characters. This walk does all of it
at once, at about a quarter of the cost (issue 21: the payload was most of what a 7-key
payload added to a submit), and gives the same dict:

- **Whole numbers are ints.** A Struct carries every number as a double, so `{"count": 3}`
  arrives as 3.0: handlers (and webhook bodies, CSV cells, templates) should see the 3 the
  client sent. Beyond 2**53 a double no longer holds every integer, so it stays a float.
- **Keys are sorted.** A Struct keeps no key order (its map iterates in hash order): sorted,
  the same payload reads the same in every process and every attempt.
- **NaN and infinity are refused** (`NotFinite`): JSON cannot hold them.
- **NUL characters are refused** (`HasNul`), in keys and strings: PostgreSQL's jsonb cannot
  store one.
- An unset value, like `null_value`, is None (as protobuf's JSON printer has it).
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

# Integers a double holds exactly: beyond, a whole number stays a float.
EXACT = 2**53


class NotFinite(ValueError):
    """A number that JSON cannot hold (NaN, infinity)."""


class HasNul(ValueError):
    """A NUL character in a key or a string."""


def payload_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The payload as a dict (see the module); `NotFinite` or `HasNul` if it cannot be one."""
    return _fields(struct)


def _fields(struct: struct_pb2.Struct) -> dict[str, Any]:
    fields = struct.fields
    out: dict[str, Any] = {}
    for key in sorted(fields):
        if "\x00" in key:
            raise HasNul(key)
        out[key] = _value(fields[key])
    return out


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if "\x00" in text:
            raise HasNul(text)
        return text
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise NotFinite(number)
        return int(number) if number.is_integer() and abs(number) < EXACT else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _fields(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None  # null_value, or no value set
