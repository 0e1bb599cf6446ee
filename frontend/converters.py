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

from ttc.ir import ScalarType, TensorType
from ttc.ir.dialects import ttir
from ttc.ir.dialects.ttir import broadcast_shape, matmul_shape, reduced_shape, slice_shape

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


def _binary(ttir_op: str, result_element: str | None = None) -> Converter:
    """A broadcasting binary op; the result has the operands' element type, or `result_element`."""

    def convert(ctx: NodeContext) -> Value:
        lhs, rhs = ctx.input(0), ctx.input(1)
        lhs_type, rhs_type = _tensor(lhs), _tensor(rhs)
        if lhs_type.element_type != rhs_type.element_type:
            raise ctx.error(f"operands have different element types ({lhs_type.element_type} and "
                            f"{rhs_type.element_type}); ttc needs them equal")
        shape = broadcast_shape(lhs_type.shape, rhs_type.shape)
        if shape is None:
            raise ctx.error(f"operand shapes {lhs_type.shape} and {rhs_type.shape} do not broadcast")
        result = lhs_type.with_shape(shape)
        if result_element is not None:
            result = result.with_element_type(ScalarType(result_element))
        return ctx.create(ttir_op, [lhs, rhs], result)

    return convert


def _unary(ttir_op: str) -> Converter:
    def convert(ctx: NodeContext) -> Value:
        x = ctx.input(0)
        return ctx.create(ttir_op, [x], x.type)

    return convert


# op type -> (ttir op, opset since which the ONNX semantics we implement hold)
BINARY_OPS = {"Add": (ttir.ADD.name, 7), "Sub": (ttir.SUB.name, 7), "Mul": (ttir.MUL.name, 7),
              "Div": (ttir.DIV.name, 7)}
UNARY_OPS = {"Relu": (ttir.RELU.name, 6), "Sigmoid": (ttir.SIGMOID.name, 6), "Tanh": (ttir.TANH.name, 6),
             "Exp": (ttir.EXP.name, 6), "Erf": (ttir.ERF.name, 9), "Sqrt": (ttir.SQRT.name, 6), "Neg": (ttir.NEG.name, 6),
             "Reciprocal": (ttir.RECIPROCAL.name, 6), "Abs": (ttir.ABS.name, 6), "Log": (ttir.LOG.name, 6)}
# Comparisons give i1; logical ops take and give i1 (ONNX's And, Or, Xor; Not below).
COMPARE_OPS = {"Equal": (ttir.EQ.name, 11), "Less": (ttir.LT.name, 9), "Greater": (ttir.GT.name, 9),
               "LessOrEqual": (ttir.LE.name, 12), "GreaterOrEqual": (ttir.GE.name, 12)}
LOGICAL_OPS = {"And": (ttir.LOGICAL_AND.name, 7), "Or": (ttir.LOGICAL_OR.name, 7), "Xor": (ttir.LOGICAL_XOR.name, 7)}
VARIADIC_OPS = {"Max": (ttir.MAXIMUM.name, 13), "Min": (ttir.MINIMUM.name, 13)}

for _op_type, (_ttir_op, _since) in BINARY_OPS.items():
    converter(_op_type, since=_since)(_binary(_ttir_op))
for _op_type, (_ttir_op, _since) in UNARY_OPS.items():
    converter(_op_type, since=_since)(_unary(_ttir_op))


def _variadic(ttir_op: str) -> Converter:
    """Max / Min of one or more inputs: a left-to-right chain of the binary op."""

    def convert(ctx: NodeContext) -> Value:
        values = [ctx.input(i) for i in range(len(ctx.node.input)) if ctx.has_input(i)]
        result = values[0]
        for other in values[1:]:
            types = _tensor(result), _tensor(other)
            if types[0].element_type != types[1].element_type:
                raise ctx.error("operands have different element types")
            shape = broadcast_shape(types[0].shape, types[1].shape)
            if shape is None:
                raise ctx.error(f"operand shapes {types[0].shape} and {types[1].shape} do not broadcast")
            result = ctx.create(ttir_op, [result, other], types[0].with_shape(shape))
        return result

    return convert


