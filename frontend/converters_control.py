"""Control flow: If.

An If whose condition is a compile-time constant is its taken branch: the branch's nodes are converted
in place (inlined), their reads of the enclosing graph resolving to the values already there, and the
other branch is never looked at. With a condition computed at run time, a static program can still
compute both branches and keep one: when they give every output the same shape and element type, the
If is `where(cond, then, else)` per output, the same NaN-free select Where lowers to (a branch's
infinities and NaNs do not leak into the other's result). Branches of different shapes need the
condition at compile time. (An If whose condition and outer reads are all constants folds as a whole
before any converter runs.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _tensor, converter
from ttc.frontend.converters_extra import Emitter

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


@converter("If", since=1)
def if_(ctx: NodeContext) -> list[Value]:
    branches = {"then": ctx.attr("then_branch"), "else": ctx.attr("else_branch")}
    condition = ctx.input_constant(0)
    if condition is not None:
        if np.size(condition) != 1:
            raise ctx.error(f"the condition has {np.size(condition)} elements; If takes one")
        taken = "then" if bool(np.asarray(condition).reshape(-1)[0]) else "else"
        return ctx.importer.inline_graph(branches[taken], f"{ctx.name}/{taken}")
    cond = ctx.input(0)
    if _tensor(cond).num_elements != 1:
        raise ctx.error(f"the condition has shape {_tensor(cond).shape}; If takes one element")
    then_values = ctx.importer.inline_graph(branches["then"], f"{ctx.name}/then")
    else_values = ctx.importer.inline_graph(branches["else"], f"{ctx.name}/else")
    e = Emitter(ctx)
    cond = e.reshape(cond, ())
    results = []
    for name, then_value, else_value in zip(ctx.node.output, then_values, else_values, strict=True):
        then_type, else_type = _tensor(then_value), _tensor(else_value)
        if then_type.shape != else_type.shape or then_type.element_type != else_type.element_type:
            raise ctx.error(f"the branches give output '{name}' different shapes or element types "
                            f"({then_type} and {else_type}); with a condition computed at run time ttc "
                            "computes both and selects, which needs them equal")
        results.append(e.where(cond, then_value, else_value))
    return results
