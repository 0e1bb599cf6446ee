"""Booleans and integers on the device: exact arithmetic on 0/1 (and small integer) floats.

The device computes in bf16, whose 8 significant bits hold 0 and 1 exactly and every integer up to
256. So `tilize` carries boolean tensors as 0/1 floats and integer tensors as floats when that is
exact; token ids are the exception: they index a table and stay integers (an int32 row-major buffer
the embedding reader takes its row indices from), never bf16.

First, the ops that only exist for booleans become arithmetic that is exact on 0/1 values (still
on the ONNX types, so every rewrite can be checked by constant folding):

    logical_and(a, b) -> mul(a, b)              logical_or(a, b) -> maximum(a, b)
    logical_xor(a, b) -> ne(a, b)               logical_not(a)   -> eq(a, 0)
    typecast(x -> i1) -> ne(x, 0)               (ONNX Cast: non-zero, NaN included, is true)

Comparisons (eq, ne, lt, le, gt, ge) and isnan stay: the device computes them as a difference and a
sign test, which is exact for bf16 operands (two distinct bf16 values never differ by zero). `where`
stays too, its condition a 0/1 float: the fused elementwise kernel selects each branch without
arithmetic on it (`footprint`'s where form), so an infinite or NaN element of the branch not taken
leaves no trace. `tilize` saturates finite constants into the bf16 range, so float32's lowest,
-3.4028235e38, stays finite instead of rounding to -inf.

Then every boolean and integer value computed in the function becomes f32 (`layout` later makes it
bf16), and typecasts between types that are now the same disappear. What must hold (a UserError
naming the ONNX node otherwise):
- an integer value computed on the device has a known range inside [-256, 256] (from constants and
  booleans through the ops), or is only tested against zero or converted to float: a zero test is
  exact in any format, and a float conversion rounds as any float on the device does;
- an integer constant used on the device is exactly representable in bf16;
- there is no float -> integer conversion (truncation) on the device;
- the indices of an embedding are a graph input (token ids), as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ttc.ir.attributes import DenseAttr, WeightAttr
from ttc.ir.core import RETURN_OP, Function, Module, Operation, OpResult, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir, ttmetal
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.canonicalize import splat_value
from ttc.passes.rewriter import PatternRewriter, RewritePattern, defining_op

F32 = ScalarType("f32")
HOST_COMPUTE = ttmetal.HOST_COMPUTE.name  # an ONNX node the host computes (its values keep their types)
EXACT_INT = 256  # |n| <= 256: every integer in range is exact in bf16
CONSTANT = ttir.CONSTANT.name


def tensor(value: Value) -> TensorType:
    assert isinstance(value.type, TensorType)
    return value.type


def is_bool(value: Value) -> bool:
    return isinstance(value.type, TensorType) and value.type.element_type.name == "i1"


def is_int(value: Value) -> bool:
    """An integer tensor that is not a boolean."""
    t = value.type
    return isinstance(t, TensorType) and t.element_type.is_integer and t.element_type.name != "i1"


def node_name(op: Operation) -> str:
    return ", ".join(op.loc.names()) or str(op.loc)


def scalar(rewriter: PatternRewriter, before: Operation, element_type: ScalarType, number: float) -> Value:
    """A rank-0 splat constant created before `before`."""
    scalar_type = TensorType((), element_type)
    return rewriter.create_before(before, CONSTANT, [], [scalar_type], {"value": DenseAttr(scalar_type, number)}).result


# ----------------------------------------------------------------------------------------------
# Boolean ops as arithmetic


class LowerLogical(RewritePattern):
    """and -> mul, or -> maximum, xor -> ne, not -> eq(a, 0): exact on 0/1."""

    BINARY = {ttir.LOGICAL_AND.name: ttir.MUL.name, ttir.LOGICAL_OR.name: ttir.MAXIMUM.name, ttir.LOGICAL_XOR.name: ttir.NE.name}

    def __init__(self, root: str) -> None:
        self.root = root

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if op.name == ttir.LOGICAL_NOT.name:
            false = scalar(rewriter, op, ScalarType("i1"), False)
            new = rewriter.create_before(op, ttir.EQ.name, [op.operands[0], false], [op.result.type])
        else:
            new = rewriter.create_before(op, self.BINARY[op.name], list(op.operands), [op.result.type])
        rewriter.replace_op(op, [new.result])
        return True


class LowerCastToBool(RewritePattern):
    """typecast(x -> i1) -> ne(x, 0)."""

    root = ttir.TYPECAST.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x = op.operands[0]
        if not is_bool(op.result) or is_bool(x):
            return rewriter.notify_match_failure(op, "not a conversion to i1")
        zero = scalar(rewriter, op, tensor(x).element_type, 0)
        new = rewriter.create_before(op, ttir.NE.name, [x, zero], [op.result.type])
        rewriter.replace_op(op, [new.result])
        return True


def is_zero(value: Value) -> bool:
    number = splat_value(value)
    return number is not None and number == 0


def boolean_patterns() -> list[RewritePattern]:
    return [*(LowerLogical(root) for root in (ttir.LOGICAL_AND.name, ttir.LOGICAL_OR.name, ttir.LOGICAL_XOR.name,
                                              ttir.LOGICAL_NOT.name)),
            LowerCastToBool()]


# ----------------------------------------------------------------------------------------------
# Integer ranges

Range = tuple[float, float] | None

PASS_THROUGH = frozenset({ttir.RESHAPE.name, ttir.TRANSPOSE.name, ttir.SLICE.name, ttir.GATHER.name, ttir.BROADCAST_OP.name,
                          ttir.CONCAT.name, ttir.REDUCE_MAX.name, ttir.TYPECAST.name, ttir.MAXIMUM.name, ttir.MINIMUM.name})


def union(ranges: Iterable[Range]) -> Range:
    ranges = list(ranges)
    if not ranges or any(r is None for r in ranges):
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)  # type: ignore[index]


class IntegerRanges:
    """The interval each integer/boolean value of a function can take, None when unknown."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.cache: dict[int, Range] = {}

    def of(self, value: Value) -> Range:
        key = id(value)
        if key not in self.cache:
            self.cache[key] = self._compute(value)
        return self.cache[key]

    def _compute(self, value: Value) -> Range:
        if is_bool(value):
            return (0, 1)
        op = value.owner if isinstance(value, OpResult) else None
        if op is None:
            return None  # a graph input: any value
        if op.name == CONSTANT:
            array = self.constant_array(op)
            return (float(array.min()), float(array.max())) if array.size else (0, 0)
        if op.name == ttir.TYPECAST.name and not tensor(op.operands[0]).element_type.is_float:
            return self.of(op.operands[0])
        if op.name in PASS_THROUGH - {ttir.TYPECAST.name}:
            data = op.operands if op.name in (ttir.CONCAT.name, ttir.MAXIMUM.name, ttir.MINIMUM.name) else op.operands[:1]
            return union(self.of(v) for v in data)
        operands = [self.of(v) for v in op.operands]
        if any(r is None for r in operands):
            return None
        if op.name in (ttir.ADD.name, ttir.SUB.name, ttir.MUL.name):
            (a0, a1), (b0, b1) = operands  # type: ignore[misc]
            if op.name == ttir.ADD.name:
                return a0 + b0, a1 + b1
            if op.name == ttir.SUB.name:
                return a0 - b1, a1 - b0
            corners = [a0 * b0, a0 * b1, a1 * b0, a1 * b1]
            return min(corners), max(corners)
        if op.name == ttir.NEG.name:
            lo, hi = operands[0]  # type: ignore[misc]
            return -hi, -lo
        if op.name == ttir.ABS.name:
            lo, hi = operands[0]  # type: ignore[misc]
            return (0 if lo <= 0 <= hi else min(abs(lo), abs(hi))), max(abs(lo), abs(hi))
        if op.name == ttir.REDUCE_SUM.name:
            lo, hi = operands[0]  # type: ignore[misc]
            count = math.prod(tensor(op.operands[0]).shape[a] for a in op.attr("axes"))
            return min(lo * count, lo), max(hi * count, hi)
        return None

    def constant_array(self, op: Operation) -> np.ndarray:
        attr = op.attributes["value"]
        return attr.to_array() if isinstance(attr, DenseAttr) else np.asarray(self.module.weights[attr.name])


