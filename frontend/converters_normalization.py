"""Normalisations: LayerNormalization (the device op, or a composition when Mean/InvStdDev are used),
RMS, mean-variance, Lp, instance, group and local response normalisation, and BatchNormalization (an
affine per-channel scale and shift that `channels-last` folds into the preceding convolution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _axis, _tensor, converter
from ttc.frontend.converters_conv import from_channels_last, to_channels_last
from ttc.frontend.converters_elementwise import _scalar
from ttc.frontend.converters_emitter import Emitter, _float_input
from ttc.ir.dialects import ttir

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


# ----------------------------------------------------------------------------------------------
# Normalisations


def _normalize(e: Emitter, x: Value, axes: Sequence[int], epsilon: float, center: bool) -> tuple[Value, Value, Value]:
    """(normalised x, mean, 1/stddev) over `axes` (kept as unit dims); RMS when not `center`."""
    count = math.prod(_tensor(x).shape[a] for a in axes)
    mean = e.scale(e.reduce("sum", x, axes, True), 1.0 / count)
    centered = e.sub(x, mean) if center else x
    variance = e.scale(e.reduce("sum", e.mul(centered, centered), axes, True), 1.0 / count)
    inv_std = e.unary("rsqrt", e.add(variance, e.const(epsilon, x)))
    return e.mul(centered, inv_std), mean, inv_std


@converter("LayerNormalization", since=17)
def layer_norm(ctx: NodeContext) -> Value | list[Value]:
    """The device's layer norm when only Y is used; with Mean or InvStdDev used, the composition (sums,
    rsqrt) that gives them too."""
    x = ctx.input(0)
    rank = _tensor(x).rank
    axis = _axis(ctx, ctx.attr("axis"), rank)
    if not (ctx.output_used(1) or ctx.output_used(2)):
        operands = [x, ctx.input(1), ctx.input(2)] if ctx.has_input(2) else [x, ctx.input(1)]
        return ctx.create(ttir.LAYER_NORM.name, operands, x.type, {"axis": axis, "epsilon": ctx.attr("epsilon")})
    e = Emitter(ctx)
    normed, mean, inv_std = _normalize(e, x, range(axis, rank), ctx.attr("epsilon"), center=True)
    y = e.mul(normed, ctx.input(1))
    if ctx.has_input(2):
        y = e.add(y, ctx.input(2))
    return [y, mean, inv_std]


@converter("RMSNormalization", since=23)
def rms_norm(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    rank = _tensor(x).rank
    axis = _axis(ctx, ctx.attr("axis"), rank)
    normed, _, _ = _normalize(e, x, range(axis, rank), ctx.attr("epsilon"), center=False)
    return e.mul(normed, ctx.input(1))


@converter("MeanVarianceNormalization", since=13)
def mean_variance_norm(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    rank = _tensor(x).rank
    axes = sorted({_axis(ctx, a, rank) for a in ctx.attr("axes")})
    normed, _, _ = _normalize(e, x, axes, 1e-9, center=True)
    return normed


@converter("LpNormalization", since=1)
def lp_normalization(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    p = ctx.attr("p")
    # a zero vector stays zero (0 * 1 / tiny, not 0 * inf): the norm is at least the smallest normal float
    tiny = e.const(float(np.finfo(np.float32).tiny), x)
    if p == 2:
        return e.mul(x, e.unary("rsqrt", e.binary("maximum", e.reduce("sum", e.mul(x, x), [axis], True), tiny)))
    if p == 1:
        return e.div(x, e.binary("maximum", e.reduce("sum", e.unary("abs", x), [axis], True), tiny))
    raise ctx.error(f"p = {p}: LpNormalization takes p = 1 or 2")


@converter("InstanceNormalization", since=6)
def instance_norm(ctx: NodeContext) -> Value:
    """Per sample and channel over the spatial dims, then the channel's scale and bias."""
    e, x = Emitter(ctx), _float_input(ctx)
    rank = _tensor(x).rank
    normed, _, _ = _normalize(e, x, range(2, rank), ctx.attr("epsilon"), center=True)
    channel = (_tensor(x).shape[1], *([1] * (rank - 2)))
    return e.add(e.mul(normed, e.reshape(ctx.input(1), channel)), e.reshape(ctx.input(2), channel))


@converter("GroupNormalization", since=21)
def group_norm(ctx: NodeContext) -> Value:
    """Per sample and group of channels: the groups as a dim ([N, G, C/G * spatial]), normalised over it,
    back to the input's shape, then per-channel scale and bias."""
    e, x = Emitter(ctx), _float_input(ctx)
    shape = _tensor(x).shape
    groups = ctx.attr("num_groups")
    grouped = e.reshape(x, (shape[0], groups, math.prod(shape[1:]) // groups))
    normed, _, _ = _normalize(e, grouped, [2], ctx.attr("epsilon"), center=True)
    channel = (shape[1], *([1] * (len(shape) - 2)))
    back = e.reshape(normed, shape)
    return e.add(e.mul(back, e.reshape(ctx.input(1), channel)), e.reshape(ctx.input(2), channel))


def _channel_constant(ctx: NodeContext, values: np.ndarray, rank: int, name: str) -> Value:
    """A per-channel constant shaped [1, C, 1, ...] to broadcast over an N C ... tensor."""
    shape = (1, values.size) + (1,) * (rank - 2)
    return ctx.constant(values.astype(np.float32).reshape(shape), f"{ctx.node.output[0]}.{name}")


@converter("BatchNormalization", since=9)
def batch_norm(ctx: NodeContext) -> Value | list[Value]:
    """Inference with constant statistics: x * scale / sqrt(var + eps) + (bias - mean * scale / sqrt(var + eps)),
    a per-channel affine map (folded into the preceding convolution by `channels-last`). Computed statistics
    are the same formula on the device; training mode normalises by the batch's mean and (population)
    variance over every axis but the channels and returns the running statistics blended by `momentum`."""
    x = ctx.input(0)
    training = bool(ctx.attr("training_mode") or 0)
    if not training and any(ctx.output_used(i) for i in range(1, len(ctx.node.output))):
        raise ctx.error("the running statistics outputs are used without training_mode")
    params = [ctx.input_constant(i) for i in range(1, 5)]
    rank = _tensor(x).rank
    epsilon = float(ctx.attr("epsilon"))
    if not training and all(p is not None for p in params):
        scale, bias, mean, var = (np.asarray(p, np.float64) for p in params)
        factor = scale / np.sqrt(var + epsilon)
        scaled = ctx.create(ttir.MUL.name, [x, _channel_constant(ctx, factor, rank, "bn_scale")], x.type)
        shift = _channel_constant(ctx, bias - mean * factor, rank, "bn_shift")
        return ctx.create(ttir.ADD.name, [scaled, shift], x.type)
    c = _tensor(x).shape[1]
    per_channel = (1, c) + (1,) * (rank - 2)

    def channel(index: int) -> Value:
        value = ctx.input(index)
        return ctx.create(ttir.RESHAPE.name, [value], _tensor(value).with_shape(per_channel))

    axes = (0, *range(2, rank))
    if training:
        mean = ctx.create(ttir.REDUCE_MEAN.name, [x], _tensor(x).with_shape(per_channel), {"axes": axes, "keepdims": True})
        centred = ctx.create(ttir.SUB.name, [x, mean], x.type)
        squares = ctx.create(ttir.MUL.name, [centred, centred], x.type)
        var = ctx.create(ttir.REDUCE_MEAN.name, [squares], _tensor(x).with_shape(per_channel),
                         {"axes": axes, "keepdims": True})
    else:
        mean, var = channel(3), channel(4)
        centred = ctx.create(ttir.SUB.name, [x, mean], x.type)
    shifted = ctx.create(ttir.ADD.name, [var, _scalar(ctx, epsilon, "epsilon")], var.type)
    inverse = ctx.create(ttir.RSQRT.name, [shifted], var.type)
    normal = ctx.create(ttir.MUL.name, [centred, ctx.create(ttir.MUL.name, [inverse, channel(1)], var.type)], x.type)
    y = ctx.create(ttir.ADD.name, [normal, channel(2)], x.type)
    if not training:
        return y
    momentum = float(ctx.attr("momentum"))
    results = [y]
    for batch, running in ((mean, ctx.input(3)), (var, ctx.input(4))):
        flat = ctx.create(ttir.RESHAPE.name, [batch], _tensor(running))
        kept = ctx.create(ttir.MUL.name, [running, _scalar(ctx, momentum, "momentum")], _tensor(running))
        new = ctx.create(ttir.MUL.name, [flat, _scalar(ctx, 1.0 - momentum, "new")], _tensor(running))
        results.append(ctx.create(ttir.ADD.name, [kept, new], _tensor(running)))
    return results[:len(ctx.node.output)]


@converter("LRN", since=1)
def lrn(ctx: NodeContext) -> Value:
    """x / (bias + alpha / size * sum of x^2 over a window of `size` channels)^beta; the channel window
    sum is a product of the channels-last matrix by a constant band matrix."""
    x = ctx.input(0)
    shape = _tensor(x).shape
    if len(shape) != 4:
        raise ctx.error("LRN is supported on NCHW inputs")
    n, c, h, w = shape
    size = int(ctx.attr("size"))
    alpha, beta, bias = float(ctx.attr("alpha")), float(ctx.attr("beta")), float(ctx.attr("bias"))
    rows = np.arange(c)[:, None]
    cols = np.arange(c)[None, :]
    band = ((rows >= cols - (size - 1) // 2) & (rows <= cols + size // 2)).astype(np.float32) * (alpha / size)
    matrix = to_channels_last(ctx, x)
    square = ctx.create(ttir.MUL.name, [matrix, matrix], matrix.type)
    window = ctx.create(ttir.MATMUL.name, [square, ctx.constant(band, f"{ctx.node.output[0]}.band")], matrix.type)
    base = ctx.create(ttir.ADD.name, [window, _scalar(ctx, bias, "bias")], matrix.type)
    # base^-beta = exp(-beta * log(base)): base >= bias > 0
    power = ctx.create(ttir.EXP.name, [ctx.create(ttir.MUL.name, [ctx.create(ttir.LOG.name, [base], matrix.type),
                                                            _scalar(ctx, -beta, "beta")], matrix.type)],
                       matrix.type)
    return from_channels_last(ctx, ctx.create(ttir.MUL.name, [matrix, power], matrix.type), n, h, w)
