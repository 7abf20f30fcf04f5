"""Generate src/conveyor/v1 from protos/conveyor/v1 (the only writer of that folder).

`python scripts/gen_protos.py` rewrites the generated modules in place;
`python scripts/gen_protos.py --out DIR` writes them under DIR instead, which is how the
test that guards against stale generated code compares them.

Only conveyor/v1 is generated. The googleapis files the API imports (`google/rpc/
status.proto`) come, with their Python modules (`google.rpc.status_pb2`), from the
googleapis-common-protos package, a declared dependency: the generated code imports them
from there. An unmodified copy of each sits in protos/google/ for protoc and buf, which
cannot reach buf's registry here and would otherwise need the path of an installed
package (it differs by interpreter and virtualenv, and its google/ folder holds hundreds of
other protos that buf would lint and check). tests/unit/test_protos.py keeps the copies
identical to the package's.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> None:
    """Compile every proto in protos/conveyor/v1 into `out`/conveyor/v1."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "conveyor" / "v1").glob("*.proto"))
    (out / "conveyor" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out / "conveyor" / "v1" / "__init__.py"
    init.write_text('"""Generated from protos/conveyor/v1 by scripts/gen_protos.py."""\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "src")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