MOVES = frozenset({ttir.RESHAPE.name, ttir.TRANSPOSE.name, ttir.SLICE.name, ttir.BROADCAST_OP.name, ttir.CONCAT.name,
                   ttir.EMBEDDING.name})  # copies (an embedding: rows of its table, e.g. a movement's row lookup)


COMPARES = frozenset({ttir.EQ.name, ttir.NE.name, ttir.LT.name, ttir.LE.name, ttir.GT.name, ttir.GE.name})


def compared_to_small_constant(user: Operation, index: int, ranges: IntegerRanges | None) -> bool:
    """A comparison with a constant of integers within +-255: exact for an integer of any size, as bf16
    rounding is monotonic, keeps |n| <= 256 exact and takes every larger |n| to at least 256."""
    if user.name not in COMPARES or ranges is None:
        return False
    other = user.operands[1 - index]
    if defining_op(other, CONSTANT) is None:
        return False
    bounds = ranges.of(other)
    return bounds is not None and bounds[0] >= -255 and bounds[1] <= 255


def only_zero_tested(value: Value, ranges: IntegerRanges | None = None) -> bool:
    """Every use stays exact whatever the integer's size: ne/eq against 0 (any comparison with a small
    integer constant, given `ranges`), a cast to float, or a data movement whose result is used that way
    in turn."""
    for user, index in value.uses:
        if user.name in (ttir.NE.name, ttir.EQ.name) and is_zero(user.operands[1 - index]):
            continue
        if compared_to_small_constant(user, index, ranges):
            continue
        if user.name == ttir.TYPECAST.name and tensor(user.result).element_type.is_float:
            continue
        if user.name in MOVES and (index == 0 or user.name == ttir.CONCAT.name) and \
                all(only_zero_tested(result, ranges) for result in user.results):
            continue
        if user.name == ttir.TO_LAYOUT.name and user.result.type.encoding is not None and \
                only_zero_tested(user.result, ranges):  # untilized into rows on the device
            continue
        if user.name in (RETURN_OP, ttir.TO_LAYOUT.name, HOST_COMPUTE):
            continue
        return False
    return True


