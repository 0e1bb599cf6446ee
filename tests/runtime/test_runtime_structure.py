"""The structure of `ttc.runtime`: no import cycle among its modules, and the Python emulator's op tables
(handlers, compute charges) agree with each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ttc.runtime import accounting
from ttc.runtime.handlers import HANDLERS
from ttc.runtime.interpreter import Program

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
PACKAGE = "ttc.runtime"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import executed at some point (module level or in a function), leaving out the bodies of
    `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                walk(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """module -> the modules of `modules` (name -> source) it imports, for the modules of one package.

    `from ttc.runtime import numerics` imports the module `numerics` when there is one, else a name of
    the package (`ttc.runtime` itself); a relative import is resolved against the package."""

    def resolve(target: str) -> str | None:  # the module of `modules` that target is, or lies in
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, source in modules.items():
        for node in _imports(ast.parse(source)):
            if isinstance(node, ast.Import):
                found = [resolve(alias.name) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = PACKAGE.split(".")[: len(PACKAGE.split(".")) - node.level + 1]
                    base = ".".join([*package, *([base] if base else [])])
                found = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else resolve(base)
                         for alias in node.names]
            graph[name].update(module for module in found if module is not None and module != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def runtime_modules() -> dict[str, str]:
    modules = {}
    for path in sorted(RUNTIME.glob("*.py")):
        name = PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"
        modules[name] = path.read_text()
    return modules


def test_runtime_modules_import_no_cycle() -> None:
    graph = import_graph(runtime_modules())
    assert f"{PACKAGE}.interpreter" in graph and graph[f"{PACKAGE}.interpreter"] >= {
        f"{PACKAGE}.handlers", f"{PACKAGE}.dataflow", f"{PACKAGE}.compute", f"{PACKAGE}.accounting"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among ttc.runtime's modules: " + " -> ".join(cycle or [])


def test_the_handler_modules_do_not_import_the_scheduler() -> None:
    """handlers, dataflow, compute and accounting sit below interpreter.py (it imports them to complete the
    registry); they may name its types for annotations only."""
    graph = import_graph(runtime_modules())
    for name in ("handlers", "dataflow", "compute", "accounting"):
        assert f"{PACKAGE}.interpreter" not in graph[f"{PACKAGE}.{name}"], name


@pytest.mark.parametrize(("sources", "cycle"), [
    ({"a": "from ttc.runtime import b\n", "b": "import ttc.runtime.c\n", "c": "from ttc.runtime.a import x\n"},
     ["a", "b", "c", "a"]),
    ({"a": "def f():\n    from ttc.runtime.b import y\n", "b": "from . import a\n"}, ["a", "b", "a"]),
    ({"a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ttc.runtime.b import B\n",
      "b": "from ttc.runtime.a import A\n"}, None),
    ({"a": "from ttc.runtime import numerics_of_nothing\n", "b": "from ttc.runtime import a\n"}, None),
])
def test_the_cycle_finder_sees_cycles(sources: dict[str, str], cycle: list[str] | None) -> None:
    """The walker itself: a cycle through from-imports of modules, a deferred or relative import is found; a
    TYPE_CHECKING import and a name that is no module are not edges."""
    graph = import_graph({f"{PACKAGE}.{name}": source for name, source in sources.items()})
    want = None if cycle is None else [f"{PACKAGE}.{name}" for name in cycle]
    assert find_cycle(graph) == want


def test_every_compute_charge_is_a_handler_and_every_uncharged_op_is_known() -> None:
    """accounting's table of tile counts names registered ops (a misspelt key would make its op free),
    and an op left out of it counts no tiles on purpose: a new compute op must be counted."""
    charged = set(accounting._TILE_COUNTS)
    assert charged <= set(HANDLERS)
    free = {f"ttkernel.{name}" for name in (
        "get_arg", "constant", "buffer_address", "addi", "muli", "mini", "addrgen",
        "cb_reserve_back", "cb_push_back", "cb_wait_front", "cb_pop_front",
        "noc_read_tiles", "noc_read_pages", "noc_read_tiles_indexed", "noc_read_rows_indexed", "noc_write_tiles",
        "noc_write_rows", "noc_read_barrier", "noc_write_barrier",
        "tile_regs_acquire", "tile_regs_commit", "tile_regs_wait", "tile_regs_release", "pack_tiles", "pack_rows",
        "semaphore_set", "semaphore_wait", "semaphore_inc", "noc_mcast_cb")}
    assert set(HANDLERS) - charged == free


def test_the_program_gets_the_state_of_every_concern() -> None:
    """Program is the scheduler over the CB, Dst and accounting mixins: their methods are the program's."""
    for method in ("cb", "front_slots", "back_slots", "get_pages", "put_pages", "math_slots", "dst_slots",
                   "dst_transition", "charge", "charge_noc", "profile"):
        assert callable(getattr(Program, method)), method