for _op_type, (_ttir_op, _since) in (COMPARE_OPS | LOGICAL_OPS).items():
    converter(_op_type, since=_since)(_binary(_ttir_op, result_element="i1"))
for _op_type, (_ttir_op, _since) in VARIADIC_OPS.items():
    converter(_op_type, since=_since)(_variadic(_ttir_op))


@converter("Pow", since=7)
def pow_(ctx: NodeContext) -> Value:
    """x ** y; an integer exponent of a float base is converted to the base's type first (Pow allows it)."""
    base, exponent = ctx.input(0), ctx.input(1)
    base_type, exponent_type = _tensor(base), _tensor(exponent)
    if base_type.element_type.is_float and exponent_type.element_type.is_integer:
        exponent = ctx.create(ttir.TYPECAST.name, [exponent], exponent_type.with_element_type(base_type.element_type))
        shape = broadcast_shape(base_type.shape, exponent_type.shape)
        if shape is None:
            raise ctx.error(f"operand shapes {base_type.shape} and {exponent_type.shape} do not broadcast")
        return ctx.create(ttir.POW.name, [base, exponent], base_type.with_shape(shape))
    return _binary(ttir.POW.name)(ctx)


@converter("Equal", since=11)
def equal(ctx: NodeContext) -> Value:
    """x == y (against a scalar, an infinite one too, one SFPU test in the fused kernel)."""
    return _binary(ttir.EQ.name, result_element="i1")(ctx)