def exact_in_bf16(array: np.ndarray) -> bool:
    import ml_dtypes

    values = np.asarray(array, dtype=np.float64)
    return bool((values.astype(ml_dtypes.bfloat16).astype(np.float64) == values).all())


# ----------------------------------------------------------------------------------------------
# Checks and retyping


def compile_time_integers(func: Function) -> set[int]:
    """Integer values that keep their type: embedding indices (graph inputs, checked, or the constant row
    tables of row gathers: the device reads them as int32) and the constant indices of gathers
    (compile-time element maps)."""
    indices: set[int] = set()
    for op in func.body.ops:
        if op.name == ttir.GATHER.name and defining_op(op.operands[1], CONSTANT) is not None:
            indices.add(id(op.operands[1]))
        if op.name != ttir.EMBEDDING.name:
            continue
        ids = op.operands[1]
        if isinstance(ids, OpResult) and ids.op.name not in (CONSTANT, HOST_COMPUTE):
            raise UserError(f"node '{node_name(op)}': the table lookup's indices are computed by "
                            f"'{ids.op.name}' ({node_name(ids.op)}); ttc looks rows up by indices that are a "
                            "graph input (token ids), so they reach the device exactly as int32")
        indices.add(id(ids))
    return indices


def check_integers(module: Module, func: Function, skip: set[int]) -> None:
    """UserError for the first integer value the device could not carry exactly (see the module doc)."""
    ranges = IntegerRanges(module)
    for op in func.body.ops:
        for value in op.results:
            if not is_int(value) or id(value) in skip or not value.uses:
                continue
            if op.name == HOST_COMPUTE:  # exact on the host; on the device like a graph input
                check_exact(value, ranges, f"node '{node_name(op)}'", True)
                continue
            if op.name == CONSTANT:
                if not exact_in_bf16(ranges.constant_array(op)):
                    raise UserError(f"node '{node_name(op)}': the integer constant {value.type} holds values "
                                    "that bf16 cannot represent exactly, and the device computes in bf16")
                continue
            if op.name == ttir.TYPECAST.name and tensor(op.operands[0]).element_type.is_float:
                raise UserError(f"node '{node_name(op)}': a float -> integer conversion (truncation) has no "
                                "device kernel")
            copies = op.name in MOVES or op.name in (ttir.TYPECAST.name, ttir.TO_LAYOUT.name)  # exact whatever the values
            check_exact(value, ranges, f"node '{node_name(op)}'", copies)
    for index, arg in enumerate(func.args):
        if is_int(arg) and id(arg) not in skip:
            check_exact(arg, ranges, f"graph input '{func.arg_attrs(index).get('ttir.name', index)}'", True)


