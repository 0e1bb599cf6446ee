"""Proven value ranges of device tensors: what `layout` needs to hold a value in Float16 without overflow.

`value_ranges(func, weights)` walks a function in program order and gives each float value it can bound a
`Range`: an interval [lo, hi] that holds every element, whatever the inputs, and where known a bound on
the Euclidean norm of each row (the last axis), which bounds a matmul's outputs far more tightly than the
elements do. A value missing from the result is unbounded (a graph input, anything computed from one
without a normalisation in between, an op this analysis does not know). Every rule is a theorem about
the exact-arithmetic value; the device's roundings are allowed for by widening each bound: ROUNDING_SLACK
per op, one bf16 rounding per 16 elements of a matmul's K, NORM_SLACK for a normalisation's statistic.

Sources of bounds: constants (their data), embedding lookups (the table), softmax ([0, 1], each row sums
to 1), layer norm (a normalised row has Euclidean norm sqrt(N), so |scale * x_hat + bias| <= sqrt(N)
max|scale| + max|bias|), and the RMS-norm idiom of a fused elementwise body, x * 1 / sqrt(c * sum(x * x)
+ eps) with the sum over the last axis of the same x (each |x_i| <= sqrt(sum x^2), so the result is at most
1 / sqrt(c) in magnitude and in row norm). Then they propagate: movement ops keep them; a matmul with a
constant right operand W gives |y_j| <= ||x_row|| ||W_:j|| (Cauchy-Schwarz; also bounds every partial sum
of its accumulation) and ||y_row|| <= ||x_row|| ||W||_2 (the spectral norm, bounded by min(Frobenius,
sqrt(||W||_1 ||W||_inf))); a matmul whose left operand is a softmax along K is a convex combination of the
right operand's rows; two bounded activations give |y| <= K max|a| max|b|, or ||a_row|| ||b_col|| where
both are known (attention scores: a reshape splitting a matmul's columns into heads bounds each head's norm
by the spectral norm of its block of W, and a transpose turns row norms into column norms); fused
elementwise bodies go by interval arithmetic; reductions scale by the reduced size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ttc.ir.attributes import DenseAttr, WeightAttr
from ttc.ir.core import Function, Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.types import TensorType

MOVEMENT = frozenset({ttir.TRANSPOSE.name, ttir.RESHAPE.name, ttir.SLICE.name, ttir.BROADCAST_OP.name,
                      ttir.TYPECAST.name})
MATMULS = frozenset({ttir.LINEAR.name, ttir.MATMUL.name})


@dataclass(frozen=True)
class Range:
    """Every element lies in [lo, hi]; each row (last axis) has Euclidean norm at most `row_norm` (None: only
    what the interval gives); `stochastic`: the elements are >= 0 and each row sums to at most 1."""

    lo: float
    hi: float
    row_norm: float | None = None
    stochastic: bool = False
    col_norm: float | None = None  # a bound on each column's (axis -2) Euclidean norm

    @property
    def magnitude(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    def norm_of_rows(self, width: int) -> float:
        """A bound on each row's Euclidean norm for rows of `width` elements."""
        bound = math.sqrt(width) * self.magnitude
        return bound if self.row_norm is None else min(bound, self.row_norm)


# The device's value of an op differs from the exact value of its (device) operands by a few roundings, each
# at most a relative 2^-8 (bf16): every bound is widened by this factor per op (matmuls by one rounding per
# 16 elements of K), so that the ranges hold the device's values, not only the exact ones.
ROUNDING_SLACK = (1 + 2.0 ** -8) ** 4
# A normalisation divides by a statistic the device computes in bf16 (squares, a grouped sum, rsqrt): its
# bound sqrt(N) may be exceeded by the relative error of that statistic, allowed for generously here.
NORM_SLACK = (1 + 2.0 ** -8) ** 32


def _widened(r: Range, factor: float) -> Range:
    return Range(r.lo * factor if r.lo < 0 else r.lo / factor, r.hi * factor if r.hi > 0 else r.hi / factor,
                 None if r.row_norm is None else r.row_norm * factor, r.stochastic,
                 None if r.col_norm is None else r.col_norm * factor)


def _last_dim(value: Value) -> int:
    t = value.type
    return t.shape[-1] if isinstance(t, TensorType) and t.shape else 1


GRAM_LIMIT = 256  # blocks up to this many columns get their exact spectral norm (an eigenvalue of W^T W)


