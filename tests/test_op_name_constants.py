"""Op names are written once, where each op is defined (`OpDef("ttir.matmul", ...)` in ir/dialects/, and the
builtin names `MODULE_OP`, `FUNC_OP`, `RETURN_OP` in ir/core.py); everywhere else the code names an op through
its definition (`ttir.MATMUL.name`, `ttmetal.ENQUEUE_PROGRAM.name`, `RETURN_OP`), so a misspelt op is an
import-time AttributeError or NameError rather than a comparison that is silently never true.

The test reads every module of the installed package (ast) and fails on a string literal that looks like a
full op name (`<dialect>.<op>` of ttir, ttkernel, ttmetal, func or builtin), registered or not, outside
those definitions; the only strings of that shape allowed are `NOT_OPS` (attribute names) and prefixes ending in
"_" (`f"ttir.reduce_{kind}"` builds a name from a prefix).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ttc.ir import core
from ttc.ir.dialect import OpDef, registered_dialects
from ttc.ir.dialects import builtin, ttir, ttkernel, ttmetal

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("ir", "frontend", "passes", "backend", "runtime", "ttc")
OP_NAME = re.compile(r"^(ttir|ttkernel|ttmetal|func|builtin)\.[a-z0-9_]+$")
CORE_NAMES = {core.MODULE_OP, core.FUNC_OP, core.RETURN_OP}
# Strings of that shape that name no op: the argument/result attribute holding an ONNX name.
NOT_OPS = {"ttir.name"}


def definitions(tree: ast.Module, path: Path) -> set[int]:
    """The literal nodes that define an op name: OpDef's first argument in a dialect module, and the
    module-level constants of ir/core.py."""
    allowed: set[int] = set()
    if path.parent.name == "dialects" and path.parent.parent.name == "ir":
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "OpDef" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                allowed.add(id(node.args[0]))
    if path == ROOT / "ir" / "core.py":
        allowed |= {id(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}
    return allowed


def literal_op_names(path: Path, source: str | None = None) -> list[str]:
    source = path.read_text() if source is None else source
    tree = ast.parse(source, str(path))
    allowed = definitions(tree, path)
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and OP_NAME.match(node.value)
            and node.value not in NOT_OPS and not node.value.endswith("_") and id(node) not in allowed]


def source_files() -> list[Path]:
    return sorted(path for folder in SOURCES for path in (ROOT / folder).rglob("*.py"))


def test_no_literal_op_name_outside_the_definitions() -> None:
    found = [hit for path in source_files() for hit in literal_op_names(path)]
    assert not found, "op names written as literals (use the dialect's definition):\n" + "\n".join(found)


def test_the_scan_covers_every_package_and_the_driver() -> None:
    scanned = {str(path.relative_to(ROOT)) for path in source_files()}
    assert {"ttc/profile.py", "runtime/native_program.py", "passes/ops/matmul.py", "frontend/converters.py",
            "ir/dialects/ttir.py"} <= scanned


def test_a_literal_op_name_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "example.py"
    source = 'def f(op):\n    return op.name == "ttir.matmul" or op.name == "ttir.matmull"\n'
    assert len(literal_op_names(path, source)) == 2  # a typo is caught too
    assert literal_op_names(path, "def f(op):\n    return op.name == MATMUL.name\n") == []
    assert literal_op_names(path, 'NAME = "ttir.name"\nPREFIX = "ttir.reduce_"\n') == []


def test_every_op_has_one_definition_and_a_name_to_use() -> None:
    public = {value.name for module in (ttir, ttkernel, ttmetal, builtin) for name, value in vars(module).items()
              if isinstance(value, OpDef) and not name.startswith("_")}
    ops = [opdef.name for dialect in registered_dialects().values() for opdef in dialect.ops]
    assert len(ops) == len(set(ops))
    assert set(ops) <= public | CORE_NAMES
    assert {builtin.MODULE.name, builtin.FUNC.name, builtin.RETURN.name} == CORE_NAMES