@converter("Not", since=1)
def logical_not(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.create(ttir.LOGICAL_NOT.name, [x], x.type)


@converter("IsNaN", since=9)
def isnan(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.create(ttir.ISNAN.name, [x], _tensor(x).with_element_type(ScalarType("i1")))


@converter("Where", since=9)
def where(ctx: NodeContext) -> Value:
    cond, x, y = ctx.input(0), ctx.input(1), ctx.input(2)
    if _tensor(x).element_type != _tensor(y).element_type:
        raise ctx.error(f"the branches have different element types ({_tensor(x).element_type} and "
                        f"{_tensor(y).element_type})")
    shape = broadcast_shape(_tensor(cond).shape, _tensor(x).shape)
    shape = broadcast_shape(shape, _tensor(y).shape) if shape is not None else None
    if shape is None:
        raise ctx.error(f"shapes {_tensor(cond).shape}, {_tensor(x).shape} and {_tensor(y).shape} do not broadcast")
    return ctx.create(ttir.WHERE.name, [cond, x, y], _tensor(x).with_shape(shape))


@converter("Cast", since=6)
def cast(ctx: NodeContext) -> Value:
    """A typecast to `to` (the identity when the type does not change)."""
    from ttc.frontend.importer import element_type

    x = ctx.input(0)
    target = element_type(ctx.attr("to"), ctx.where, ctx.node.output[0])
    if target == _tensor(x).element_type:
        return x
    return ctx.create(ttir.TYPECAST.name, [x], _tensor(x).with_element_type(target))


@converter("Gelu", since=20)
def gelu(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    approximate = ctx.attr("approximate") or "none"
    if approximate not in ("none", "tanh"):
        raise ctx.error(f"approximate = '{approximate}' is not a GELU form (none or tanh)")
    return ctx.create(ttir.GELU.name, [x], x.type, {"approximate": approximate})


@converter("Dropout", since=13)
def dropout(ctx: NodeContext) -> Value | list[Value]:
    """Inference (training_mode false, or a ratio of 0): the identity, and a mask of all true when it is used.

    Training mode: the mask is drawn at compile time the way onnx's reference draws it (and its node tests'
    expected outputs were made), `numpy.random.RandomState(seed).uniform(0, 1, shape) >= ratio`, so it is a
    constant, the same on every run, as the reference's is for a given seed. Y = X * (mask / (1 - ratio)) is
    one product by that constant on the device. It needs the `seed` attribute (without one the reference
    draws a fresh mask per run) and constant ratio and training_mode.
    """
    x = ctx.input(0)
    training = ctx.input_constant(2) if ctx.has_input(2) else np.False_
    ratio = ctx.input_constant(1) if ctx.has_input(1) else np.float32(0.5)
    if training is None:
        raise ctx.error("training_mode is computed; ttc decides between inference and training Dropout at compile "
                        "time")
    masks = ctx.output_used(1)
    if not bool(training) or (ratio is not None and float(ratio) == 0.0):
        return [x, ctx.constant(np.ones(_tensor(x).shape, dtype=np.bool_), ctx.node.output[1])] if masks else x
    seed = ctx.attr("seed")
    if ratio is None or seed is None:
        raise ctx.error(f"training-mode Dropout {'with a computed ratio' if seed is not None else 'without a seed'}: "
                        "ttc draws the mask at compile time, as onnx's reference does, from numpy's "
                        "RandomState(seed), so it needs the `seed` attribute and a constant ratio")
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ctx.error(f"the ratio {ratio:g} is outside [0, 1)")
    try:
        mask = np.random.RandomState(seed).uniform(0.0, 1.0, _tensor(x).shape) >= ratio
    except ValueError as exc:
        raise ctx.error(f"the seed {seed} is not a seed of numpy's RandomState: {exc}") from None
    dtype = _tensor(x).element_type.numpy_dtype()
    scaled = ctx.constant((mask * (1.0 / (1.0 - ratio))).astype(dtype), f"{ctx.node.output[0]}.mask")
    y = ctx.create(ttir.MUL.name, [x, scaled], _tensor(x))
    return [y, ctx.constant(mask, ctx.node.output[1])] if masks else y


# ----------------------------------------------------------------------------------------------
# Matrix products and normalisations


@converter("MatMul", since=9)
def matmul(ctx: NodeContext) -> Value:
    a, b = ctx.input(0), ctx.input(1)
    shape = matmul_shape(_tensor(a).shape, _tensor(b).shape)
    if shape is None:
        raise ctx.error(f"cannot multiply shapes {_tensor(a).shape} and {_tensor(b).shape}")
    if _tensor(b).rank == 1:  # a vector operand: numpy's rule, a column of b (a row of a) dropped after
        column = _reshape_to(ctx, b, (_tensor(b).shape[0], 1))
        a_matrix = _reshape_to(ctx, a, (1, _tensor(a).shape[0])) if _tensor(a).rank == 1 else a
        product_shape = matmul_shape(_tensor(a_matrix).shape, (_tensor(b).shape[0], 1))
        product = ctx.create(ttir.MATMUL.name, [a_matrix, column], _tensor(a).with_shape(product_shape))
        return _reshape_to(ctx, product, shape)
    if _tensor(a).rank == 1 and _tensor(b).rank > 2:  # a row vector by a batch: broadcast over the batch
        batch = _tensor(b).shape[:-2]
        row = _reshape_to(ctx, a, (*([1] * len(batch)), 1, _tensor(a).shape[0]))
        if any(d != 1 for d in batch):
            row = ctx.create(ttir.BROADCAST_OP.name, [row], _tensor(a).with_shape((*batch, 1, _tensor(a).shape[0])))
        product_shape = matmul_shape(_tensor(row).shape, _tensor(b).shape)
        return _reshape_to(ctx, ctx.create(ttir.MATMUL.name, [row, b], _tensor(a).with_shape(product_shape)), shape)
    return ctx.create(ttir.MATMUL.name, [a, b], _tensor(a).with_shape(shape))


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
    return ctx.create(ttir.GEMM.name, operands, _tensor(a).with_shape((m, n)), attributes)


@converter("Softmax", since=13)
def softmax(ctx: NodeContext) -> Value:
    """Softmax along one axis. Opset < 13 coerced the input to 2-D; onnx's version converter
    rewrites such nodes faithfully (Flatten, Softmax, Reshape), which import as they are."""
    x = ctx.input(0)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    return ctx.create(ttir.SOFTMAX.name, [x], x.type, {"axis": axis})


# LayerNormalization: converters_normalization.py (the device op, or a composition when Mean/InvStdDev are used).


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
    return ctx.create(ttir.TRANSPOSE.name, [x], _tensor(x).with_shape(tuple(shape[p] for p in perm)),
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
    return ctx.create(ttir.RESHAPE.name, [x], _tensor(x).with_shape(shape))


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
    return ctx.create(ttir.RESHAPE.name, [x], _tensor(x).with_shape(flat))


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



@converter("Size", since=1)
def size_of(ctx: NodeContext) -> Value:
    """A constant: every shape is static by the time ops are converted."""
    return ctx.constant(np.array(_tensor(ctx.input(0)).num_elements, dtype=np.int64))


def constant_ints(ctx: NodeContext, index: int, what: str) -> list[int] | None:
    """A constant integer input as a list (None when the input is absent); an error when computed."""
    if not ctx.has_input(index):
        return None
    values = ctx.input_constant(index)
    if values is None:
        raise ctx.error(f"the {what} input '{ctx.node.input[index]}' must be a constant (it is computed "
                        "at run time, which needs dynamic shapes)")
    return [int(v) for v in np.asarray(values).ravel()]


def _result_shape(ctx: NodeContext, computed: tuple[int, ...]) -> tuple[int, ...]:
    inferred = ctx.inferred_shape(0)
    if inferred is not None and inferred != computed:
        raise ctx.error(f"computed the output shape {computed}, shape inference says {inferred}")
    return computed


def normalized_slice(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice's clamping of start/end into a dim of size `dim` (numpy's slice.indices), with an
    end of -1 standing for "through index 0" when the step is negative."""
    begin, stop, _ = slice(start, end, step).indices(dim)
    return begin, stop


def emit_slice(ctx: NodeContext, x: Value, begins: list[int], ends: list[int], steps: list[int]) -> Value:
    shape = slice_shape(_tensor(x).shape, begins, ends, steps)
    if tuple(begins) == (0,) * len(begins) and tuple(steps) == (1,) * len(steps) and \
            shape == _tensor(x).shape:
        return x
    attributes = {"begins": tuple(begins), "ends": tuple(ends), "steps": tuple(steps)}
    return ctx.create(ttir.SLICE.name, [x], _tensor(x).with_shape(shape), attributes)


@converter("Slice", since=13)
def slice_(ctx: NodeContext) -> Value:
    """starts/ends/axes/steps must be constants; they are normalised into the dims (clamped)."""
    x = ctx.input(0)
    shape = _tensor(x).shape
    starts = constant_ints(ctx, 1, "starts") or []
    ends = constant_ints(ctx, 2, "ends") or []
    axes = constant_ints(ctx, 3, "axes") or list(range(len(starts)))
    steps = constant_ints(ctx, 4, "steps") or [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error("starts, ends, axes and steps have different lengths")
    begins, stops, strides = [0] * len(shape), list(shape), [1] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(ctx, axis, len(shape))
        if step == 0:
            raise ctx.error(f"step 0 on axis {axis}")
        begins[axis], stops[axis] = normalized_slice(shape[axis], start, end, step)
        strides[axis] = step
    result = emit_slice(ctx, x, begins, stops, strides)
    _result_shape(ctx, _tensor(result).shape)
    return result


@converter("Split", since=13)
def split(ctx: NodeContext) -> list[Value]:
    """Slices along `axis`: sizes from the `split` input, else `num_outputs` (since 18) or the number
    of outputs, the last part taking the remainder (ONNX's ceil rule)."""
    x = ctx.input(0)
    shape = _tensor(x).shape
    axis = _axis(ctx, ctx.attr("axis") or 0, len(shape))
    sizes = constant_ints(ctx, 1, "split")
    if sizes is None:
        parts = ctx.attr("num_outputs") or len(ctx.node.output)
        chunk = -(-shape[axis] // parts)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(parts)]
    if sum(sizes) != shape[axis] or len(sizes) != len(ctx.node.output):
        raise ctx.error(f"split sizes {sizes} do not cover dim {axis} of size {shape[axis]} in "
                        f"{len(ctx.node.output)} outputs")
    outputs, start = [], 0
    for size in sizes:
        begins, ends = [0] * len(shape), list(shape)
        begins[axis], ends[axis] = start, start + size
        outputs.append(emit_slice(ctx, x, begins, ends, [1] * len(shape)))
        start += size
    return outputs


@converter("Concat", since=13)
def concat(ctx: NodeContext) -> Value:
    values = [ctx.input(i) for i in range(len(ctx.node.input)) if ctx.has_input(i)]
    values = [v for v in values if _tensor(v).num_elements or len(values) == 1]
    first = _tensor(values[0])
    axis = _axis(ctx, ctx.attr("axis"), first.rank)
    for value in values[1:]:
        other = _tensor(value)
        if other.element_type != first.element_type or other.rank != first.rank or \
                any(a != b for i, (a, b) in enumerate(zip(other.shape, first.shape, strict=True)) if i != axis):
            raise ctx.error(f"cannot concatenate {other} with {first} along axis {axis}")
    if len(values) == 1:
        return values[0]
    shape = list(first.shape)
    shape[axis] = sum(_tensor(v).shape[axis] for v in values)
    return ctx.create(ttir.CONCAT.name, values, first.with_shape(tuple(shape)), {"axis": axis})


def _reshape_to(ctx: NodeContext, x: Value, shape: tuple[int, ...]) -> Value:
    if _tensor(x).shape == shape:
        return x
    return ctx.create(ttir.RESHAPE.name, [x], _tensor(x).with_shape(shape))


@converter("Squeeze", since=13)
def squeeze(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    shape = _tensor(x).shape
    axes = constant_ints(ctx, 1, "axes")
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else [_axis(ctx, a, len(shape)) for a in axes]
    if any(shape[a] != 1 for a in axes):
        raise ctx.error(f"cannot squeeze axes {axes} of shape {list(shape)} (not all of size 1)")
    return _reshape_to(ctx, x, _result_shape(ctx, tuple(d for i, d in enumerate(shape) if i not in axes)))


@converter("Unsqueeze", since=13)
def unsqueeze(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    shape = list(_tensor(x).shape)
    axes = constant_ints(ctx, 1, "axes") or []
    rank = len(shape) + len(axes)
    for axis in sorted(_axis(ctx, a, rank) for a in axes):
        shape.insert(axis, 1)
    return _reshape_to(ctx, x, _result_shape(ctx, tuple(shape)))


@converter("Expand", since=13)
def expand(ctx: NodeContext) -> Value:
    """A broadcast to broadcast(x.shape, shape) (ONNX Expand broadcasts both ways)."""
    x = ctx.input(0)
    target = constant_ints(ctx, 1, "shape") or []
    shape = broadcast_shape(_tensor(x).shape, target)
    if shape is None:
        raise ctx.error(f"shape {list(_tensor(x).shape)} does not broadcast with {target}")
    if shape == _tensor(x).shape:
        return x
    return ctx.create(ttir.BROADCAST_OP.name, [x], _tensor(x).with_shape(_result_shape(ctx, shape)))


@converter("Gather", since=13)
def gather(ctx: NodeContext) -> Value:
    """Rows of a constant table by computed indices become `ttir.embedding` (a device lookup); with
    constant indices, a `ttir.gather` (a data movement the device runs)."""
    data, indices = ctx.input(0), ctx.input(1)
    data_type, index_type = _tensor(data), _tensor(indices)
    axis = _axis(ctx, ctx.attr("axis"), data_type.rank)
    shape = _result_shape(ctx, (*data_type.shape[:axis], *index_type.shape, *data_type.shape[axis + 1:]))
    is_table = ctx.input_constant(0) is not None and axis == 0 and data_type.rank >= 2
    if not is_table and ctx.input_constant(1) is None and data_type.element_type.is_float:
        from ttc.frontend.converters_indexing import gather_rows

        return gather_rows(ctx, data, indices, axis)
    if is_table and ctx.input_constant(1) is None:
        width = math.prod(data_type.shape[1:])
        table = _reshape_to(ctx, data, (data_type.shape[0], width))
        rows = ctx.create(ttir.EMBEDDING.name, [table, indices], data_type.with_shape((*index_type.shape, width)))
        return _reshape_to(ctx, rows, shape)
    return ctx.create(ttir.GATHER.name, [data, indices], data_type.with_shape(shape), {"axis": axis})


def gather_by_constant_map(ctx: NodeContext) -> Value:
    """GatherElements / GatherND with constant indices: a fixed element map, found by running the node on
    the flat positions of the data (onnx's reference evaluator), then emitted as a reshape when it is
    one, else as a gather of the flattened data."""
    from ttc.frontend.folding import evaluate_node

    data = ctx.input(0)
    indices = ctx.input_constant(1)
    if indices is None and ctx.node.op_type == "GatherElements" and _tensor(data).element_type.is_float:
        from ttc.frontend.converters_indexing import gather_elements_by_comparison

        return gather_elements_by_comparison(ctx, data, ctx.input(1), _axis(ctx, ctx.attr("axis"), _tensor(data).rank))
    if indices is None and ctx.node.op_type == "GatherND" and _tensor(data).element_type.is_float \
            and not ctx.attr("batch_dims"):
        from ttc.frontend.converters_indexing import gather_nd_by_comparison

        return gather_nd_by_comparison(ctx, data, ctx.input(1))
    if indices is None:
        raise ctx.error(f"the indices '{ctx.node.input[1]}' are computed at run time; ttc runs "
                        f"{ctx.node.op_type} with constant indices only")
    data_type = _tensor(data)
    positions = np.arange(data_type.num_elements, dtype=np.int64).reshape(data_type.shape)
    try:
        source = evaluate_node(ctx.node, {ctx.node.input[0]: positions, ctx.node.input[1]: indices},
                               ctx.importer.opset)[0]
    except Exception as exc:
        raise ctx.error(f"cannot evaluate the index map: {exc}") from None
    shape = _result_shape(ctx, tuple(source.shape))
    if np.array_equal(source.ravel(), np.arange(source.size)) and source.size == data_type.num_elements:
        return _reshape_to(ctx, data, shape)
    flat = _reshape_to(ctx, data, (data_type.num_elements,))
    table = ctx.importer.add_constant(TensorType(shape, ScalarType("i64")), f"{ctx.node.output[0]}.source",
                                      ctx.loc, data=source.astype(np.int64))
    return ctx.create(ttir.GATHER.name, [flat, table], data_type.with_shape(shape), {"axis": 0})


converter("GatherElements", since=13)(gather_by_constant_map)
converter("GatherND", since=13)(gather_by_constant_map)


@converter("Compress", since=11)
def compress(ctx: NodeContext) -> Value:
    """Compress by a constant condition: the element map it selects, as a gather with constant indices. Its
    count of trues is the output's length, so a computed condition has no static shape."""
    if ctx.input_constant(1) is None:
        raise ctx.error(f"the condition '{ctx.node.input[1]}' is computed at run time; it decides the output's "
                        "length, which ttc needs at compile time")
    return gather_by_constant_map(ctx)


def _reduction(ttir_op: str, axes_input: bool) -> Converter:
    """ReduceSum (axes an input since 13) and ReduceMean / ReduceMax (an input since 18)."""

    def convert(ctx: NodeContext) -> Value:
        x = ctx.input(0)
        rank = _tensor(x).rank
        axes = constant_ints(ctx, 1, "axes") if axes_input else ctx.attr("axes")
        if not axes:
            if ctx.attr("noop_with_empty_axes"):
                return x
            axes = list(range(rank))
        axes = sorted({_axis(ctx, a, rank) for a in axes})
        keepdims = bool(ctx.attr("keepdims"))
        shape = _result_shape(ctx, reduced_shape(_tensor(x).shape, axes, keepdims))
        return ctx.create(ttir_op, [x], _tensor(x).with_shape(shape), {"axes": tuple(axes), "keepdims": keepdims})

    return convert


converter("ReduceSum", since=13)(_reduction(ttir.REDUCE_SUM.name, axes_input=True))
for _op_type, _ttir_op in (("ReduceMean", ttir.REDUCE_MEAN.name), ("ReduceMax", ttir.REDUCE_MAX.name)):
    converter(_op_type, since=13)(_reduction(_ttir_op, axes_input=False))
    converter(_op_type, since=18)(_reduction(_ttir_op, axes_input=True))
