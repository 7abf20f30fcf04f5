"""Dependencies point one way (README, Layout): the services import the library and never
each other; the library never imports a service (the CLI finds them through the package's
entry points); the client imports none of the server side or the stores; and no two packages
of the library import each other, directly or round a longer loop.

The graph is read from the source (every `import`, also inside functions, except those
under `if TYPE_CHECKING:`), so a lazy import cannot hide an edge."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("conveyor_api", "conveyor_worker", "conveyor_scheduler")
# What the client (which users install and import in their own processes) may not reach.
SERVER_SIDE = (
    "conveyor.api",
    "conveyor.db",
    "conveyor.objects",
    "conveyor.redis",
    "conveyor.scheduling",
    "conveyor.server",
    "conveyor.worker",
)


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every absolute module `path` imports (and `module.name` for `from module import
    name`, which may be a submodule), outside `if TYPE_CHECKING:` blocks."""

    class Finder(ast.NodeVisitor):
        def __init__(self) -> None:
            self.found: list[str] = []

        def visit_If(self, node: ast.If) -> None:
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
            for child in node.orelse if name == "TYPE_CHECKING" else [*node.body, *node.orelse]:
                self.visit(child)

        def visit_Import(self, node: ast.Import) -> None:
            self.found += [alias.name for alias in node.names]

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.level == 0:
                self.found.append(node.module)
                self.found += [f"{node.module}.{alias.name}" for alias in node.names]

    finder = Finder()
    finder.visit(ast.parse(path.read_text(), str(path)))
    yield from finder.found


def sources(root: Path) -> dict[str, Path]:
    """The library's modules and the services', by module name (generated code left out)."""
    found = {
        module_name(p, root / "src"): p
        for p in (root / "src" / "conveyor").rglob("*.py")
        if "v1" not in p.relative_to(root / "src" / "conveyor").parts[:1]
    }
    for service in (root / "services").glob("*/conveyor_*"):
        found |= {module_name(p, service.parent): p for p in service.rglob("*.py")}
    return found


def edges(root: Path) -> set[Edge]:
    """Module-to-module imports among our own modules (a name that is not a module of ours,
    such as a class, resolves to the module that defines it)."""
    modules = sources(root)
    out = set()
    for importer, path in modules.items():
        for name in imports_of(path):
            target = name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != importer:
                out.add(Edge(importer, target))
    return out


def package(module: str) -> str:
    """The unit that cycles are counted between: `conveyor.<first part>`, or a service."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "conveyor" else parts[0]


def service_of(module: str) -> str | None:
    root = module.split(".")[0]
    return root if root in SERVICES else None


def violations(root: Path) -> list[str]:
    found = []
    graph: dict[str, set[str]] = {}
    for edge in sorted(edges(root), key=lambda e: (e.importer, e.imported)):
        importer, imported = service_of(edge.importer), service_of(edge.imported)
        if importer is None and imported is not None:
            found.append(f"the library imports a service: {edge.importer} -> {edge.imported}")
        elif importer and imported and importer != imported:
            found.append(f"a service imports another: {edge.importer} -> {edge.imported}")
        if package(edge.importer) == "conveyor.client" and package(edge.imported) in SERVER_SIDE:
            found.append(f"the client imports the server side: {edge.importer} -> {edge.imported}")
        a, b = package(edge.importer), package(edge.imported)
        if a != b and "conveyor" not in (a, b):
            graph.setdefault(a, set()).add(b)
    found += [f"packages import each other: {', '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of packages that reach each other (Tarjan's strongly connected
    components of more than one package), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_dependencies_point_one_way() -> None:
    assert violations(ROOT) == []


def write(root: Path, module: str, source: str) -> None:
    base = root / "src" if module.split(".")[0] == "conveyor" else root / "services" / "svc"
    path = base.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent
    while folder != base:
        (folder / "__init__.py").touch()
        folder = folder.parent
    path.write_text(source)


@pytest.mark.parametrize(
    ("files", "wanted"),
    [
        (
            {
                "conveyor.cli.app": "def run():\n    import conveyor_api.main\n",
                "conveyor_api.main": "",
            },
            "the library imports a service: conveyor.cli.app -> conveyor_api.main",
        ),
        (
            {
                "conveyor_api.main": "from conveyor_worker.main import x\n",
                "conveyor_worker.main": "",
            },
            "a service imports another: conveyor_api.main -> conveyor_worker.main",
        ),
        (
            {
                "conveyor.client.core": "from conveyor.db.jobs import JobStore\n",
                "conveyor.db.jobs": "",
            },
            "the client imports the server side: conveyor.client.core -> conveyor.db.jobs",
        ),
        (
            {
                "conveyor.jobs.model": "import conveyor.db.rows\n",
                "conveyor.db.rows": "from conveyor.api import ops\n",
                "conveyor.api.ops": "from conveyor.jobs.model import Job\n",
            },
            "packages import each other: conveyor.api, conveyor.db, conveyor.jobs",
        ),
    ],
    ids=["library-to-service", "service-to-service", "client-to-store", "cycle"],
)
def test_each_rule_catches_its_breach(tmp_path: Path, files: dict[str, str], wanted: str) -> None:
    """The checker itself, on small trees that break one rule each (a lazy import counts;
    an import under `if TYPE_CHECKING:` does not)."""
    for module, source in files.items():
        write(tmp_path, module, source)
    write(tmp_path, "conveyor.typing_only", "if TYPE_CHECKING:\n    import conveyor_api.main\n")
    assert violations(tmp_path) == [wanted]
