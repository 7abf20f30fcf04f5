"""The COPY text rows `conveyor.db.bulk` builds for large batches: read back as PostgreSQL
reads the text format, every row gives back the values it was made of, NULLs included,
whatever the values hold (backslashes, tabs, line breaks, the text "\\N")."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.db.bulk import _copy_line

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def read_row(line: str) -> list[str | None]:
    """A row as COPY's text format reads it (the escapes `_copy_line` uses)."""
    assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line
    return [
        None if field == "\\N" else _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], field)
        for field in line[:-1].split("\t")
    ]


VALUES = st.none() | st.text(alphabet=st.sampled_from('ab\\\t\n\rN é{}"') | st.characters())


@settings(max_examples=500, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=8))
def test_a_row_reads_back_as_its_values(values: list[str | None]) -> None:
    assert read_row(_copy_line(values)) == values


def test_plain_rows_are_joined_as_they_are() -> None:
    assert _copy_line(["a", None, "", "{}"]) == "a\t\\N\t\t{}\n"
    assert _copy_line(["\\N", "x\ty"]) == "\\\\N\tx\\ty\n"
