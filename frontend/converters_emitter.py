"""The building blocks of composed converters: `Emitter` (ttir ops by name with broadcasting, constants,
casts) and the small helpers several converter modules share (concatenations, slices, spreads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _axis, _tensor
from ttc.ir import ScalarType
from ttc.ir.dialects import ttir
from ttc.ir.dialects.ttir import broadcast_shape, matmul_shape, reduced_shape

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


I1 = ScalarType("i1")
FLOAT_MAX = 3.0e38  # finite in float32 and in bf16 (whose largest is about 3.39e38)


# ----------------------------------------------------------------------------------------------
# Building blocks


class Emitter:
    """ttir ops located at one node, with numpy broadcasting and scalar constants of the data's type."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.count = 0

    def const(self, value: float | np.ndarray, like: Value) -> Value:
        """A constant of `like`'s element type (rank 0 for a number)."""
        self.count += 1
        dtype = _tensor(like).element_type.numpy_dtype()
        name = f"{self.ctx.node.output[0] or self.ctx.name}.c{self.count}"
        return self.ctx.constant(np.asarray(value, dtype=dtype), name)

    def binary(self, op: str, a: Value, b: Value, element: ScalarType | None = None) -> Value:
        shape = broadcast_shape(_tensor(a).shape, _tensor(b).shape)
        if shape is None:
            raise self.ctx.error(f"shapes {_tensor(a).shape} and {_tensor(b).shape} do not broadcast")
        result = _tensor(a).with_shape(shape)
        if element is not None:
            result = result.with_element_type(element)
        return self.ctx.create(f"ttir.{op}", [a, b], result)

    def add(self, a: Value, b: Value) -> Value:
        return self.binary("add", a, b)

    def sub(self, a: Value, b: Value) -> Value:
        return self.binary("sub", a, b)

    def mul(self, a: Value, b: Value) -> Value:
        return self.binary("mul", a, b)

    def div(self, a: Value, b: Value) -> Value:
        return self.binary("div", a, b)

    def compare(self, op: str, a: Value, b: Value) -> Value:
        return self.binary(op, a, b, I1)

    def logical(self, op: str, a: Value, b: Value) -> Value:
        return self.binary(f"logical_{op}", a, b, I1)

    def unary(self, op: str, x: Value, attributes: dict | None = None) -> Value:
        return self.ctx.create(f"ttir.{op}", [x], x.type, attributes)

    def scale(self, x: Value, factor: float) -> Value:
        return x if factor == 1.0 else self.mul(x, self.const(factor, x))

    def where(self, cond: Value, x: Value, y: Value) -> Value:
        shape = broadcast_shape(broadcast_shape(_tensor(cond).shape, _tensor(x).shape), _tensor(y).shape)
        return self.ctx.create(ttir.WHERE.name, [cond, x, y], _tensor(x).with_shape(shape))

    def reduce(self, op: str, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
        axes = tuple(sorted(axes))
        shape = reduced_shape(_tensor(x).shape, axes, keepdims)
        return self.ctx.create(f"ttir.reduce_{op}", [x], _tensor(x).with_shape(shape),
                               {"axes": axes, "keepdims": keepdims})

    def reshape(self, x: Value, shape: tuple[int, ...]) -> Value:
        if _tensor(x).shape == tuple(shape):
            return x
        return self.ctx.create(ttir.RESHAPE.name, [x], _tensor(x).with_shape(tuple(shape)))

    def transpose(self, x: Value, perm: Sequence[int]) -> Value:
        shape = _tensor(x).shape
        if tuple(perm) == tuple(range(len(shape))):
            return x
        return self.ctx.create(ttir.TRANSPOSE.name, [x], _tensor(x).with_shape(tuple(shape[p] for p in perm)),
                               {"perm": tuple(perm)})

    def matmul(self, a: Value, b: Value) -> Value:
        shape = matmul_shape(_tensor(a).shape, _tensor(b).shape)
        if shape is None:
            raise self.ctx.error(f"cannot multiply shapes {_tensor(a).shape} and {_tensor(b).shape}")
        return self.ctx.create(ttir.MATMUL.name, [a, b], _tensor(a).with_shape(shape))

    def softmax(self, x: Value, axis: int) -> Value:
        return self.ctx.create(ttir.SOFTMAX.name, [x], x.type, {"axis": axis})

    def cast(self, x: Value, element: ScalarType) -> Value:
        if _tensor(x).element_type == element:
            return x
        return self.ctx.create(ttir.TYPECAST.name, [x], _tensor(x).with_element_type(element))

    def log_sum_exp(self, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
        """log(sum(exp(x))) over `axes`, shifted by the max so exp never overflows."""
        peak = self.reduce("max", x, axes, True)
        total = self.reduce("sum", self.unary("exp", self.sub(x, peak)), axes, True)
        result = self.add(self.unary("log", total), peak)
        return result if keepdims else self.reshape(result, reduced_shape(_tensor(x).shape, tuple(axes), False))


def _float_input(ctx: NodeContext, index: int = 0) -> Value:
    x = ctx.input(index)
    if not _tensor(x).element_type.is_float:
        raise ctx.error(f"input {index} is {_tensor(x).element_type}; this op is converted for float tensors")
    return x


def _concat(ctx: NodeContext, values: list[Value], axis: int) -> Value:
    shape = list(_tensor(values[0]).shape)
    shape[axis] = sum(_tensor(v).shape[axis] for v in values)
    return ctx.create(ttir.CONCAT.name, values, _tensor(values[0]).with_shape(tuple(shape)), {"axis": axis})


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (opset 23)


def _slice_last(ctx: NodeContext, x: Value, begin: int, end: int, step: int = 1) -> Value:
    from ttc.frontend.converters import emit_slice

    shape = _tensor(x).shape
    begins, ends, steps = [0] * len(shape), list(shape), [1] * len(shape)
    begins[-1], ends[-1], steps[-1] = begin, end, step
    return emit_slice(ctx, x, begins, ends, steps)


# ----------------------------------------------------------------------------------------------
# Tile, OneHot, Trilu, ReduceProd, Einsum


def _concat_copies(ctx: NodeContext, pieces: list[Value], axis: int) -> Value:
    """pieces concatenated along `axis`, eight at a time (an unaligned concat sums its placed inputs)."""
    while len(pieces) > 1:
        pieces = [group[0] if len(group) == 1 else _concat(ctx, group, axis)
                  for group in (pieces[i:i + 8] for i in range(0, len(pieces), 8))]
    return pieces[0]


def _slice_axis(ctx: NodeContext, x: Value, axis: int, index: int) -> Value:
    from ttc.frontend.converters import emit_slice

    shape = _tensor(x).shape
    begins, ends = [0] * len(shape), list(shape)
    begins[axis], ends[axis] = index, index + 1
    return emit_slice(ctx, x, begins, ends, [1] * len(shape))


def _spread(ctx: NodeContext, e: Emitter, param: Value, rank: int) -> Value:
    """A quantisation parameter shaped to broadcast against x: a scalar, a vector along `axis`, or blocks
    repeated block_size times along it."""
    shape = _tensor(param).shape
    if _tensor(param).num_elements == 1:
        return e.reshape(param, ())
    axis = _axis(ctx, ctx.attr("axis") if ctx.attr("axis") is not None else 1, rank)
    block = ctx.attr("block_size") or 0
    if len(shape) == 1 and not block:
        return e.reshape(param, tuple(shape[0] if d == axis else 1 for d in range(rank)))
    if not block:
        raise ctx.error(f"a scale of shape {list(shape)} without block_size")
    lifted = e.reshape(param, (*shape[:axis + 1], 1, *shape[axis + 1:]))
    wide = ctx.create(ttir.BROADCAST_OP.name, [lifted], _tensor(param).with_shape((*shape[:axis + 1], block, *shape[axis + 1:])))
    return e.reshape(wide, (*shape[:axis], shape[axis] * block, *shape[axis + 1:]))
