"""The `ttir` dialect: tensor-level ops with logical shapes, as imported from ONNX.

Binary elementwise ops broadcast numpy-style. `fold` hooks evaluate an op on constants at compile
time (canonicalize uses them); the emulated device never does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ttc.ir.core import Operation
from ttc.ir.dialect import (
    REQUIRED,
    AnyTensor,
    Attr,
    BoolAttr,
    ConstantAttr,
    Dialect,
    FloatAttr,
    IntArrayAttr,
    IntAttr,
    OpDef,
    Operand,
    Result,
    StrAttr,
    Trait,
    VerifyError,
    enum_attr,
)
from ttc.ir.types import TensorType

PURE = frozenset({Trait.PURE})
ELEMENTWISE = frozenset({Trait.PURE, Trait.ELEMENTWISE})
BROADCAST = ELEMENTWISE | {Trait.BROADCASTABLE}


def tensor(value_type: object) -> TensorType:
    assert isinstance(value_type, TensorType)
    return value_type


def broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """Numpy-style broadcast of two shapes, or None when they are incompatible."""
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        return None


def matmul_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The result shape of numpy's matmul (1-D operands promoted and the added dim removed)."""
    if not a or not b:
        return None
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        return None
    batch = broadcast_shape(a2[:-2], b2[:-2])
    if batch is None:
        return None
    shape = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return shape


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise VerifyError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _expect_shape(op: Operation, shape: Sequence[int] | None, what: str) -> None:
    result = tensor(op.result.type)
    if shape is None:
        raise VerifyError(what)
    if tuple(shape) != result.shape:
        raise VerifyError(f"result shape {_dims(result.shape)} should be {_dims(shape)} ({what})")


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _same_element_types(op: Operation) -> None:
    """Operands and results share one element type; on the device (tensors with a layout encoding)
    float data formats may mix, since the unpacker and packer convert between them."""
    values = [tensor(v.type) for v in (*op.operands, *op.results)]
    types = {t.element_type for t in values}
    if len(types) <= 1:
        return
    on_device = all(t.encoding is not None for t in values)
    if on_device and all(t.is_float for t in types):
        return
    raise VerifyError(f"operand and result element types differ: {', '.join(sorted(map(str, types)))}")


# ----------------------------------------------------------------------------------------------
# Verifiers


def verify_unary(op: Operation) -> None:
    _same_element_types(op)
    _expect_shape(op, tensor(op.operands[0].type).shape, "same shape as the operand")


def verify_binary(op: Operation) -> None:
    _same_element_types(op)
    lhs, rhs = (tensor(v.type).shape for v in op.operands)
    shape = broadcast_shape(lhs, rhs)
    _expect_shape(op, shape, f"operand shapes {_dims(lhs)} and {_dims(rhs)} do not broadcast")


def verify_matmul(op: Operation) -> None:
    _same_element_types(op)
    a, b = (list(tensor(v.type).shape) for v in op.operands)
    if op.attr("transpose_a") and len(a) >= 2:
        a[-1], a[-2] = a[-2], a[-1]
    if op.attr("transpose_b") and len(b) >= 2:
        b[-1], b[-2] = b[-2], b[-1]
    _expect_shape(op, matmul_shape(a, b), f"matmul of {_dims(a)} by {_dims(b)} has mismatched inner dims")


def verify_gemm(op: Operation) -> None:
    _same_element_types(op)
    a, b = (tensor(v.type).shape for v in op.operands[:2])
    if len(a) != 2 or len(b) != 2:
        raise VerifyError(f"gemm operands must be 2-D, got {_dims(a)} and {_dims(b)}")
    m, k = a[::-1] if op.attr("transpose_a") else a
    k2, n = b[::-1] if op.attr("transpose_b") else b
    if k != k2:
        raise VerifyError(f"gemm inner dimensions differ: {k} and {k2}")
    if len(op.operands) == 3 and broadcast_shape(tensor(op.operands[2].type).shape, (m, n)) != (m, n):
        raise VerifyError(f"gemm bias of shape {_dims(tensor(op.operands[2].type).shape)} "
                          f"does not broadcast to {m}x{n}")
    _expect_shape(op, (m, n), "gemm result")


def verify_axis_op(op: Operation) -> None:
    verify_unary(op)
    normalize_axis(op.attr("axis"), tensor(op.operands[0].type).rank)


def verify_softmax(op: Operation) -> None:
    _same_element_types(op)
    x = tensor(op.operands[0].type)
    normalize_axis(op.attr("axis"), x.rank)
    if len(op.operands) > 1:
        shape = tensor(op.operands[1].type).shape
        if broadcast_shape(shape, x.shape) != tuple(x.shape):
            raise VerifyError(f"mask shape {_dims(shape)} does not broadcast to the input's {_dims(x.shape)}")
    _expect_shape(op, x.shape, "same shape as the input")


def verify_layer_norm(op: Operation) -> None:
    _same_element_types(op)
    x = tensor(op.operands[0].type)
    axis = normalize_axis(op.attr("axis"), x.rank)
    norm_shape = x.shape[axis:]
    for value in op.operands[1:]:
        shape = tensor(value.type).shape
        if broadcast_shape(shape, norm_shape) != tuple(norm_shape):
            raise VerifyError(f"scale/bias shape {_dims(shape)} does not broadcast to {_dims(norm_shape)}")
    _expect_shape(op, x.shape, "same shape as the input")


def verify_transpose(op: Operation) -> None:
    _same_element_types(op)
    shape = tensor(op.operands[0].type).shape
    perm = op.attr("perm")
    if sorted(perm) != list(range(len(shape))):
        raise VerifyError(f"perm {list(perm)} is not a permutation of {len(shape)} dimensions")
    _expect_shape(op, tuple(shape[p] for p in perm), "operand shape permuted by perm")


def verify_reshape(op: Operation) -> None:
    _same_element_types(op)
    source, result = tensor(op.operands[0].type), tensor(op.result.type)
    if source.num_elements != result.num_elements:
        raise VerifyError(f"reshape from {_dims(source.shape)} to {_dims(result.shape)} "
                          "changes the number of elements")


def verify_constant(op: Operation) -> None:
    from ttc.ir.attributes import DenseAttr

    value = op.attributes.get("value")
    result = tensor(op.result.type)
    if isinstance(value, DenseAttr) and (value.type.shape, value.type.element_type) != \
            (result.shape, result.element_type):
        raise VerifyError(f"dense value of type {value.type} does not match the result type {result}")


def _is_bool_like(t: TensorType) -> bool:
    """i1, or a float 0/1 carrier once the value is on the device (tilize retypes masks)."""
    return t.element_type.name == "i1" or (t.encoding is not None and t.element_type.is_float)


def verify_compare(op: Operation) -> None:
    """Comparisons: operands of one type, an i1 result (a 0/1 float on the device)."""
    lhs, rhs = (tensor(v.type) for v in op.operands)
    if lhs.element_type != rhs.element_type and not (lhs.encoding is not None and rhs.encoding is not None):
        raise VerifyError(f"operand element types differ: {lhs.element_type} and {rhs.element_type}")
    if not _is_bool_like(tensor(op.result.type)):
        raise VerifyError(f"the result must be i1 (or a 0/1 float on the device), not {tensor(op.result.type)}")
    shape = broadcast_shape(lhs.shape, rhs.shape)
    _expect_shape(op, shape, f"operand shapes {_dims(lhs.shape)} and {_dims(rhs.shape)} do not broadcast")


