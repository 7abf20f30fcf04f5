"""The contract: protos pass `buf lint`, the committed generated code matches them, and
pyproject.toml admits only the grpcio and protobuf that code runs on."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
    )
    fresh = tmp_path / "conveyor" / "v1"
    committed = ROOT / "src" / "conveyor" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert not mismatch and not errors, (
        f"stale generated code; run `make proto`: {mismatch + errors}"
    )
    assert len(match) == len(names)


def test_buf_lint_passes() -> None:
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runtime_floors_admit_only_versions_the_generated_code_imports_on() -> None:
    """Guards pyproject.toml's ranges: the generated modules refuse to import on a grpcio
    older than the grpcio-tools that wrote them (GRPC_GENERATED_VERSION) and on a protobuf
    older than their protoc's; a floor below those lets pip install a conveyor that fails
    at its first import."""
    committed = ROOT / "src" / "conveyor" / "v1"
    grpc_made = {
        Version(v)
        for path in committed.glob("*_pb2_grpc.py")
        for v in re.findall(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text())
    }
    protobuf_made = {
        Version(".".join(v))
        for path in committed.glob("*_pb2.py")
        for v in re.findall(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text())
    }
    assert grpc_made and protobuf_made
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors: dict[str, Version] = {
        str(canonicalize_name(r.name)): min(
            Version(s.version) for s in r.specifier if s.operator == ">="
        )
        for r in map(Requirement, dependencies)
        if canonicalize_name(r.name) in {"grpcio", "protobuf"}
    }
    assert floors["grpcio"] >= max(grpc_made), f"grpcio>={max(grpc_made)} in pyproject.toml"
    assert floors["protobuf"] >= max(protobuf_made), f"protobuf>={max(protobuf_made)}"


def test_vendored_googleapis_protos_are_the_packages_own() -> None:
    """Guards protos/google/: it holds unmodified copies of the googleapis files the API
    imports, for protoc and buf, while the generated code imports their Python modules
    from googleapis-common-protos; a copy that drifted from the package's would describe
    messages other than the ones that go on the wire."""
    import google.rpc

    installed = Path(next(iter(google.rpc.__path__)))
    vendored = sorted((ROOT / "protos" / "google").rglob("*.proto"))
    assert vendored
    for path in vendored:
        relative = path.relative_to(ROOT / "protos" / "google" / "rpc")
        assert path.read_bytes() == (installed / relative).read_bytes(), path
