"""The lock: constraints.txt pins what `pip install -e '.[dev]'` brings in, and no more, and
`make install` installed exactly those versions, so every machine lints and tests alike."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def pinned() -> dict[NormalizedName, str]:
    """constraints.txt's `name==version` lines, by normalized name."""
    pins: dict[NormalizedName, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, exact = line.partition("==")
            assert exact, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = exact.strip()
    return pins


def applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether the requirement holds here, for a distribution installed with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def dev_closure() -> set[NormalizedName]:
    """Every distribution that installing conveyor with its dev extra needs, here: pip, the
    pyproject's requirements, then theirs (from the installed metadata), transitively."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    ]
    todo = [r for r in todo if applies(r, set())]
    needed: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in needed:
            continue
        needed.add(key)
        extras = set(requirement.extras)
        todo += [
            r
            for r in map(Requirement, distribution(requirement.name).requires or [])
            if applies(r, extras)
        ]
    return {name for name, _ in needed} | {canonicalize_name("pip")}  # the installer, too


def test_the_lock_pins_exactly_what_the_dev_install_needs() -> None:
    """Guards the lock's completeness: a dependency added to pyproject.toml (or pulled in by a
    new version of one) without `make lock` would install unpinned; a stale pin would linger."""
    pins, needed = set(pinned()), dev_closure()
    assert not needed - pins, f"unpinned; run `make lock`: {sorted(needed - pins)}"
    assert not pins - needed, f"pinned but not needed; run `make lock`: {sorted(pins - needed)}"


def test_the_environment_is_installed_from_the_lock() -> None:
    """Guards that `make install` uses the lock: every pinned distribution is installed at
    its pinned version (a mismatch means a stale virtualenv, or an install without -c)."""
    wrong: list[str] = []
    for name, exact in pinned().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed == "missing" or Version(installed) != Version(exact):
            wrong.append(f"{name} {installed} (pinned {exact})")
    assert not wrong, f"run `make install`: {wrong}"