def verify_logical(op: Operation) -> None:
    """Logical ops work on i1 tensors."""
    for value in (*op.operands, *op.results):
        if tensor(value.type).element_type.name != "i1":
            raise VerifyError(f"'{op.name}' works on i1 tensors, not {value.type}")
    shapes = [tensor(v.type).shape for v in op.operands]
    shape = shapes[0] if len(shapes) == 1 else broadcast_shape(*shapes)
    _expect_shape(op, shape, f"operand shapes {', '.join(map(_dims, shapes))} do not broadcast")


def verify_isnan(op: Operation) -> None:
    if not _is_bool_like(tensor(op.result.type)):
        raise VerifyError(f"the result must be i1 (or a 0/1 float on the device), not {tensor(op.result.type)}")
    _expect_shape(op, tensor(op.operands[0].type).shape, "same shape as the operand")


def verify_where(op: Operation) -> None:
    cond, x, y = (tensor(v.type) for v in op.operands)
    if not _is_bool_like(cond):
        raise VerifyError(f"the condition must be i1 (or a 0/1 float on the device), not {cond}")
    if x.element_type != y.element_type or tensor(op.result.type).element_type != x.element_type:
        raise VerifyError(f"the branches and the result must share one element type ({x.element_type}, "
                          f"{y.element_type} -> {tensor(op.result.type).element_type})")
    branches = broadcast_shape(x.shape, y.shape)
    shape = broadcast_shape(cond.shape, branches) if branches is not None else None
    _expect_shape(op, shape, f"shapes {_dims(cond.shape)}, {_dims(x.shape)} and {_dims(y.shape)} do not broadcast")


def verify_typecast(op: Operation) -> None:
    _expect_shape(op, tensor(op.operands[0].type).shape, "same shape as the operand")


def verify_broadcast(op: Operation) -> None:
    _same_element_types(op)
    source, result = tensor(op.operands[0].type), tensor(op.result.type)
    if broadcast_shape(source.shape, result.shape) != result.shape:
        raise VerifyError(f"{_dims(source.shape)} does not broadcast to {_dims(result.shape)}")


def slice_shape(shape: Sequence[int], begins: Sequence[int], ends: Sequence[int],
                steps: Sequence[int]) -> tuple[int, ...]:
    """The shape of x[begin:end:step, ...] (normalised, non-negative begins/ends per dim)."""
    return tuple(len(range(b, e, s)) for b, e, s in zip(begins, ends, steps, strict=True))


def verify_slice(op: Operation) -> None:
    _same_element_types(op)
    shape = tensor(op.operands[0].type).shape
    begins, ends, steps = op.attr("begins"), op.attr("ends"), op.attr("steps")
    if not len(begins) == len(ends) == len(steps) == len(shape):
        raise VerifyError(f"begins, ends and steps need one entry per dim ({len(shape)})")
    for dim, (b, e, s) in enumerate(zip(begins, ends, steps, strict=True)):
        if s == 0:
            raise VerifyError(f"step of dim {dim} is zero")
        if not (0 <= b <= shape[dim] and -1 <= e <= shape[dim]):
            raise VerifyError(f"dim {dim}: begin {b} / end {e} are outside 0..{shape[dim]} (normalise them)")
    _expect_shape(op, slice_shape(shape, begins, ends, steps), "the sliced shape")


def verify_concat(op: Operation) -> None:
    _same_element_types(op)
    shapes = [tensor(v.type).shape for v in op.operands]
    if not shapes:
        raise VerifyError("concat needs at least one operand")
    rank = len(shapes[0])
    axis = normalize_axis(op.attr("axis"), rank)
    for shape in shapes[1:]:
        if len(shape) != rank or any(a != b for i, (a, b) in enumerate(zip(shape, shapes[0], strict=True))
                                     if i != axis):
            raise VerifyError(f"operand shapes {', '.join(map(_dims, shapes))} differ outside axis {axis}")
    expected = list(shapes[0])
    expected[axis] = sum(shape[axis] for shape in shapes)
    _expect_shape(op, expected, f"concatenation along axis {axis}")


def verify_kv_write(op: Operation) -> None:
    _same_element_types(op)
    entry, cache = tensor(op.operands[0].type), tensor(op.result.type)
    axis = op.attr("axis")
    if len(entry.shape) != len(cache.shape) or not 0 <= axis < len(cache.shape):
        raise VerifyError(f"an entry {_dims(entry.shape)} and a cache {_dims(cache.shape)} of one rank, with the "
                          f"cache axis {axis} among their dims, are needed")
    if any(a != b for i, (a, b) in enumerate(zip(entry.shape, cache.shape, strict=True)) if i != axis):
        raise VerifyError(f"the entry {_dims(entry.shape)} differs from the cache {_dims(cache.shape)} outside axis "
                          f"{axis}")
    if entry.shape[axis] > cache.shape[axis]:
        raise VerifyError(f"an entry of {entry.shape[axis]} positions does not fit a cache of {cache.shape[axis]}")


def verify_gather(op: Operation) -> None:
    data, indices = (tensor(v.type) for v in op.operands)
    if not indices.element_type.is_integer or indices.element_type.name == "i1":
        raise VerifyError(f"indices must be integers, not {indices}")
    if tensor(op.result.type).element_type != data.element_type:
        raise VerifyError("the result has the data's element type")
    axis = normalize_axis(op.attr("axis"), data.rank)
    _expect_shape(op, (*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]), "np.take along axis")


