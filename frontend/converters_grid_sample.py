"""GridSample: per-axis interpolation weights computed on the device from the grid, as products with
selection matrices.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _tensor, converter
from ttc.frontend.converters_conv import _text
from ttc.frontend.converters_emitter import Emitter

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


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
