"""The verifier: structural rules (registered ops, SSA dominance, terminators), each op's declared
constraints (operand/result counts and types, attributes, regions) and its `verify` hook.

Errors name the op's place: file:line:col with the quoted line and a caret when the op was parsed,
else its location (the ONNX node) and the printed op.
"""

from __future__ import annotations

import numpy as np

from ttc.ir.attributes import WeightAttr
from ttc.ir.core import FUNC_OP, RETURN_OP, Block, Module, Operation
from ttc.ir.diagnostics import IRError, SourceSpan, render_diagnostic
from ttc.ir.dialect import OpDef, Trait, VerifyError
from ttc.ir.types import TensorType

MAX_REPORTED = 10


class Verifier:
    def __init__(self, module: Module) -> None:
        self.module = module
        self.errors: list[str] = []
        self.visible: set[int] = set()

    def error(self, op: Operation, message: str) -> None:
        self.errors.append(describe(op, message, self.module))

    # -- structure --------------------------------------------------------------------------------

    def run(self) -> None:
        self.op(self.module.op)

    def op(self, op: Operation) -> None:
        opdef = op.opdef
        if opdef is None:
            self.error(op, f"unregistered operation '{op.name}'")
            return
        for index, value in enumerate(op.operands):
            if id(value) not in self.visible:
                self.error(op, f"operand #{index} is not defined before this use (or is out of scope)")
                return
        ok = self.declared(op, opdef)
        if ok and opdef.verify is not None:
            try:
                opdef.verify(op)
            except VerifyError as exc:
                self.error(op, f"'{op.name}' {exc}")
        if ok and self.module.weights:
            self.weight(op)
        self.regions(op, opdef)
        for result in op.results:
            self.visible.add(id(result))

    def regions(self, op: Operation, opdef: OpDef) -> None:
        outer = self.visible
        if opdef.has(Trait.ISOLATED):
            self.visible = set()
        for region in op.regions:
            for block in region.blocks:
                self.block(block)
        if opdef.has(Trait.ISOLATED):
            self.visible = outer

    def block(self, block: Block) -> None:
        added = [id(a) for a in block.args]
        self.visible.update(added)
        for i, op in enumerate(block.ops):
            opdef = op.opdef
            if opdef is not None and opdef.has(Trait.TERMINATOR) and i != len(block.ops) - 1:
                self.error(op, f"'{op.name}' must be the last op of its block")
            self.op(op)
            added.extend(id(r) for r in op.results)
        parent = block.parent.parent if block.parent else None
        if parent is not None and parent.name == FUNC_OP:
            last = block.terminator
            if last is None or last.name != RETURN_OP:
                self.error(parent, "function body must end with func.return")
        self.visible.difference_update(added)

    # -- declarations -----------------------------------------------------------------------------

    def declared(self, op: Operation, opdef: OpDef) -> bool:
        """Check counts, types, attributes and regions against the declaration; False if any fail."""
        before = len(self.errors)
        groups = opdef.operand_groups(len(op.operands))
        if groups is None:
            self.error(op, f"'{op.name}' takes {_expected_count(opdef)} operands, got {len(op.operands)}")
        else:
            for decl, start, length in groups:
                for value in op.operands[start:start + length]:
                    if not decl.constraint(value.type):
                        self.error(op, f"'{op.name}' operand '{decl.name}' must be "
                                       f"{decl.constraint.description}, got {value.type}")
        self.result_types(op, opdef)
        for decl in opdef.attributes:
            if decl.name not in op.attributes:
                if decl.required:
                    self.error(op, f"'{op.name}' requires attribute '{decl.name}' ({decl.constraint.description})")
                continue
            value = op.attributes[decl.name]
            if not decl.constraint.check(value):
                self.error(op, f"'{op.name}' attribute '{decl.name}' must be {decl.constraint.description}")
        known = {d.name for d in opdef.attributes}
        for name in op.attributes:
            if name not in known and "." not in name:
                self.error(op, f"'{op.name}' has no attribute '{name}' (discardable attributes need a "
                               "dialect prefix, like 'ttir.name')")
        if len(op.regions) != opdef.regions:
            self.error(op, f"'{op.name}' takes {opdef.regions} regions, got {len(op.regions)}")
        return len(self.errors) == before

    def result_types(self, op: Operation, opdef: OpDef) -> None:
        variadic = any(r.variadic for r in opdef.results)
        if (not variadic and len(op.results) != len(opdef.results)) or \
                (variadic and len(op.results) < len(opdef.results) - 1):
            self.error(op, f"'{op.name}' has {len(op.results)} results, expected {len(opdef.results)}")
            return
        for i, result in enumerate(op.results):
            decl = opdef.results[min(i, len(opdef.results) - 1)]
            if not decl.constraint(result.type):
                self.error(op, f"'{op.name}' result '{decl.name}' must be {decl.constraint.description}, "
                               f"got {result.type}")

    def weight(self, op: Operation) -> None:
        value = op.attributes.get("value")
        if not isinstance(value, WeightAttr):
            return
        data = self.module.weights.get(value.name)
        if data is None:
            self.error(op, f"weight '{value.name}' is not in the module's weights")
            return
        result = op.results[0].type if op.results else None
        if isinstance(result, TensorType) and tuple(np.shape(data)) != result.shape:
            self.error(op, f"weight '{value.name}' has shape {list(np.shape(data))} but the op yields "
                           f"{result}")


def _expected_count(opdef: OpDef) -> str:
    fixed = sum(1 for o in opdef.operands if not o.variadic and not o.optional)
    if any(o.variadic for o in opdef.operands):
        return f"at least {fixed}"
    optional = sum(1 for o in opdef.operands if o.optional)
    return f"{fixed} to {fixed + optional}" if optional else str(fixed)


def describe(op: Operation, message: str, module: Module | None = None) -> str:
    """A diagnostic for `op`: its parsed position with a caret, else its loc and printed text."""
    from ttc.ir.printer import op_text

    span = op.span
    if span is not None and module is not None and module.source_lines is not None:
        lines = module.source_lines
        line_text = lines[span.line - 1] if 0 < span.line <= len(lines) else ""
        return render_diagnostic(message, span=SourceSpan(span.file, span.line, span.column, line_text))
    if span is not None:
        return render_diagnostic(message, where=f"{span.file}:{span.line}:{span.column}")
    try:
        excerpt = op_text(op)
    except Exception:  # a broken op may not print; the location still names it
        excerpt = None
    return render_diagnostic(message, where=str(op.loc), excerpt=excerpt)


def verify(module: Module) -> None:
    """Raise IRError listing the problems found (up to MAX_REPORTED of them)."""
    verifier = Verifier(module)
    verifier.run()
    if verifier.errors:
        shown = verifier.errors[:MAX_REPORTED]
        more = len(verifier.errors) - len(shown)
        tail = f"\n... and {more} more errors" if more > 0 else ""
        raise IRError("\n".join(shown) + tail)