def verify_embedding(op: Operation) -> None:
    table, indices = (tensor(v.type) for v in op.operands)
    if table.rank != 2:
        raise VerifyError(f"the table must be 2-D [rows, width], not {_dims(table.shape)}")
    if not indices.element_type.is_integer or indices.element_type.name == "i1":
        raise VerifyError(f"indices must be integers, not {indices}")
    if tensor(op.result.type).element_type != table.element_type and not (
            table.encoding is not None and tensor(op.result.type).element_type.is_float):
        raise VerifyError("the result has the table's element type")
    if op.attributes.get("im2col") and op.attr("im2col"):
        if indices.rank != 3 or indices.shape[2] != 32:
            raise VerifyError(f"im2col indices are [positions, tile rows, 32], not {_dims(indices.shape)}")
        positions, tile_rows, _ = indices.shape
        if op.attributes.get("grouped") and op.attr("grouped"):
            if table.shape[1] % 32:
                raise VerifyError(f"a grouped im2col lookup needs whole channel tiles, not width {table.shape[1]}")
            if tensor(op.result.type).rank != 3:
                raise VerifyError("a grouped im2col result is [width / 32, M, positions * 32] (channel tile j of "
                                  f"every position side by side in batch j), not {_dims(tensor(op.result.type).shape)}")
            rows = tensor(op.result.type).shape[1]
            _check_im2col_rows(rows, tile_rows)
            _expect_shape(op, (table.shape[1] // 32, rows, positions * 32),
                          "channel tile j of every position side by side in batch j")
            return
        shape = tensor(op.result.type).shape  # [M, positions * width], leading unit dims allowed
        lead = shape[:-2] if len(shape) >= 2 and all(d == 1 for d in shape[:-2]) else ()
        rows = shape[-2] if len(shape) >= 2 and len(lead) == len(shape) - 2 else -1
        _check_im2col_rows(rows, tile_rows)
        _expect_shape(op, (*lead, rows, positions * table.shape[1]), "the rows of each position side by side")
        return
    _expect_shape(op, (*indices.shape, table.shape[1]), "one table row per index")


def reduced_shape(shape: Sequence[int], axes: Sequence[int], keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def verify_reduce(op: Operation) -> None:
    _same_element_types(op)
    shape = tensor(op.operands[0].type).shape
    axes = op.attr("axes")
    if sorted(set(axes)) != list(axes) or any(not 0 <= a < len(shape) for a in axes):
        raise VerifyError(f"axes {list(axes)} must be sorted, distinct and in 0..{len(shape) - 1}")
    _expect_shape(op, reduced_shape(shape, axes, op.attr("keepdims")), f"reduction over axes {list(axes)}")


# ----------------------------------------------------------------------------------------------
# Compile-time folding (constants only)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _elementwise_fold(fn: Callable[..., np.ndarray]):
    def fold(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
        dtype = tensor(op.result.type).element_type.numpy_dtype()
        with np.errstate(all="ignore"):
            return np.asarray(fn(*(a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays)),
                              dtype=dtype)
    return fold


def _fold_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return np.trunc(np.divide(a, b)).astype(a.dtype)  # ONNX integer Div truncates
    return a / b


def _fold_matmul(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    a, b = arrays
    if op.attr("transpose_a"):
        a = np.swapaxes(a, -1, -2)
    if op.attr("transpose_b"):
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b).astype(tensor(op.result.type).element_type.numpy_dtype())


def _fold_transpose(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(arrays[0], op.attr("perm")))  # DenseAttr needs contiguous data


def _fold_reshape(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    return arrays[0].reshape(tensor(op.result.type).shape)


def _fold_softmax(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    dtype = tensor(op.result.type).element_type.numpy_dtype()
    x = arrays[0].astype(np.float64) * op.attr("scale")  # the scale and additive mask `fuse` folds in
    if len(arrays) > 1:
        x = x + arrays[1].astype(np.float64)
    return _softmax(x, op.attr("axis")).astype(dtype)


def _result_dtype(op: Operation) -> np.dtype:
    return tensor(op.result.type).element_type.numpy_dtype()


def _compare_fold(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def fold(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
        return np.asarray(fn(*arrays)).astype(_result_dtype(op))
    return fold


def _fold_where(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    cond, x, y = arrays
    return np.where(cond.astype(bool), x, y).astype(_result_dtype(op))


def typecast_array(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """ONNX Cast on host arrays: float -> int truncates toward zero, anything -> bool tests != 0
    (NaN is true), bool -> number gives 0/1."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return array != 0
    with np.errstate(all="ignore"):
        if array.dtype.kind == "f" and dtype.kind in "iu":
            return np.trunc(array).astype(dtype)
        return array.astype(dtype)


def _fold_typecast(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    return typecast_array(arrays[0], _result_dtype(op))


def _fold_broadcast(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    return np.broadcast_to(arrays[0], tensor(op.result.type).shape).copy()


def slices_of(op: Operation) -> tuple[slice, ...]:
    """The numpy index of a ttir.slice (an end of -1 with a negative step means "through index 0")."""
    return tuple(slice(b, None if e < 0 else e, s)
                 for b, e, s in zip(op.attr("begins"), op.attr("ends"), op.attr("steps"), strict=True))


def _fold_slice(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    return np.ascontiguousarray(arrays[0][slices_of(op)])


def _fold_concat(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    return np.concatenate(arrays, axis=op.attr("axis"))


def _fold_gather(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    data, indices = arrays
    axis = op.attr("axis")
    size = data.shape[axis]
    return np.take(data, np.where(indices < 0, indices + size, indices), axis=axis)


def _check_im2col_rows(rows: int, tile_rows: int) -> None:
    if not 32 * (tile_rows - 1) < rows <= 32 * tile_rows:
        raise VerifyError(f"an im2col result has 32 * {tile_rows} rows at most (one index page of 32 per tile "
                          f"row), and more than 32 * {tile_rows - 1}")


def _fold_embedding(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    table, indices = arrays
    if op.attr("pad_negative"):
        rows = np.where((indices >= 0)[..., None], table[np.maximum(indices, 0)], 0).astype(table.dtype)
    else:
        rows = table[np.where(indices < 0, indices + table.shape[0], indices)]
    if op.attr("grouped"):  # [positions, tile rows, 32, width] -> [width / 32, M, positions * 32]
        ct, m, _ = tensor(op.result.type).shape
        rows = rows.reshape(rows.shape[0], -1, ct, 32)[:, :m]
        return np.ascontiguousarray(rows.transpose(2, 1, 0, 3).reshape(ct, m, -1))
    if op.attr("im2col"):  # [positions, tile rows, 32, width] -> [M, positions * width]
        m = tensor(op.result.type).shape[0]
        rows = rows.reshape(rows.shape[0], -1, rows.shape[-1])[:, :m]
        return np.ascontiguousarray(rows.transpose(1, 0, 2).reshape(m, -1))
    return rows


def _reduce_fold(fn: Callable[..., np.ndarray]):
    def fold(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
        x = arrays[0].astype(np.float64) if arrays[0].dtype.kind == "f" else arrays[0]
        result = fn(x, axis=tuple(op.attr("axes")), keepdims=op.attr("keepdims"))
        return np.asarray(result).astype(_result_dtype(op))
    return fold


def _fold_gelu(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    x = arrays[0].astype(np.float64)
    if op.attr("approximate") == "tanh":
        y = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    else:
        y = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return y.astype(_result_dtype(op))


# ----------------------------------------------------------------------------------------------
# Op declarations


def unary(name: str, summary: str, fn: Callable[[np.ndarray], np.ndarray]) -> OpDef:
    return OpDef(f"ttir.{name}", summary, operands=(Operand("input"),), traits=ELEMENTWISE,
                 verify=verify_unary, fold=_elementwise_fold(fn))


def binary(name: str, summary: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
           *traits: Trait) -> OpDef:
    return OpDef(f"ttir.{name}", summary, operands=(Operand("lhs"), Operand("rhs")),
                 traits=BROADCAST | set(traits), verify=verify_binary, fold=_elementwise_fold(fn))


CONSTANT = OpDef("ttir.constant", "A constant: inline dense<...> for small values, #tt.weight<...> otherwise.",
                 operands=(), attributes=(Attr("value", ConstantAttr),),
                 traits=frozenset({Trait.PURE, Trait.CONSTANT_LIKE}), verify=verify_constant)

ADD = binary("add", "Elementwise sum", np.add, Trait.COMMUTATIVE)
SUB = binary("sub", "Elementwise difference", np.subtract)
MUL = binary("mul", "Elementwise product", np.multiply, Trait.COMMUTATIVE)
DIV = binary("div", "Elementwise quotient (integer division truncates, as ONNX)", _fold_div)
POW = binary("pow", "Elementwise power", np.power)
MAXIMUM = binary("maximum", "Elementwise maximum", np.maximum, Trait.COMMUTATIVE)
MINIMUM = binary("minimum", "Elementwise minimum", np.minimum, Trait.COMMUTATIVE)

RELU = unary("relu", "max(x, 0)", lambda x: np.maximum(x, 0))
SIGMOID = unary("sigmoid", "1 / (1 + exp(-x))", lambda x: 1.0 / (1.0 + np.exp(-x)))
TANH = unary("tanh", "Hyperbolic tangent", np.tanh)
EXP = unary("exp", "e^x", np.exp)
LOG = unary("log", "Natural logarithm", np.log)
ERF = unary("erf", "Gauss error function", _erf)
SQRT = unary("sqrt", "Square root", np.sqrt)
RSQRT = unary("rsqrt", "1 / sqrt(x)", lambda x: 1.0 / np.sqrt(x))
NEG = unary("neg", "-x", np.negative)
RECIPROCAL = unary("reciprocal", "1 / x", lambda x: 1.0 / x)
GELU = OpDef("ttir.gelu", "x * Phi(x): the erf form, or its tanh approximation with approximate = \"tanh\"",
             operands=(Operand("input"),), attributes=(Attr("approximate", enum_attr("none", "tanh"), "none"),),
             traits=ELEMENTWISE, verify=verify_unary, fold=_fold_gelu)
ABS = unary("abs", "|x|", np.abs)
FLOOR = unary("floor", "Round down to an integer", np.floor)
CEIL = unary("ceil", "Round up to an integer", np.ceil)
TRUNC = unary("trunc", "Round toward zero to an integer", np.trunc)
ROUND = unary("round", "Round to the nearest integer, halves to even (ONNX Round)", np.rint)
SIN = unary("sin", "Sine", np.sin)
COS = unary("cos", "Cosine", np.cos)
TAN = unary("tan", "Tangent", np.tan)
ASIN = unary("asin", "Arcsine", np.arcsin)
ACOS = unary("acos", "Arccosine", np.arccos)
ATAN = unary("atan", "Arctangent", np.arctan)
ASINH = unary("asinh", "Inverse hyperbolic sine", np.arcsinh)
ACOSH = unary("acosh", "Inverse hyperbolic cosine", np.arccosh)
ATANH = unary("atanh", "Inverse hyperbolic tangent", np.arctanh)
ROUNDING_AND_TRIG = [FLOOR, CEIL, TRUNC, ROUND, SIN, COS, TAN, ASIN, ACOS, ATAN, ASINH, ACOSH, ATANH]
SOFTPLUS = unary("softplus", "log(1 + e^x)", lambda x: np.logaddexp(0, x))
MISH = unary("mish", "x * tanh(softplus(x))", lambda x: x * np.tanh(np.logaddexp(0, x)))
HARDSWISH = unary("hardswish", "x * relu6(x + 3) / 6 (ONNX HardSwish)", lambda x: x * np.clip(x + 3, 0, 6) / 6)

MATMUL = OpDef(
    "ttir.matmul", "Matrix product with numpy batching; optional transposes of the last two dims",
    operands=(Operand("a"), Operand("b")),
    attributes=(Attr("transpose_a", BoolAttr, False), Attr("transpose_b", BoolAttr, False)),
    traits=PURE, verify=verify_matmul, fold=_fold_matmul,
)
GEMM = OpDef(
    "ttir.gemm", "alpha * op(a) @ op(b) + beta * c (ONNX Gemm); `decompose` splits it",
    operands=(Operand("a"), Operand("b"), Operand("c", optional=True)),
    attributes=(Attr("transpose_a", BoolAttr, False), Attr("transpose_b", BoolAttr, False),
                Attr("alpha", FloatAttr, 1.0), Attr("beta", FloatAttr, 1.0)),
    traits=PURE, verify=verify_gemm,
)
SOFTMAX = OpDef("ttir.softmax", "Softmax along `axis` of input * scale (+ mask, broadcast to it, when there is one): "
                "`fuse` folds an attention's scale and additive mask in; a named op: the device has a kernel for it",
                operands=(Operand("input"), Operand("mask", optional=True)),
                attributes=(Attr("axis", IntAttr, -1), Attr("scale", FloatAttr, 1.0)),
                traits=PURE, verify=verify_softmax, fold=_fold_softmax)
LAYER_NORM = OpDef(
    "ttir.layer_norm", "Normalise over dims [axis, rank) then scale and shift (a named op for the device); "
    "`rms = true`: RMS norm, x * rsqrt(mean(x^2) + epsilon) * scale (no centring)",
    operands=(Operand("input"), Operand("scale"), Operand("bias", optional=True)),
    attributes=(Attr("axis", IntAttr, -1), Attr("epsilon", FloatAttr, 1e-05), Attr("rms", BoolAttr, False)),
    traits=PURE, verify=verify_layer_norm,
)
TRANSPOSE = OpDef("ttir.transpose", "Permute dimensions", operands=(Operand("input"),),
                  attributes=(Attr("perm", IntArrayAttr, REQUIRED),), traits=PURE,
                  verify=verify_transpose, fold=_fold_transpose)
RESHAPE = OpDef("ttir.reshape", "Same elements, new shape (the result type gives it)",
                operands=(Operand("input"),), results=(Result("result", AnyTensor),), traits=PURE,
                verify=verify_reshape, fold=_fold_reshape)



def compare(name: str, summary: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> OpDef:
    return OpDef(f"ttir.{name}", summary, operands=(Operand("lhs"), Operand("rhs")), traits=BROADCAST,
                 verify=verify_compare, fold=_compare_fold(fn))


def logical(name: str, summary: str, fn: Callable[..., np.ndarray], arity: int = 2) -> OpDef:
    operands = (Operand("lhs"), Operand("rhs")) if arity == 2 else (Operand("input"),)
    return OpDef(f"ttir.{name}", summary, operands=operands, traits=BROADCAST if arity == 2 else ELEMENTWISE,
                 verify=verify_logical, fold=_compare_fold(fn))


def reduction(name: str, summary: str, fn: Callable[..., np.ndarray]) -> OpDef:
    return OpDef(f"ttir.{name}", summary, operands=(Operand("input"),),
                 attributes=(Attr("axes", IntArrayAttr, REQUIRED), Attr("keepdims", BoolAttr, True)),
                 traits=PURE, verify=verify_reduce, fold=_reduce_fold(fn))


EQ = compare("eq", "lhs == rhs (i1)", np.equal)
NE = compare("ne", "lhs != rhs (i1)", np.not_equal)
LT = compare("lt", "lhs < rhs (i1)", np.less)
LE = compare("le", "lhs <= rhs (i1)", np.less_equal)
GT = compare("gt", "lhs > rhs (i1)", np.greater)
GE = compare("ge", "lhs >= rhs (i1)", np.greater_equal)
LOGICAL_AND = logical("logical_and", "a and b on i1 tensors", np.logical_and)
LOGICAL_OR = logical("logical_or", "a or b on i1 tensors", np.logical_or)
LOGICAL_XOR = logical("logical_xor", "a xor b on i1 tensors", np.logical_xor)
LOGICAL_NOT = logical("logical_not", "not a on an i1 tensor", np.logical_not, arity=1)
ISNAN = OpDef("ttir.isnan", "x != x (i1)", operands=(Operand("input"),), traits=ELEMENTWISE, verify=verify_isnan,
              fold=lambda arrays, op: np.isnan(arrays[0]))
ISINF = OpDef("ttir.isinf", "|x| == inf (i1)", operands=(Operand("input"),), traits=ELEMENTWISE, verify=verify_isnan,
              fold=lambda arrays, op: np.isinf(arrays[0]))
WHERE = OpDef("ttir.where", "cond ? x : y, the three broadcast numpy-style",
              operands=(Operand("cond"), Operand("x"), Operand("y")), traits=BROADCAST, verify=verify_where,
              fold=_fold_where)
TYPECAST = OpDef("ttir.typecast", "Convert to the result's element type (ONNX Cast: float -> int truncates, "
                 "-> i1 tests != 0)", operands=(Operand("input"),), traits=ELEMENTWISE, verify=verify_typecast,
                 fold=_fold_typecast)
BROADCAST_OP = OpDef("ttir.broadcast", "Broadcast numpy-style to the result's shape (ONNX Expand)",
                     operands=(Operand("input"),), traits=BROADCAST, verify=verify_broadcast, fold=_fold_broadcast)
SLICE = OpDef(
    "ttir.slice", "x[begins[d]:ends[d]:steps[d] for every dim d]; begins/ends normalised into the dims "
    "(an end of -1 with a negative step runs through index 0)",
    operands=(Operand("input"),),
    attributes=(Attr("begins", IntArrayAttr, REQUIRED), Attr("ends", IntArrayAttr, REQUIRED),
                Attr("steps", IntArrayAttr, REQUIRED)),
    traits=PURE, verify=verify_slice, fold=_fold_slice,
)
CONCAT = OpDef("ttir.concat", "Concatenate along `axis`", operands=(Operand("inputs", variadic=True),),
               attributes=(Attr("axis", IntAttr, REQUIRED),), traits=PURE, verify=verify_concat, fold=_fold_concat)
KV_WRITE = OpDef("ttir.kv_write", "The device-resident cache `state` (a buffer that persists across runs) with "
                 "`entry` written into it along `axis` at the runtime scalar `position` (a run's argument, not a "
                 "tensor); the result is the whole cache. Made by the kv-cache pass from a concat(past, entry) "
                 "whose past is a cache input",
                 operands=(Operand("entry"),),
                 attributes=(Attr("state", StrAttr, REQUIRED), Attr("position", StrAttr, REQUIRED),
                             Attr("axis", IntAttr, REQUIRED)), verify=verify_kv_write)
GATHER = OpDef("ttir.gather", "np.take(data, indices, axis) with ONNX's negative indices (ONNX Gather); the device "
               "runs it when the indices are constant (a data movement)",
               operands=(Operand("data"), Operand("indices")), attributes=(Attr("axis", IntAttr, 0),),
               traits=PURE, verify=verify_gather, fold=_fold_gather)
EMBEDDING = OpDef("ttir.embedding", "table[indices]: one row of a 2-D table per index (a Gather along axis 0); "
                  "the device reads the rows by index and tilizes them. With `pad_negative` a negative index "
                  "gives a zero row (convolution padding) instead of counting from the end; with `im2col` the "
                  "indices are [positions, ceil(M / 32), 32] (an index page per output tile row; ids past M are "
                  "-1) and the result [M, positions * width] (the rows looked up for each position side by "
                  "side: a convolution's im2col matrix); with `grouped` too the result is [width / 32, M, positions * 32], "
                  "batch j holding channel tile j of every position side by side (a depthwise convolution's "
                  "operand, one small matmul per channel tile)",
                  operands=(Operand("table"), Operand("indices")),
                  attributes=(Attr("pad_negative", BoolAttr, False), Attr("im2col", BoolAttr, False),
                              Attr("grouped", BoolAttr, False)), traits=PURE, verify=verify_embedding,
                  fold=_fold_embedding)
REDUCE_SUM = reduction("reduce_sum", "Sum over `axes`", np.sum)
REDUCE_MEAN = reduction("reduce_mean", "Mean over `axes`", np.mean)
REDUCE_MAX = reduction("reduce_max", "Maximum over `axes`", np.max)


def verify_to_layout(op: Operation) -> None:
    source, result = tensor(op.operands[0].type), tensor(op.result.type)
    perm = op.attributes.get("perm")
    split = op.attributes.get("split")
    window = op.attributes.get("window")
    if window is not None:  # the host writes the im2col matrix of the NCHW input
        if perm is not None or split is not None or source.encoding is not None or result.encoding is None:
            raise VerifyError("to_layout with window is a host -> device edge of its own (no perm, no split)")
        if source.rank != 4 or not valid_window_edge(window):
            raise VerifyError(f"window {list(window)} of {_dims(source.shape)}: an NCHW input and kernel (2), strides "
                              "(2), pads (4) and dilations (2)")
        if min(im2col_shape(source.shape, window)) < 1 or result.shape != im2col_shape(source.shape, window):
            raise VerifyError(f"to_layout with window {list(window)} of {_dims(source.shape)} gives "
                              f"{_dims(im2col_shape(source.shape, window))}, not {_dims(result.shape)}")
    elif split is not None:  # the host reshapes to `split`, permutes, and writes the result's shape
        split = tuple(split)
        if perm is None or source.encoding is not None or result.encoding is None:
            raise VerifyError("to_layout with split is a host -> device edge with a perm")
        if sorted(perm) != list(range(len(split))):
            raise VerifyError(f"perm {list(perm)} is not a permutation of the {len(split)} dims of split {list(split)}")
        if not math.prod(split) == source.num_elements == result.num_elements:
            raise VerifyError(f"to_layout with split {list(split)} of {_dims(source.shape)} gives {_dims(result.shape)}: "
                              "the element counts differ")
    elif perm is not None:  # a host input written transposed: the host permutes it as it writes it
        perm = tuple(perm)
        if source.encoding is not None or result.encoding is None:
            raise VerifyError("to_layout with perm is a host -> device edge (the host permutes the tensor)")
        if sorted(perm) != list(range(source.rank)):
            raise VerifyError(f"perm {list(perm)} is not a permutation of {source.rank} dims")
        if result.shape != tuple(source.shape[i] for i in perm):
            raise VerifyError(f"to_layout with perm {list(perm)} of {_dims(source.shape)} gives "
                              f"{_dims(tuple(source.shape[i] for i in perm))}, not {_dims(result.shape)}")
    elif source.shape != result.shape:
        raise VerifyError(f"to_layout keeps the shape: {_dims(source.shape)} vs {_dims(result.shape)}")
    if source.encoding is None and result.encoding is None:
        raise VerifyError("to_layout needs a layout encoding on one side")


def verify_linear(op: Operation) -> None:
    a, b = (tensor(v.type).shape for v in op.operands[:2])
    b_shape = list(b)
    if op.attr("transpose_b") and len(b_shape) >= 2:
        b_shape[-1], b_shape[-2] = b_shape[-2], b_shape[-1]
    shape = matmul_shape(a, b_shape)
    if shape is None:
        raise VerifyError(f"linear of {_dims(a)} by {_dims(b)} has mismatched inner dims")
    bias, residual = linear_bias(op), linear_residual(op)
    if op.attr("residual") and residual is None:
        raise VerifyError("a linear with residual = true takes the residual as its last operand (a, b, bias?, residual)")
    if bias is not None and broadcast_shape(tensor(bias.type).shape, shape) != shape:
        raise VerifyError(f"bias {_dims(tensor(bias.type).shape)} does not broadcast to {_dims(shape)}")
    if residual is not None and not holds_tiles_of(tensor(residual.type).shape, shape):
        raise VerifyError(f"residual {_dims(tensor(residual.type).shape)} does not hold the tiles of the result "
                          f"{_dims(shape)} (the same last two dims and batch count)")
    if op.attr("residual_activation") != "none" and residual is None:
        raise VerifyError("residual_activation without a residual")
    _expect_shape(op, shape, "matmul result")


def linear_bias(op: Operation):
    """The bias row of a `ttir.linear` (its third operand unless that is the residual), or None."""
    count = len(op.operands) - int(bool(op.attributes.get("residual")))
    return op.operands[2] if count > 2 else None


def linear_residual(op: Operation):
    """The residual a `ttir.linear` adds after its bias and activation (`residual = true`: its last operand)."""
    return op.operands[-1] if op.attributes.get("residual") and len(op.operands) > 2 else None


def holds_tiles_of(shape: Sequence[int], result: Sequence[int]) -> bool:
    """A tensor of `shape` lays out its tiles exactly as one of `result` does: the same last two dims (a rank-1
    shape being [1, N]) and the same count of batches, so a reader walks both in the same page order."""
    def matrix(s: Sequence[int]) -> tuple[tuple[int, ...], int]:
        s = (1, *s) if len(s) == 1 else tuple(s)
        return s[-2:], math.prod(s[:-2])
    return matrix(shape) == matrix(result)


def verify_eltwise(op: Operation) -> None:
    block = op.regions[0].blocks[0] if op.regions and op.regions[0].blocks else None
    if block is None or len(block.args) != len(op.operands):
        raise VerifyError("the body has one block with one argument per operand")
    for arg, value in zip(block.args, op.operands, strict=True):
        if tensor(arg.type).shape != tensor(value.type).shape:
            raise VerifyError("body arguments must have the operands' shapes")
    term = block.terminator
    if term is None or term.name != YIELD.name or len(term.operands) != 1:
        raise VerifyError("the body ends with ttir.yield of one value")
    if tensor(term.operands[0].type).shape != tensor(op.result.type).shape:
        raise VerifyError("the yielded value must have the result's shape")
    for inner in block.ops[:-1]:
        opdef = inner.opdef
        if opdef is None or not (opdef.has(Trait.ELEMENTWISE) or opdef.has(Trait.CONSTANT_LIKE)):
            raise VerifyError(f"'{inner.name}' is not elementwise and cannot be fused")


TO_LAYOUT = OpDef("ttir.to_layout", "Change layout, memory or data format; host<->device at the graph edges "
                  "(host -> device may also permute the dims: `perm`, done by the host as it writes; with `split`, the "
                  "host reshapes to it before permuting and writes the permuted tensor in the result's shape; with "
                  "`window`, the host writes the im2col matrix of the NCHW input, as `ttir.im2col`)",
                  operands=(Operand("input"),),
                  attributes=(Attr("perm", IntArrayAttr, None), Attr("split", IntArrayAttr, None),
                              Attr("window", IntArrayAttr, None)),
                  traits=PURE, verify=verify_to_layout)
LINEAR = OpDef(
    "ttir.linear", "residual_activation(activation(a @ b + bias) + residual): a matmul with its epilogue fused "
    "(one device op; `residual = true`: the last operand is a full tensor added after the activation)",
    operands=(Operand("a"), Operand("b"), Operand("bias", optional=True), Operand("residual", optional=True)),
    attributes=(Attr("transpose_b", BoolAttr, False), Attr("activation", StrAttr, "none"),
                Attr("residual", BoolAttr, False), Attr("residual_activation", StrAttr, "none")),
    traits=PURE, verify=verify_linear,
)
ELTWISE = OpDef(
    "ttir.eltwise", "A fused chain of elementwise ops (the body) run as one device op",
    operands=(Operand("inputs", variadic=True),), regions=1, traits=PURE, verify=verify_eltwise,
)
YIELD = OpDef("ttir.yield", "The value a fused body produces", operands=(Operand("value"),), results=(),
              traits=frozenset({Trait.TERMINATOR}))

def window_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                       ceil_mode: bool = False) -> int:
    """Output positions of a sliding window along one dim (ONNX Conv/pooling; with ceil_mode a last window
    may start in the end padding but not past it)."""
    span = size + pad_begin + pad_end - ((kernel - 1) * dilation + 1)
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def window_output_shape(op: Operation, kernel: Sequence[int]) -> tuple[int, int, int]:
    """(N, OH, OW) of a `ttir.conv2d` / `ttir.pool2d` from its attributes."""
    n, h, w = op.attr("input_shape")
    strides, pads, dilations = op.attr("strides"), op.attr("pads"), op.attr("dilations")
    ceil_mode = bool(op.attributes.get("ceil_mode") and op.attr("ceil_mode"))
    return (n, window_output_size(h, kernel[0], strides[0], pads[0], pads[2], dilations[0], ceil_mode),
            window_output_size(w, kernel[1], strides[1], pads[1], pads[3], dilations[1], ceil_mode))


def window_edge(kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                dilations: Sequence[int]) -> tuple[int, ...]:
    """A window as one int array (`to_layout {window}`): kernel (2), strides (2), pads [top, left, bottom, right]
    and dilations (2)."""
    return (*(int(v) for v in kernel), *(int(v) for v in strides), *(int(v) for v in pads),
            *(int(v) for v in dilations))


def valid_window_edge(window: Sequence[int]) -> bool:
    """Ten ints: kernel, strides and dilations at least 1, pads at least 0."""
    return len(window) == 10 and min(window[:4]) >= 1 and min(window[8:]) >= 1 and min(window[4:8]) >= 0


def im2col_shape(image: Sequence[int], window: Sequence[int]) -> tuple[int, int]:
    """[N*OH*OW, KH*KW*C]: the im2col matrix of NCHW images `image` by `window` (`window_edge`)."""
    n, c, h, w = image
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw = window
    return (n * window_output_size(h, kh, sh, pt, pb, dh) * window_output_size(w, kw, sw, pl, pr, dw), kh * kw * c)


def im2col_rows(x: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """The im2col matrix of NCHW images x (`ttir.im2col`, and the host's `to_layout {window}`): row
    (n * OH + oh) * OW + ow holds window (oh, ow) of image n, its columns ordered (kernel row, kernel column,
    channel), zero where the window lies in the padding. One copy of a strided view of the padded images."""
    n, c, h, w = x.shape
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw = window
    oh, ow = window_output_size(h, kh, sh, pt, pb, dh), window_output_size(w, kw, sw, pl, pr, dw)
    padded = np.zeros((n, c, h + pt + pb, w + pl + pr), x.dtype)
    padded[:, :, pt:pt + h, pl:pl + w] = x
    spans = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = spans[:, :, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw, ::dh, ::dw]  # [N, C, OH, OW, KH, KW]
    return np.ascontiguousarray(windows.transpose(0, 2, 3, 4, 5, 1)).reshape(n * oh * ow, kh * kw * c)


def _check_window(op: Operation, kernel: Sequence[int] | None = None) -> None:
    """input_shape [N, H, W] positive, strides and dilations (2) >= 1, pads (4) >= 0, a kernel (2) >= 1."""
    for name, rank, low in (("input_shape", 3, 1), ("strides", 2, 1), ("dilations", 2, 1), ("pads", 4, 0),
                            *((("kernel", 2, 1),) if kernel is not None else ())):
        value = op.attr(name)
        if len(value) != rank or any(not isinstance(v, int) or v < low or v > 1 << 31 for v in value):
            raise VerifyError(f"attribute '{name}' must be {rank} integers in [{low}, 2^31], not {list(value)}")


def verify_conv2d(op: Operation) -> None:
    _check_window(op)
    _same_element_types(op)
    x, w = tensor(op.operands[0].type), tensor(op.operands[1].type)
    n, h, width = op.attr("input_shape")
    groups = op.attr("groups")
    if x.rank != 2 or x.shape[0] != n * h * width:
        raise VerifyError(f"the input is the channels-last matrix [N*H*W, C] = [{n * h * width}, C], not {_dims(x.shape)}")
    if w.rank != 4 or w.shape[1] * groups != x.shape[1] or w.shape[0] % groups:
        raise VerifyError(f"weight {_dims(w.shape)} does not match {x.shape[1]} input channels in {groups} groups")
    if len(op.operands) == 3 and tensor(op.operands[2].type).shape != (w.shape[0],):
        raise VerifyError("the bias has one value per output channel")
    if groups < 1 or any(k < 1 for k in w.shape[2:]):
        raise VerifyError(f"groups {groups} and kernel {_dims(w.shape[2:])} must be positive")
    batch, oh, ow = window_output_shape(op, w.shape[2:])
    if oh < 1 or ow < 1:
        raise VerifyError(f"the window is larger than the padded input (output {oh}x{ow})")
    _expect_shape(op, (batch * oh * ow, w.shape[0]), "channels-last [N*OH*OW, OC]")


def verify_pool2d(op: Operation) -> None:
    _check_window(op, op.attr("kernel"))
    _same_element_types(op)
    x = tensor(op.operands[0].type)
    n, h, w = op.attr("input_shape")
    if x.rank != 2 or x.shape[0] != n * h * w:
        raise VerifyError(f"the input is the channels-last matrix [N*H*W, C] = [{n * h * w}, C], not {_dims(x.shape)}")
    batch, oh, ow = window_output_shape(op, op.attr("kernel"))
    if oh < 1 or ow < 1:
        raise VerifyError(f"the window is larger than the padded input (output {oh}x{ow})")
    _expect_shape(op, (batch * oh * ow, x.shape[1]), "channels-last [N*OH*OW, C]")


WINDOW_ATTRS = (Attr("input_shape", IntArrayAttr, REQUIRED), Attr("strides", IntArrayAttr, REQUIRED),
                Attr("pads", IntArrayAttr, REQUIRED), Attr("dilations", IntArrayAttr, REQUIRED))
CONV2D = OpDef(
    "ttir.conv2d", "2-D convolution + bias on the channels-last matrix [N*H*W, C] (input_shape = "
    "[N, H, W]) giving [N*OH*OW, OC]; weight [OC, C / groups, KH, KW] as ONNX; pads [top, left, bottom, right]",
    operands=(Operand("input"), Operand("weight"), Operand("bias", optional=True)),
    attributes=(*WINDOW_ATTRS, Attr("groups", IntAttr, 1)),
    traits=PURE, verify=verify_conv2d,
)


def _window_of(op: Operation) -> tuple[int, ...]:
    return window_edge(op.attr("kernel"), op.attr("strides"), op.attr("pads"), op.attr("dilations"))


def verify_im2col(op: Operation) -> None:
    x = tensor(op.operands[0].type)
    if x.rank != 4:
        raise VerifyError(f"im2col takes NCHW images, not {_dims(x.shape)}")
    window = _window_of(op)
    if not valid_window_edge(window):
        raise VerifyError("kernel (2) and strides (2) >= 1, pads (4) >= 0, dilations (2) >= 1")
    shape = im2col_shape(x.shape, window)
    if min(shape) < 1:
        raise VerifyError(f"the window {list(window)} has no position in {_dims(x.shape)}")
    _expect_shape(op, shape, "the im2col matrix [N*OH*OW, KH*KW*C]")


def _fold_im2col(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    return im2col_rows(np.asarray(arrays[0]), _window_of(op))


IM2COL = OpDef(
    "ttir.im2col", "The im2col matrix [N*OH*OW, KH*KW*C] of NCHW images (columns ordered kernel row, kernel "
    "column, channel; zero in the padding): a convolution's operand the host writes as such for a graph input "
    "(tilize: to_layout {window}); no device op computes it",
    operands=(Operand("input"),),
    attributes=(Attr("kernel", IntArrayAttr, REQUIRED), Attr("strides", IntArrayAttr, REQUIRED),
                Attr("pads", IntArrayAttr, REQUIRED), Attr("dilations", IntArrayAttr, REQUIRED)),
    traits=PURE, verify=verify_im2col, fold=_fold_im2col,
)
POOL2D = OpDef(
    "ttir.pool2d", "Max or average pooling on the channels-last matrix [N*H*W, C] (input_shape = [N, H, W]) "
    "giving [N*OH*OW, C]; pads [top, left, bottom, right]; an average counts the padding or not",
    operands=(Operand("input"),),
    attributes=(Attr("kind", enum_attr("max", "avg"), REQUIRED), Attr("kernel", IntArrayAttr, REQUIRED),
                *WINDOW_ATTRS, Attr("ceil_mode", BoolAttr, False), Attr("count_include_pad", BoolAttr, False)),
    traits=PURE, verify=verify_pool2d,
)

def attention_result_shape(op: Operation) -> tuple[int, ...]:
    """The logical shape of an attention's result: its type's, unless written through a tile view (`result_view`:
    the result is the buffer a head merge would have gathered into, `result_shape` the logical one)."""
    if op.attributes.get("result_view") is not None:
        return tuple(op.attributes["result_shape"])
    return tuple(tensor(op.results[0].type).shape)


def attention_views(op: Operation) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The logical shapes of an attention's query and value: their operands' unless read through a tile view
    (`query_view`, `value_view`: the operand is the buffer the view reads), then [*batch, S, D] from the key and
    the result."""
    q, kt, v = (tensor(x.type).shape for x in op.operands[:3])
    out = attention_result_shape(op)
    if op.attributes.get("query_view") is not None:
        q = (*out[:-1], kt[-2])
    if op.attributes.get("value_view") is not None:
        v = (*out[:-2], kt[-1], out[-1])
    return tuple(q), tuple(v)


def verify_attention(op: Operation) -> None:
    kt = tensor(op.operands[1].type).shape
    q, v = attention_views(op)
    scores = matmul_shape(q, kt)
    if scores is None:
        raise VerifyError(f"attention scores of {_dims(q)} by {_dims(kt)} have mismatched inner dims")
    extra = list(op.operands[3:])
    if op.attr("bias"):
        if not extra:
            raise VerifyError("an attention with bias = true takes the scores' bias as its last operand")
        bias = tensor(extra.pop().type).shape
        if not holds_tiles_of(bias, scores):
            raise VerifyError(f"bias {_dims(bias)} does not hold the tiles of the scores {_dims(scores)}")
    if extra:
        mask = tensor(extra[0].type).shape
        if broadcast_shape(mask, scores) != tuple(scores):
            raise VerifyError(f"mask {_dims(mask)} does not broadcast to the scores' {_dims(scores)}")
    shape = matmul_shape(scores, v)
    if shape is None:
        raise VerifyError(f"attention probabilities {_dims(scores)} and values {_dims(v)} have mismatched inner dims")
    batches = math.prod(shape[:-2])
    for name in ("query_view", "value_view", "result_view"):
        view = op.attributes.get(name)
        if view is not None and len(view) != 1 + batches:
            raise VerifyError(f"attention {name} needs a row stride and the first tile of each of {batches} batches, "
                              f"got {len(view)} numbers")
    if op.attributes.get("result_view") is None:
        _expect_shape(op, shape, "attention result")
    elif tuple(shape) != attention_result_shape(op):
        raise VerifyError(f"attention result_shape {_dims(attention_result_shape(op))} is not {_dims(shape)}")


ATTENTION = OpDef(
    "ttir.attention", "softmax((query @ key (+ bias)) * scale (+ mask)) @ value along the last axis, one device op "
    "(the grid pass fuses a matmul (with a residual: `bias = true`, the last operand, as T5's position bias), a "
    "softmax with its folded scale and mask, and a plain matmul into it: passes/attention.py); `key` is the matmul's "
    "second operand ([..., D, S], K transposed); `scores_format` and `probs_format` are the element types the "
    "unfused ops gave the scores and the probabilities (kept in L1 in those formats), `reduce_fidelity` the softmax's; "
    "`query_view` / `value_view` = [row stride, first tile of each batch]: the operand is the buffer a head split "
    "would have gathered from, read in place (tile (b, r, c) of the logical operand is its tile first[b] + r * stride "
    "+ c); `result_view` the same for the result, whose logical shape is then `result_shape`",
    operands=(Operand("query"), Operand("key"), Operand("value"), Operand("mask", optional=True),
              Operand("bias", optional=True)),
    attributes=(Attr("scale", FloatAttr, 1.0), Attr("bias", BoolAttr, False), Attr("scores_format", StrAttr, REQUIRED),
                Attr("probs_format", StrAttr, REQUIRED),
                Attr("reduce_fidelity", enum_attr("lofi", "hifi2", "hifi3", "hifi4"), "hifi4"),
                Attr("query_view", IntArrayAttr, None), Attr("value_view", IntArrayAttr, None),
                Attr("result_view", IntArrayAttr, None), Attr("result_shape", IntArrayAttr, None)),
    traits=PURE, verify=verify_attention,
)


def im2col_linear_bias(op: Operation):
    """The bias row of a `ttir.im2col_linear` (its fourth operand unless that is the residual), or None."""
    count = len(op.operands) - int(bool(op.attributes.get("residual")))
    return op.operands[3] if count > 3 else None


def verify_im2col_linear(op: Operation) -> None:
    table, ids, b = (tensor(v.type).shape for v in op.operands[:3])
    if len(table) != 2 or len(ids) != 3 or ids[2] != 32 or len(b) != 2:
        raise VerifyError(f"im2col_linear takes a table [rows, C], indices [positions, M tile rows, 32] and a weight "
                          f"[K, N], not {_dims(table)}, {_dims(ids)} and {_dims(b)}")
    if ids[0] * table[1] != b[0]:
        raise VerifyError(f"im2col_linear: {ids[0]} positions of {table[1]} channels are not the weight's {b[0]} rows")
    result = tensor(op.result.type).shape
    if len(result) != 2 or result[1] != b[1] or -(-result[0] // 32) != ids[1]:
        raise VerifyError(f"im2col_linear result {_dims(result)} is not [M, {b[1]}] with M in {ids[1]} tile rows")
    if op.attr("residual") and len(op.operands) < 4:
        raise VerifyError("an im2col_linear with residual = true takes the residual as its last operand")
    residual = op.operands[-1] if op.attr("residual") else None
    if residual is not None and not holds_tiles_of(tensor(residual.type).shape, result):
        raise VerifyError(f"residual {_dims(tensor(residual.type).shape)} does not hold the tiles of the result "
                          f"{_dims(result)}")


IM2COL_LINEAR = OpDef(
    "ttir.im2col_linear", "linear(embedding{im2col, pad_negative}(table, indices), b, bias?, residual?) as one device "
    "op: the product's reader looks the im2col rows up itself (the grid pass fuses a convolution's lookup into its "
    "product: passes/im2col_fusion.py); `a_format` is the element type the im2col matrix had (its tiles are packed "
    "in it), the other attributes are the linear's",
    operands=(Operand("table"), Operand("indices"), Operand("b"), Operand("bias", optional=True),
              Operand("residual", optional=True)),
    attributes=(Attr("activation", StrAttr, "none"), Attr("residual", BoolAttr, False),
                Attr("residual_activation", StrAttr, "none"), Attr("a_format", StrAttr, REQUIRED)),
    traits=PURE, verify=verify_im2col_linear,
)

def lookup_eltwise_inputs(op: Operation) -> int:
    """The body inputs of a `ttir.lookup_eltwise` (its operands before the index tables)."""
    return len(op.operands) - len(op.attr("lookups"))


def verify_lookup_eltwise(op: Operation) -> None:
    lookups = [int(i) for i in op.attr("lookups")]
    n = lookup_eltwise_inputs(op)
    if not lookups or len(set(lookups)) != len(lookups) or not all(0 <= i < n for i in lookups):
        raise VerifyError(f"lookup_eltwise: lookups {lookups} are not distinct inputs of its {n}")
    block = op.regions[0].blocks[0] if op.regions and op.regions[0].blocks else None
    if block is None or len(block.args) != n:
        raise VerifyError("the body has one block with one argument per input")
    result = tensor(op.result.type).shape
    for j, i in enumerate(lookups):
        table, ids = tensor(op.operands[i].type).shape, tensor(op.operands[n + j].type).shape
        arg = tensor(block.args[i].type).shape
        if len(table) != 2 or len(ids) != 2 or ids[1] != 32 or arg != (ids[0] * 32, table[1]) or arg != result:
            raise VerifyError(f"lookup_eltwise input {i}: a table [rows, C] and indices [tile rows, 32] looking up "
                              f"the result's {_dims(result)}, not {_dims(table)}, {_dims(ids)} for {_dims(arg)}")
    for i, (arg, value) in enumerate(zip(block.args, op.operands[:n], strict=True)):
        if i not in lookups and tensor(arg.type).shape != tensor(value.type).shape:
            raise VerifyError("body arguments must have the operands' shapes")
    term = block.terminator
    if term is None or term.name != YIELD.name or len(term.operands) != 1 \
            or tensor(term.operands[0].type).shape != result:
        raise VerifyError("the body ends with ttir.yield of one value of the result's shape")


LOOKUP_ELTWISE = OpDef(
    "ttir.lookup_eltwise", "eltwise(inputs) where each input of `lookups` is embedding{pad_negative}(table, indices) "
    "as one device op: the reader looks the rows up itself (the grid pass fuses lookups into the eltwise that alone "
    "reads them, a max pool's positions: passes/lookup_fusion.py); operands: the eltwise's inputs, the table in "
    "place of each looked-up one, then the index tables [tile rows, 32] in the order of `lookups`",
    operands=(Operand("inputs", variadic=True),), attributes=(Attr("lookups", IntArrayAttr, REQUIRED),), regions=1,
    traits=PURE, verify=verify_lookup_eltwise,
)

TTIR = Dialect(
    "ttir", "Tensor-level ops with logical shapes.",
    ops=[CONSTANT, ADD, SUB, MUL, DIV, POW, MAXIMUM, MINIMUM, RELU, SIGMOID, TANH, EXP, LOG, ERF, SQRT, RSQRT,
         NEG, RECIPROCAL, GELU, ABS, *ROUNDING_AND_TRIG, SOFTPLUS, MISH, HARDSWISH, ISINF, EQ, NE, LT, LE, GT, GE,
         LOGICAL_AND, LOGICAL_OR, LOGICAL_XOR, LOGICAL_NOT,
         ISNAN, WHERE, TYPECAST, BROADCAST_OP, MATMUL, GEMM, SOFTMAX, LAYER_NORM, TRANSPOSE, RESHAPE, SLICE, KV_WRITE,
         CONCAT, GATHER, EMBEDDING, REDUCE_SUM, REDUCE_MEAN, REDUCE_MAX, TO_LAYOUT, LINEAR, ELTWISE, YIELD, CONV2D,
         IM2COL, POOL2D, ATTENTION, IM2COL_LINEAR, LOOKUP_ELTWISE],
).register()
