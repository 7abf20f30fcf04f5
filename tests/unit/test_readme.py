"""The README stays true: its configuration table names every setting the code reads, and
its quick start is the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from conveyor.cli.app import app
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


def readme_commands(text: str) -> list[str]:
    """Every `conveyor …` command the README shows: in inline code (a table cell may hold
    several, split by ` · ` or ` / `) and on the lines of its shell blocks."""
    spans = re.findall(r"`(conveyor [^`]+)`", text)
    blocks = [
        line.strip().removeprefix(".venv/bin/")
        for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.strip().startswith(("conveyor ", ".venv/bin/conveyor "))
    ]
    found: list[str] = []
    for snippet in spans + blocks:
        for part in re.split(r"\s+·\s+|\s+/\s+", snippet.replace("\\|", " ")):
            words = re.sub(r"[\[\]()|…]", " ", part).split()
            found.append(" ".join(words if words[:1] == ["conveyor"] else ["conveyor", *words]))
    return found


def command_problem(command: str) -> str | None:
    """Why a README command would not run as written: a subcommand the CLI lacks, or an
    option its help does not list; None if it would."""
    words = command.split()[1:]
    path: list[str] = []
    for word in words:
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        path.append(word)
    shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
    if shown.exit_code != 0:
        return f"`conveyor {' '.join(path)}` is no command"
    flags = [m.group(0) for w in words if (m := re.match(r"--[a-z][a-z-]*", w))]
    unknown = [f for f in flags if not re.search(re.escape(f) + r"(?![a-z-])", shown.output)]
    return f"unknown options {unknown}" if unknown else None


def test_every_cli_command_in_the_readme_exists_with_its_options() -> None:
    """Guards issue 23, item 6 for the CLI: each `conveyor …` the README shows names a
    command the CLI has, with options its help lists (a renamed option or command fails
    here, not in a reader's shell)."""
    commands = readme_commands(README)
    assert len(commands) > 40
    problems = {c: p for c in dict.fromkeys(commands) if (p := command_problem(c))}
    assert problems == {}


def test_the_command_check_catches_a_wrong_command_or_option() -> None:
    assert command_problem("conveyor queues create Q --shard 3") == "unknown options ['--shard']"
    assert command_problem("conveyor worker-list") == "`conveyor worker-list` is no command"
    assert command_problem("conveyor queues create Q --shards 3") is None
