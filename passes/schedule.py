"""Op order for L1: a side branch that only shrinks a shared value runs before the value's other readers.

A value x read by several ops stays live until its last reader. When that last reader starts a side branch that
reads nothing but x and constants (and its own intermediates) and ends in a value smaller than x, running the
branch first, right before x's first reader, lets x die at its other readers instead and keeps only the branch's
smaller result live across them. ResNet's downsampling shortcut is such a branch: the stride-2 1x1 convolution
of a block's input [62720, 256] (the input untilized, every other pixel looked up, the product) ends in a
[15680, 512] result; in the exported order it runs after the main branch, so the input stays live across the
main branch's stride-2 3x3 convolution, whose im2col matrix then finds no room in L1 (ResNet-50 at batch 20:
its lookup wrote 18 MiB to DRAM and its product read them back).

The order changes nothing but the program order of ops that are independent of each other (every moved op's
operands are defined before its new place: x, block arguments, constants, which move along when they sit later),
so the results are the same bits. `layout` runs it before it places values in L1 (`l1-intermediates`).
"""

from __future__ import annotations

import math

from ttc.ir.core import Function, Operation, Value
from ttc.ir.dialects.ttmetal import STATE_ATTR
from ttc.ir.types import TensorType


def _bytes(value: Value) -> int:
    t = value.type
    return math.prod(t.shape) if isinstance(t, TensorType) else 0


def _side_branch(start: Operation, x: Value) -> list[Operation] | None:
    """The ops from `start` on that read only x, operand-free ops' results (constants), block arguments and each
    other, each but the last read by the next alone; None when `start` itself reads anything else."""
    chain: list[Operation] = []
    inside: set[int] = {id(x)}

    def pure(op: Operation) -> bool:
        if op.parent is not start.parent or op.regions or len(op.results) != 1 or STATE_ATTR in op.attributes:
            return False  # (a device state's write keeps its place among the state's other uses)
        for operand in op.operands:
            owner = operand.owner
            if id(operand) in inside or not isinstance(owner, Operation):
                continue  # x, the branch's own values, block arguments
            if owner.operands or owner.regions:
                return False  # a value computed outside the branch
        return True

    op = start
    while pure(op):
        chain.append(op)
        inside.add(id(op.result))
        users = {id(user): user for user, _ in op.result.uses}
        if len(users) != 1:
            break
        op = next(iter(users.values()))
    return chain or None


def hoist_side_branches(func: Function) -> int:
    """Move every side branch (module doc) before its shared value's first reader; returns how many moved."""
    block = func.body
    moved = 0
    for producer in list(block.ops):
        for x in producer.results:
            if len({id(user) for user, _ in x.uses}) < 2:
                continue
            position = {id(op): i for i, op in enumerate(block.ops)}
            users = list({id(user): user for user, _ in x.uses if id(user) in position}.values())
            if len(users) < 2:
                continue
            users.sort(key=lambda op: position[id(op)])
            first, last = users[0], users[-1]
            chain = _side_branch(last, x)
            if chain is None or not chain[-1].result.uses or _bytes(chain[-1].result) >= _bytes(x):
                continue
            anchor = position[id(first)]
            constants = [operand.owner for op in chain for operand in op.operands
                         if isinstance(operand.owner, Operation) and not operand.owner.operands
                         and id(operand.owner) in position and position[id(operand.owner)] > anchor]
            for op in list(dict.fromkeys(constants)) + chain:
                block.remove(op)
                block.insert_before(first, op)
            moved += 1
    return moved
