"""conveyor.jobs.failures: how a file is named to a job's owner (within its package, else by
base name) and an OSError's file names reduced to base names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.jobs.failures import describe, format_traceback, shown_file


@pytest.mark.parametrize(
    ("filename", "module", "shown"),
    [
        ("/srv/app/src/conveyor/builtins/csv_export.py", "conveyor.builtins.csv_export",
         "conveyor/builtins/csv_export.py"),
        ("/venv/lib/python3.11/site-packages/mypkg/__init__.py", "mypkg", "mypkg/__init__.py"),
        ("/home/me/jobs.py", "jobs", "jobs.py"),
        ("/home/me/script.py", "__main__", "script.py"),
        ("/tmp/generated.py", "something.else", "generated.py"),
        ("/tmp/x.py", None, "x.py"),
        ("<string>", "mod", "<string>"),
    ],
)  # fmt: skip
def test_a_file_is_shown_within_its_package(filename: str, module: str | None, shown: str) -> None:
    assert shown_file(filename, module) == shown


def test_an_os_errors_file_names_are_base_names(tmp_path: Path) -> None:
    try:
        os.open(tmp_path / "private" / "report.csv", os.O_RDONLY)
    except OSError as exc:
        text = describe(exc)
        tb = format_traceback(exc)
    assert text.startswith("FileNotFoundError: [Errno 2] No such file or directory: 'report.csv'")
    assert "(at tests/unit/test_failures.py:" in text
    assert str(tmp_path) not in text and str(tmp_path) not in tb
    assert 'File "tests/unit/test_failures.py", line' in tb
