"""Reading deploy/Dockerfile and the health-check one-liner it and compose use. A helper,
not a test."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass

from tests.deploy.manifests import DOCKERFILE


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _dockerfile() -> list[Instruction]:
    """Instructions, with comments dropped and continuation lines joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def _image_env() -> dict[str, str]:
    """The runtime stage's ENV (KEY=VALUE form), as every container starts with it."""
    instructions = _dockerfile()
    last_from = max(n for n, i in enumerate(instructions) if i.keyword == "FROM")
    env: dict[str, str] = {}
    for instruction in instructions[last_from:]:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.args):
                key, eq, value = word.partition("=")
                assert eq, f"ENV {instruction.args}: use the KEY=VALUE form"
                env[key] = value
    return env


def _health_code() -> str:
    [check] = [i for i in _dockerfile() if i.keyword == "HEALTHCHECK"]
    _, _, cmd = check.args.partition("CMD ")
    argv = json.loads(cmd)
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2]
    assert isinstance(code, str)
    return code


def _probe(port: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _health_code(), str(port)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode
