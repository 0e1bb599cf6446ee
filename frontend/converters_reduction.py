"""Reductions, the softmax family, scans and losses composed of device ops: LogSoftmax
(`x - max - log(sum(exp(x - max)))`), ReduceL1/L2/LogSum/..., ReduceProd, CumSum and CumProd (products
with triangular constants), Hardmax, NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _axis, _tensor, constant_ints, converter
from ttc.frontend.converters_emitter import I1, Emitter, _concat_copies, _float_input, _slice_axis
from ttc.ir import ScalarType

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


# ----------------------------------------------------------------------------------------------
# Softmax family and reductions


@converter("LogSoftmax", since=13)
def log_softmax(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    return _log_softmax(e, x, axis)


def _log_softmax(e: Emitter, x: Value, axis: int) -> Value:
    """(x - max) - log(sum(exp(x - max))): the shift once, so large inputs do not cancel in bf16."""
    shifted = e.sub(x, e.reduce("max", x, [axis], True))
    return e.sub(shifted, e.unary("log", e.reduce("sum", e.unary("exp", shifted), [axis], True)))


def _reduce_axes(ctx: NodeContext, axes_input: bool) -> tuple[list[int] | None, bool]:
    """(sorted axes, keepdims); axes None when the op is the identity (noop_with_empty_axes)."""
    x = ctx.input(0)
    rank = _tensor(x).rank
    axes = constant_ints(ctx, 1, "axes") if axes_input else ctx.attr("axes")
    if not axes:
        if ctx.attr("noop_with_empty_axes"):
            return None, bool(ctx.attr("keepdims"))
        axes = list(range(rank))
    return sorted({_axis(ctx, a, rank) for a in axes}), bool(ctx.attr("keepdims"))


def _reduction(kind: str, axes_input: bool):
    def convert(ctx: NodeContext) -> Value:
        e = Emitter(ctx)
        if kind == "min" and _tensor(ctx.input(0)).element_type == I1:  # all(): the minimum of 0/1 floats
            as_float = e.cast(ctx.input(0), ScalarType("f32"))
            axes, keepdims = _reduce_axes(ctx, axes_input)
            if axes is None:
                return ctx.input(0)
            smallest = e.unary("neg", e.reduce("max", e.unary("neg", as_float), axes, keepdims))
            return e.cast(smallest, I1)
        x = _float_input(ctx)
        axes, keepdims = _reduce_axes(ctx, axes_input)
        if axes is None:
            identity = {"l1": lambda: e.unary("abs", x), "l2": lambda: e.unary("abs", x),
                        "sum_square": lambda: e.mul(x, x), "log_sum": lambda: e.unary("log", x),
                        "log_sum_exp": lambda: x, "min": lambda: x}
            return identity[kind]()
        if kind == "l1":
            return e.reduce("sum", e.unary("abs", x), axes, keepdims)
        if kind == "l2":
            return e.unary("sqrt", e.reduce("sum", e.mul(x, x), axes, keepdims))
        if kind == "sum_square":
            return e.reduce("sum", e.mul(x, x), axes, keepdims)
        if kind == "log_sum":
            return e.unary("log", e.reduce("sum", x, axes, keepdims))
        if kind == "log_sum_exp":
            return e.log_sum_exp(x, axes, keepdims)
        assert kind == "min"
        return e.unary("neg", e.reduce("max", e.unary("neg", x), axes, keepdims))

    return convert


for _op_type, _kind in (("ReduceL1", "l1"), ("ReduceL2", "l2"), ("ReduceSumSquare", "sum_square"),
                        ("ReduceLogSum", "log_sum"), ("ReduceLogSumExp", "log_sum_exp"), ("ReduceMin", "min")):
    converter(_op_type, since=13)(_reduction(_kind, axes_input=False))
    converter(_op_type, since=18)(_reduction(_kind, axes_input=True))


# ----------------------------------------------------------------------------------------------
# Losses: class labels select by comparison with the class indices (exact for labels of any size)


def _nll(ctx: NodeContext, e: Emitter, log_probs: Value, target: Value, weight: Value | None) -> Value:
    """NegativeLogLikelihoodLoss of log-probabilities [N, C, d...] and labels [N, d...]: the label's
    column picked by a one-hot (labels == class index), weighted, ignore_index weighted 0, reduced."""
    shape = _tensor(log_probs).shape
    classes = shape[1]
    if not _tensor(target).element_type.is_integer:
        raise ctx.error("the target must hold integer class labels")
    ignore = ctx.attr("ignore_index")
    if abs(ignore or 0) > 255 or classes > 256:
        raise ctx.error("class indices and ignore_index must lie within +-255 (labels compare exactly in bf16)")
    element = _tensor(log_probs).element_type
    target = e.cast(target, element)  # rounds large labels, but never onto a class index or ignore_index
    labels = e.reshape(target, (shape[0], 1, *shape[2:]))
    index_shape = (1, classes, *([1] * (len(shape) - 2)))
    onehot = e.cast(e.compare("eq", labels, e.const(np.arange(classes).reshape(index_shape), target)), element)
    picked = e.reduce("sum", e.mul(log_probs, onehot), [1], False)
    if weight is not None:
        per_class = e.reshape(weight, index_shape)
        sample_weight = e.reduce("sum", e.mul(onehot, per_class), [1], False)
    else:
        sample_weight = e.reduce("sum", onehot, [1], False)
    if ignore is not None:
        valid = e.cast(e.compare("ne", target, e.const(ignore, target)), _tensor(log_probs).element_type)
        sample_weight = e.mul(sample_weight, valid)
    loss = e.unary("neg", e.mul(picked, sample_weight))
    reduction = ctx.attr("reduction") or "mean"
    if reduction == "none":
        return loss
    every = list(range(_tensor(loss).rank))
    total = e.reduce("sum", loss, every, False)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ctx.error(f"reduction '{reduction}' is not none, sum or mean")
    return e.div(total, e.reduce("sum", sample_weight, every, False))


@converter("NegativeLogLikelihoodLoss", since=13)
def nll_loss(ctx: NodeContext) -> Value:
    e = Emitter(ctx)
    return _nll(ctx, e, _float_input(ctx), ctx.input(1), ctx.input(2) if ctx.has_input(2) else None)


@converter("SoftmaxCrossEntropyLoss", since=13)
def softmax_cross_entropy(ctx: NodeContext) -> list[Value]:
    """NLL of log_softmax over the classes (axis 1); the log-probabilities are the optional 2nd output."""
    e, scores = Emitter(ctx), _float_input(ctx)
    log_probs = _log_softmax(e, scores, 1)
    loss = _nll(ctx, e, log_probs, ctx.input(1), ctx.input(2) if ctx.has_input(2) else None)
    return [loss, log_probs]


# ----------------------------------------------------------------------------------------------
# Scans as products with triangular constants, normalisations, depth <-> space


def _along_last(e: Emitter, x: Value, axis: int, fn) -> Value:
    """fn applied with `axis` moved last (a transpose there and back)."""
    rank = _tensor(x).rank
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return e.transpose(fn(e.transpose(x, perm)), perm)


def _prefix_matrix(n: int, exclusive: bool, reverse: bool) -> np.ndarray:
    """U with (x @ U)[j] = the sum of x[i] over the prefix (suffix when reverse) of j."""
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    keep = (i >= j if reverse else i <= j) & ((i != j) if exclusive else True)
    return keep.astype(np.float32)


@converter("CumSum", since=14)
def cumsum(ctx: NodeContext) -> Value:
    """Float prefix sums along `axis`: a product with a 0/1 triangular matrix (integers are host ops)."""
    e, x = Emitter(ctx), _float_input(ctx)
    axes = constant_ints(ctx, 1, "axis") or [0]
    axis = _axis(ctx, axes[0], _tensor(x).rank)
    n = _tensor(x).shape[axis]
    weights = _prefix_matrix(n, bool(ctx.attr("exclusive")), bool(ctx.attr("reverse")))
    if _tensor(x).rank == 1:
        return e.reshape(e.matmul(e.reshape(x, (1, n)), e.const(weights, x)), (n,))
    return _along_last(e, x, axis, lambda moved: e.matmul(moved, e.const(weights, x)))


@converter("Hardmax", since=13)
def hardmax(ctx: NodeContext) -> Value:
    """1 at the first maximum along `axis`: the maxima (x == max), of which the one whose running count
    (a prefix-sum product) is 1."""
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    n = _tensor(x).shape[axis]

    def first_maximum(moved: Value) -> Value:
        last = _tensor(moved).rank - 1
        peak = e.cast(e.compare("eq", moved, e.reduce("max", moved, [last], True)), _tensor(x).element_type)
        count = e.matmul(peak, e.const(_prefix_matrix(n, False, False), x))
        first = e.mul(peak, e.cast(e.compare("eq", count, e.const(1.0, x)), _tensor(x).element_type))
        return first

    if _tensor(x).rank == 1:
        return e.reshape(first_maximum(e.reshape(x, (1, n))), (n,))
    return _along_last(e, x, axis, first_maximum)


def _reduce_prod(e: Emitter, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
    """The product along each axis as a chain of elementwise products of its slices (exact bf16 products)."""
    for axis in axes:
        shape = _tensor(x).shape
        slices = [_slice_axis(e.ctx, x, axis, i) for i in range(shape[axis])]
        product = slices[0]
        for other in slices[1:]:
            product = e.mul(product, other)
        x = product
    return x if keepdims else e.reshape(x, tuple(d for i, d in enumerate(_tensor(x).shape) if i not in axes))


def _reduce_prod_converter(axes_input: bool):
    def convert(ctx: NodeContext) -> Value:
        e, x = Emitter(ctx), _float_input(ctx)
        axes, keepdims = _reduce_axes(ctx, axes_input)
        if axes is None:
            return x
        if any(_tensor(x).shape[a] == 0 for a in axes):
            raise ctx.error("a product over an empty dim (the result is all ones) is not supported")
        if sum(_tensor(x).shape[a] for a in axes) > 64:
            raise ctx.error("a product over more than 64 slices")
        return _reduce_prod(e, x, axes, keepdims)

    return convert


converter("ReduceProd", since=13)(_reduce_prod_converter(axes_input=False))
converter("ReduceProd", since=18)(_reduce_prod_converter(axes_input=True))


@converter("CumProd", since=26)
def cumprod(ctx: NodeContext) -> Value:
    """Float prefix products along `axis`: a running product of the slices (exact bf16 products), then
    concatenated back (integers are host ops)."""
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, (constant_ints(ctx, 1, "axis") or [0])[0], _tensor(x).rank)
    n = _tensor(x).shape[axis]
    if n > 64:
        raise ctx.error(f"a running product over {n} slices (at most 64)")
    slices = [_slice_axis(ctx, x, axis, i) for i in range(n)]
    if ctx.attr("reverse"):
        slices.reverse()
    running, results = None, []
    for piece in slices:
        if ctx.attr("exclusive"):
            results.append(e.const(np.ones(_tensor(piece).shape), x) if running is None else running)
            running = piece if running is None else e.mul(running, piece)
        else:
            running = piece if running is None else e.mul(running, piece)
            results.append(running)
    if ctx.attr("reverse"):
        results.reverse()
    return _concat_copies(ctx, results, axis)
