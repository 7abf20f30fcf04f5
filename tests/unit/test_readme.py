"""The README stays true: its configuration table names every setting the code reads, and
its quick start is the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    table = {line.split("`")[1] for line in README.splitlines() if line.startswith("| `CONVEYOR_")}
    settings = {f"CONVEYOR_{name.upper()}" for name in Settings.model_fields}
    assert table == settings


def test_quick_start_is_the_two_commands() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make dev" in quick_start and "make test" in quick_start


def test_no_reference_readers_cannot_follow() -> None:
    """Guards issue 23, item 6: the README cites no design document or issue number that
    a reader of the repository does not have (it cited "DESIGN.md §8" and "issue 5")."""
    cited = re.findall(r"DESIGN\.md|§\s*\d|\b[Ii]ssues? \d+", README)
    assert cited == []
