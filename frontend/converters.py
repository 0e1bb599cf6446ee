"""One converter per ONNX op, keyed by the opset version since which it applies.

A converter takes a `NodeContext` (the node's inputs as IR values, attributes with the schema's
defaults, a way to create ops located at the node) and returns the values of the node's outputs.
The importer picks the newest converter whose `since` is not above the model's opset. Models below
opset 13 are converted to 17 before import, so the versions here document the ONNX semantics each
converter implements rather than select between variants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from onnx import numpy_helper

from ttc.ir import TensorType
from ttc.ir.dialects.ttir import broadcast_shape, matmul_shape

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value

Converter = Callable[["NodeContext"], "Value | Sequence[Value]"]

_CONVERTERS: dict[str, dict[int, Converter]] = {}


def converter(op_type: str, since: int) -> Callable[[Converter], Converter]:
    """Register `fn` as the converter of ONNX `op_type` (default domain) from opset `since` on."""

    def register(fn: Converter) -> Converter:
        _CONVERTERS.setdefault(op_type, {})[since] = fn
        return fn

    return register


def find_converter(op_type: str, opset: int) -> Converter | None:
    """The newest converter of `op_type` whose `since` is <= `opset`."""
    versions = _CONVERTERS.get(op_type, {})
    usable = [since for since in versions if since <= opset]
    return versions[max(usable)] if usable else None


def supported_op_types() -> list[str]:
    """The ONNX op types the importer converts, sorted (for docs and error messages)."""
    return sorted(_CONVERTERS)


def _tensor(value: Value) -> TensorType:
    assert isinstance(value.type, TensorType)
    return value.type


def _axis(ctx: NodeContext, axis: int, rank: int) -> int:
    """An ONNX axis in [-rank, rank) as a non-negative one."""
    if not -rank <= axis < max(rank, 1):
        raise ctx.error(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


# ----------------------------------------------------------------------------------------------
# Elementwise ops


def _binary(ttir_op: str) -> Converter:
    def convert(ctx: NodeContext) -> Value:
        lhs, rhs = ctx.input(0), ctx.input(1)
        lhs_type, rhs_type = _tensor(lhs), _tensor(rhs)
        if lhs_type.element_type != rhs_type.element_type:
            raise ctx.error(f"operands have different element types ({lhs_type.element_type} and "
                            f"{rhs_type.element_type}); ttc needs them equal")
        shape = broadcast_shape(lhs_type.shape, rhs_type.shape)
        if shape is None:
            raise ctx.error(f"operand shapes {lhs_type.shape} and {rhs_type.shape} do not broadcast")
        return ctx.create(ttir_op, [lhs, rhs], lhs_type.with_shape(shape))

    return convert


def _unary(ttir_op: str) -> Converter:
    def convert(ctx: NodeContext) -> Value:
        x = ctx.input(0)
        return ctx.create(ttir_op, [x], x.type)

    return convert


# op type -> (ttir op, opset since which the ONNX semantics we implement hold)
BINARY_OPS = {"Add": ("ttir.add", 7), "Sub": ("ttir.sub", 7), "Mul": ("ttir.mul", 7),
              "Div": ("ttir.div", 7), "Pow": ("ttir.pow", 7)}
UNARY_OPS = {"Relu": ("ttir.relu", 6), "Sigmoid": ("ttir.sigmoid", 6), "Tanh": ("ttir.tanh", 6),
             "Exp": ("ttir.exp", 6), "Erf": ("ttir.erf", 9), "Sqrt": ("ttir.sqrt", 6)}

for _op_type, (_ttir_op, _since) in BINARY_OPS.items():
    converter(_op_type, since=_since)(_binary(_ttir_op))
for _op_type, (_ttir_op, _since) in UNARY_OPS.items():
    converter(_op_type, since=_since)(_unary(_ttir_op))


# ----------------------------------------------------------------------------------------------
# Matrix products and normalisations


@converter("MatMul", since=9)
def matmul(ctx: NodeContext) -> Value:
    a, b = ctx.input(0), ctx.input(1)
    shape = matmul_shape(_tensor(a).shape, _tensor(b).shape)
    if shape is None:
        raise ctx.error(f"cannot multiply shapes {_tensor(a).shape} and {_tensor(b).shape}")
    return ctx.create("ttir.matmul", [a, b], _tensor(a).with_shape(shape))


@converter("Gemm", since=11)
def gemm(ctx: NodeContext) -> Value:
    """alpha * op(A) @ op(B) + beta * C, C optional (since opset 11) and broadcast to (M, N)."""
    a, b = ctx.input(0), ctx.input(1)
    trans_a, trans_b = bool(ctx.attr("transA")), bool(ctx.attr("transB"))
    m = _tensor(a).shape[1 if trans_a else 0]
    n = _tensor(b).shape[0 if trans_b else 1]
    operands = [a, b, ctx.input(2)] if ctx.has_input(2) else [a, b]
    attributes = {"transpose_a": trans_a, "transpose_b": trans_b,
                  "alpha": ctx.attr("alpha"), "beta": ctx.attr("beta")}
    return ctx.create("ttir.gemm", operands, _tensor(a).with_shape((m, n)), attributes)


@converter("Softmax", since=13)
def softmax(ctx: NodeContext) -> Value:
    """Softmax along one axis. Opset < 13 coerced the input to 2-D; onnx's version converter
    rewrites such nodes faithfully (Flatten, Softmax, Reshape), which import as they are."""
    x = ctx.input(0)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    return ctx.create("ttir.softmax", [x], x.type, {"axis": axis})


@converter("LayerNormalization", since=17)
def layer_norm(ctx: NodeContext) -> Value:
    """Only Y is imported: the Mean and InvStdDev outputs must be unused. stash_type only sets the
    precision of the statistics, which the device decides."""
    for index, what in ((1, "Mean"), (2, "InvStdDev")):
        if ctx.output_used(index):
            raise ctx.error(f"output {index} ({what}, '{ctx.node.output[index]}') is used; "
                            "ttc imports LayerNormalization with its Y output only")
    x = ctx.input(0)
    operands = [x, ctx.input(1), ctx.input(2)] if ctx.has_input(2) else [x, ctx.input(1)]
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    return ctx.create("ttir.layer_norm", operands, x.type, {"axis": axis, "epsilon": ctx.attr("epsilon")})


# ----------------------------------------------------------------------------------------------
# Shape ops


@converter("Transpose", since=1)
def transpose(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    shape = _tensor(x).shape
    perm = ctx.attr("perm")
    perm = tuple(reversed(range(len(shape)))) if perm is None else tuple(perm)
    if sorted(perm) != list(range(len(shape))):
        raise ctx.error(f"perm {list(perm)} is not a permutation of {len(shape)} dimensions")
    return ctx.create("ttir.transpose", [x], _tensor(x).with_shape(tuple(shape[p] for p in perm)),
                      {"perm": perm})


def reshape_target(source: Sequence[int], target: Sequence[int], allowzero: bool) -> tuple[int, ...] | None:
    """ONNX Reshape's output shape: 0 copies the source dim (unless allowzero), one -1 is inferred.
    None when the target does not fit the source's element count."""
    dims = [source[i] if d == 0 and not allowzero and i < len(source) else int(d) for i, d in enumerate(target)]
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        return None
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or math.prod(source) % known:
            return None
        dims[dims.index(-1)] = math.prod(source) // known
    return tuple(dims) if math.prod(dims) == math.prod(source) else None


