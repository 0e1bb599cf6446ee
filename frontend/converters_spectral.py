"""DFT and STFT as products by constant matrices.

A discrete Fourier transform along one axis, with its length, direction and one-sidedness fixed at
compile time, is a linear map of the values along that axis (real, or complex as interleaved
real/imaginary pairs). The converter builds that map's real matrix by transforming the basis vectors
with numpy's FFT, the transform onnx's reference uses (irfft included, which reads only the real part of
the first and Nyquist bins), and the device multiplies every line of the input by it, the matrix held to
about 16 bits as two bf16 parts (`precise_product`). An STFT is the same map applied to frames of the
signal, picked by a constant 0/1 selection and weighted by the window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np

from ttc.frontend.converters import _reshape_to, _tensor, converter
from ttc.ir.dialects import ttir

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value

MAX_MATRIX = 1 << 22  # elements of a transform's constant matrix (16 MiB in float32)


def transform_matrix(transform: Callable[[np.ndarray], np.ndarray], length: int, channels: int) -> np.ndarray:
    """The real matrix [length * channels, outputs] of a linear `transform` of `length` values, each real
    (channels 1) or complex as an interleaved pair (channels 2), to a real array: row j is the transform
    of the j-th basis vector."""
    rows = []
    for j in range(length * channels):
        basis = np.zeros(length * channels)
        basis[j] = 1.0
        values = basis if channels == 1 else basis[0::2] + 1j * basis[1::2]
        rows.append(np.asarray(transform(values), dtype=np.float64).reshape(-1))
    return np.stack(rows)


def dft_transform(length: int, inverse: bool, onesided: bool) -> Callable[[np.ndarray], np.ndarray]:
    """One line's DFT as onnx's reference computes it: [K, 2] (re, im) pairs, or [L, 1] for irfft."""
    def pairs(z: np.ndarray) -> np.ndarray:
        return np.stack([z.real, z.imag], axis=-1)

    if inverse and onesided:
        return lambda values: np.fft.irfft(values, n=length)[:, None]
    if inverse:
        return lambda values: pairs(np.fft.ifft(values, n=length))
    if onesided:
        return lambda values: pairs(np.fft.fft(values, n=length)[: length // 2 + 1])
    return lambda values: pairs(np.fft.fft(values, n=length))


def precise_product(ctx: NodeContext, rows: Value, matrix: np.ndarray, name: str) -> Value:
    """rows [B, M] times the constant matrix [M, K] with the matrix's values held to about 16 bits: it is split
    into its bf16 rounding and the rest (`hi + lo`, each a bf16 weight) and the two products added, since a
    transform's sums cancel (a ramp's high bins are small differences of large terms) and one bf16 matrix
    would misplace them by 2**-9 of the large terms."""
    if matrix.size > MAX_MATRIX:
        raise ctx.error(f"its constant matrix {list(matrix.shape)} is larger than ttc builds ({MAX_MATRIX} "
                        "elements)")
    high = matrix.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    low = (matrix - high.astype(np.float64)).astype(np.float32)
    result = _tensor(rows).with_shape((_tensor(rows).shape[0], matrix.shape[1]))
    products = [ctx.create(ttir.MATMUL.name, [rows, ctx.constant(part, f"{name}.{tag}")], result)
                for part, tag in ((high, "hi"), (low, "lo"))]
    return ctx.create(ttir.ADD.name, products, result)


def lines_times(ctx: NodeContext, x: Value, axis: int, matrix: np.ndarray, out_shape: tuple[int, int],
                name: str) -> Value:
    """x [..., N, C] with the transform axis `axis` (not the last): every line along `axis` (with its C
    values per position) times `matrix` [N * C, K * C'], giving [..., K, C'] at the same axis."""
    shape = _tensor(x).shape
    rank = len(shape)
    perm = (*(d for d in range(rank - 1) if d != axis), axis, rank - 1)
    moved = x if perm == tuple(range(rank)) else ctx.create(
        ttir.TRANSPOSE.name, [x], _tensor(x).with_shape(tuple(shape[p] for p in perm)), {"perm": perm})
    lead = tuple(shape[p] for p in perm[:-2])
    batch = int(np.prod(lead))
    rows = _reshape_to(ctx, moved, (batch, shape[axis] * shape[-1]))
    result = _reshape_to(ctx, precise_product(ctx, rows, matrix, name), (*lead, *out_shape))
    back = tuple(int(i) for i in np.argsort(perm))
    if back == tuple(range(rank)):
        return result
    moved_shape = _tensor(result).shape
    return ctx.create(ttir.TRANSPOSE.name, [result], _tensor(result).with_shape(tuple(moved_shape[p] for p in back)),
                      {"perm": back})


def _constant_int(ctx: NodeContext, index: int, what: str) -> int | None:
    if not ctx.has_input(index):
        return None
    value = ctx.input_constant(index)
    if value is None:
        raise ctx.error(f"{what} must be a constant")
    return int(np.asarray(value).reshape(-1)[0])


def _dft(ctx: NodeContext, axis: int) -> Value:
    x = ctx.input(0)
    shape = _tensor(x).shape
    rank = len(shape)
    axis = axis % rank
    channels = shape[-1]
    if axis == rank - 1 or channels not in (1, 2):
        raise ctx.error(f"the input {list(shape)} needs a last dim of 1 (real) or 2 (complex) and another "
                        f"transform axis (got {axis})")
    inverse, onesided = bool(ctx.attr("inverse")), bool(ctx.attr("onesided"))
    length = _constant_int(ctx, 1, "dft_length")
    if length is None:
        length = 2 * (shape[axis] - 1) if inverse and onesided else shape[axis]
    transform = dft_transform(length, inverse, onesided)
    matrix = transform_matrix(transform, shape[axis], channels)
    out_shape = np.asarray(transform(np.zeros(shape[axis], complex if channels == 2 else float))).shape
    return lines_times(ctx, x, axis, matrix, out_shape, f"{ctx.node.output[0]}.dft")


@converter("DFT", since=17)
def dft_17(ctx: NodeContext) -> Value:
    """DFT with `axis` an attribute (opset 17..19)."""
    return _dft(ctx, int(ctx.attr("axis")))


@converter("DFT", since=20)
def dft_20(ctx: NodeContext) -> Value:
    """DFT with `axis` a constant input (default -2)."""
    axis = _constant_int(ctx, 2, "axis")
    return _dft(ctx, -2 if axis is None else axis)


@converter("STFT", since=17)
def stft(ctx: NodeContext) -> Value:
    """signal [B, N, C] -> [B, frames, K, 2]: the frames as rows (a gather of the signal by a constant table
    of positions), weighted by the window, times a constant DFT matrix of the frame length."""
    from ttc.ir.types import ScalarType, TensorType

    signal = ctx.input(0)
    batch, samples, channels = _tensor(signal).shape
    step = _constant_int(ctx, 1, "frame_step")
    length = _constant_int(ctx, 3, "frame_length")
    window = ctx.input(2) if ctx.has_input(2) else None
    if length is None:
        if window is None:
            raise ctx.error("a window or a frame_length is needed")
        length = _tensor(window).shape[0]
    if step is None or step < 1 or not 0 < length <= samples:
        raise ctx.error(f"frame_step {step} and frame_length {length} do not frame {samples} samples")
    frames = (samples - length) // step + 1
    onesided = bool(ctx.attr("onesided"))
    transform = dft_transform(length, False, onesided)
    bins = length // 2 + 1 if onesided else length
    # row (b, f) of the frames, column (t, c): the signal's flat position ((b * N) + f * step + t) * C + c
    b, f, t, c = np.ix_(np.arange(batch), np.arange(frames), np.arange(length), np.arange(channels))
    positions = (((b * samples) + f * step + t) * channels + c).reshape(batch * frames, length * channels)
    flat = _reshape_to(ctx, signal, (batch * samples * channels,))
    table = ctx.importer.add_constant(TensorType(positions.shape, ScalarType("i64")),
                                      f"{ctx.node.output[0]}.frames", ctx.loc, data=positions.astype(np.int64))
    framed = ctx.create(ttir.GATHER.name, [flat, table], _tensor(signal).with_shape(positions.shape), {"axis": 0})
    if window is not None:
        weights = _reshape_to(ctx, window, (length,))
        if channels > 1:  # the window's value at t weighs both parts of a complex sample
            repeat = ctx.importer.add_constant(TensorType((length * channels,), ScalarType("i64")),
                                               f"{ctx.node.output[0]}.window_repeat", ctx.loc,
                                               data=np.repeat(np.arange(length), channels).astype(np.int64))
            weights = ctx.create(ttir.GATHER.name, [weights, repeat], _tensor(weights).with_shape((length * channels,)),
                                 {"axis": 0})
        row = _reshape_to(ctx, weights, (1, length * channels))
        framed = ctx.create(ttir.MUL.name, [framed, row], _tensor(framed).with_shape(_tensor(framed).shape))
    spectrum = precise_product(ctx, framed, transform_matrix(transform, length, channels), f"{ctx.node.output[0]}.dft")
    return _reshape_to(ctx, spectrum, (batch, frames, bins, 2))
