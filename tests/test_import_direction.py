"""The packages import one way (docs/architecture.md, "How the packages depend on each other"):

    ir  <-  frontend
    ir  <-  passes (passes.ops included)  <-  backend  <-  driver (the modules of ttc/ itself)
    ir  <-  runtime

An arrow points from the imported package to the importer: frontend, passes and runtime import ir; backend
imports passes; the driver may import everything; nothing imports the driver, frontend, backend or runtime
but what is to its right. Every import statement of every module counts, those inside functions too (a lazy
import against the direction is still a dependency). Within the packages, the imports run at module load time
form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where each subpackage of ttc lives (pyproject.toml's package-dir).
PACKAGE_DIRS = {"ir": ROOT / "ir", "frontend": ROOT / "frontend", "passes": ROOT / "passes",
                "backend": ROOT / "backend", "runtime": ROOT / "runtime"}
ALLOWED = {
    "ir": {"ir"},
    "frontend": {"ir", "frontend"},
    "passes": {"ir", "passes"},
    "backend": {"ir", "passes", "backend"},
    "runtime": {"ir", "runtime"},
    "driver": {"ir", "frontend", "passes", "backend", "runtime", "driver"},
}


def module_files() -> dict[str, Path]:
    """Module name (ttc.x.y) -> file, for every module of the installed package."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(("ttc", package, *parts))] = path
    for path in (ROOT / "ttc").glob("*.py"):
        modules["ttc" if path.stem == "__init__" else f"ttc.{path.stem}"] = path
    return modules


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGE_DIRS else "driver"


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported ttc module, line, at load time) of every import statement of the module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names
                             if alias.name.split(".")[0] == "ttc")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source.split(".")[0] != "ttc":
                    continue
                for alias in child.names:  # `from ttc import backend` imports the module ttc.backend
                    target = f"{source}.{alias.name}"
                    found.append((target if target in known else source, child.lineno, top))
            elif isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue  # annotations only
            visit(child, nested)

    visit(tree, True)
    return found


MODULES = module_files()
GRAPH = {module: imports(module, path, set(MODULES)) for module, path in MODULES.items()}


def test_every_package_is_walked() -> None:
    assert {"ttc.passes", "ttc.backend", "ttc.runtime.interpreter", "ttc.compiler"} <= set(MODULES)
    assert any(target == "ttc.ir.core" for edges in GRAPH.values() for target, _, _ in edges)


def test_imports_follow_the_documented_direction() -> None:
    wrong = []
    for module, edges in GRAPH.items():
        for target, line, _ in edges:
            if target == "ttc" and layer(module) != "driver":
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports the ttc package (the driver)")
            elif target != "ttc" and layer(target) not in ALLOWED[layer(module)]:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {layer(module)} imports {target} "
                             f"({layer(target)})")
    assert not wrong, "imports against the direction:\n" + "\n".join(wrong)


def test_passes_package_does_not_import_the_backend() -> None:
    assert all(layer(target) != "backend" for target, _, _ in GRAPH["ttc.passes"])


def load_time_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of the graph, or None (depth-first search, colouring)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in graph.get(node, []):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_at_load_time() -> None:
    # A package's __init__ runs before its modules: importing ttc.passes.x runs ttc.passes first.
    graph: dict[str, list[str]] = {}
    for module, edges in GRAPH.items():
        targets = {target for target, _, top in edges if top and target in MODULES and target != module}
        graph[module] = sorted(targets)
    cycle = load_time_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for module, edges in GRAPH.items():
        for target, _, _ in edges:
            if target in MODULES and layer(target) != layer(module):
                graph.setdefault(layer(module), set()).add(layer(target))
    cycle = load_time_cycle({k: sorted(v) for k, v in graph.items()})
    assert cycle is None, "packages import each other: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("source, expected", [
    ("from ttc import backend", "ttc.backend"),
    ("from ttc.passes.grid import GRID", "ttc.passes.grid"),
    ("from . import grid", "ttc.passes.grid"),
])
def test_the_walker_resolves_import_forms(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "example.py"
    path.write_text(source + "\n")
    assert [t for t, _, _ in imports("ttc.passes.example", path, set(MODULES))] == [expected]


def test_a_wrong_direction_import_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "example.py"
    path.write_text("def f():\n    from ttc.backend import lower\n")
    (target, line, top), = imports("ttc.passes.example", path, set(MODULES))
    assert (layer(target), line, top) == ("backend", 2, False)
    assert layer(target) not in ALLOWED["passes"]