def check_exact(value: Value, ranges: IntegerRanges, where: str, copied: bool) -> None:
    """A computed integer must be in the exact range; a copied one (an input, a data movement) may be
    outside it when it is only tested against zero."""
    bounds = ranges.of(value)
    if bounds is not None and bounds[0] >= -EXACT_INT and bounds[1] <= EXACT_INT:
        return
    if copied and only_zero_tested(value, ranges):
        return
    what = "of unknown range" if bounds is None else f"in [{bounds[0]:g}, {bounds[1]:g}]"
    how = "is used on the device" if copied else "would be computed on the device"
    raise UserError(f"{where}: the integer tensor {value.type} {what} {how}, which carries integers as bf16, "
                    f"exact only within +-{EXACT_INT}; of larger or unknown integers only zero tests (!= 0), "
                    "float conversions and data movement are exact")


def retype(module: Module, func: Function, skip: set[int], rewriter: PatternRewriter) -> None:
    """Booleans and integers computed in the body become f32; typecasts that became identities go."""
    for op in list(func.body.ops):
        if op.name in (RETURN_OP, HOST_COMPUTE) or (op.name == ttir.TO_LAYOUT.name and op.result.type.encoding is None):
            continue  # (a to_layout with an encoding: an untilize on the device, made by `movement`)
        changed = False
        for result in op.results:
            t = result.type
            if isinstance(t, TensorType) and t.element_type.is_integer and id(result) not in skip and t.num_elements:
                result.type = t.with_element_type(F32)
                changed = True
        if changed and op.name == CONSTANT:
            retype_constant(module, op)
        if changed:
            rewriter.notify_op_modified(op)
    for op in list(func.body.ops):
        if op.name != ttir.TYPECAST.name:
            continue
        source, result = tensor(op.operands[0]), tensor(op.result)
        if source.element_type == result.element_type:
            rewriter.replace_op(op, [op.operands[0]])


def retype_constant(module: Module, op: Operation) -> None:
    attr = op.attributes["value"]
    if isinstance(attr, DenseAttr):
        op.attributes["value"] = DenseAttr(tensor(op.result), attr.values.astype(np.float32))
    elif isinstance(attr, WeightAttr):
        data = np.asarray(module.weights[attr.name], dtype=np.float32)
        op.attributes["value"] = WeightAttr(module.add_weight(f"{attr.name}.f32", data))


def legalize(module: Module, func: Function, rewriter: PatternRewriter) -> None:
    """Check and retype the integers and booleans of `func` (after `boolean_patterns` ran)."""
    skip = compile_time_integers(func)
    check_integers(module, func, skip)
    retype(module, func, skip, rewriter)
