"""Names a client sends (job types, queues, owners, API keys) match their whole pattern: a
trailing newline is not a name's last character (`$` matched before one, so "noop\\n" was a
valid type and queue, and an owner; issue 21's review found it)."""

from __future__ import annotations

import pytest
from conveyor_api.keys import OWNER_RE

from conveyor.jobs.model import valid_queue, valid_type
from conveyor.server import auth

TOKEN = "cvk_" + "a" * 32 + "_" + "b" * 43


@pytest.mark.parametrize("name", ["noop", "reports.monthly", "a" * 64])
def test_names_are_valid(name: str) -> None:
    assert valid_queue(name) and valid_type(name) and OWNER_RE.match(name)


@pytest.mark.parametrize("tail", ["\n", "\r\n", " ", "\x00"])
def test_a_trailing_line_break_or_space_is_no_part_of_a_name(tail: str) -> None:
    assert not valid_queue("noop" + tail)
    assert not valid_type("noop" + tail)
    assert not OWNER_RE.match("alice" + tail)
    assert auth._TOKEN_RE.match(TOKEN) and not auth._TOKEN_RE.match(TOKEN + tail)
