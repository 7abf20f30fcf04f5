"""The make targets the README names do what it says (`make -n` prints the commands a target
would run, without running them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_bench_passes_its_arguments_through() -> None:
    """Guards `make bench ARGS=…` (issue 23, item 7): the options reach `python -m bench`;
    before, only `python -m bench` itself took them."""
    planned = subprocess.run(
        ["make", "-n", "bench", "ARGS=--only drain1 --runs 1"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    # Under `make test` the outer make's flags add "Entering/Leaving directory" lines.
    [bench] = [line for line in planned if " -m bench" in line]
    assert bench.endswith("-m bench --only drain1 --runs 1")
