"""Converters of the ONNX ops convolutional networks use (Conv, pooling, BatchNormalization, activations).

Convolutions and pools work on the channels-last matrix [N*H*W, C], the tiled form the device keeps
activations in: each converter wraps its `ttir.conv2d` / `ttir.pool2d` between the layout changes
NCHW -> [N*H*W, C] (transpose to NHWC, reshape) and back. Between two such ops the back-and-forth changes
meet and cancel (`channels-last` sinks them through elementwise ops), so the layout changes once at the
graph edges. A 1-D op is the 2-D op of a one-pixel-high image ([N*L, C]); 3-D pools are separable and 3-D
convolutions sums of 2-D ones over depth planes. BatchNormalization is an affine per-channel scale and shift,
which `channels-last` folds into the preceding convolution.

Pad and Resize are data movement: pixel lookups of the channels-last matrix for the common NCHW forms, row
lookups of [rows, last dim] for any Pad, and products by constant interpolation matrices for any Resize.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _reshape_to, _tensor, converter
from ttc.ir.dialects.ttir import broadcast_shape, window_output_size

if TYPE_CHECKING:
    from ttc.frontend.converters_extra import Emitter
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def to_channels_last(ctx: NodeContext, x: Value) -> Value:
    """NCHW -> the matrix [N*H*W, C] (NCL -> [N*L, C], NCDHW -> [N*D*H*W, C])."""
    n, c, *spatial = _tensor(x).shape
    rank = len(spatial) + 2
    last = _tensor(x).with_shape((n, *spatial, c))
    moved = ctx.create("ttir.transpose", [x], last, {"perm": (0, *range(2, rank), 1)})
    return ctx.create("ttir.reshape", [moved], _tensor(x).with_shape((n * math.prod(spatial), c)))


def from_channels_last(ctx: NodeContext, x: Value, n: int, *spatial: int) -> Value:
    """The matrix [N*H*W, C] -> NCHW (and NCL, NCDHW by the number of spatial dims given)."""
    c = _tensor(x).shape[1]
    rank = len(spatial) + 2
    last = ctx.create("ttir.reshape", [x], _tensor(x).with_shape((n, *spatial, c)))
    return ctx.create("ttir.transpose", [last], _tensor(x).with_shape((n, c, *spatial)),
                      {"perm": (0, rank - 1, *range(1, rank - 1))})


def _ints(values: Sequence[int] | None, default: list[int]) -> list[int]:
    return [int(v) for v in values] if values else default


def spatial_attr(ctx: NodeContext, name: str, default: list[int], lifted: bool) -> list[int]:
    """A per-spatial-axis attribute (pads: the begins, then the ends). A 1-D op's is lifted to the 2-D op over
    a one-pixel-high image: a leading axis with the default's value (for pads [b, e] -> [0, b, 0, e])."""
    values = [int(v) for v in ctx.attr(name) or []]
    if not values or not lifted:
        return values or default
    half = len(values) // 2 if name == "pads" else len(values)
    return [default[0], *values[:half], default[0], *values[half:]] if name == "pads" else [default[0], *values]