@converter("Reshape", since=5)
def reshape(ctx: NodeContext) -> Value:
    """The result shape is the inferred one, else computed from a constant shape input."""
    x = ctx.input(0)
    shape = ctx.inferred_shape(0)
    if shape is None:
        target = ctx.input_constant(1)
        if target is None:
            raise ctx.error(f"output '{ctx.node.output[0]}' has no static shape after shape inference "
                            f"and the shape input '{ctx.node.input[1]}' is not a constant")
        shape = reshape_target(_tensor(x).shape, target.tolist(), bool(ctx.attr("allowzero")))
        if shape is None:
            raise ctx.error(f"cannot reshape {_tensor(x).shape} to {target.tolist()}")
    return ctx.create("ttir.reshape", [x], _tensor(x).with_shape(shape))


@converter("Flatten", since=1)
def flatten(ctx: NodeContext) -> Value:
    """A reshape to 2-D (onnx's version converter emits it when rewriting Softmax < 13)."""
    x = ctx.input(0)
    shape = _tensor(x).shape
    axis = ctx.attr("axis")
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        raise ctx.error(f"axis {ctx.attr('axis')} is out of range for rank {len(shape)}")
    flat = (math.prod(shape[:axis]), math.prod(shape[axis:]))
    return ctx.create("ttir.reshape", [x], _tensor(x).with_shape(flat))


@converter("Shape", since=1)
def shape_of(ctx: NodeContext) -> Value:
    """A constant: every shape is static by the time ops are converted."""
    dims = _tensor(ctx.input(0)).shape
    start, end = ctx.attr("start") or 0, ctx.attr("end")
    return ctx.constant(np.array(dims[start:end], dtype=np.int64))


@converter("Identity", since=1)
def identity(ctx: NodeContext) -> Value:
    return ctx.input(0)


@converter("Constant", since=1)
def constant(ctx: NodeContext) -> Value:
    """A `value` tensor, or (since opset 12) value_float(s) / value_int(s)."""
    attr = ctx.node.attribute[0]
    if attr.name == "value":
        return ctx.constant(numpy_helper.to_array(attr.t))
    forms = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attr.name not in forms:
        raise ctx.error(f"a Constant given by '{attr.name}' is not supported "
                        "(only value, value_float(s), value_int(s))")
    return ctx.constant(np.array(ctx.attr(attr.name), dtype=forms[attr.name]))

