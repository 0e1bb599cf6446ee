"""Pad and Resize as data movement: pixel lookups of the channels-last matrix for the common NCHW forms, row
lookups of [rows, last dim] for any Pad, and products by constant interpolation matrices for any Resize
(and Upsample, CenterCropPad).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _tensor, converter
from ttc.frontend.converters_conv import _text, from_channels_last, to_channels_last
from ttc.frontend.converters_elementwise import _scalar
from ttc.ir.dialects import ttir

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


# ----------------------------------------------------------------------------------------------
# Pixel lookups: Pad and Resize read whole sticks of the channels-last matrix by a constant table


def pixel_lookup(ctx: NodeContext, x: Value, ids: np.ndarray, out_hw: tuple[int, int], name: str) -> Value:
    """NCHW x -> NCHW [N, C, OH, OW] whose pixel m is x's pixel ids[m] (-1: zeros), as a row lookup of the
    channels-last matrix."""
    n, c = _tensor(x).shape[:2]
    matrix = to_channels_last(ctx, x)
    index = ctx.constant(ids.astype(np.int32), f"{ctx.node.output[0]}.{name}")
    looked = ctx.create(ttir.EMBEDDING.name, [matrix, index], _tensor(x).with_shape((ids.size, c)),
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
    matrix = x if len(shape) == 2 else ctx.create(ttir.RESHAPE.name, [x], _tensor(x).with_shape((math.prod(sizes),
                                                                                             width)))
    if pad_leading or (pad_last and len(shape) > 2):
        matrix = lookup_rows(ctx, matrix, _row_ids(leading, sizes), "pad_rows")
    if pad_last:
        rows = _tensor(matrix).shape[0]
        swapped = ctx.create(ttir.TRANSPOSE.name, [matrix], _tensor(x).with_shape((width, rows)), {"perm": (1, 0)})
        swapped = lookup_rows(ctx, swapped, maps[-1], "pad_columns")
        matrix = ctx.create(ttir.TRANSPOSE.name, [swapped], _tensor(x).with_shape((rows, len(maps[-1]))),
                            {"perm": (1, 0)})
        if len(shape) > 2:  # a lookup between the transpose and the reshape, which together would move elements
            matrix = lookup_rows(ctx, matrix, np.arange(rows), "pad_regroup")
    result = matrix if _tensor(matrix).shape == out else ctx.create(ttir.RESHAPE.name, [matrix],
                                                                     _tensor(x).with_shape(out))
    if (isinstance(value, float) and value == 0.0) or not border.any():
        return result
    fill = _scalar(ctx, value, "pad_value") if isinstance(value, float) else value
    mask = ctx.constant(border, f"{ctx.node.output[0]}.pad_border")
    return ctx.create(ttir.WHERE.name, [mask, fill, result], _tensor(result))


def _row_ids(maps: list[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """The flat source row of each output row of a gather along the leading axes (-1 where any map is -1)."""
    grids = np.meshgrid(*maps, indexing="ij")
    inside = np.all([g >= 0 for g in grids], axis=0)
    flat = np.ravel_multi_index(tuple(np.maximum(g, 0) for g in grids), tuple(sizes))
    return np.where(inside, flat, -1).reshape(-1)


def lookup_rows(ctx: NodeContext, matrix: Value, ids: np.ndarray, name: str) -> Value:
    """Rows ids of the matrix (-1: a zero row), by a constant table."""
    index = ctx.constant(ids.astype(np.int32), f"{ctx.node.output[0]}.{name}")
    return ctx.create(ttir.EMBEDDING.name, [matrix, index], _tensor(matrix).with_shape((ids.size,
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
        value = ctx.create(ttir.ADD.name, [value, fill], value.type)
    return value


def resize_axis(ctx: NodeContext, x: Value, index: int, matrix: np.ndarray) -> Value:
    """x resized along axis `index` by the [out, size] matrix: x @ matrix^T for the last axis, else
    matrix @ x viewed as [before, size, after] (no view needed for the second last axis)."""
    shape = _tensor(x).shape
    out = (*shape[:index], matrix.shape[0], *shape[index + 1:])
    name = f"{ctx.node.output[0]}.interp{index}"
    if index == len(shape) - 1:
        weight = ctx.constant(np.ascontiguousarray(matrix.T, np.float32), name)
        return ctx.create(ttir.MATMUL.name, [x, weight], _tensor(x).with_shape(out))
    weight = ctx.constant(matrix.astype(np.float32), name)
    if index == len(shape) - 2:
        return ctx.create(ttir.MATMUL.name, [weight, x], _tensor(x).with_shape(out))
    before, after = math.prod(shape[:index]), math.prod(shape[index + 1:])
    view = ctx.create(ttir.RESHAPE.name, [x], _tensor(x).with_shape((before, shape[index], after)))
    product = ctx.create(ttir.MATMUL.name, [weight, view], _tensor(x).with_shape((before, matrix.shape[0], after)))
    return ctx.create(ttir.RESHAPE.name, [product], _tensor(x).with_shape(out))


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
        looked = ctx.create(ttir.EMBEDDING.name, [matrix, index], _tensor(x).with_shape((weights.size, c)),
                            {"pad_negative": True})
        scaled = ctx.create(ttir.MUL.name, [looked, ctx.constant(weights, f"{ctx.node.output[0]}.weight{k}")],
                            looked.type)
        total = scaled if total is None else ctx.create(ttir.ADD.name, [total, scaled], looked.type)
    assert total is not None
    return from_channels_last(ctx, total, n, *out)