def _spectral_norms(blocks: np.ndarray) -> np.ndarray:
    """The spectral norms of blocks [..., K, n] with n <= GRAM_LIMIT, from the largest eigenvalue of each Gram
    matrix in float64 (relative error ~1e-13; rounded up by 1e-9)."""
    blocks = blocks.astype(np.float64)
    largest = np.linalg.eigvalsh(np.swapaxes(blocks, -1, -2) @ blocks)[..., -1]
    return np.sqrt(np.maximum(largest, 0.0)) * (1 + 1e-9)


def _weight_stats(w: np.ndarray) -> tuple[float, float, float]:
    """(the largest column Euclidean norm, the largest column absolute sum, an upper bound on the spectral norm:
    min(Frobenius, sqrt(largest column sum * largest row sum))) over weight matrices [B, K, N]. float32 sums
    of non-negative terms in any order are within (terms - 1) 2^-24 of the exact sum, relatively (each square
    rounded by 2^-24 more; the Frobenius norm adds the column sums in float64): the results are raised by that."""
    w = w.astype(np.float32, copy=False)
    squares = np.square(w)
    magnitudes = np.abs(w)
    columns = squares.sum(axis=-2)  # [B, N]
    column_sums = magnitudes.sum(axis=-2)  # [B, N]
    row_sums = magnitudes.sum(axis=-1)  # [B, K]
    slack = 1 + (max(w.shape[-1], w.shape[-2]) + 1) * 2.0 ** -23  # K terms per column sum, N per row sum
    frobenius = np.sqrt(columns.astype(np.float64).sum(axis=-1))
    mixed = np.sqrt(column_sums.astype(np.float64).max(axis=-1) * row_sums.max(axis=-1))
    stats = (math.sqrt(float(columns.max()) * slack), float(column_sums.max()) * slack,
             float(np.minimum(frobenius, mixed).max()) * math.sqrt(slack) * slack)
    return stats if all(math.isfinite(x) for x in stats) else (math.inf, math.inf, math.inf)  # an inf or NaN


# Unary functions by their interval images (monotone ones map the ends; the others have fixed ranges).
_MONOTONE = {"relu": lambda x: max(x, 0.0), "exp": lambda x: math.exp(min(x, 700.0)),
             "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-max(min(x, 700.0), -700.0))), "tanh": math.tanh,
             "erf": math.erf, "neg": None}
GELU_MIN, SILU_MIN = -0.17, -0.28  # the minima of x Phi(x) (-0.170) and x sigmoid(x) (-0.278), rounded out
HARDSWISH_MIN = -0.375  # x relu6(x + 3) / 6 at x = -1.5


def unary_range(fn: str, x: Range) -> Range | None:
    """The image of x under an elementwise function named as the IR (`ttir.relu`) or an epilogue names it."""
    fn = fn.removeprefix("ttir.")
    if fn == "neg":
        return Range(-x.hi, -x.lo, x.row_norm)
    if fn in _MONOTONE:
        image = _MONOTONE[fn]
        return Range(image(x.lo), image(x.hi), x.row_norm if fn == "relu" else None)
    if fn == "abs":
        return Range(0.0 if x.lo <= 0 <= x.hi else min(abs(x.lo), abs(x.hi)), x.magnitude, x.row_norm)
    if fn in ("gelu", "gelu_tanh"):
        return Range(GELU_MIN, max(x.hi, 0.0), x.row_norm if x.lo >= 0 else None)
    if fn == "silu":
        return Range(SILU_MIN, max(x.hi, 0.0))
    if fn == "hardswish":  # at most max(x, 0) (relu6(x + 3) / 6 <= 1 and is 0 for x <= -3)
        return Range(HARDSWISH_MIN, max(x.hi, 0.0))
    if fn == "sqrt" and x.lo >= 0:
        return Range(math.sqrt(x.lo), math.sqrt(x.hi))
    if fn in ("reciprocal", "rsqrt") and x.lo > 0:
        root = math.sqrt if fn == "rsqrt" else (lambda v: v)
        return Range(1.0 / root(x.hi), 1.0 / root(x.lo))
    if fn == "reciprocal" and x.hi < 0:
        return Range(1.0 / x.hi, 1.0 / x.lo)
    if fn in ("floor", "ceil", "round", "trunc"):
        return Range(math.floor(x.lo), math.ceil(x.hi))
    if fn in ("sin", "cos"):
        return Range(-1.0, 1.0)
    return None