def window_attrs(ctx: NodeContext, x: Value, kernel: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """input_shape, strides, pads [top, left, bottom, right] and dilations of a 2-D window op, auto_pad resolved;
    a 1-D op's (x [N, C, L]) as those of a one-pixel-high image."""
    shape = _tensor(x).shape
    if len(shape) not in (3, 4):
        raise ctx.error(f"only 1-D and 2-D windows are supported, not an input of shape {list(shape)}")
    lifted = len(shape) == 3
    n, _, h, w = (shape[0], shape[1], 1, shape[2]) if lifted else shape
    strides = spatial_attr(ctx, "strides", [1, 1], lifted)
    dilations = spatial_attr(ctx, "dilations", [1, 1], lifted)
    pads = spatial_attr(ctx, "pads", [0, 0, 0, 0], lifted)
    auto_pad = ctx.attr("auto_pad") or "NOTSET"
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for dim, size in enumerate((h, w)):
            out = -(-size // strides[dim])
            total = max((out - 1) * strides[dim] + (kernel[dim] - 1) * dilations[dim] + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads[dim], pads[dim + 2] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise ctx.error("only 2-D windows (two strides, two dilations, four pads) are supported")
    return {"input_shape": (n, h, w), "strides": tuple(strides), "pads": tuple(pads), "dilations": tuple(dilations)}


def output_hw(attrs: dict, kernel: Sequence[int], ceil_mode: bool = False) -> tuple[int, int]:
    _, h, w = attrs["input_shape"]
    s, p, d = attrs["strides"], attrs["pads"], attrs["dilations"]
    return (window_output_size(h, kernel[0], s[0], p[0], p[2], d[0], ceil_mode),
            window_output_size(w, kernel[1], s[1], p[1], p[3], d[1], ceil_mode))


@converter("Conv", since=11)
def conv(ctx: NodeContext) -> Value:
    """A 2-D convolution on the channels-last matrix; a 1-D one is that of a one-pixel-high image."""
    x, weight = ctx.input(0), ctx.input(1)
    w_shape = _tensor(weight).shape
    if len(w_shape) not in (3, 4, 5) or _tensor(x).rank != len(w_shape):
        raise ctx.error(f"only 1-, 2- and 3-D convolutions are supported, not a weight of shape {list(w_shape)}")
    if len(w_shape) == 5:
        return conv3d(ctx, x, weight)
    if len(w_shape) == 3:
        weight = ctx.create("ttir.reshape", [weight], _tensor(weight).with_shape((*w_shape[:2], 1, w_shape[2])))
    oc, _, kh, kw = _tensor(weight).shape
    attrs = window_attrs(ctx, x, (kh, kw))
    groups = int(ctx.attr("group") or 1)
    n = attrs["input_shape"][0]
    oh, ow = output_hw(attrs, (kh, kw))
    if oh <= 0 or ow <= 0:
        raise ctx.error("the convolution has an empty output")
    operands = [to_channels_last(ctx, x), weight] + ([ctx.input(2)] if ctx.has_input(2) else [])
    result = ctx.create("ttir.conv2d", operands, _tensor(x).with_shape((n * oh * ow, oc)),
                        {**attrs, "groups": groups})
    return from_channels_last(ctx, result, n, *((ow,) if len(w_shape) == 3 else (oh, ow)))


def conv3d(ctx: NodeContext, x: Value, weight: Value) -> Value:
    """A 3-D convolution as 2-D ones over depth planes (`conv3d_by_planes`), auto_pad resolved per axis."""
    n, _, *sizes = _tensor(x).shape
    kernel = _tensor(weight).shape[2:]
    strides = _ints(ctx.attr("strides"), [1, 1, 1])
    dilations = _ints(ctx.attr("dilations"), [1, 1, 1])
    pads = _ints(ctx.attr("pads"), [0] * 6)
    auto_pad = _text(ctx.attr("auto_pad"), "NOTSET")
    if auto_pad == "VALID":
        pads = [0] * 6
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for dim, size in enumerate(sizes):
            out = -(-size // strides[dim])
            total = max((out - 1) * strides[dim] + (kernel[dim] - 1) * dilations[dim] + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads[dim], pads[dim + 3] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    bias = ctx.input(2) if ctx.has_input(2) else None
    result, out = conv3d_by_planes(ctx, to_channels_last(ctx, x), (n, *sizes), weight, bias, strides, pads,
                                   dilations, int(ctx.attr("group") or 1))
    return from_channels_last(ctx, result, n, *out)


@dataclass(frozen=True)
class WindowAxis:
    """One spatial axis of a pooling window: kernel, stride, padding before and after, dilation."""

    kernel: int
    stride: int = 1
    pad_begin: int = 0
    pad_end: int = 0
    dilation: int = 1


def pool_axes(ctx: NodeContext, sizes: Sequence[int]) -> list[WindowAxis]:
    """The pooling window along each spatial axis, auto_pad resolved."""
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    rank = len(sizes)
    if len(kernel) != rank:
        raise ctx.error(f"a kernel of {kernel} does not match {rank} spatial dims")
    strides = _ints(ctx.attr("strides"), [1] * rank)
    dilations = _ints(ctx.attr("dilations"), [1] * rank)
    pads = _ints(ctx.attr("pads"), [0] * (2 * rank))
    auto_pad = _text(ctx.attr("auto_pad"), "NOTSET")
    if auto_pad == "VALID":
        pads = [0] * (2 * rank)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for dim, size in enumerate(sizes):
            out = -(-size // strides[dim])
            total = max((out - 1) * strides[dim] + (kernel[dim] - 1) * dilations[dim] + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads[dim], pads[dim + rank] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    return [WindowAxis(kernel[d], strides[d], pads[d], pads[d + rank], dilations[d]) for d in range(rank)]


def pool_matrix(ctx: NodeContext, matrix: Value, kind: str, images: tuple[int, int, int], rows: WindowAxis,
                cols: WindowAxis, count_include_pad: bool | None = None) -> tuple[Value, tuple[int, int, int]]:
    """A pool over H and W of the channels-last matrix of `images` (N, H, W); the result and its (N, OH, OW).
    An average counts the padding when `count_include_pad` (default: the node's attribute) says so."""
    n = images[0]
    kernel = (rows.kernel, cols.kernel)
    attrs = {"input_shape": images, "strides": (rows.stride, cols.stride),
             "pads": (rows.pad_begin, cols.pad_begin, rows.pad_end, cols.pad_end),
             "dilations": (rows.dilation, cols.dilation)}
    ceil_mode = bool(ctx.attr("ceil_mode") or 0)
    if count_include_pad is None:
        count_include_pad = bool(ctx.attr("count_include_pad") or 0)
    include_pad = count_include_pad if kind == "avg" else False
    oh, ow = output_hw(attrs, kernel, ceil_mode)
    c = _tensor(matrix).shape[1]
    result = ctx.create("ttir.pool2d", [matrix], _tensor(matrix).with_shape((n * oh * ow, c)),
                        {"kind": kind, "kernel": kernel, **attrs, "ceil_mode": ceil_mode,
                         "count_include_pad": include_pad})
    return result, (n, oh, ow)


def pool_2d(ctx: NodeContext, x: Value, kind: str, rows: WindowAxis, cols: WindowAxis,
            count_include_pad: bool | None = None) -> Value:
    """A pool over H and W of an NCHW tensor (`ttir.pool2d` on the channels-last matrix)."""
    n, _, h, w = _tensor(x).shape
    pooled, (_, oh, ow) = pool_matrix(ctx, to_channels_last(ctx, x), kind, (n, h, w), rows, cols, count_include_pad)
    return from_channels_last(ctx, pooled, n, oh, ow)


def _pool(ctx: NodeContext, kind: str, x: Value | None = None, count_include_pad: bool | None = None) -> Value:
    """1-, 2- and 3-D pools as 2-D ones. A 1-D pool runs over a one-pixel-high image. A 3-D pool is separable
    (its window is a box: the maximum, or the sum and the count of positions inside the input, factor
    over the axes), so it is a 2-D pool over H and W with the depths as more channels, then one over D."""
    if len(ctx.node.output) > 1 and ctx.output_used(1):
        raise ctx.error("the indices output of MaxPool is used; ttc computes the pooled values only")
    if ctx.attr("storage_order"):
        raise ctx.error("MaxPool with storage_order = 1 is not supported")
    x = ctx.input(0) if x is None else x
    shape = _tensor(x).shape
    if len(shape) not in (3, 4, 5):
        raise ctx.error(f"only 1-, 2- and 3-D pooling is supported, not an input of shape {list(shape)}")
    n, _, *sizes = shape
    axes = pool_axes(ctx, sizes)
    unit = WindowAxis(1)
    if len(sizes) == 2:
        return pool_2d(ctx, x, kind, *axes, count_include_pad)
    if len(sizes) == 1:
        pooled, (_, _, ol) = pool_matrix(ctx, to_channels_last(ctx, x), kind, (n, 1, sizes[0]), unit, axes[0],
                                         count_include_pad)
        return from_channels_last(ctx, pooled, n, ol)
    # 3-D: the channels-last matrix [N*D*H*W, C] is that of N*D images H x W, and after the pool over H and W
    # that of N images D x (OH*OW)
    d, h, w = sizes
    matrix = to_channels_last(ctx, x)
    planes = pool_matrix(ctx, matrix, kind, (n * d, h, w), axes[1], axes[2], count_include_pad)
    oh, ow = planes[1][1:]
    pooled, (_, od, _) = pool_matrix(ctx, planes[0], kind, (n, d, oh * ow), axes[0], unit, count_include_pad)
    return from_channels_last(ctx, pooled, n, od, oh, ow)


@converter("MaxPool", since=12)
def max_pool(ctx: NodeContext) -> Value:
    return _pool(ctx, "max")


@converter("AveragePool", since=11)
def average_pool(ctx: NodeContext) -> Value:
    return _pool(ctx, "avg")


@converter("LpPool", since=11)
def lp_pool(ctx: NodeContext) -> Value:
    """(sum of |x|^p over the window)^(1/p) for an integer p >= 1: the powers are products of |x|, the window
    sum an average pool that counts the padding (zeros; every window lies inside the padded input) times the
    window's size, and the root a sqrt or exp(log(sum) / p)."""
    p = int(ctx.attr("p"))
    if p < 1:
        raise ctx.error(f"LpPool with p = {p} (ttc computes integer p >= 1)")
    if ctx.attr("ceil_mode"):
        raise ctx.error("LpPool with ceil_mode = 1 is not supported (windows past the padded input)")
    x = ctx.input(0)

    def mul(a: Value, b: Value) -> Value:
        return ctx.create("ttir.mul", [a, b], x.type)

    magnitude = ctx.create("ttir.abs", [x], x.type)
    power = magnitude
    for _ in range(p - 1):
        power = mul(power, magnitude)
    pooled = _pool(ctx, "avg", power, count_include_pad=True)
    dtype = _tensor(x).element_type.numpy_dtype()
    window = math.prod(int(k) for k in ctx.attr("kernel_shape"))
    total = ctx.create("ttir.mul", [pooled, ctx.constant(np.asarray(window, dtype), f"{ctx.node.output[0]}.window")],
                       pooled.type)
    if p == 1:
        return total
    if p == 2:
        return ctx.create("ttir.sqrt", [total], total.type)
    log = ctx.create("ttir.log", [total], total.type)
    scaled = ctx.create("ttir.mul", [log, ctx.constant(np.asarray(1.0 / p, dtype), f"{ctx.node.output[0]}.inv_p")],
                        log.type)
    return ctx.create("ttir.exp", [scaled], scaled.type)


def _global_pool(ttir_op: str):
    def convert(ctx: NodeContext) -> Value:
        x = ctx.input(0)
        shape = _tensor(x).shape
        axes = tuple(range(2, len(shape)))
        result = tuple(d if i < 2 else 1 for i, d in enumerate(shape))
        return ctx.create(ttir_op, [x], _tensor(x).with_shape(result), {"axes": axes, "keepdims": True})

    return convert


converter("GlobalAveragePool", since=1)(_global_pool("ttir.reduce_mean"))
converter("GlobalMaxPool", since=1)(_global_pool("ttir.reduce_max"))


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
        scaled = ctx.create("ttir.mul", [x, _channel_constant(ctx, factor, rank, "bn_scale")], x.type)
        shift = _channel_constant(ctx, bias - mean * factor, rank, "bn_shift")
        return ctx.create("ttir.add", [scaled, shift], x.type)
    c = _tensor(x).shape[1]
    per_channel = (1, c) + (1,) * (rank - 2)

    def channel(index: int) -> Value:
        value = ctx.input(index)
        return ctx.create("ttir.reshape", [value], _tensor(value).with_shape(per_channel))

    axes = (0, *range(2, rank))
    if training:
        mean = ctx.create("ttir.reduce_mean", [x], _tensor(x).with_shape(per_channel), {"axes": axes, "keepdims": True})
        centred = ctx.create("ttir.sub", [x, mean], x.type)
        squares = ctx.create("ttir.mul", [centred, centred], x.type)
        var = ctx.create("ttir.reduce_mean", [squares], _tensor(x).with_shape(per_channel),
                         {"axes": axes, "keepdims": True})
    else:
        mean, var = channel(3), channel(4)
        centred = ctx.create("ttir.sub", [x, mean], x.type)
    shifted = ctx.create("ttir.add", [var, _scalar(ctx, epsilon, "epsilon")], var.type)
    inverse = ctx.create("ttir.rsqrt", [shifted], var.type)
    normal = ctx.create("ttir.mul", [centred, ctx.create("ttir.mul", [inverse, channel(1)], var.type)], x.type)
    y = ctx.create("ttir.add", [normal, channel(2)], x.type)
    if not training:
        return y
    momentum = float(ctx.attr("momentum"))
    results = [y]
    for batch, running in ((mean, ctx.input(3)), (var, ctx.input(4))):
        flat = ctx.create("ttir.reshape", [batch], _tensor(running))
        kept = ctx.create("ttir.mul", [running, _scalar(ctx, momentum, "momentum")], _tensor(running))
        new = ctx.create("ttir.mul", [flat, _scalar(ctx, 1.0 - momentum, "new")], _tensor(running))
        results.append(ctx.create("ttir.add", [kept, new], _tensor(running)))
    return results[:len(ctx.node.output)]


# ----------------------------------------------------------------------------------------------
# Activations


def _scalar(ctx: NodeContext, value: float, name: str) -> Value:
    return ctx.constant(np.asarray(value, np.float32), f"{ctx.node.output[0]}.{name}")


def clamp(ctx: NodeContext, x: Value, low: float | None, high: float | None) -> Value:
    if low is not None:
        x = ctx.create("ttir.maximum", [x, _scalar(ctx, low, "min")], x.type)
    if high is not None:
        x = ctx.create("ttir.minimum", [x, _scalar(ctx, high, "max")], x.type)
    return x


@converter("Clip", since=11)
def clip(ctx: NodeContext) -> Value:
    """max(x, min) then min(., max); a computed bound is a scalar tensor operand of the same ops, so
    min > max gives max, as ONNX's clip does."""
    x = ctx.input(0)
    bounds: list[float | Value | None] = []
    for index in (1, 2):
        if not ctx.has_input(index):
            bounds.append(None)
            continue
        value = ctx.input_constant(index)
        bounds.append(ctx.input(index) if value is None else float(value))
    if bounds[0] == 0.0:
        x, bounds[0] = ctx.create("ttir.relu", [x], x.type), None
    for op_name, bound in zip(("ttir.maximum", "ttir.minimum"), bounds, strict=True):
        if bound is None:
            continue
        if isinstance(bound, float):
            bound = _scalar(ctx, bound, "min" if op_name == "ttir.maximum" else "max")
        x = ctx.create(op_name, [x, bound], x.type)
    return x


@converter("HardSigmoid", since=6)
def hard_sigmoid(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    affine = ctx.create("ttir.mul", [x, _scalar(ctx, float(ctx.attr("alpha")), "alpha")], x.type)
    affine = ctx.create("ttir.add", [affine, _scalar(ctx, float(ctx.attr("beta")), "beta")], x.type)
    return clamp(ctx, ctx.create("ttir.relu", [affine], x.type), None, 1.0)


@converter("HardSwish", since=14)
def hard_swish(ctx: NodeContext) -> Value:
    """x * relu6(x + 3) / 6."""
    x = ctx.input(0)
    shifted = ctx.create("ttir.add", [x, _scalar(ctx, 3.0, "three")], x.type)
    gate = clamp(ctx, ctx.create("ttir.relu", [shifted], x.type), None, 6.0)
    gate = ctx.create("ttir.mul", [gate, _scalar(ctx, 1.0 / 6.0, "sixth")], x.type)
    return ctx.create("ttir.mul", [x, gate], x.type)


@converter("LeakyRelu", since=6)
def leaky_relu(ctx: NodeContext) -> Value:
    """max(x, 0) + alpha * min(x, 0)."""
    x = ctx.input(0)
    positive = ctx.create("ttir.relu", [x], x.type)
    negative = ctx.create("ttir.minimum", [x, _scalar(ctx, 0.0, "zero")], x.type)
    negative = ctx.create("ttir.mul", [negative, _scalar(ctx, float(ctx.attr("alpha")), "alpha")], x.type)
    return ctx.create("ttir.add", [positive, negative], x.type)


@converter("Sum", since=8)
def sum_(ctx: NodeContext) -> Value:
    values = [ctx.input(i) for i in range(len(ctx.node.input)) if ctx.has_input(i)]
    result = values[0]
    for value in values[1:]:
        shape = broadcast_shape(_tensor(result).shape, _tensor(value).shape)
        if shape is None:
            raise ctx.error("Sum operands do not broadcast")
        result = ctx.create("ttir.add", [result, value], _tensor(result).with_shape(shape))
    return result


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
    square = ctx.create("ttir.mul", [matrix, matrix], matrix.type)
    window = ctx.create("ttir.matmul", [square, ctx.constant(band, f"{ctx.node.output[0]}.band")], matrix.type)
    base = ctx.create("ttir.add", [window, _scalar(ctx, bias, "bias")], matrix.type)
    # base^-beta = exp(-beta * log(base)): base >= bias > 0
    power = ctx.create("ttir.exp", [ctx.create("ttir.mul", [ctx.create("ttir.log", [base], matrix.type),
                                                            _scalar(ctx, -beta, "beta")], matrix.type)],
                       matrix.type)
    return from_channels_last(ctx, ctx.create("ttir.mul", [matrix, power], matrix.type), n, h, w)



COL2IM_MAX_MATRIX = 1 << 24  # elements of Col2Im's constant scatter matrix (64 MiB in float32)


@converter("Col2Im", since=18)
def col2im(ctx: NodeContext) -> Value:
    """Col2Im: the blocks (columns) of an image summed back into place. With the image and block shapes
    constant, that is a fixed linear map, so per image and channel the [K * L] block values times a constant
    0/1 matrix [K * L, prod(image)] give the image (overlaps add, as the matmul unit sums them)."""
    x = ctx.input(0)
    image, block = ctx.input_constant(1), ctx.input_constant(2)
    if image is None or block is None:
        raise ctx.error("image_shape and block_shape must be constants")
    image, block = [int(d) for d in image.reshape(-1)], [int(d) for d in block.reshape(-1)]
    dims = len(image)
    if len(block) != dims:
        raise ctx.error(f"image_shape {image} and block_shape {block} differ in rank")
    dilations = list(ctx.attr("dilations") or [1] * dims)
    pads = list(ctx.attr("pads") or [0] * (2 * dims))
    strides = list(ctx.attr("strides") or [1] * dims)
    n, ck, blocks = _tensor(x).shape
    kernel = int(np.prod(block))
    if ck % kernel:
        raise ctx.error(f"the input's {ck} rows are not a multiple of the block's {kernel} positions")
    # block positions along each dim, and the (padded) output position of each block and kernel offset
    counts = [(image[d] + pads[d] + pads[d + dims] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1
              for d in range(dims)]
    if int(np.prod(counts)) != blocks:
        raise ctx.error(f"the input has {blocks} blocks, image_shape {image} and the attributes give "
                        f"{int(np.prod(counts))}")
    pixels = int(np.prod(image))
    if kernel * blocks * pixels > COL2IM_MAX_MATRIX:
        raise ctx.error(f"its scatter matrix [{kernel * blocks}, {pixels}] is larger than ttc builds "
                        f"({COL2IM_MAX_MATRIX} elements)")
    scatter = np.zeros((kernel, blocks, pixels), np.float32)
    for k, offset in enumerate(np.ndindex(*block)):
        for b, position in enumerate(np.ndindex(*counts)):
            where = [position[d] * strides[d] + offset[d] * dilations[d] - pads[d] for d in range(dims)]
            if all(0 <= where[d] < image[d] for d in range(dims)):
                scatter[k, b, int(np.ravel_multi_index(where, image))] = 1.0
    rows = _reshape_to(ctx, x, (n * (ck // kernel), kernel * blocks))
    matrix = ctx.constant(scatter.reshape(kernel * blocks, pixels), f"{ctx.node.output[0]}.scatter")
    summed = ctx.create("ttir.matmul", [rows, matrix], _tensor(x).with_shape((n * (ck // kernel), pixels)))
    return _reshape_to(ctx, summed, (n, ck // kernel, *image))


# ----------------------------------------------------------------------------------------------
# Pixel lookups: Pad and Resize read whole sticks of the channels-last matrix by a constant table


def pixel_lookup(ctx: NodeContext, x: Value, ids: np.ndarray, out_hw: tuple[int, int], name: str) -> Value:
    """NCHW x -> NCHW [N, C, OH, OW] whose pixel m is x's pixel ids[m] (-1: zeros), as a row lookup of the
    channels-last matrix."""
    n, c = _tensor(x).shape[:2]
    matrix = to_channels_last(ctx, x)
    index = ctx.constant(ids.astype(np.int32), f"{ctx.node.output[0]}.{name}")
    looked = ctx.create("ttir.embedding", [matrix, index], _tensor(x).with_shape((ids.size, c)),
                        {"pad_negative": True})
    return from_channels_last(ctx, looked, n, *out_hw)


def pixel_ids(n: int, h: int, w: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Flat input pixel of (y, x) per image, -1 where either is -1; [N * len(ys) * len(xs)]."""
    inside = (ys[:, None] >= 0) & (xs[None, :] >= 0)
    local = np.where(inside, ys[:, None] * w + xs[None, :], -1).reshape(-1)
    batch = np.arange(n)[:, None] * h * w
    return np.where(local[None, :] >= 0, local[None, :] + batch, -1).reshape(-1)


@converter("Pad", since=11)
def pad(ctx: NodeContext) -> Value:
    """Constant, reflect, edge or wrap padding (negative pads crop). Zero padding of only H and W of an NCHW
    tensor is a pixel lookup of the channels-last matrix; any other is a row lookup (`pad_rows`)."""
    x = ctx.input(0)
    shape = _tensor(x).shape
    rank = len(shape)
    pads = ctx.input_constant(1)
    if pads is None:
        raise ctx.error("Pad needs constant pads")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank))
    if ctx.has_input(3):
        given = ctx.input_constant(3)
        if given is None:
            raise ctx.error("Pad needs constant axes")
        axes = [int(a) % rank for a in np.asarray(given).reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise ctx.error(f"Pad has {len(pads)} pads for {len(axes)} axes")
    before, after = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[len(axes) + i]
    mode = _text(ctx.attr("mode"), "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ctx.error(f"Pad mode '{mode}' is not supported")
    value: float | Value = 0.0
    if mode == "constant" and ctx.has_input(2):
        constant = ctx.input_constant(2)
        value = ctx.input(2) if constant is None else float(np.asarray(constant).reshape(-1)[0])
    return padded(ctx, x, before, after, mode, value)


def padded(ctx: NodeContext, x: Value, before: list[int], after: list[int], mode: str, value: float | Value) -> Value:
    """x padded by `before`/`after` positions per axis (negative ones crop) in a Pad mode."""
    shape = _tensor(x).shape
    maps = [_pad_axis(size, b, e, mode) for size, b, e in zip(shape, before, after, strict=True)]
    if len(shape) == 4 and value == 0.0 and not any(before[:2] + after[:2]) and min(before + after) >= 0:
        n, _, h, w = shape
        return pixel_lookup(ctx, x, pixel_ids(n, h, w, maps[2], maps[3]), (len(maps[2]), len(maps[3])), "pad_index")
    return pad_rows(ctx, x, maps, value)


@converter("CenterCropPad", since=18)
def center_crop_pad(ctx: NodeContext) -> Value:
    """Crop or zero-pad each of `axes` to the given size around the centre (the extra position of an odd
    difference at the end): a Pad whose negative pads crop."""
    x = ctx.input(0)
    shape = _tensor(x).shape
    sizes = ctx.input_constant(1)
    if sizes is None:
        raise ctx.error("CenterCropPad needs a constant shape")
    given = ctx.attr("axes")
    axes = [int(a) % len(shape) for a in given] if given is not None else list(range(len(shape)))
    sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    if len(sizes) != len(axes):
        raise ctx.error(f"CenterCropPad has {len(sizes)} sizes for {len(axes)} axes")
    before, after = [0] * len(shape), [0] * len(shape)
    for axis, size in zip(axes, sizes, strict=True):
        grow = size - shape[axis]  # negative: crop
        before[axis] = -(-grow // 2) if grow < 0 else grow // 2
        after[axis] = grow - before[axis]
    return padded(ctx, x, before, after, "constant", 0.0)


def pad_rows(ctx: NodeContext, x: Value, maps: list[np.ndarray], value: float | Value) -> Value:
    """x padded by a source index per output position along each axis (-1: the constant `value`), as row lookups
    (`ttir.embedding`) of the matrix [rows, last dim]: one for the leading axes and, for a padded last axis, one
    of the transposed matrix between two tile transposes. Lookups move values without arithmetic, so
    infinities pass; the reshapes keep rows whole and a lookup separates each from the transposes, so no
    movement needs selection matmuls. Constant positions read zero rows and then take `value` by a select on
    a constant border mask."""
    shape = _tensor(x).shape
    out = tuple(len(m) for m in maps)
    border = np.zeros(out, bool)
    for axis, positions in enumerate(maps):
        border |= (positions < 0).reshape([-1 if i == axis else 1 for i in range(len(maps))])
    width = shape[-1]
    leading = [np.arange(1)] if len(shape) == 1 else maps[:-1]
    sizes = (1,) if len(shape) == 1 else shape[:-1]
    pad_last = len(maps[-1]) != width or (maps[-1] != np.arange(width)).any()
    pad_leading = any(len(m) != size or (m != np.arange(size)).any() for m, size in zip(leading, sizes, strict=True))
    matrix = x if len(shape) == 2 else ctx.create("ttir.reshape", [x], _tensor(x).with_shape((math.prod(sizes),
                                                                                             width)))
    if pad_leading or (pad_last and len(shape) > 2):
        matrix = lookup_rows(ctx, matrix, _row_ids(leading, sizes), "pad_rows")
    if pad_last:
        rows = _tensor(matrix).shape[0]
        swapped = ctx.create("ttir.transpose", [matrix], _tensor(x).with_shape((width, rows)), {"perm": (1, 0)})
        swapped = lookup_rows(ctx, swapped, maps[-1], "pad_columns")
        matrix = ctx.create("ttir.transpose", [swapped], _tensor(x).with_shape((rows, len(maps[-1]))),
                            {"perm": (1, 0)})
        if len(shape) > 2:  # a lookup between the transpose and the reshape, which together would move elements
            matrix = lookup_rows(ctx, matrix, np.arange(rows), "pad_regroup")
    result = matrix if _tensor(matrix).shape == out else ctx.create("ttir.reshape", [matrix],
                                                                     _tensor(x).with_shape(out))
    if (isinstance(value, float) and value == 0.0) or not border.any():
        return result
    fill = _scalar(ctx, value, "pad_value") if isinstance(value, float) else value
    mask = ctx.constant(border, f"{ctx.node.output[0]}.pad_border")
    return ctx.create("ttir.where", [mask, fill, result], _tensor(result))


def _row_ids(maps: list[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """The flat source row of each output row of a gather along the leading axes (-1 where any map is -1)."""
    grids = np.meshgrid(*maps, indexing="ij")
    inside = np.all([g >= 0 for g in grids], axis=0)
    flat = np.ravel_multi_index(tuple(np.maximum(g, 0) for g in grids), tuple(sizes))
    return np.where(inside, flat, -1).reshape(-1)


def lookup_rows(ctx: NodeContext, matrix: Value, ids: np.ndarray, name: str) -> Value:
    """Rows ids of the matrix (-1: a zero row), by a constant table."""
    index = ctx.constant(ids.astype(np.int32), f"{ctx.node.output[0]}.{name}")
    return ctx.create("ttir.embedding", [matrix, index], _tensor(matrix).with_shape((ids.size,
                                                                                     _tensor(matrix).shape[1])),
                      {"pad_negative": True})


def _pad_axis(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """The source position of each output position along one axis (-1: the constant). Negative pads crop
    first; reflect, edge and wrap then pad the cropped axis."""
    kept = np.arange(max(-before, 0), size - max(-after, 0))
    positions = np.arange(-max(before, 0), kept.size + max(after, 0))
    length = kept.size
    if mode == "reflect":
        period = 2 * (length - 1) if length > 1 else 1
        folded = np.abs(positions) % period
        return kept[np.where(folded >= length, period - folded, folded)]
    if mode == "edge":
        return kept[np.clip(positions, 0, length - 1)]
    if mode == "wrap":
        return kept[positions % length]
    return np.where((positions >= 0) & (positions < length), kept[np.clip(positions, 0, length - 1)], -1)


def _text(value: str | bytes | None, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class ResizeAxis:
    """How Resize maps one axis: `size` input positions to `out` output positions at `scale` (out / size
    when sizes are given, else the given scale, which the coordinates use even when out is rounded down),
    with the axis's region of interest [start, end] (tf_crop_and_resize only)."""

    size: int
    out: int
    scale: float
    roi: tuple[float, float] = (0.0, 1.0)

    @property
    def identity(self) -> bool:
        return self.out == self.size and math.isclose(self.scale, 1.0) and \
            math.isclose(self.roi[0], 0.0) and math.isclose(self.roi[1], 1.0)


def source_coordinates(ctx: NodeContext, axis: ResizeAxis, transform: str) -> tuple[np.ndarray, np.ndarray]:
    """The input coordinate of each output position along one axis (ONNX Resize's coordinate transformation,
    in float64 with the unrounded output length scale * size) and where it lies outside the input
    (tf_crop_and_resize, whose outside positions take the extrapolation value)."""
    x = np.arange(axis.out, dtype=np.float64)
    # The output length as scale * size, not rounded down to `out`, as onnx's reference (and so the node
    # tests) has it in align_corners, tf_crop_and_resize and the one-pixel cases. onnxruntime divides by
    # out - 1 instead: the two differ when a scale gives a fractional output length.
    length = axis.scale * axis.size
    outside = np.zeros(axis.out, bool)
    if transform == "half_pixel":
        coords = (x + 0.5) / axis.scale - 0.5
    elif transform == "pytorch_half_pixel":
        coords = (x + 0.5) / axis.scale - 0.5 if length != 1 else np.full(axis.out, -0.5)
    elif transform == "half_pixel_symmetric":
        offset = axis.size / 2 * (1 - axis.out / length)
        coords = offset + (x + 0.5) / axis.scale - 0.5
    elif transform == "align_corners":
        coords = x * (axis.size - 1) / (length - 1) if length != 1 else np.zeros(axis.out)
    elif transform == "asymmetric":
        coords = x / axis.scale
    elif transform == "tf_half_pixel_for_nn":
        coords = (x + 0.5) / axis.scale
    elif transform == "tf_crop_and_resize":
        start, end = axis.roi
        span = (end - start) * (axis.size - 1)
        coords = (x * span / (length - 1) if length != 1 else np.full(axis.out, span / 2)) + start * (axis.size - 1)
        outside = (coords < 0) | (coords > axis.size - 1)
    else:
        raise ctx.error(f"coordinate_transformation_mode '{transform}' is not supported")
    return coords, outside


def _nearest(ctx: NodeContext, coords: np.ndarray, size: int, mode: str) -> np.ndarray:
    rounded = {"round_prefer_floor": np.ceil(coords - 0.5), "round_prefer_ceil": np.floor(coords + 0.5),
               "floor": np.floor(coords), "ceil": np.ceil(coords)}.get(mode)
    if rounded is None:
        raise ctx.error(f"nearest_mode '{mode}' is not supported")
    return np.clip(rounded, 0, size - 1).astype(np.int64)


def _cubic(distance: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a."""
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def interpolation_taps(mode: str, ratio: np.ndarray, scale: float, cubic_a: float, antialias: bool,
                       nearest_mode: str) -> np.ndarray:
    """[out, taps] weights of the consecutive input positions around each output position, whose fractional
    offset from the input position on its left is `ratio` in (0, 1]. With antialias a downsampling kernel is
    stretched by 1 / scale (more taps) and its weights normalised to sum to one."""
    ratio = ratio[:, None]
    if mode == "nearest":
        right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                 "floor": np.zeros_like(ratio, bool), "ceil": np.ones_like(ratio, bool)}[nearest_mode]
        right = right | (ratio == 1)
        return np.concatenate([~right, right], axis=1).astype(np.float64)
    if not antialias:
        if mode == "linear":
            return np.concatenate([1 - ratio, ratio], axis=1)
        return _cubic(np.arange(-1, 3)[None, :] - ratio, cubic_a)
    stretch = min(scale, 1.0)
    reach = 1 if mode == "linear" else 2
    first = int(np.floor(-reach / stretch) + 1)
    offsets = np.arange(first, 2 - first)[None, :]
    distance = (offsets - ratio) * stretch
    weights = np.clip(1 - np.abs(distance), 0, 1) if mode == "linear" else _cubic(distance, cubic_a)
    return weights / weights.sum(axis=1, keepdims=True)


def interpolation_matrix(ctx: NodeContext, axis: ResizeAxis, mode: str, transform: str,
                         nearest_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The [out, size] matrix of a 1-D resize (Resize is linear in its input and separable over the axes) and
    the output positions that take the extrapolation value instead (their rows are zero).

    Each output position takes the `taps` input positions nearest its source coordinate (ties to the left),
    positions beyond the edges read the edge (or, with exclude_outside, get no weight and the rest is
    renormalised)."""
    coords, outside = source_coordinates(ctx, axis, transform)
    left = np.floor(coords)
    ratio = np.where(coords == left, 1.0, coords - left)
    taps = interpolation_taps(mode, ratio, axis.scale, float(ctx.attr("cubic_coeff_a") or -0.75),
                              bool(ctx.attr("antialias") or 0), nearest_mode)
    count = taps.shape[1]
    # the first of the `count` positions nearest the coordinate, ties going to the left
    fraction = coords - left
    if count % 2 == 0:
        first = left - count // 2 + (fraction != 0)
    else:
        first = left - (count - 1) // 2 + (fraction > 0.5)
    positions = first.astype(np.int64)[:, None] + np.arange(count)[None, :]
    if ctx.attr("exclude_outside"):
        taps = np.where((positions < 0) | (positions >= axis.size), 0.0, taps)
        totals = taps.sum(axis=1, keepdims=True)
        taps = taps / np.where(totals == 0, 1.0, totals)
    matrix = np.zeros((axis.out, axis.size))
    rows = np.broadcast_to(np.arange(axis.out)[:, None], positions.shape)
    np.add.at(matrix, (rows, np.clip(positions, 0, axis.size - 1)), taps)
    matrix[outside] = 0.0
    return matrix, outside


def resize_axes(ctx: NodeContext, shape: tuple[int, ...]) -> list[ResizeAxis]:
    """Every axis's ResizeAxis from the constant scales or sizes, axes, roi and keep_aspect_ratio_policy."""
    rank = len(shape)
    axes = [int(a) % rank for a in ctx.attr("axes")] if ctx.attr("axes") is not None else list(range(rank))
    scales = ctx.input_constant(2) if ctx.has_input(2) else None
    sizes = ctx.input_constant(3) if ctx.has_input(3) else None
    roi = ctx.input_constant(1) if ctx.has_input(1) else None
    bounds = [(0.0, 1.0)] * rank
    if roi is not None and np.asarray(roi).size:
        roi = [float(v) for v in np.asarray(roi).reshape(-1)]
        if len(roi) != 2 * len(axes):
            raise ctx.error(f"roi has {len(roi)} values for {len(axes)} axes")
        for i, a in enumerate(axes):
            bounds[a] = (roi[i], roi[len(axes) + i])
    elif ctx.has_input(1) and roi is None:
        raise ctx.error("Resize needs a constant roi")
    if sizes is not None and np.asarray(sizes).size:
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sizes) != len(axes):
            raise ctx.error(f"Resize has {len(sizes)} sizes for {len(axes)} axes")
        out = list(shape)
        for a, size in zip(axes, sizes, strict=True):
            out[a] = size
        factors = [o / i for o, i in zip(out, shape, strict=True)]
        policy = _text(ctx.attr("keep_aspect_ratio_policy"), "stretch")
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise ctx.error(f"keep_aspect_ratio_policy '{policy}' is not supported")
            chosen = [factors[a] for a in axes]
            scale = min(chosen) if policy == "not_larger" else max(chosen)
            factors = [scale if a in axes else 1.0 for a in range(rank)]
            out = [int(scale * shape[a] + 0.5) if a in axes else shape[a] for a in range(rank)]
    elif scales is not None and np.asarray(scales).size:
        given = [float(v) for v in np.asarray(scales).reshape(-1)]
        if len(given) != len(axes):
            raise ctx.error(f"Resize has {len(given)} scales for {len(axes)} axes")
        factors = [1.0] * rank
        for a, factor in zip(axes, given, strict=True):
            factors[a] = factor
        out = [int(i * f) for i, f in zip(shape, factors, strict=True)]
    else:
        raise ctx.error("Resize needs constant scales or sizes")
    return [ResizeAxis(shape[a], out[a], factors[a], bounds[a]) for a in range(rank)]


@converter("Resize", since=11)
def resize(ctx: NodeContext) -> Value:
    """Nearest and plain (bi)linear resizing of H and W are pixel lookups of the channels-last matrix
    (`resample`); every other Resize (cubic, antialias, other axes or ranks, tf_crop_and_resize) is one
    product by a constant interpolation matrix per resized axis (`resize_by_matrices`)."""
    x = ctx.input(0)
    shape = _tensor(x).shape
    axes = resize_axes(ctx, shape)
    mode = _text(ctx.attr("mode"), "nearest")
    transform = _text(ctx.attr("coordinate_transformation_mode"), "half_pixel")
    nearest_mode = _text(ctx.attr("nearest_mode"), "round_prefer_floor")
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.error(f"Resize mode '{mode}' is not supported")
    if mode == "nearest" and ctx.attr("antialias"):
        raise ctx.error("Resize with antialias needs mode linear or cubic")
    if nearest_mode not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        raise ctx.error(f"nearest_mode '{nearest_mode}' is not supported")
    lookup = len(shape) == 4 and axes[0].identity and axes[1].identity and not ctx.attr("antialias") and \
        mode in ("nearest", "linear") and transform != "tf_crop_and_resize"
    if lookup:
        return resample(ctx, x, axes[2:], mode, transform, nearest_mode)
    return resize_by_matrices(ctx, x, axes, mode, transform, nearest_mode)


def resize_by_matrices(ctx: NodeContext, x: Value, axes: list[ResizeAxis], mode: str, transform: str,
                       nearest_mode: str) -> Value:
    """Resize axis by axis as products by constant interpolation matrices. Positions outside a
    tf_crop_and_resize region get zero rows and then the extrapolation value."""
    rank = len(axes)
    keep = np.ones([a.out for a in axes])
    value = x
    for index, axis in enumerate(axes):
        if axis.identity:
            continue
        matrix, outside = interpolation_matrix(ctx, axis, mode, transform, nearest_mode)
        if matrix.shape[0] == matrix.shape[1] and (matrix == np.eye(axis.size)).all() and not outside.any():
            continue  # e.g. a unit axis "scaled" by keep_aspect_ratio_policy
        keep = keep * (~outside).reshape([-1 if i == index else 1 for i in range(rank)])
        value = resize_axis(ctx, value, index, matrix)
    extrapolation = float(ctx.attr("extrapolation_value") or 0.0)
    if extrapolation and not keep.all():
        fill = ctx.constant(((1 - keep) * extrapolation).astype(np.float32), f"{ctx.node.output[0]}.extrapolation")
        value = ctx.create("ttir.add", [value, fill], value.type)
    return value


def resize_axis(ctx: NodeContext, x: Value, index: int, matrix: np.ndarray) -> Value:
    """x resized along axis `index` by the [out, size] matrix: x @ matrix^T for the last axis, else
    matrix @ x viewed as [before, size, after] (no view needed for the second last axis)."""
    shape = _tensor(x).shape
    out = (*shape[:index], matrix.shape[0], *shape[index + 1:])
    name = f"{ctx.node.output[0]}.interp{index}"
    if index == len(shape) - 1:
        weight = ctx.constant(np.ascontiguousarray(matrix.T, np.float32), name)
        return ctx.create("ttir.matmul", [x, weight], _tensor(x).with_shape(out))
    weight = ctx.constant(matrix.astype(np.float32), name)
    if index == len(shape) - 2:
        return ctx.create("ttir.matmul", [weight, x], _tensor(x).with_shape(out))
    before, after = math.prod(shape[:index]), math.prod(shape[index + 1:])
    view = ctx.create("ttir.reshape", [x], _tensor(x).with_shape((before, shape[index], after)))
    product = ctx.create("ttir.matmul", [weight, view], _tensor(x).with_shape((before, matrix.shape[0], after)))
    return ctx.create("ttir.reshape", [product], _tensor(x).with_shape(out))


@converter("Upsample", since=9)
def upsample(ctx: NodeContext) -> Value:
    """Opset 9's Upsample: Resize with asymmetric coordinates, nearest rounding down."""
    x = ctx.input(0)
    scales = ctx.input_constant(1)
    if scales is None or _tensor(x).rank != 4:
        raise ctx.error("Upsample is supported on NCHW inputs with constant scales")
    factors = [float(v) for v in scales]
    shape = _tensor(x).shape
    out = [int(np.floor(i * f)) for i, f in zip(shape, factors, strict=True)]
    if out[:2] != list(shape[:2]):
        raise ctx.error("only upsampling of H and W is supported")
    axes = [ResizeAxis(shape[a], out[a], factors[a]) for a in (2, 3)]
    return resample(ctx, x, axes, _text(ctx.attr("mode"), "nearest"), "asymmetric", "floor")


def resample(ctx: NodeContext, x: Value, axes: list[ResizeAxis], mode: str, transform: str,
             nearest_mode: str) -> Value:
    """Nearest: one pixel lookup; linear: four, each scaled by its constant per-pixel weight and summed."""
    n, c, h, w = _tensor(x).shape
    out = (axes[0].out, axes[1].out)
    ys = source_coordinates(ctx, axes[0], transform)[0]
    xs = source_coordinates(ctx, axes[1], transform)[0]
    if mode == "nearest":
        ids = pixel_ids(n, h, w, _nearest(ctx, ys, h, nearest_mode), _nearest(ctx, xs, w, nearest_mode))
        return pixel_lookup(ctx, x, ids, out, "resize_index")
    if mode != "linear":
        raise ctx.error(f"Resize mode '{mode}' is not supported (nearest, linear)")
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = ys - y0, xs - x0
    matrix = to_channels_last(ctx, x)
    total = None
    corners = [(y0, 1 - wy, x0, 1 - wx), (y0, 1 - wy, x1, wx), (y1, wy, x0, 1 - wx), (y1, wy, x1, wx)]
    for k, (yi, fy, xi, fx) in enumerate(corners):
        weights = np.tile((fy[:, None] * fx[None, :]).reshape(-1), n)[:, None].astype(np.float32)
        if not weights.any():
            continue
        index = ctx.constant(pixel_ids(n, h, w, yi, xi).astype(np.int32), f"{ctx.node.output[0]}.corner{k}")
        looked = ctx.create("ttir.embedding", [matrix, index], _tensor(x).with_shape((weights.size, c)),
                            {"pad_negative": True})
        scaled = ctx.create("ttir.mul", [looked, ctx.constant(weights, f"{ctx.node.output[0]}.weight{k}")],
                            looked.type)
        total = scaled if total is None else ctx.create("ttir.add", [total, scaled], looked.type)
    assert total is not None
    return from_channels_last(ctx, total, n, *out)


@converter("ConvTranspose", since=11)
def conv_transpose(ctx: NodeContext) -> Value:
    """A convolution of the zero-stuffed input: the input's pixels spread `strides` apart and padded by
    dilation * (kernel - 1) - pads (one pixel lookup, holes and padding read as zeros), then a stride-1
    convolution with the kernel flipped and its channel axes swapped per group. A 1-D one is the 2-D one
    of a one-pixel-high image, a 3-D one a sum of 2-D ones over depth planes (`conv3d_by_planes`)."""
    x, w_value = ctx.input(0), ctx.input(1)
    shape, w_shape = _tensor(x).shape, _tensor(w_value).shape
    if len(shape) not in (3, 4, 5) or len(w_shape) != len(shape):
        raise ctx.error(f"only 1-, 2- and 3-D transposed convolutions are supported, not an input of shape "
                        f"{list(shape)}")
    lifted = len(shape) == 3
    if lifted:
        w_value = ctx.create("ttir.reshape", [w_value], _tensor(w_value).with_shape((*w_shape[:2], 1, w_shape[2])))
    n, c, *sizes = (shape[0], shape[1], 1, shape[2]) if lifted else shape
    rank = len(sizes)
    ocg, kernel = _tensor(w_value).shape[1], _tensor(w_value).shape[2:]
    groups = int(ctx.attr("group") or 1)
    strides, dilations, out_pad, pads, output_shape = (
        spatial_attr(ctx, name, default, lifted)
        for name, default in (("strides", [1] * rank), ("dilations", [1] * rank), ("output_padding", [0] * rank),
                              ("pads", [0] * (2 * rank)), ("output_shape", [1])))
    output_shape = output_shape if ctx.attr("output_shape") else None
    auto_pad = _text(ctx.attr("auto_pad"), "NOTSET")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        pads = [0] * (2 * rank)
        for dim in range(rank):
            full = (sizes[dim] - 1) * strides[dim] + out_pad[dim] + (kernel[dim] - 1) * dilations[dim] + 1
            if output_shape:
                target = output_shape[-rank:][dim]
            else:
                target = sizes[dim] * strides[dim] if auto_pad != "VALID" else full
            total = full - target
            if not output_shape:
                total = max(total, 0)
            small, large = total // 2, total - total // 2
            pads[dim], pads[dim + rank] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    axes = []
    for dim in range(rank):
        reach = dilations[dim] * (kernel[dim] - 1)
        positions = np.arange(-(reach - pads[dim]),
                              (sizes[dim] - 1) * strides[dim] + 1 + reach - pads[dim + rank] + out_pad[dim])
        stuffed = (positions >= 0) & (positions % strides[dim] == 0) & (positions // strides[dim] < sizes[dim])
        axes.append(np.where(stuffed, positions // strides[dim], -1))
    ids = stuffed_ids(n, sizes, axes)
    index = ctx.constant(ids.astype(np.int32), f"{ctx.node.output[0]}.stuff_index")
    spread = ctx.create("ttir.embedding", [to_channels_last(ctx, x), index], _tensor(x).with_shape((ids.size, c)),
                        {"pad_negative": True})
    weight = _flipped_conv_weight(ctx, w_value, groups)
    bias = ctx.input(2) if ctx.has_input(2) else None
    spread_sizes = tuple(len(a) for a in axes)
    if rank == 3:
        result, out = conv3d_by_planes(ctx, spread, (n, *spread_sizes), weight, bias, [1, 1, 1], [0] * 6,
                                       dilations, groups)
        return from_channels_last(ctx, result, n, *out)
    attrs = {"input_shape": (n, *spread_sizes), "strides": (1, 1), "pads": (0, 0, 0, 0),
             "dilations": tuple(dilations)}
    oh, ow = output_hw(attrs, kernel)
    operands = [spread, weight] + ([bias] if bias is not None else [])
    result = ctx.create("ttir.conv2d", operands, _tensor(x).with_shape((n * oh * ow, groups * ocg)),
                        {**attrs, "groups": groups})
    return from_channels_last(ctx, result, n, *((ow,) if lifted else (oh, ow)))


def stuffed_ids(n: int, sizes: Sequence[int], axes: list[np.ndarray]) -> np.ndarray:
    """Flat input pixel (n, d, h, w order) of every output position of a separable lookup, -1 where any axis
    map is -1."""
    grids = np.meshgrid(np.arange(n), *axes, indexing="ij")
    inside = np.all([g >= 0 for g in grids[1:]], axis=0)
    flat = np.ravel_multi_index(tuple(np.maximum(g, 0) for g in grids), (n, *sizes))
    return np.where(inside, flat, -1).reshape(-1)


def conv3d_by_planes(ctx: NodeContext, matrix: Value, images: tuple[int, int, int, int], weight: Value,
                     bias: Value | None, strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int],
                     groups: int) -> tuple[Value, tuple[int, int, int]]:
    """A 3-D convolution of the channels-last matrix of `images` (N, D, H, W): for each depth tap i, the 2-D
    convolution of every depth plane by W[:, :, i], then the planes each output depth reads (od * stride -
    pad + i * dilation, zeros outside) picked by a row lookup, summed over the taps."""
    n, d, h, w = images
    oc, cg, kd, kh, kw = _tensor(weight).shape
    attrs = {"input_shape": (n * d, h, w), "strides": tuple(strides[1:]), "pads": (pads[1], pads[2], pads[4], pads[5]),
             "dilations": tuple(dilations[1:]), "groups": groups}
    oh, ow = output_hw(attrs, (kh, kw))
    od = window_output_size(d, kd, strides[0], pads[0], pads[3], dilations[0])
    total = None
    constant = ctx.input_constant(1) if weight is ctx.input(1) else None
    for i in range(kd):
        if constant is not None:
            tap = ctx.constant(np.ascontiguousarray(np.asarray(constant, np.float32)[:, :, i]),
                               f"{ctx.node.output[0]}.tap{i}")
        else:
            tap = ctx.create("ttir.slice", [weight], _tensor(weight).with_shape((oc, cg, 1, kh, kw)),
                             {"begins": (0, 0, i, 0, 0), "ends": (oc, cg, i + 1, kh, kw), "steps": (1,) * 5})
            tap = ctx.create("ttir.reshape", [tap], _tensor(weight).with_shape((oc, cg, kh, kw)))
        planes = ctx.create("ttir.conv2d", [matrix, tap], _tensor(matrix).with_shape((n * d * oh * ow, oc)), attrs)
        depth = np.arange(od) * strides[0] - pads[0] + i * dilations[0]
        rows = (np.arange(n)[:, None] * d + depth[None, :])[:, :, None] * (oh * ow) + np.arange(oh * ow)
        rows = np.where(((depth >= 0) & (depth < d))[None, :, None], rows, -1).reshape(-1)
        index = ctx.constant(rows.astype(np.int32), f"{ctx.node.output[0]}.planes{i}")
        picked = ctx.create("ttir.embedding", [planes, index], _tensor(planes).with_shape((rows.size, oc)),
                            {"pad_negative": True})
        total = picked if total is None else ctx.create("ttir.add", [total, picked], _tensor(picked))
    assert total is not None
    if bias is not None:
        total = ctx.create("ttir.add", [total, bias], _tensor(total))
    return total, (od, oh, ow)


def _flipped_conv_weight(ctx: NodeContext, w_value: Value, groups: int) -> Value:
    """ConvTranspose's weight [C, OC / groups, *kernel] as the equivalent convolution's [OC, C / groups, *kernel]:
    the kernel flipped and the channel axes swapped per group; at compile time for a constant weight, else
    as device moves (a reversing slice, a transpose of the two outer dims per group, a concat)."""
    cg, ocg, *kernel = _tensor(w_value).shape
    spatial = len(kernel)
    w = ctx.input_constant(1)
    if w is not None:
        w = np.asarray(w, np.float32).reshape(cg, ocg, *kernel)
        flipped = w[(slice(None), slice(None), *([slice(None, None, -1)] * spatial))]
        flipped = flipped.reshape(groups, cg // groups, ocg, *kernel).swapaxes(1, 2)
        return ctx.constant(np.ascontiguousarray(flipped.reshape(groups * ocg, cg // groups, *kernel)),
                            f"{ctx.node.output[0]}.conv_weight")
    like = _tensor(w_value)
    flipped = ctx.create("ttir.slice", [w_value], like,
                         {"begins": (0, 0, *(k - 1 for k in kernel)), "ends": (cg, ocg, *([-1] * spatial)),
                          "steps": (1, 1, *([-1] * spatial))})
    per_group = cg // groups
    parts = []
    for g in range(groups):
        part = flipped
        if groups > 1:
            part = ctx.create("ttir.slice", [flipped], like.with_shape((per_group, ocg, *kernel)),
                              {"begins": (g * per_group, 0, *([0] * spatial)),
                               "ends": ((g + 1) * per_group, ocg, *kernel), "steps": (1,) * (2 + spatial)})
        parts.append(ctx.create("ttir.transpose", [part], like.with_shape((ocg, per_group, *kernel)),
                                {"perm": (1, 0, *range(2, 2 + spatial))}))
    if len(parts) == 1:
        return parts[0]
    return ctx.create("ttir.concat", parts, like.with_shape((groups * ocg, per_group, *kernel)), {"axis": 0})


# ----------------------------------------------------------------------------------------------
# GridSample

GRID_SAMPLE_MODES = {"bilinear": "linear", "bicubic": "cubic", "linear": "linear", "cubic": "cubic",
                     "nearest": "nearest"}
GRID_SAMPLE_TAPS = {"nearest": (0,), "linear": (0, 1), "cubic": (-1, 0, 1, 2)}
GRID_SAMPLE_MAX_SIZE = 252  # positions -2..size+1 compare exactly in bf16 (integers up to 256)


@converter("GridSample", since=16)
def grid_sample(ctx: NodeContext) -> Value:
    """GridSample with the grid computed at run time: per spatial axis, each output pixel's source coordinate
    (denormalised, rounded for nearest, clamped or reflected into range by the padding mode) gives weights
    over the axis's positions, its taps floor(coord)+k compared with the positions (one-hot selections,
    exact for dims up to 252) times the interpolation coefficients; the axes' weights multiply to one row
    over the input's pixels per output pixel, and the output is the batched product X [N, C, pixels] @
    weights^T [N, pixels, outputs]. Out-of-range taps match no position (zeros padding) or are folded onto
    the positions they read by a constant matrix (border: clamped, reflection: reflected)."""
    from ttc.frontend.converters import emit_slice
    from ttc.frontend.converters_extra import Emitter

    e, x, grid = Emitter(ctx), ctx.input(0), ctx.input(1)
    n, c, *spatial = _tensor(x).shape
    mode = GRID_SAMPLE_MODES.get(_text(ctx.attr("mode"), "linear"))
    padding = _text(ctx.attr("padding_mode"), "zeros")
    if mode is None:
        raise ctx.error(f"GridSample mode '{_text(ctx.attr('mode'), 'linear')}' is not supported")
    if padding not in ("zeros", "border", "reflection"):
        raise ctx.error(f"GridSample padding_mode '{padding}' is not supported")
    if not _tensor(x).element_type.is_float or not _tensor(grid).element_type.is_float:
        raise ctx.error("GridSample is converted for float X and grid")
    if len(spatial) not in (1, 2, 3) or _tensor(grid).shape[-1] != len(spatial):
        raise ctx.error(f"GridSample of X {list(_tensor(x).shape)} by a grid {list(_tensor(grid).shape)} "
                        "is not supported")
    if max(spatial) > GRID_SAMPLE_MAX_SIZE:
        raise ctx.error(f"GridSample over a dim of {max(spatial)} (positions above {GRID_SAMPLE_MAX_SIZE} do not "
                        "compare exactly in bf16)")
    out_spatial = _tensor(grid).shape[1:-1]
    points = math.prod(out_spatial)
    rank = len(spatial)
    flat_grid = e.reshape(grid, (n, points, rank))
    align = bool(ctx.attr("align_corners"))
    weights = None
    for axis, size in enumerate(spatial):
        component = rank - 1 - axis  # the grid lists the coordinates innermost axis first (x, y, z)
        normalised = emit_slice(ctx, flat_grid, [0, 0, component], [n, points, component + 1], [1, 1, 1])
        axis_weights = _grid_sample_axis_weights(e, normalised, size, mode, padding, align)
        if weights is None:
            weights = axis_weights
            continue
        width = _tensor(weights).shape[-1]
        weights = e.reshape(e.mul(e.reshape(weights, (n, points, width, 1)), e.reshape(axis_weights, (n, points, 1, size))),
                            (n, points, width * size))
    assert weights is not None
    pixels = e.reshape(e.cast(x, _tensor(weights).element_type), (n, c, math.prod(spatial)))
    sampled = e.matmul(pixels, e.transpose(weights, (0, 2, 1)))
    return e.reshape(sampled, (n, c, *out_spatial))


def _grid_sample_axis_weights(e: Emitter, normalised: Value, size: int, mode: str, padding: str,
                              align: bool) -> Value:
    """The weights [N, P, size] of one axis's positions for each output pixel's normalised coordinate [N, P, 1],
    as onnx's reference samples: denormalise, round (nearest), clamp or reflect a coordinate outside
    [lo, hi], then the taps' coefficients placed at the positions the taps read."""
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    # align_corners: (g + 1) / 2 * (size - 1); otherwise ((g + 1) * size - 1) / 2
    coord = e.add(e.scale(normalised, (size - 1) / 2 if align else size / 2), e.const((size - 1) / 2, normalised))
    if mode == "nearest":
        coord = e.unary("round", coord)  # half to even, as the reference's np.rint
    if padding != "zeros":
        below = e.compare("lt", coord, e.const(lo, coord))
        above = e.compare("gt", coord, e.const(hi, coord))
        if padding == "border" or hi == lo:
            coord = e.where(below, e.const(0.0, coord), e.where(above, e.const(size - 1.0, coord), coord))
        else:
            coord = e.where(e.logical("or", below, above), _reflect(e, coord, lo, hi), coord)
            if mode == "nearest":
                coord = e.unary("round", coord)  # reflected integers, kept integral
    base = coord if mode == "nearest" else e.unary("floor", coord)
    taps = np.array(GRID_SAMPLE_TAPS[mode], np.float32)
    first, last = (0, size - 1) if padding == "zeros" else (-2, size + 1)
    positions = np.arange(first, last + 1, dtype=np.float32)
    n, points, _ = _tensor(coord).shape
    # hit[n, p, k, q]: tap k of output pixel p is at position q
    hit = e.compare("eq", e.reshape(base, (n, points, 1, 1)), e.const(positions[None, :] - taps[:, None], base))
    if mode == "nearest":
        spread = e.reshape(e.where(hit, e.const(1.0, coord), e.const(0.0, coord)), (n, points, len(positions)))
    else:
        coefficients = e.reshape(_grid_sample_coefficients(e, e.sub(coord, base), mode), (n, points, len(taps), 1))
        spread = e.reduce("sum", e.where(hit, coefficients, e.const(0.0, coord)), [2], False)
    if padding == "zeros":
        return spread
    fold = np.zeros((len(positions), size), np.float32)  # tap position -> the position it reads
    for row, position in enumerate(range(first, last + 1)):
        fold[row, _grid_sample_read_position(position, size, padding, lo, hi)] = 1.0
    folded = e.matmul(e.reshape(spread, (n * points, len(positions))), e.const(fold, spread))
    return e.reshape(folded, (n, points, size))


def _keys_cubic(d: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel at distances |d| < 2."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def _grid_sample_coefficients(e: Emitter, t: Value, mode: str) -> Value:
    """The taps' interpolation coefficients [N, P, taps] from the fraction t = coord - floor(coord) [N, P, 1]:
    1 - t and t (linear); Keys' cubic convolution (alpha -0.75) at distances 1 + t, t, 1 - t, 2 - t, each a
    cubic in t, as the product of the powers (1, t, t^2, t^3) by the polynomials' constant coefficients."""
    if mode == "linear":
        return e.add(e.mul(t, e.const(np.array([-1.0, 1.0]), t)), e.const(np.array([1.0, 0.0]), t))

    def power_factor(mask: list[float]) -> Value:  # t where mask is 1, else 1
        return e.add(e.mul(t, e.const(np.array(mask), t)), e.const(1.0 - np.array(mask), t))

    powers = e.mul(e.mul(power_factor([0, 1, 1, 1]), power_factor([0, 0, 1, 1])), power_factor([0, 0, 0, 1]))
    samples = np.linspace(0.0, 1.0, 4)
    values = np.stack([_keys_cubic(samples - tap) for tap in GRID_SAMPLE_TAPS["cubic"]], axis=1)  # [t, tap]
    polynomials = np.linalg.solve(np.vander(samples, 4, increasing=True), values)  # [power, tap]
    n, points, _ = _tensor(t).shape
    product = e.matmul(e.reshape(powers, (n * points, 4)), e.const(polynomials, t))
    return e.reshape(product, (n, points, 4))


def _reflect(e: Emitter, coord: Value, lo: float, hi: float) -> Value:
    """coord reflected at lo and hi until inside (the reference's repeated reflection), about the middle m of
    [lo, hi] with half-width h: u = coord - m taken modulo 4h into [-2h, 2h] (unchanged within one
    reflection, so no precision is lost there), then sign(u) * (h - ||u| - h|)."""
    middle, half = (lo + hi) / 2, (hi - lo) / 2
    centred = e.sub(coord, e.const(middle, coord))
    periods = e.unary("round", e.scale(centred, 1 / (4 * half)))
    u = e.sub(centred, e.scale(periods, 4 * half))
    folded = e.sub(e.const(half, coord), e.unary("abs", e.sub(e.unary("abs", u), e.const(half, coord))))
    signed = e.where(e.compare("lt", u, e.const(0.0, coord)), e.sub(e.const(0.0, coord), folded), folded)
    return e.add(signed, e.const(middle, coord))


def _grid_sample_read_position(position: int, size: int, padding: str, lo: float, hi: float) -> int:
    """The position a tap at `position` (at most two outside the dim) reads: clamped (border) or reflected at
    lo and hi (reflection), as the reference's pixel lookup."""
    if padding == "border" or hi == lo:
        return min(max(position, 0), size - 1)
    span, fx = hi - lo, float(position)
    while fx < lo or fx > hi:
        fx = 2 * lo - fx if fx < lo else 2 * hi - fx
    assert span > 0
    return int(fx)
