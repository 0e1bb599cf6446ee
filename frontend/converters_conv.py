"""Convolutions and pools on the channels-last matrix [N*H*W, C], the tiled form the device keeps
activations in: each converter wraps its `ttir.conv2d` / `ttir.pool2d` between the layout changes
NCHW -> [N*H*W, C] (transpose to NHWC, reshape) and back. Between two such ops the back-and-forth changes
meet and cancel (`channels-last` sinks them through elementwise ops), so the layout changes once at the
graph edges. A 1-D op is the 2-D op of a one-pixel-high image ([N*L, C]); 3-D pools are separable and 3-D
convolutions sums of 2-D ones over depth planes. ConvTranspose is a convolution of the zero-stuffed input
with the flipped kernel; Col2Im a sum of shifted lookups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _reshape_to, _tensor, converter
from ttc.ir.dialects import ttir
from ttc.ir.dialects.ttir import window_output_size

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def to_channels_last(ctx: NodeContext, x: Value) -> Value:
    """NCHW -> the matrix [N*H*W, C] (NCL -> [N*L, C], NCDHW -> [N*D*H*W, C])."""
    n, c, *spatial = _tensor(x).shape
    rank = len(spatial) + 2
    last = _tensor(x).with_shape((n, *spatial, c))
    moved = ctx.create(ttir.TRANSPOSE.name, [x], last, {"perm": (0, *range(2, rank), 1)})
    return ctx.create(ttir.RESHAPE.name, [moved], _tensor(x).with_shape((n * math.prod(spatial), c)))


def from_channels_last(ctx: NodeContext, x: Value, n: int, *spatial: int) -> Value:
    """The matrix [N*H*W, C] -> NCHW (and NCL, NCDHW by the number of spatial dims given)."""
    c = _tensor(x).shape[1]
    rank = len(spatial) + 2
    last = ctx.create(ttir.RESHAPE.name, [x], _tensor(x).with_shape((n, *spatial, c)))
    return ctx.create(ttir.TRANSPOSE.name, [last], _tensor(x).with_shape((n, c, *spatial)),
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
        weight = ctx.create(ttir.RESHAPE.name, [weight], _tensor(weight).with_shape((*w_shape[:2], 1, w_shape[2])))
    oc, _, kh, kw = _tensor(weight).shape
    attrs = window_attrs(ctx, x, (kh, kw))
    groups = int(ctx.attr("group") or 1)
    n = attrs["input_shape"][0]
    oh, ow = output_hw(attrs, (kh, kw))
    if oh <= 0 or ow <= 0:
        raise ctx.error("the convolution has an empty output")
    bias = ctx.input(2) if ctx.has_input(2) else None
    on_host = len(w_shape) == 4 and is_graph_input(ctx, x)  # the host may regroup the input as it writes it
    fold = stride_fold(ctx, attrs, (kh, kw), groups, (oh, ow)) if on_host else None
    if on_host and is_patch_window(attrs, (kh, kw), groups):
        result = patch_matmul(ctx, x, weight, bias, (kh, kw), (oh, ow))
    elif on_host and host_im2col(ctx, attrs, (kh, kw), groups, (oh, ow), fold):
        result = host_im2col_conv(ctx, x, bias, attrs, (kh, kw), (oh, ow))
    elif fold is not None:
        result = folded_conv(ctx, x, fold, bias, (oh, ow))
    else:
        operands = [to_channels_last(ctx, x), weight] + ([bias] if bias is not None else [])
        result = ctx.create(ttir.CONV2D.name, operands, _tensor(x).with_shape((n * oh * ow, oc)),
                            {**attrs, "groups": groups})
    return from_channels_last(ctx, result, n, *((ow,) if len(w_shape) == 3 else (oh, ow)))


def is_graph_input(ctx: NodeContext, x: Value) -> bool:
    """x is an input of the graph being imported, written to the device by the host."""
    return any(x is arg for arg in ctx.importer.func.args)


def is_patch_window(attrs: dict, kernel: Sequence[int], groups: int) -> bool:
    """Windows that tile the input exactly, without overlap or padding (a patch embedding: kernel = stride,
    ViT's 16x16 and 32x32, ConvNeXt's 4x4 stem and 2x2 downsampling), of more than one position, one group."""
    _, h, w = attrs["input_shape"]
    return (groups == 1 and tuple(attrs["strides"]) == tuple(kernel) and not any(attrs["pads"])
            and tuple(attrs["dilations"]) == (1, 1) and math.prod(kernel) > 1 and h % kernel[0] == 0
            and w % kernel[1] == 0)


@dataclass(frozen=True)
class StrideFold:
    """A strided convolution of a graph input as a stride-1 convolution of its space-to-depth regrouping
    (`stride_fold`): the host writes [N, C, H, W] as the channels-last [N*(H/sh)*(W/sw), sh*sw*C] (channels
    ordered (row phase, column phase, c)), and the folded weight [OC, sh*sw*C, KH', KW'] is zero where the
    original kernel has no position."""

    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # the stride-1 convolution's [top, left, bottom, right]
    weight: np.ndarray


def stride_fold(ctx: NodeContext, attrs: dict, kernel: Sequence[int], groups: int,
                out: tuple[int, int]) -> StrideFold | None:
    """The stride fold of a convolution (ResNet's 7x7 stride-2 stem on a 3-channel image), or None when it does
    not apply or does not shrink the stacked weight. Along one axis, window position k of output o reads input
    row s*o + k - p; writing k - p = s*a + b (b the phase, 0 <= b < s) makes it row o + a of phase b of the
    regrouped input, so the convolution becomes a stride-1 one of ceil-many positions a over s*s times the
    channels, each input element written once by the host (no window overlap is materialised). Taken only for
    one group, no dilation, a stride above 1 dividing the input, a constant weight, and when the stacked
    weight's rows in whole channel tiles (the im2col matrix's width) get fewer: with few channels the channel
    padding to a tile absorbs the phases (the stem: 49 positions x 1 tile -> 16 x 1)."""
    _, h, w = attrs["input_shape"]
    strides, pads = tuple(attrs["strides"]), attrs["pads"]
    weight = ctx.input_constant(1)
    if (groups != 1 or tuple(attrs["dilations"]) != (1, 1) or strides == (1, 1) or h % strides[0]
            or w % strides[1] or weight is None):
        return None
    begin, end, folded_kernel = [], [], []
    for axis, (size, k, s, o) in enumerate(zip((h, w), kernel, strides, out, strict=True)):
        low, high = (-pads[axis]) // s, (k - 1 - pads[axis]) // s
        begin.append(-low)
        end.append(o + high - size // s)
        folded_kernel.append(high - low + 1)
    c = int(weight.shape[1])
    tiles = lambda channels: -(-channels // 32)  # noqa: E731
    if (min(begin + end) < 0 or
            tiles(strides[0] * strides[1] * c) * math.prod(folded_kernel) >= tiles(c) * math.prod(kernel)):
        return None
    (sh, sw), (fh, fw) = strides, folded_kernel
    source = np.asarray(weight, np.float32)
    folded = np.zeros((source.shape[0], sh, sw, c, fh, fw), np.float32)
    for a in range(fh):
        for b in range(sh):
            ky = sh * (a - begin[0]) + b + pads[0]
            if not 0 <= ky < kernel[0]:
                continue
            for a2 in range(fw):
                for b2 in range(sw):
                    kx = sw * (a2 - begin[1]) + b2 + pads[1]
                    if 0 <= kx < kernel[1]:
                        folded[:, b, b2, :, a, a2] = source[:, :, ky, kx]
    return StrideFold(strides, (begin[0], begin[1], end[0], end[1]),
                      folded.reshape(source.shape[0], sh * sw * c, fh, fw))


def folded_conv(ctx: NodeContext, x: Value, fold: StrideFold, bias: Value | None, out: tuple[int, int]) -> Value:
    """The convolution by its stride fold: the regrouping [N, C, H, W] -> [N, H/sh, W/sw, sh, sw, C] ->
    [N*(H/sh)*(W/sw), sh*sw*C] is the host's as it writes the graph input (`tilize.split_on_host`), then one
    stride-1 `ttir.conv2d` with the folded weight."""
    n, c, h, w = _tensor(x).shape
    (sh, sw), (oh, ow) = fold.strides, out
    like = _tensor(x)
    split = _reshape_to(ctx, x, (n, c, h // sh, sh, w // sw, sw))
    moved = ctx.create(ttir.TRANSPOSE.name, [split], like.with_shape((n, h // sh, w // sw, sh, sw, c)),
                       {"perm": (0, 2, 4, 3, 5, 1)})
    matrix = _reshape_to(ctx, moved, (n * (h // sh) * (w // sw), sh * sw * c))
    weight = ctx.constant(fold.weight, f"{ctx.node.output[0]}.stride_fold_weight")
    attrs = {"input_shape": (n, h // sh, w // sw), "strides": (1, 1), "pads": fold.pads, "dilations": (1, 1),
             "groups": 1}
    oc = fold.weight.shape[0]
    return ctx.create(ttir.CONV2D.name, [matrix, weight] + ([bias] if bias is not None else []),
                      like.with_shape((n * oh * ow, oc)), attrs)


def host_im2col(ctx: NodeContext, attrs: dict, kernel: Sequence[int], groups: int, out: tuple[int, int],
                fold: StrideFold | None) -> bool:
    """Whether the host writes a graph input's im2col matrix for this convolution (`host_im2col_conv`): one group,
    a constant weight, and no more tiles than the host would write of the input otherwise (the stride fold's
    matrix where that applies, else the NHWC image), so the host's write does not grow. A 3-channel image's 3x3
    stem (MobileNet's) has K = 27, one tile, where its im2col lookup reads 9 positions of a whole channel tile
    each (4 stride-folded ones); a 7x7 stem's 147 columns would write five times the stride fold's tiles, and it
    keeps the fold (`fold`: the convolution's, or None)."""
    weight = ctx.input_constant(1)
    if groups != 1 or weight is None:
        return False
    n, h, w = attrs["input_shape"]
    c = int(weight.shape[1])
    tiles = lambda rows, cols: -(-rows // 32) * -(-cols // 32)  # noqa: E731
    written = n * h * tiles(w, c)  # the NHWC image: a [W, C] tile matrix per image row
    if fold is not None:
        sh, sw = fold.strides
        written = min(written, tiles(n * (h // sh) * (w // sw), sh * sw * c))
    return tiles(n * out[0] * out[1], kernel[0] * kernel[1] * c) <= written


def host_im2col_conv(ctx: NodeContext, x: Value, bias: Value | None, attrs: dict, kernel: Sequence[int],
                     out: tuple[int, int]) -> Value:
    """The convolution of a graph input as the matmul of its im2col matrix [N*OH*OW, KH*KW*C] (`ttir.im2col`,
    which the host writes: tilize's `to_layout {window}`) by the weight as [KH*KW*C, OC] in the same (kernel row,
    kernel column, channel) order, plus the bias: the channels-last matrix [N*OH*OW, OC], with no device lookup
    and no channel widening."""
    n, c, _, _ = _tensor(x).shape
    (kh, kw), (oh, ow) = kernel, out
    like = _tensor(x)
    cols = ctx.create(ttir.IM2COL.name, [x], like.with_shape((n * oh * ow, kh * kw * c)),
                      {"kernel": (kh, kw), "strides": attrs["strides"], "pads": attrs["pads"],
                       "dilations": attrs["dilations"]})
    w = np.asarray(ctx.input_constant(1), np.float32)  # [OC, C, KH, KW]
    matrix = ctx.constant(np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw * c, w.shape[0])),
                          f"{ctx.node.output[0]}.im2col_weight")
    result = ctx.create(ttir.MATMUL.name, [cols, matrix], like.with_shape((n * oh * ow, w.shape[0])))
    if bias is not None:
        result = ctx.create(ttir.ADD.name, [result, bias], _tensor(result))
    return result


def patch_matmul(ctx: NodeContext, x: Value, weight: Value, bias: Value | None, kernel: Sequence[int],
                 out: tuple[int, int]) -> Value:
    """A convolution whose windows tile the input (`is_patch_window`) as a space-to-depth movement and one
    matmul: [N, C, H, W] regrouped to [N, OH, OW, C, KH, KW] and flattened to the
    patch matrix [N*OH*OW, C*KH*KW] (each input element read once: no window overlaps another), times the
    weight flattened to [C*KH*KW, OC] (its own element order, no channel padding), plus the bias. The result
    is the convolution's channels-last matrix [N*OH*OW, OC]. Taken for a graph input (ViT's and ConvNeXt's
    image), whose regrouping the host does as it writes the input (`tilize.split_on_host`); a computed input
    goes by the im2col lookup, the device's own space-to-depth (`windows.Conv2dToDevice`)."""
    n, c, _, _ = _tensor(x).shape
    (kh, kw), (oh, ow) = kernel, out
    like = _tensor(x)
    split = _reshape_to(ctx, x, (n, c, oh, kh, ow, kw))
    moved = ctx.create(ttir.TRANSPOSE.name, [split], like.with_shape((n, oh, ow, c, kh, kw)),
                       {"perm": (0, 2, 4, 1, 3, 5)})
    patches = _reshape_to(ctx, moved, (n * oh * ow, c * kh * kw))
    oc = _tensor(weight).shape[0]
    constant = ctx.input_constant(1)
    if constant is not None:
        matrix = ctx.constant(np.ascontiguousarray(np.asarray(constant, np.float32).reshape(oc, -1).T),
                              f"{ctx.node.output[0]}.patch_weight")
        result = ctx.create(ttir.MATMUL.name, [patches, matrix], like.with_shape((n * oh * ow, oc)))
    else:
        rows = _reshape_to(ctx, weight, (oc, c * kh * kw))
        result = ctx.create(ttir.MATMUL.name, [patches, rows], like.with_shape((n * oh * ow, oc)),
                            {"transpose_b": True})
    if bias is not None:
        result = ctx.create(ttir.ADD.name, [result, bias], _tensor(result))
    return result


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
    result = ctx.create(ttir.POOL2D.name, [matrix], _tensor(matrix).with_shape((n * oh * ow, c)),
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
        return ctx.create(ttir.MUL.name, [a, b], x.type)

    magnitude = ctx.create(ttir.ABS.name, [x], x.type)
    power = magnitude
    for _ in range(p - 1):
        power = mul(power, magnitude)
    pooled = _pool(ctx, "avg", power, count_include_pad=True)
    dtype = _tensor(x).element_type.numpy_dtype()
    window = math.prod(int(k) for k in ctx.attr("kernel_shape"))
    total = ctx.create(ttir.MUL.name, [pooled, ctx.constant(np.asarray(window, dtype), f"{ctx.node.output[0]}.window")],
                       pooled.type)
    if p == 1:
        return total
    if p == 2:
        return ctx.create(ttir.SQRT.name, [total], total.type)
    log = ctx.create(ttir.LOG.name, [total], total.type)
    scaled = ctx.create(ttir.MUL.name, [log, ctx.constant(np.asarray(1.0 / p, dtype), f"{ctx.node.output[0]}.inv_p")],
                        log.type)
    return ctx.create(ttir.EXP.name, [scaled], scaled.type)


def _global_pool(ttir_op: str):
    def convert(ctx: NodeContext) -> Value:
        x = ctx.input(0)
        shape = _tensor(x).shape
        axes = tuple(range(2, len(shape)))
        result = tuple(d if i < 2 else 1 for i, d in enumerate(shape))
        return ctx.create(ttir_op, [x], _tensor(x).with_shape(result), {"axes": axes, "keepdims": True})

    return convert


converter("GlobalAveragePool", since=1)(_global_pool(ttir.REDUCE_MEAN.name))
converter("GlobalMaxPool", since=1)(_global_pool(ttir.REDUCE_MAX.name))


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
    summed = ctx.create(ttir.MATMUL.name, [rows, matrix], _tensor(x).with_shape((n * (ck // kernel), pixels)))
    return _reshape_to(ctx, summed, (n, ck // kernel, *image))


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
        w_value = ctx.create(ttir.RESHAPE.name, [w_value], _tensor(w_value).with_shape((*w_shape[:2], 1, w_shape[2])))
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
    bias = ctx.input(2) if ctx.has_input(2) else None
    if rank == 2 and not lifted and is_block_upsample(strides, kernel, dilations, out_pad, pads) \
            and ctx.input_constant(1) is not None:
        return depth_to_space_conv_transpose(ctx, x, np.asarray(ctx.input_constant(1), np.float32), bias, groups,
                                             pads)
    axes = []
    for dim in range(rank):
        reach = dilations[dim] * (kernel[dim] - 1)
        positions = np.arange(-(reach - pads[dim]),
                              (sizes[dim] - 1) * strides[dim] + 1 + reach - pads[dim + rank] + out_pad[dim])
        stuffed = (positions >= 0) & (positions % strides[dim] == 0) & (positions // strides[dim] < sizes[dim])
        axes.append(np.where(stuffed, positions // strides[dim], -1))
    ids = stuffed_ids(n, sizes, axes)
    index = ctx.constant(ids.astype(np.int32), f"{ctx.node.output[0]}.stuff_index")
    spread = ctx.create(ttir.EMBEDDING.name, [to_channels_last(ctx, x), index], _tensor(x).with_shape((ids.size, c)),
                        {"pad_negative": True})
    weight = _flipped_conv_weight(ctx, w_value, groups)
    spread_sizes = tuple(len(a) for a in axes)
    if rank == 3:
        result, out = conv3d_by_planes(ctx, spread, (n, *spread_sizes), weight, bias, [1, 1, 1], [0] * 6,
                                       dilations, groups)
        return from_channels_last(ctx, result, n, *out)
    attrs = {"input_shape": (n, *spread_sizes), "strides": (1, 1), "pads": (0, 0, 0, 0),
             "dilations": tuple(dilations)}
    oh, ow = output_hw(attrs, kernel)
    operands = [spread, weight] + ([bias] if bias is not None else [])
    result = ctx.create(ttir.CONV2D.name, operands, _tensor(x).with_shape((n * oh * ow, groups * ocg)),
                        {**attrs, "groups": groups})
    return from_channels_last(ctx, result, n, *((ow,) if lifted else (oh, ow)))


def is_block_upsample(strides: Sequence[int], kernel: Sequence[int], dilations: Sequence[int],
                      out_pad: Sequence[int], pads: Sequence[int]) -> bool:
    """A transposed convolution whose input pixels write disjoint KH x KW blocks that tile its output: stride =
    kernel, no dilation, no output padding, pads only cropping."""
    return (list(strides) == list(kernel) and not any(out_pad) and all(d == 1 for d in dilations)
            and all(p >= 0 for p in pads))


def depth_to_space_conv_transpose(ctx: NodeContext, x: Value, w: np.ndarray, bias: Value | None, groups: int,
                                  pads: Sequence[int]) -> Value:
    """A ConvTranspose whose stride equals its kernel (DBNet's and U-Net's 2x2 stride-2 upsampling): each input
    pixel writes its own KH x KW block of the output and no two blocks overlap, so the output is one matmul of
    the channels-last matrix [N*H*W, C] by the weight as [C, KH*KW*OC] (block-diagonal over the groups),
    then a depth-to-space movement: [N, H, W, KH, KW, OC] -> [N, H, KH, W, KW, OC], the channels-last matrix
    of the [N*H*KH*W*KW] output pixels. Pads crop the output's borders (a slice), the bias is added last. No
    zero-stuffed input, no window lookup."""
    n, c, h, wd = _tensor(x).shape
    _, ocg, kh, kw = w.shape
    oc = groups * ocg
    per_group = c // groups
    matrix = np.zeros((c, kh, kw, oc), np.float32)  # [input channel, i, j, output channel]
    for g in range(groups):
        block = w[g * per_group:(g + 1) * per_group]  # [C / groups, OC / groups, KH, KW]
        matrix[g * per_group:(g + 1) * per_group, :, :, g * ocg:(g + 1) * ocg] = block.transpose(0, 2, 3, 1)
    like = _tensor(x)
    weight = ctx.constant(matrix.reshape(c, kh * kw * oc), f"{ctx.node.output[0]}.blocks_weight")
    blocks = ctx.create(ttir.MATMUL.name, [to_channels_last(ctx, x), weight],
                        like.with_shape((n * h * wd, kh * kw * oc)))
    split = _reshape_to(ctx, blocks, (n, h, wd, kh, kw, oc))
    moved = ctx.create(ttir.TRANSPOSE.name, [split], like.with_shape((n, h, kh, wd, kw, oc)),
                       {"perm": (0, 1, 3, 2, 4, 5)})
    full_h, full_w = h * kh, wd * kw
    top, left, bottom, right = pads
    oh, ow = full_h - top - bottom, full_w - left - right
    if oh <= 0 or ow <= 0:
        raise ctx.error("the transposed convolution has an empty output")
    pixels = _reshape_to(ctx, moved, (n, full_h, full_w, oc))
    if (oh, ow) != (full_h, full_w):
        pixels = ctx.create(ttir.SLICE.name, [pixels], like.with_shape((n, oh, ow, oc)),
                            {"begins": (0, top, left, 0), "ends": (n, top + oh, left + ow, oc), "steps": (1, 1, 1, 1)})
    result = _reshape_to(ctx, pixels, (n * oh * ow, oc))
    if bias is not None:
        result = ctx.create(ttir.ADD.name, [result, bias], _tensor(result))
    return from_channels_last(ctx, result, n, oh, ow)


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
            tap = ctx.create(ttir.SLICE.name, [weight], _tensor(weight).with_shape((oc, cg, 1, kh, kw)),
                             {"begins": (0, 0, i, 0, 0), "ends": (oc, cg, i + 1, kh, kw), "steps": (1,) * 5})
            tap = ctx.create(ttir.RESHAPE.name, [tap], _tensor(weight).with_shape((oc, cg, kh, kw)))
        planes = ctx.create(ttir.CONV2D.name, [matrix, tap], _tensor(matrix).with_shape((n * d * oh * ow, oc)), attrs)
        depth = np.arange(od) * strides[0] - pads[0] + i * dilations[0]
        rows = (np.arange(n)[:, None] * d + depth[None, :])[:, :, None] * (oh * ow) + np.arange(oh * ow)
        rows = np.where(((depth >= 0) & (depth < d))[None, :, None], rows, -1).reshape(-1)
        index = ctx.constant(rows.astype(np.int32), f"{ctx.node.output[0]}.planes{i}")
        picked = ctx.create(ttir.EMBEDDING.name, [planes, index], _tensor(planes).with_shape((rows.size, oc)),
                            {"pad_negative": True})
        total = picked if total is None else ctx.create(ttir.ADD.name, [total, picked], _tensor(picked))
    assert total is not None
    if bias is not None:
        total = ctx.create(ttir.ADD.name, [total, bias], _tensor(total))
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
    flipped = ctx.create(ttir.SLICE.name, [w_value], like,
                         {"begins": (0, 0, *(k - 1 for k in kernel)), "ends": (cg, ocg, *([-1] * spatial)),
                          "steps": (1, 1, *([-1] * spatial))})
    per_group = cg // groups
    parts = []
    for g in range(groups):
        part = flipped
        if groups > 1:
            part = ctx.create(ttir.SLICE.name, [flipped], like.with_shape((per_group, ocg, *kernel)),
                              {"begins": (g * per_group, 0, *([0] * spatial)),
                               "ends": ((g + 1) * per_group, ocg, *kernel), "steps": (1,) * (2 + spatial)})
        parts.append(ctx.create(ttir.TRANSPOSE.name, [part], like.with_shape((ocg, per_group, *kernel)),
                                {"perm": (1, 0, *range(2, 2 + spatial))}))
    if len(parts) == 1:
        return parts[0]
    return ctx.create(ttir.CONCAT.name, parts, like.with_shape((groups * ocg, per_group, *kernel)), {"axis": 0})

def _text(value: str | bytes | None, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else value