def _along(r: Range | None, value: Value, width: int) -> Range | None:
    """r for an operand of an op whose rows are `width` long: an operand broadcast along the last axis (a
    column, a scalar) repeats its elements along the row, so its own row norm says nothing there."""
    if r is None or (r.row_norm is None and r.col_norm is None) or _last_dim(value) == width:
        return r
    return Range(r.lo, r.hi)


def _product(a: Range, b: Range) -> Range:
    ends = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
    row_norm = None
    if a.row_norm is not None:
        row_norm = a.row_norm * b.magnitude
    if b.row_norm is not None:
        row_norm = min(row_norm or math.inf, b.row_norm * a.magnitude)
    return Range(min(ends), max(ends), row_norm)


def _sum(a: Range, b: Range, width: int, negate: bool = False) -> Range:
    lo, hi = (a.lo - b.hi, a.hi - b.lo) if negate else (a.lo + b.lo, a.hi + b.hi)
    return Range(lo, hi, a.norm_of_rows(width) + b.norm_of_rows(width))


class _Analysis:
    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = weights
        self.ranges: dict[Value, Range] = {}
        self.arrays: dict[Value, np.ndarray] = {}  # constant values' data
        self.peaks: dict[Value, float] = {}  # the largest magnitude inside the op computing a value
        # matmul results with a constant right operand: (bound on ||x_row||, W as [batch, K, N], bias range)
        self.linear_info: dict[Value, tuple[float, np.ndarray, Range | None]] = {}

    def get(self, value: Value) -> Range | None:
        return self.ranges.get(value)

    def constant(self, op: Operation) -> None:
        attr = op.attr("value")
        if isinstance(attr, WeightAttr):
            data = self.weights.get(attr.name)
        elif isinstance(attr, DenseAttr):
            data = attr.to_array()
        else:
            return
        if data is None:
            return
        array = np.asarray(data)
        if array.size == 0 or array.dtype.kind in "bcOSU":
            return
        if array.dtype.kind not in "fiu":  # bfloat16 and other extension types
            array = array.astype(np.float32)
        self.arrays[op.result] = array
        if op.result.uses and all(user.name in MATMULS and index == 1 for user, index in op.result.uses):
            return  # a matmul weight: only its norms matter (`_weight_stats`), not its interval
        lo, hi = float(array.min()), float(array.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # an inf or NaN constant: unbounded
            del self.arrays[op.result]
            return
        self.ranges[op.result] = Range(lo, hi)

    def run(self, func: Function) -> dict[Value, Range]:
        for op in func.body.ops:
            if not op.results:
                continue
            try:
                found = self.transfer(op)
            except (ValueError, ArithmeticError, TypeError, AttributeError, IndexError, KeyError):
                # an op of a form the rules do not expect (a 0-d weight, an empty axis, an odd attribute): unbounded
                found = None
            if found is not None and op.name not in (ttir.CONSTANT.name, ttir.SOFTMAX.name):
                found = _widened(found, ROUNDING_SLACK)
            if found is not None and math.isfinite(found.lo) and math.isfinite(found.hi):
                self.ranges[op.result] = found
                self.peaks[op.result] = max(self.peaks.get(op.result, 0.0), found.magnitude)
        return self.ranges

    def transfer(self, op: Operation) -> Range | None:
        name = op.name
        if name == ttir.CONSTANT.name:
            self.constant(op)
            return self.ranges.get(op.result)
        inputs = [self.get(v) for v in op.operands]
        if name == ttir.TO_LAYOUT.name or name in MOVEMENT:
            source = inputs[0] if inputs else None
            return None if source is None else self.movement(op, source)
        if name == ttir.CONCAT.name:
            if any(r is None for r in inputs):
                return None
            return Range(min(r.lo for r in inputs), max(r.hi for r in inputs))
        if name == ttir.EMBEDDING.name:
            table = inputs[0]
            return None if table is None else Range(table.lo, table.hi)
        if name == ttir.SOFTMAX.name:
            last = len(op.operands[0].type.shape) - 1
            # x (read into Dst) and x - max(x)
            x = inputs[0]
            self.peaks[op.result] = math.inf if x is None else max(x.magnitude, x.hi - x.lo)
            return Range(0.0, 1.0, 1.0, stochastic=op.attr("axis") % (last + 1) == last)
        if name == ttir.LAYER_NORM.name:
            return self.layer_norm(op, inputs)
        if name in MATMULS:
            return self.matmul(op, inputs)
        if name == ttir.ELTWISE.name:
            return self.eltwise(op, inputs)
        if name in (ttir.REDUCE_SUM.name, ttir.REDUCE_MEAN.name, ttir.REDUCE_MAX.name):
            return self.reduce(op, inputs[0])
        return None

    def movement(self, op: Operation, source: Range) -> Range:
        """Data movement keeps the elements; row norms survive where rows stay rows (a transpose keeping the
        last axis) or become columns (the last axis moved to axis -2), and a reshape splitting the last axis
        into heads keeps each head's norm below the row's (for a matmul's result, the bound of its own
        column block: `head_norm`)."""
        name = op.name
        if name in (ttir.TYPECAST.name, ttir.TO_LAYOUT.name):
            return source
        if name == ttir.TRANSPOSE.name:
            perm = [p % len(op.attr("perm")) for p in op.attr("perm")]
            last = len(perm) - 1
            if perm[-1] == last:
                return Range(source.lo, source.hi, source.row_norm, source.stochastic)
            if len(perm) > 1 and perm[-2] == last:
                return Range(source.lo, source.hi, col_norm=source.row_norm)
            return Range(source.lo, source.hi)
        if name == ttir.RESHAPE.name:
            old, new = op.operands[0].type.shape, op.result.type.shape
            if old and new and new[-1] and old[-1] % new[-1] == 0 and len(new) > len(old) \
                    and list(new[:len(old) - 1]) == list(old[:-1]) and math.prod(new[len(old) - 1:]) == old[-1]:
                head = self.head_norm(op.operands[0], new[-1])
                row_norm = source.row_norm if head is None else min(head, source.row_norm or math.inf)
                return Range(source.lo, source.hi, row_norm)
        return Range(source.lo, source.hi)

    def head_norm(self, value: Value, width: int) -> float | None:
        """For a matmul result y = x W (+ b) with a constant W: a bound on the Euclidean norm of each block of
        `width` consecutive columns of a row, ||x_row|| max over blocks of ||W_block||_2 (+ the block of b)."""
        info = self.linear_info.get(value)
        if info is None:
            return None
        x_norm, w, bias = info
        if w.shape[-1] % width or width > GRAM_LIMIT:
            return None
        blocks = np.moveaxis(w.reshape(w.shape[0], w.shape[1], w.shape[2] // width, width), 2, 1)  # [B, H, K, n]
        worst = float(_spectral_norms(blocks).max())
        bias_norm = 0.0 if bias is None else math.sqrt(width) * bias.magnitude
        return (x_norm * worst + bias_norm) * (1 + 2.0 ** -8) ** (w.shape[1] // 16 + 1) * ROUNDING_SLACK

    def layer_norm(self, op: Operation, inputs: list[Range | None]) -> Range | None:
        shape = op.operands[0].type.shape
        axis = op.attr("axis") % len(shape)
        size = math.prod(shape[axis:])
        scale = inputs[1] if len(inputs) > 1 else Range(1.0, 1.0)
        bias = inputs[2] if len(inputs) > 2 else Range(0.0, 0.0)
        if scale is None or bias is None:
            return None
        norm = math.sqrt(size) * scale.magnitude * NORM_SLACK
        row_norm = norm + math.sqrt(_last_dim(op.result)) * bias.magnitude
        return Range(-norm + bias.lo, norm + bias.hi, row_norm)

    def matmul(self, op: Operation, inputs: list[Range | None]) -> Range | None:
        a, b = inputs[0], inputs[1]
        residual = ttir.linear_residual(op) if op.name == ttir.LINEAR.name else None
        has_bias = len(op.operands) - (residual is not None) > 2
        bias_range = inputs[2] if has_bias else None
        weight = self.arrays.get(op.operands[1])
        if a is None or (b is None and weight is None):
            return None
        k = _last_dim(op.operands[0])
        transpose_b = op.name == ttir.LINEAR.name and bool(op.attr("transpose_b"))
        if a.stochastic and b is not None:  # rows of a are convex weights (<= 1 in sum): y is within b's hull and 0
            out = Range(min(b.lo, 0.0), max(b.hi, 0.0))
        elif weight is not None and weight.ndim >= 2:
            w = np.swapaxes(weight, -1, -2) if transpose_b else weight  # [..., K, N]
            w = w.reshape(-1, *w.shape[-2:])
            x_norm = a.norm_of_rows(k)
            column, absolute, spectral = _weight_stats(w)
            bound = min(x_norm * column, a.magnitude * absolute)
            row_norm = x_norm * spectral
            out = Range(-bound, bound, row_norm)
            if residual is None:  # (y = x W + b: head_norm's bound)
                self.linear_info[op.result] = (x_norm, w, bias_range)
        elif b is None:
            return None
        else:
            bound = k * a.magnitude * b.magnitude
            contracted = b.row_norm if transpose_b else b.col_norm  # the norm of b along K
            if a.row_norm is not None and contracted is not None:  # Cauchy-Schwarz per output element
                bound = min(bound, a.row_norm * contracted)
            out = Range(-bound, bound)
        if has_bias:
            if bias_range is None:
                return None
            out = _sum(out, bias_range, _last_dim(op.result))
        # every Dst rounding of the accumulation (one per 16 elements of K) may grow a partial sum by 2^-8
        out = _widened(out, (1 + 2.0 ** -8) ** (k // 16 + 1))
        self.peaks[op.result] = out.magnitude
        activation = op.attr("activation") if op.name == ttir.LINEAR.name else "none"
        out = out if activation == "none" else unary_range(activation, out)
        if residual is None or out is None:
            return out
        if inputs[-1] is None:  # the fused residual add, then its activation
            return None
        out = _sum(out, inputs[-1], _last_dim(op.result))
        self.peaks[op.result] = max(self.peaks[op.result], out.magnitude)
        after = op.attr("residual_activation")
        return out if after == "none" else unary_range(after, out)

    def reduce(self, op: Operation, x: Range | None) -> Range | None:
        if x is None:
            return None
        if op.name != ttir.REDUCE_SUM.name:
            return Range(x.lo, x.hi)
        shape = op.operands[0].type.shape
        count = math.prod(shape[a % len(shape)] for a in op.attr("axes"))
        return Range(min(count * x.lo, x.lo), max(count * x.hi, x.hi))

    def eltwise(self, op: Operation, inputs: list[Range | None]) -> Range | None:
        block = op.regions[0].block
        env: dict[Value, Range | None] = dict(zip(block.args, inputs, strict=True))
        sources = dict(zip(block.args, op.operands, strict=True))  # body argument -> the value it reads
        width = _last_dim(op.result)
        # every operand is read into Dst: an unbounded one makes the program's peak unbounded
        peak = max((math.inf if r is None else r.magnitude for r in inputs), default=0.0)
        for inner in block.ops:
            if inner.name == ttir.YIELD.name:
                self.peaks[op.result] = peak
                return env.get(inner.operands[0])
            if inner.name == ttir.CONSTANT.name:
                self.constant(inner)
                env[inner.result] = self.ranges.get(inner.result)
                continue
            args = [_along(env.get(v), v, _last_dim(inner.result)) for v in inner.operands]
            normalised = self.rms_idiom(inner, sources)
            if normalised is not None:
                env[inner.result] = normalised
            elif any(r is None for r in args):
                env[inner.result] = None
            else:
                env[inner.result] = self.body_op(inner, args, width)
            peak = max(peak, math.inf if env[inner.result] is None else env[inner.result].magnitude)
        return None

    def body_op(self, op: Operation, args: list[Range], width: int) -> Range | None:
        name = op.name
        if len(args) == 1:
            return unary_range(name, args[0])
        a, b = args[0], args[1] if len(args) > 1 else None
        if name == ttir.ADD.name:
            return _sum(a, b, width)
        if name == ttir.SUB.name:
            return _sum(a, b, width, negate=True)
        if name == ttir.MUL.name and op.operands[0] is op.operands[1]:  # a square
            return Range(0.0 if a.lo <= 0 <= a.hi else min(a.lo * a.lo, a.hi * a.hi), a.magnitude ** 2)
        if name == ttir.MUL.name:
            return _product(a, b)
        if name == ttir.DIV.name and (b.lo > 0 or b.hi < 0):
            inverse = unary_range("reciprocal", b)
            return None if inverse is None else _product(a, inverse)
        if name == ttir.MAXIMUM.name:
            return Range(max(a.lo, b.lo), max(a.hi, b.hi))
        if name == ttir.MINIMUM.name:
            return Range(min(a.lo, b.lo), min(a.hi, b.hi))
        if name == ttir.WHERE.name and len(args) == 3:
            return Range(min(args[1].lo, args[2].lo), max(args[1].hi, args[2].hi))
        return None

    def rms_idiom(self, op: Operation, sources: dict[Value, Value]) -> Range | None:
        """x * r where r = 1 / sqrt(c * s + eps) (reciprocal of sqrt, or rsqrt), eps >= 0, c > 0, and s the sum
        over the last axis (keepdims) of x * x with x the same value: |x_i| <= 1 / sqrt(c) and so is the
        row norm."""
        if op.name != ttir.MUL.name:
            return None
        for x, r in (op.operands, op.operands[::-1]):
            c = self._inverse_root_of_sum_of_squares(r, x, sources)
            if c is not None and c > 0:
                bound = NORM_SLACK / math.sqrt(c)
                return Range(-bound, bound, bound)
        return None

    def _inverse_root_of_sum_of_squares(self, r: Value, x: Value, sources: dict[Value, Value]) -> float | None:
        op = r.owner
        if not isinstance(op, Operation):
            return None
        if op.name == ttir.RSQRT.name:
            inner = op.operands[0]
        elif op.name == ttir.RECIPROCAL.name and isinstance(op.operands[0].owner, Operation) \
                and op.operands[0].owner.name == ttir.SQRT.name:
            inner = op.operands[0].owner.operands[0]
        else:
            return None
        scale, eps = 1.0, 0.0
        producer = inner.owner
        if isinstance(producer, Operation) and producer.name == ttir.ADD.name:  # + eps
            terms = list(producer.operands)
            constants = [t for t in terms if self._scalar(t) is not None]
            if len(constants) != 1:
                return None
            eps = self._scalar(constants[0])
            inner = next(t for t in terms if t is not constants[0])
            producer = inner.owner
        if eps < 0:
            return None
        if isinstance(producer, Operation) and producer.name == ttir.MUL.name:  # * c
            terms = list(producer.operands)
            constants = [t for t in terms if self._scalar(t) is not None]
            if len(constants) != 1:
                return None
            scale = self._scalar(constants[0])
            inner = next(t for t in terms if t is not constants[0])
        source = sources.get(inner)
        x_source = sources.get(x)
        if source is None or x_source is None:
            return None
        reduce = source.owner
        if not isinstance(reduce, Operation) or reduce.name not in (ttir.REDUCE_SUM.name, ttir.REDUCE_MEAN.name):
            return None
        shape = reduce.operands[0].type.shape
        if [a % len(shape) for a in reduce.attr("axes")] != [len(shape) - 1] or not reduce.attr("keepdims"):
            return None
        if reduce.name == ttir.REDUCE_MEAN.name:
            scale /= shape[-1]
        return scale if self._is_square_of(reduce.operands[0], x_source) else None

    def _scalar(self, value: Value) -> float | None:
        array = self.arrays.get(value)
        if array is None and isinstance(value.owner, Operation) and value.owner.name == ttir.CONSTANT.name:
            self.constant(value.owner)
            array = self.arrays.get(value)
        return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None

    @staticmethod
    def _is_square_of(value: Value, x: Value) -> bool:
        """`value` is x * x, as a fused body (mul of one argument by itself, or pow 2) reading x."""
        op = value.owner
        if not isinstance(op, Operation) or op.name != ttir.ELTWISE.name or list(op.operands) != [x]:
            return False
        body = [o for o in op.regions[0].block.ops if o.name != ttir.YIELD.name]
        arg = op.regions[0].block.args[0]
        return len(body) == 1 and body[0].name == ttir.MUL.name and list(body[0].operands) == [arg, arg]


def value_ranges(func: Function, weights: Mapping[str, np.ndarray]) -> tuple[dict[Value, Range], dict[Value, float]]:
    """(the proven `Range` of every value of `func` this analysis can bound, and for each the largest magnitude
    any step of the op computing it reaches: its operands, a fused body's intermediates, a matmul's partial sums
    and pre-activation values, a softmax's x - max). `weights`: the module's weight data."""
    analysis = _Analysis(weights)
    ranges = analysis.run(func)
    return ranges, {value: analysis.peaks[value] for value in ranges if value in analysis.peaks}
