"""The native matmul unit, reduce-sum and binary SFPU against runtime/numerics.py, byte for byte, and the
definition itself (RN_f32 of each chunk's exact sum, RN_f32 of the exact power) against an independent
rational-arithmetic statement of it. In a Float16 Dst, a native primitive sets the thread's Float16 overflow
flag exactly where the reference raises numerics.Float16Overflow; results are compared with the reference's
without that check (runtime_helpers.python_and_overflow)."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_helpers import native_and_overflow, python_and_overflow, unchecked_f16

from ttc.runtime import numerics as N
from ttc.runtime.native_core import native
from ttc.runtime.numerics import MathFidelity

FORMATS = ("bf16", "f16")
KINDS = ("gauss", "wide", "huge_span", "tiny", "special", "ties", "overflow", "unrounded")


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    same = bits(got) == bits(want)
    if not same.all():
        where = tuple(np.argwhere(~same)[0])
        raise AssertionError(f"{(~same).sum()} of {same.size} differ, first at {where}: "
                             f"{got[where]!r} ({bits(got)[where]:#010x}) vs {want[where]!r} ({bits(want)[where]:#010x})")


def operand(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Operand values of a kind: bf16 values unless kind is "unrounded"."""
    if kind == "gauss":
        return N.bf16_round(rng.standard_normal(shape))
    if kind == "wide":  # exponents over 2**-60 .. 2**30 with zeros: rows far beyond the exact span
        values = rng.standard_normal(shape) * 2.0 ** rng.integers(-60, 30, shape)
        return N.bf16_round(np.where(rng.random(shape) < 0.1, 0.0, values))
    if kind == "huge_span":  # the whole bf16 range, subnormals included
        return N.bf16_round(rng.standard_normal(shape) * 2.0 ** rng.integers(-140, 125, shape))
    if kind == "tiny":  # bf16 subnormals and values near float32's subnormal range
        return N.bf16_round(rng.standard_normal(shape) * 2.0 ** rng.integers(-135, -115, shape))
    if kind == "special":
        values = N.bf16_round(rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 20, shape))
        pick = rng.random(shape) < 0.01
        values[pick] = rng.choice([np.inf, -np.inf, np.nan, 0.0, -0.0], pick.sum())
        return values
    if kind == "ties":  # chunks 1, 2**-12 (half an ulp at 1 after the product), tiny tie breakers
        values = np.zeros(shape, np.float32)
        scale = 2.0 ** rng.integers(-60, 60, (*shape[:-1], 1))
        chunks = values[..., 0::16].shape
        values[..., 0::16] = scale
        values[..., 1::16] = scale * 2.0**-12 * rng.choice([1, 3, -1], chunks)
        values[..., 2::16] = scale * rng.choice([0, 1, -1], chunks) * 2.0 ** -rng.integers(30, 110, chunks)
        return N.bf16_round(values)
    if kind == "overflow":  # partial sums past float32's and bf16's range
        return N.bf16_round(rng.standard_normal(shape) * 2.0 ** rng.integers(60, 66, shape))
    assert kind == "unrounded"
    return (rng.standard_normal(shape) * 4).astype(np.float32)


def tiles(matrix_tiles: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(matrix_tiles.reshape(-1, 32, 32))


def packed(matrix_tiles: np.ndarray) -> np.ndarray:
    """bf16 tiles packed as a CB holds them (uint8 [count, 2048], face order): matmul_block_bf16's operands."""
    return native.pack_tiles(tiles(matrix_tiles), native.FORMAT_CODES["bf16"]).reshape(-1, 2048)


def check_packed(dst: np.ndarray, a: np.ndarray, b: np.ndarray, fidelity: int, dst_format: str, want: np.ndarray,
                 raised: bool) -> None:
    """matmul_block_bf16 (the operands read in place as packed bf16 pages) gives `want` and its overflow flag."""
    rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
    got, flagged = native_and_overflow(native.matmul_block_bf16, tiles(dst), packed(a), packed(b), rows, cols, inner,
                                       int(fidelity), dst_format)
    assert_same_bits(got.reshape(want.shape), want)
    assert raised == flagged


# --- matmul: native against the reference --------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 3), cols=st.integers(1, 3), inner=st.integers(1, 3),
       fidelity=st.sampled_from(list(MathFidelity)), dst_format=st.sampled_from(FORMATS),
       kind_a=st.sampled_from(KINDS), kind_b=st.sampled_from(KINDS), promise=st.booleans())
def test_matmul_block_matches_the_reference(seed, rows, cols, inner, fidelity, dst_format, kind_a, kind_b, promise):
    rng = np.random.default_rng(seed)
    a = operand(rng, (rows, inner, 32, 32), kind_a)
    b = operand(rng, (inner, cols, 32, 32), "gauss" if kind_b == "ties" else kind_b)
    if kind_a == "ties":  # the matching column: 1, 2**-12 times 1, 3 or -1 (a tie at float32), a breaker
        b[..., 0::16, :], b[..., 1::16, :] = 1.0, 2.0**-12
    promise = promise and "unrounded" not in (kind_a, kind_b)  # the promise holds for bf16 values only
    with unchecked_f16(), np.errstate(all="ignore"):
        dst = N.dst_round(operand(rng, (rows, cols, 32, 32), rng.choice(["gauss", "wide", "special"])), dst_format)
    want, raised = python_and_overflow(N.matmul_block_accumulate, dst, a, b, fidelity, bf16_operands=promise,
                                       dst_format=dst_format)
    got, flagged = native_and_overflow(native.matmul_block, tiles(dst), tiles(a), tiles(b), rows, cols, inner,
                                       int(fidelity), dst_format, promise)
    assert_same_bits(got.reshape(want.shape), want)
    assert raised == flagged
    if promise:  # bf16 values: the packed operands' path gives the same bits
        check_packed(dst, a, b, fidelity, dst_format, want, raised)


def test_matmul_block_of_a_typical_block_and_bad_arguments():
    rng = np.random.default_rng(1)
    a, b = N.bf16_round(rng.standard_normal((8, 6, 32, 32))), N.bf16_round(rng.standard_normal((6, 2, 32, 32)))
    dst = N.bf16_round(rng.standard_normal((8, 2, 32, 32)))
    for fidelity in MathFidelity:
        want = N.matmul_block_accumulate(dst, a, b, fidelity, bf16_operands=True)
        got = native.matmul_block(tiles(dst), tiles(a), tiles(b), 8, 2, 6, int(fidelity), "bf16", True)
        assert_same_bits(got.reshape(want.shape), want)
    with pytest.raises(ValueError, match="Dst format"):
        native.matmul_block(tiles(dst), tiles(a), tiles(b), 8, 2, 6, 4, "f8", True)
    with pytest.raises(ValueError, match="tiles"):
        native.matmul_block(tiles(dst), tiles(a), tiles(b), 8, 2, 5, 4, "bf16", True)
    with pytest.raises(ValueError, match="bf16 tiles"):
        native.matmul_block_bf16(tiles(dst), packed(a), packed(b)[:-1], 8, 2, 6, 4, "bf16")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 4), cols=st.integers(1, 2), inner=st.integers(4, 6),
       fidelity=st.sampled_from(list(MathFidelity)), dst_format=st.sampled_from(FORMATS),
       kind_a=st.sampled_from(KINDS), kind_b=st.sampled_from(KINDS), promise=st.booleans())
def test_model_sized_blocks_match_the_reference(seed, rows, cols, inner, fidelity, dst_format, kind_a, kind_b,
                                                promise):
    """Blocks as the models' kernels make them: several register row blocks per tile, 8 to 12 chunks (the kernel
    measures a row block's chunks 8 at a time), column blocks of two tiles."""
    rng = np.random.default_rng(seed)
    a = operand(rng, (rows, inner, 32, 32), kind_a)
    b = operand(rng, (inner, cols, 32, 32), "gauss" if kind_b == "ties" else kind_b)
    if kind_a == "ties":
        b[..., 0::16, :], b[..., 1::16, :] = 1.0, 2.0**-12
    promise = promise and "unrounded" not in (kind_a, kind_b)
    with unchecked_f16(), np.errstate(all="ignore"):
        dst = N.dst_round(operand(rng, (rows, cols, 32, 32), rng.choice(["gauss", "wide", "special"])), dst_format)
    want, raised = python_and_overflow(N.matmul_block_accumulate, dst, a, b, fidelity, bf16_operands=promise,
                                       dst_format=dst_format)
    got, flagged = native_and_overflow(native.matmul_block, tiles(dst), tiles(a), tiles(b), rows, cols, inner,
                                       int(fidelity), dst_format, promise)
    assert_same_bits(got.reshape(want.shape), want)
    assert raised == flagged
    if promise:  # bf16 values: the packed operands' path gives the same bits
        check_packed(dst, a, b, fidelity, dst_format, want, raised)


def test_in0_tiles_repeated_across_calls():
    """The packed bf16 path keeps in0's packed parts for the next calls with the same tiles (a kernel multiplying
    one in0 block by several in1 blocks): calls alternating in0s, fidelities (other parts) and shapes, with in0's
    bytes changed in one value, in place, and more in0s in turn than the kept entries, each give the reference's
    bits."""
    rng = np.random.default_rng(7)
    first = N.bf16_round(rng.standard_normal((2, 3, 32, 32)))
    second = first.copy()
    second[1, 2, 31, 31] = N.bf16_round(np.float32(second[1, 2, 31, 31] * 3 + 1))  # the last value differs
    third = N.bf16_round(rng.standard_normal((2, 3, 32, 32)) * 2.0 ** rng.integers(-30, 30, (2, 3, 32, 32)))
    calls = [(first, MathFidelity.HIFI4), (first, MathFidelity.HIFI4), (second, MathFidelity.HIFI4),
             (first, MathFidelity.LOFI), (first, MathFidelity.HIFI3), (first, MathFidelity.HIFI4),
             (third, MathFidelity.HIFI4), (second, MathFidelity.HIFI4), (first, MathFidelity.HIFI4),
             (third, MathFidelity.HIFI2), (first[:1], MathFidelity.HIFI4), (first[:, :2], MathFidelity.HIFI4),
             (first, MathFidelity.HIFI4)]
    for a, fidelity in calls:
        rows, inner = a.shape[:2]
        b = N.bf16_round(rng.standard_normal((inner, 2, 32, 32)))
        dst = N.bf16_round(rng.standard_normal((rows, 2, 32, 32)))
        want = N.matmul_block_accumulate(dst, a, b, fidelity, bf16_operands=True)
        check_packed(dst, a, b, fidelity, "bf16", want, False)
    # a CB page rewritten in place between calls: the same addresses, other bytes
    a_pages, dst = packed(first), N.bf16_round(rng.standard_normal((2, 2, 32, 32)))
    b = N.bf16_round(rng.standard_normal((3, 2, 32, 32)))
    for values in (first, third, first):
        a_pages[:] = packed(values)
        want = N.matmul_block_accumulate(dst, values, b, MathFidelity.HIFI4, bf16_operands=True)
        got = native.matmul_block_bf16(tiles(dst), a_pages, packed(b), 2, 2, 3, int(MathFidelity.HIFI4), "bf16")
        assert_same_bits(got.reshape(want.shape), want)


def zero_blocks(rng: np.random.Generator, values: np.ndarray, groups: str, share: float) -> np.ndarray:
    """Operand tiles with whole register blocks of a chunk zeroed (+0 or -0): in0 ("rows") 8 rows x 16 values,
    in1 ("columns") 16 values x 16 columns, the blocks whose products the kernel knows to be zero."""
    values = values.copy()
    for index in np.ndindex(values.shape[:2]):
        tile = values[index]
        for i in range(0, 32, 8 if groups == "rows" else 16):
            for j in range(0, 32, 16):
                if rng.random() < share:
                    block = tile[i:i + 8, j:j + 16] if groups == "rows" else tile[i:i + 16, j:j + 16]
                    block[...] = rng.choice([0.0, -0.0], block.shape)
    return values


def sprinkle(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    values = values.copy()
    pick = rng.random(values.shape) < share
    values[pick] = rng.choice([np.inf, -np.inf, np.nan], pick.sum())
    return values


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 2), cols=st.integers(1, 2), inner=st.integers(1, 4),
       fidelity=st.sampled_from(list(MathFidelity)), dst_format=st.sampled_from(FORMATS),
       kind=st.sampled_from(["gauss", "underflow", "wide"]), zero_share=st.sampled_from([0.3, 0.7, 1.0]),
       special_a=st.sampled_from([0.0, 0.002, 0.02]), special_b=st.sampled_from([0.0, 0.002, 0.02]))
def test_zero_register_blocks_with_infinities_nans_and_signed_zeros(seed, rows, cols, inner, fidelity, dst_format,
                                                                     kind, zero_share, special_a, special_b):
    """The kernel skips a chunk of a register block whose in0 rows or in1 columns are all zero (after the block's
    first step, Dst + 0 only turns -0 into +0): the same bits as the definition when the other operand holds
    an inf or a NaN there (0 * inf is NaN: no skip), when chunks' partials round to -0 (products of 2**-80 and
    -2**-80) so that Dst holds -0 between zero chunks, and with -0, inf and NaN already in Dst."""
    rng = np.random.default_rng(seed)
    if kind == "underflow":  # products of magnitude 2**-160: partials round to +-0
        a = N.bf16_round(rng.choice([1.0, -1.0], (rows, inner, 32, 32)) * 2.0**-80)
        b = N.bf16_round(rng.choice([1.0, -1.0], (inner, cols, 32, 32)) * 2.0**-80)
    else:
        a, b = operand(rng, (rows, inner, 32, 32), kind), operand(rng, (inner, cols, 32, 32), kind)
    a = sprinkle(rng, zero_blocks(rng, a, "rows", zero_share), special_a)
    b = sprinkle(rng, zero_blocks(rng, b, "columns", zero_share), special_b)
    with unchecked_f16(), np.errstate(all="ignore"):
        dst = N.dst_round(operand(rng, (rows, cols, 32, 32), rng.choice(["gauss", "special"])), dst_format)
    dst[rng.random(dst.shape) < 0.2] = -0.0
    want, raised = python_and_overflow(N.matmul_block_accumulate, dst, a, b, fidelity, bf16_operands=True,
                                       dst_format=dst_format)
    got, flagged = native_and_overflow(native.matmul_block, tiles(dst), tiles(a), tiles(b), rows, cols, inner,
                                       int(fidelity), dst_format, True)
    assert_same_bits(got.reshape(want.shape), want)
    assert raised == flagged
    check_packed(dst, a, b, fidelity, dst_format, want, raised)


def one_per_chunk(rng: np.random.Generator, values: np.ndarray, share: float, signed_zeros: bool) -> np.ndarray:
    """in1 tiles whose columns hold at most one nonzero value in each 16-row chunk, as a grouped (depthwise)
    convolution's weights and a channel-selecting matrix make them (`share` of the columns none at all), the
    others +0 or -0; a few chunks keep a second nonzero value in one column (the full kernel's chunks)."""
    out = np.zeros_like(values)
    if signed_zeros:
        out[rng.random(out.shape) < 0.5] = -0.0
    for index in np.ndindex(values.shape[:2]):
        for chunk in range(0, 32, 16):
            for column in range(32):
                if rng.random() >= share:
                    k = chunk + rng.integers(16)
                    out[index][k, column] = values[index][k, column]
            if rng.random() < 0.1:
                k, column = chunk + rng.integers(16), rng.integers(32)
                out[index][k, column] = values[index][k, column]
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 2), cols=st.integers(1, 2), inner=st.integers(1, 5),
       fidelity=st.sampled_from(list(MathFidelity)), dst_format=st.sampled_from(FORMATS),
       kind_a=st.sampled_from((*KINDS[:-1], "underflow")), kind_b=st.sampled_from((*KINDS[:-1], "underflow")),
       share=st.sampled_from([0.0, 0.3, 0.9]), signed_zeros=st.booleans())
def test_columns_with_one_nonzero_value_per_chunk(seed, rows, cols, inner, fidelity, dst_format, kind_a, kind_b,
                                                  share, signed_zeros):
    """A chunk whose in1 columns each hold at most one nonzero value (depthwise convolutions, channel padding) has
    single products for sums, which the packed path forms without the full kernel: the same bits as the
    definition over every span (no exactness proof is needed), with infinities and NaNs in in0 or in1 (0 * inf
    is NaN: the full kernel's path), signed zeros on both sides, underflowing products and any Dst."""
    rng = np.random.default_rng(seed)

    def values(kind: str, shape: tuple[int, ...]) -> np.ndarray:
        if kind == "underflow":  # products of magnitude 2**-160: partials round to +-0
            return N.bf16_round(rng.choice([1.0, -1.0], shape) * 2.0**-80)
        return operand(rng, shape, kind)

    a = values(kind_a, (rows, inner, 32, 32))
    b = one_per_chunk(rng, values(kind_b, (inner, cols, 32, 32)), share, signed_zeros)
    if signed_zeros:
        a[rng.random(a.shape) < 0.1] = -0.0
    with unchecked_f16(), np.errstate(all="ignore"):
        dst = N.dst_round(operand(rng, (rows, cols, 32, 32), rng.choice(["gauss", "wide", "special"])), dst_format)
    dst[rng.random(dst.shape) < 0.1] = -0.0
    want, raised = python_and_overflow(N.matmul_block_accumulate, dst, a, b, fidelity, bf16_operands=True,
                                       dst_format=dst_format)
    check_packed(dst, a, b, fidelity, dst_format, want, raised)


def test_a_zero_chunk_after_a_negative_zero_partial_makes_dst_positive_zero():
    """Dst -0 plus a partial rounding to -0 stays -0; a following chunk of zero in0 rows adds +0: +0 (the kernel
    skips that chunk's products but not its effect on the sign)."""
    a, b = np.zeros((1, 1, 32, 32), np.float32), np.zeros((1, 1, 32, 32), np.float32)
    a[0, 0, :, :16], b[0, 0, :16, :] = 2.0**-80, -(2.0**-80)  # chunk 0: -2**-160 each; chunk 1: in0 zero
    dst = np.full((1, 1, 32, 32), -0.0, np.float32)
    want = N.matmul_block_accumulate(dst, a, b, MathFidelity.HIFI4, bf16_operands=True)
    assert (bits(want) == 0).all()  # +0 everywhere
    got = native.matmul_block(tiles(dst), tiles(a), tiles(b), 1, 1, 1, 4, "bf16", True)
    assert_same_bits(got.reshape(want.shape), want)
    a[0, 0, :, 16:] = 0.0
    b[0, 0, 16:, :] = np.inf  # 0 * inf: NaN, no skip
    want = N.matmul_block_accumulate(dst, a, b, MathFidelity.HIFI4, bf16_operands=True)
    assert np.isnan(want).all()
    got = native.matmul_block(tiles(dst), tiles(a), tiles(b), 1, 1, 1, 4, "bf16", True)
    assert_same_bits(got.reshape(want.shape), want)
    check_packed(dst, a, b, MathFidelity.HIFI4, "bf16", want, False)


def test_rows_of_one_register_block_with_far_apart_magnitudes():
    """The kernel bounds a register block's row spans by the span of all its values together: rows of modest
    spans far apart from each other (here 2**40 and 2**-40, and zero rows) exceed it and take the per-element
    path, which must give the same bits."""
    rng = np.random.default_rng(7)
    a = N.bf16_round(rng.standard_normal((2, 4, 32, 32)))
    a[:, :, 1::4] *= 2.0**40
    a[:, :, 2::4] *= 2.0**-40
    a[:, :, 3::8] = 0.0
    b = N.bf16_round(rng.standard_normal((4, 1, 32, 32)) * 2.0 ** rng.integers(-10, 10, (4, 1, 32, 32)))
    for fidelity in MathFidelity:
        for dst_format in FORMATS:
            dst = N.dst_round(rng.standard_normal((2, 1, 32, 32)), dst_format)
            want, raised = python_and_overflow(N.matmul_block_accumulate, dst, a, b, fidelity, bf16_operands=True,
                                               dst_format=dst_format)
            got, flagged = native_and_overflow(native.matmul_block, tiles(dst), tiles(a), tiles(b), 2, 1, 4,
                                               int(fidelity), dst_format, True)
            assert_same_bits(got.reshape(want.shape), want)
            assert raised == flagged
            check_packed(dst, a, b, fidelity, dst_format, want, raised)


@pytest.mark.parametrize("hot", ["row block", "dst", "column"])
def test_chains_proven_normal_for_some_row_blocks_only(hot):
    """bf16 chains are proven normal per register row block: one block (or one Dst value, or one in1 column,
    which concern all) past the proof's range (2**120 values; 2**-120 Dst) takes the checked path, the others the
    fast one."""
    rng = np.random.default_rng(["row block", "dst", "column"].index(hot))
    a = N.bf16_round(rng.standard_normal((2, 4, 32, 32)))
    b = N.bf16_round(rng.standard_normal((4, 2, 32, 32)))
    dst = N.bf16_round(rng.standard_normal((2, 2, 32, 32)))
    if hot == "row block":
        a[1, :, 8:16] *= 2.0**120  # rows 40..47: overflow to inf on the way
    elif hot == "dst":
        dst[0, 1, 3, 5] = 2.0**-120
    else:
        b[2, 1, :, 7] *= 2.0**-60
    for fidelity in (MathFidelity.LOFI, MathFidelity.HIFI4):
        with np.errstate(all="ignore"):
            want = N.matmul_block_accumulate(dst, a, b, fidelity, bf16_operands=True)
        got = native.matmul_block(tiles(dst), tiles(a), tiles(b), 2, 2, 4, int(fidelity), "bf16", True)
        assert_same_bits(got.reshape(want.shape), want)
        check_packed(dst, a, b, fidelity, "bf16", want, False)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), inner=st.integers(1, 3), fidelity=st.sampled_from(list(MathFidelity)))
def test_proven_normal_chains_with_ties_at_both_roundings(seed, inner, fidelity):
    """The proven-normal bf16 chain rounds the chunk sums to float32 and Dst + partial to bf16 by adding and
    subtracting a constant made from the value's exponent bits (matmul.cpp round_bits): operands of a few
    mantissa bits whose products land on float32 ties (1 + 2**-24 * odd) and whose Dst sums land on bf16 ties
    (+-2**-8 and 3 * 2**-9 Dst values beside partials near 1), with tie breakers down to 2**-40 (still inside
    the proof's range), +-0 Dst values and zeros among the operands, give the reference's bits on every path."""
    rng = np.random.default_rng(seed)
    steps = np.array([0.0, 1.0, -1.0, 2.0**-12, -(2.0**-12), 3 * 2.0**-12, 2.0**-6, 1.5, -0.75])

    def values(shape: tuple[int, ...]) -> np.ndarray:
        picked = rng.choice(steps, shape) * 2.0 ** rng.integers(-2, 3, shape)
        breakers = rng.random(shape) < 0.05  # tie breakers far below the ties
        picked[breakers] = rng.choice([1.0, -1.0], breakers.sum()) * 2.0 ** -rng.integers(20, 41, breakers.sum())
        return N.bf16_round(picked)

    a = values((2, inner, 32, 32))
    b = values((inner, 2, 32, 32))
    dst = N.bf16_round(rng.choice([0.0, -0.0, 2.0**-8, -(2.0**-8), 3 * 2.0**-9, 1.0, -1.0], (2, 2, 32, 32)))
    want = N.matmul_block_accumulate(dst, a, b, fidelity, bf16_operands=True)
    got = native.matmul_block(tiles(dst), tiles(a), tiles(b), 2, 2, inner, int(fidelity), "bf16", True)
    assert_same_bits(got.reshape(want.shape), want)
    check_packed(dst, a, b, fidelity, "bf16", want, False)


@pytest.mark.parametrize("fidelity", list(MathFidelity))
def test_columns_past_the_exact_span_take_the_checked_path(fidelity):
    """An in1 column of 1, 2**-24 and +-2**-90 (a span of 90 binades) times rows of equal powers of two: the
    exact sum is just above or below a float32 tie, which a float64 sum loses (it gives the tie, rounded to
    even), and a Dst of 2**-8 (scaled as the row) shows the difference after the bf16 rounding. Only the
    columns' statistics (their smallest nonzero magnitude) send these sums to the checked path, on the packed
    operands' path (statistics taken on the bf16 bits) as on the float one."""
    rng = np.random.default_rng(int(fidelity))
    scale = 2.0 ** rng.integers(-20, 20, (2, 1, 32, 1))
    a = np.zeros((2, 3, 32, 32), np.float32)
    a[:, :, :, 0::16] = a[:, :, :, 1::16] = a[:, :, :, 2::16] = 1.0
    a = N.bf16_round(a * scale * rng.choice([1.0, -1.0], (2, 1, 32, 1)))
    b = np.zeros((3, 2, 32, 32), np.float32)
    b[:, :, 0::16] = 1.0
    b[:, :, 1::16] = 2.0**-24
    b[:, :, 2::16] = rng.choice([1.0, -1.0], (3, 2, 2, 32)) * 2.0**-90
    b = N.bf16_round(b)
    dst = N.bf16_round(np.broadcast_to(scale * 2.0**-8, (2, 2, 32, 32)).astype(np.float32))
    want = N.matmul_block_accumulate(dst, a, b, fidelity, bf16_operands=True)
    assert len(np.unique(want)) > 4  # the tie breakers show
    got = native.matmul_block(tiles(dst), tiles(a), tiles(b), 2, 2, 3, int(fidelity), "bf16", True)
    assert_same_bits(got.reshape(want.shape), want)
    check_packed(dst, a, b, fidelity, "bf16", want, False)


def test_calls_of_other_shapes_and_threads_share_nothing():
    """The kernel keeps scratch space per thread between calls: calls of alternating shapes, fidelities and
    operand promises, from several threads at once, each give the single call's bits."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    cases = []
    for rows, cols, inner, fidelity, promise in [(4, 1, 6, 4, True), (1, 1, 1, 3, False), (2, 2, 5, 1, True),
                                                 (1, 4, 2, 2, False), (3, 1, 4, 4, True)]:
        a = operand(rng, (rows, inner, 32, 32), "gauss" if promise else "unrounded")
        b = operand(rng, (inner, cols, 32, 32), "wide")
        dst = N.bf16_round(rng.standard_normal((rows, cols, 32, 32)))
        want = N.matmul_block_accumulate(dst, a, b, fidelity, bf16_operands=promise)
        cases.append(((tiles(dst), tiles(a), tiles(b), rows, cols, inner, fidelity, "bf16", promise), want))

    def run(index: int) -> tuple[int, np.ndarray]:
        arguments, _ = cases[index % len(cases)]
        return index, native.matmul_block(*arguments)

    with ThreadPoolExecutor(4) as pool:
        for index, got in pool.map(run, range(40)):
            want = cases[index % len(cases)][1]
            assert_same_bits(got.reshape(want.shape), want)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), dim=st.sampled_from(["row", "col", "scalar"]),
       fidelity=st.sampled_from(list(MathFidelity)), dst_format=st.sampled_from(FORMATS),
       kind=st.sampled_from(["gauss", "wide", "huge_span", "special", "unrounded"]),
       scaler=st.sampled_from([1.0, 1 / 32, 1 / 3, 2.0**-100, 3e38, -0.5]))
def test_reduce_sum_matches_the_reference(seed, n, dim, fidelity, dst_format, kind, scaler):
    rng = np.random.default_rng(seed)
    x = operand(rng, (n, 32, 32), kind)
    dst = N.dst_round(operand(rng, (32, 32), "gauss"), dst_format)
    want, raised = python_and_overflow(N.reduce_block, dst, x, dim, "sum", scaler, fidelity, dst_format)
    got, flagged = native_and_overflow(native.reduce_sum, dst, x, dim, scaler, int(fidelity), dst_format)
    assert_same_bits(got, want)
    assert raised == flagged


# --- the matmul definition -----------------------------------------------------------------------


def f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def from_bits(u: int) -> float:
    return struct.unpack("<f", struct.pack("<I", u))[0]


def rn(exact: Fraction, precision: int, min_exponent: int, max_exponent: int) -> float:
    """Independent round to nearest (ties to even) of an exact value to a binary format."""
    if exact == 0:
        return 0.0
    magnitude = abs(exact)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    while Fraction(2) ** exponent > magnitude:
        exponent -= 1
    while Fraction(2) ** (exponent + 1) <= magnitude:
        exponent += 1
    ulp = Fraction(2) ** (max(exponent, min_exponent) - precision + 1)
    count, rest = divmod(magnitude, ulp)
    if 2 * rest > ulp or (2 * rest == ulp and count % 2):
        count += 1
    value = math.inf if count * ulp >= Fraction(2) ** (max_exponent + 1) else float(count * ulp)
    return math.copysign(value, exact)


def definition_partial(xs: list[float], ys: list[float], fidelity: int) -> float:
    """The definition of a chunk's float32 partial, spelled out with Python floats and Fractions."""
    def keep(v: float, mask: int) -> float:
        return v if math.isnan(v) else from_bits(f32_bits(v) & mask)

    if not all(map(math.isfinite, xs + ys)):
        read_x = [keep(x, 0xFFFE0000) if fidelity <= 2 else x for x in xs]
        read_y = [keep(y, 0xFFF80000) if fidelity == 1 else y for y in ys]
        products = [u * v for u, v, x, y in zip(read_x, read_y, xs, ys, strict=True)
                    if not (math.isfinite(x) and math.isfinite(y))]
        if any(map(math.isnan, products)) or (math.inf in products and -math.inf in products):
            return from_bits(0x7FC00000)
        return math.inf if math.inf in products else -math.inf
    total = Fraction(0)
    for x, y in zip(xs, ys, strict=True):
        x_hi, y_hi = keep(x, 0xFFFE0000), keep(y, 0xFFF80000)
        pairs = {1: [(x_hi, y_hi)], 2: [(x_hi, y)], 3: [(x_hi, y), (x - x_hi, y_hi)], 4: [(x, y)]}[fidelity]
        total += sum(Fraction(u) * Fraction(v) for u, v in pairs)
    return rn(total, 24, -126, 127)


def definition_matmul(dst: np.ndarray, a: np.ndarray, b: np.ndarray, fidelity: int, dst_format: str) -> np.ndarray:
    """Dst [M, N] += a [M, K] @ b [K, N] (bf16 values) by the definition, element by element."""
    precision, min_exponent, max_exponent = (8, -126, 127) if dst_format == "bf16" else (11, -14, 15)
    out = np.empty(dst.shape, np.float32)
    for i, j in np.ndindex(*dst.shape):
        start = value = float(dst[i, j])
        for c in range(0, a.shape[1], 16):
            partial = definition_partial(a[i, c:c + 16].tolist(), b[c:c + 16, j].tolist(), fidelity)
            total = value + partial  # RN_f64
            value = total if not math.isfinite(total) else rn(Fraction(total), precision, min_exponent, max_exponent)
        if math.isnan(value):
            keep = 0x80000000 | (0x003FE000 if dst_format == "f16" else 0)
            value = from_bits(0x7FC00000 | (f32_bits(start) & keep)) if math.isnan(start) else from_bits(0x7FC00000)
        out[i, j] = value
    return out


@pytest.mark.parametrize("kind", ["wide", "ties", "special", "tiny", "overflow"])
def test_reference_matmul_is_the_definition(kind):
    """The reference (and so the native core) against the definition spelled out in rationals, on 8 x 8
    blocks of adversarial values (in a tile; the rest zero) for every fidelity and Dst format."""
    rng = np.random.default_rng(["wide", "ties", "special", "tiny", "overflow"].index(kind))
    for fidelity in MathFidelity:
        for dst_format in FORMATS:
            a = np.zeros((32, 32), np.float32)
            b = np.zeros((32, 32), np.float32)
            a[:8] = operand(rng, (8, 32), kind)
            b[:, :8] = operand(rng, (32, 8), "gauss" if kind == "ties" else kind)
            if kind == "ties":
                b[0::16, :8], b[1::16, :8] = 1.0, 2.0**-12
            dst = np.zeros((32, 32), np.float32)
            with unchecked_f16():  # values past 65504 become inf, as a Dst may hold
                dst[:8, :8] = N.dst_round(operand(rng, (8, 8), "special"), dst_format)
            got, raised = python_and_overflow(N.matmul_tiles_accumulate, dst, a, b, fidelity, dst_format)
            want = definition_matmul(dst[:8, :8], a[:8], b[:, :8], int(fidelity), dst_format)
            assert_same_bits(got[:8, :8], want)
            native_got, flagged = native_and_overflow(native.matmul_block, dst[None], a[None], b[None], 1, 1, 1,
                                                      int(fidelity), dst_format)
            assert_same_bits(native_got[0], got)
            assert raised == flagged
            if kind == "overflow" and dst_format == "f16":  # sums past 65504 (and some past float32's range)
                assert raised


def one_chunk(products: list[tuple[float, float]], dst: float = 0.0, fidelity: int = 4,
              dst_format: str = "bf16", both: bool = False) -> tuple[float, float]:
    """(reference, native) Dst after one tile whose element [0, 0] multiplies the given pairs in its first
    chunk (both: in both chunks; else the second chunk's partial is +0)."""
    a, b = np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32)
    for k, (x, y) in enumerate(products):
        a[0, k], b[k, 0] = x, y
        if both:
            a[0, 16 + k], b[16 + k, 0] = x, y
    d = np.full((32, 32), dst, np.float32)
    ref, raised = python_and_overflow(N.matmul_tiles_accumulate, d, a, b, fidelity, dst_format)
    nat, flagged = native_and_overflow(native.matmul_block, d[None], a[None], b[None], 1, 1, 1, fidelity, dst_format)
    assert bits(ref[0, 0]) == bits(nat[0, 0, 0])
    assert raised == flagged
    return float(ref[0, 0]), float(nat[0, 0, 0])


def chain_overflows(products: list[tuple[float, float]], dst: float = 0.0, both: bool = False) -> bool:
    """Whether an f16 chain (`one_chunk`) is a Float16 overflow, in the reference and the native core alike."""
    a, b = np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32)
    for k, (x, y) in enumerate(products):
        a[0, k], b[k, 0] = x, y
        if both:
            a[0, 16 + k], b[16 + k, 0] = x, y
    d = np.full((32, 32), dst, np.float32)
    one_chunk(products, dst, dst_format="f16", both=both)  # the same bits
    raised = python_and_overflow(N.matmul_tiles_accumulate, d, a, b, 4, "f16")[1]
    flagged = native_and_overflow(native.matmul_block, d[None], a[None], b[None], 1, 1, 1, 4, "f16")[1]
    assert raised == flagged
    return raised


def test_f16_chain_overflow_edges():
    """A Float16 Dst chain overflows where a step's exact sum is finite and rounds to inf (from 65520 on):
    not at 65519, not from an inf Dst or an inf partial (a sum past float32's range: the rounding is given
    inf), not from NaN; either sign; and a chain that passes 65520 at its first step and comes back below
    overflows all the same (each step rounds)."""
    assert not chain_overflows([(15.0, 1.0)], dst=65504.0)
    assert chain_overflows([(16.0, 1.0)], dst=65504.0)
    assert chain_overflows([(-16.0, 1.0)], dst=-65504.0)
    assert chain_overflows([(2.0**16, 1.0)])
    assert not chain_overflows([(65280.0, 1.0)])  # operands enter as bf16: 65504 would be 65536
    assert chain_overflows([(65280.0, 1.0)], both=True)  # 65280 + 65280 at the second chunk
    assert not chain_overflows([(1.0, 1.0)], dst=math.inf)
    assert not chain_overflows([(1.0, 1.0)], dst=-math.inf)
    assert not chain_overflows([(math.inf, 1.0)])
    assert not chain_overflows([(2.0**127, 2.0**1), (2.0**127, 2.0**1)])  # the partial is inf
    assert not chain_overflows([(math.nan, 1.0)], dst=65504.0)
    assert not chain_overflows([(1.0, 1.0)], dst=math.nan)
    a, b = np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32)
    a[0, 0], b[0, 0], a[0, 16], b[16, 0] = 256.0, 256.0, -256.0, 256.0  # 65536, then back to 0
    d = np.zeros((32, 32), np.float32)
    raised = python_and_overflow(N.matmul_tiles_accumulate, d, a, b, 4, "f16")[1]
    flagged = native_and_overflow(native.matmul_block, d[None], a[None], b[None], 1, 1, 1, 4, "f16")[1]
    assert raised and flagged
    assert not native_and_overflow(native.matmul_block, d[None], a[None], b[None], 1, 1, 1, 4, "bf16")[1]


def test_a_chunk_sum_needing_more_than_53_bits_rounds_as_the_exact_sum():
    """1 + 2**-24 + 2**-90: in float64 (any order) the last product vanishes and 1 + 2**-24 is a float32 tie
    that goes to 1; the exact sum is above the tie: the partial is 1 + 2**-23. It shows in Dst: 2**-8 plus
    the partial is a bf16 tie (-> 1) for 1 and above it (-> 1 + 2**-7) for 1 + 2**-23."""
    products = [(1.0, 1.0), (2.0**-12, 2.0**-12), (2.0**-45, 2.0**-45)]
    assert one_chunk(products, dst=2.0**-8)[0] == 1 + 2**-7
    assert one_chunk(products[:2], dst=2.0**-8)[0] == 1.0  # the exact tie goes to even
    assert one_chunk([(1.0, 1.0), (2.0**-12, 2.0**-12), (-(2.0**-45), 2.0**-45)], dst=2.0**-8)[0] == 1.0
    # huge products that cancel exactly leave the tiny one (a float64 sum in order gives 0)
    assert one_chunk([(2.0**100, 1.0), (2.0**-100, 1.0), (-(2.0**100), 1.0)])[0] == 2.0**-100


def test_an_exact_tie_of_the_partial_goes_to_even():
    """1 + 3 * 2**-24 lies halfway between 1 + 2**-23 (odd) and 1 + 2**-22 (even): the partial is the even
    one, which shows in a Dst of -1 (the sum is then an exact power of two)."""
    products = [(1.0, 1.0), (2.0**-12, 3 * 2.0**-12)]
    assert definition_partial([1.0, 2.0**-12], [1.0, 3 * 2.0**-12], 4) == 1 + 2.0**-22
    assert one_chunk(products, dst=-1.0)[0] == 2.0**-22
    assert one_chunk(products, dst=-1.0, dst_format="f16")[0] == 2.0**-22


def test_zero_sums_infinities_and_nans():
    assert bits(np.float32(one_chunk([(-0.0, 1.0), (0.0, -1.0)], dst=-0.0, both=True)[0])) == 0  # exact 0: +0
    tiny = one_chunk([(2.0**-80, -(2.0**-80))], dst=-0.0, both=True)[0]
    assert tiny == 0.0 and math.copysign(1, tiny) == -1  # -2**-160 rounds to -0, and -0 + -0 = -0
    assert math.copysign(1, one_chunk([(2.0**-80, -(2.0**-80))], dst=-0.0)[0]) == 1  # then + (+0)
    assert one_chunk([(2.0**127, 2.0**1), (2.0**127, 2.0**1)])[0] == math.inf  # partial overflows
    for fidelity in (1, 2, 3, 4):
        assert one_chunk([(math.inf, 1.0), (5.0, 7.0)], fidelity=fidelity)[0] == math.inf  # HiFi3 too
        assert one_chunk([(1.5, -math.inf)], fidelity=fidelity)[0] == -math.inf
        assert math.isnan(one_chunk([(math.inf, 0.0)], fidelity=fidelity)[0])
        assert math.isnan(one_chunk([(math.inf, 1.0), (-math.inf, 1.0)], fidelity=fidelity)[0])
    ref, _ = one_chunk([(math.nan, 1.0)])
    assert f32_bits(ref) == 0x7FC00000  # the positive quiet NaN
    ref, _ = one_chunk([(1.0, 1.0)], dst=from_bits(0xFFC00000))
    assert f32_bits(ref) == 0xFFC00000  # a NaN Dst keeps its sign
    ref, _ = one_chunk([(math.inf, 1.0)], dst=-math.inf)
    assert f32_bits(ref) == 0x7FC00000  # inf - inf: the positive quiet NaN


def test_rn_f32_exact_is_numpy_rounding_of_float64_values():
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.standard_normal(3000) * 2.0 ** rng.integers(-160, 135, 3000),
                             [2.0**128 - 2.0**103, 2.0**128 - 2.0**104, 2.0**-150, -(2.0**-150), 3 * 2.0**-150,
                              1 + 2.0**-24, 1 + 3 * 2.0**-24, -(2.0**-151)]])
    with np.errstate(over="ignore"):
        want = values.astype(np.float32)
    got = np.array([N.rn_f32_exact(Fraction(v)) for v in values.tolist()], np.float32)
    assert_same_bits(got, want)


# --- pow -----------------------------------------------------------------------------------------


def all_values(dst_format: str) -> np.ndarray:
    if dst_format == "f16":
        return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return (np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)).view(np.float32)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dst_format=st.sampled_from(FORMATS),
       fn=st.sampled_from(["pow", "where_nez", "where_eqz"]))
def test_sfpu_binary_matches_the_reference(seed, dst_format, fn):
    """Random bit patterns (every value of the format: NaN payloads, subnormals, infinities) and exact cases:
    small integral and half-integral powers, powers of two, bases near 1, 0, +-1, +-inf, NaN, results that
    overflow Float16 or float32 and that underflow."""
    rng = np.random.default_rng(seed)
    values = all_values(dst_format)
    a, b = rng.choice(values, 4000), rng.choice(values, 4000)
    bases = [2.0, 0.5, 3.0, 1.5, 1 + 2**-7, 1 - 2**-8, 257 / 256, 121, 9, 25, 81, 0.0, -0.0, -2, -1.5, 1, -1,
             np.inf, -np.inf, np.nan, 65504, 2.0**-14, 2.0**-24]
    exponents = [0, -0.0, 1, 2, 3, 4, 5, 7, 0.5, 1.5, 2.5, 3.5, -1, -2, -3, -0.5, 0.25, 0.125, 16, 100, 1000, 20000,
                 -20000, np.inf, -np.inf, np.nan]
    a[:2000] = rng.choice(bases, 2000)
    b[:2000] = rng.choice(exponents, 2000)
    with np.errstate(invalid="ignore"):  # casts of signalling NaN patterns
        a, b = N.dst_round(a, dst_format), N.dst_round(b, dst_format)
    want, raised = python_and_overflow(N.sfpu_binary, a, b, fn, dst_format)
    got, flagged = native_and_overflow(native.sfpu_binary, a, b, fn, dst_format)
    assert_same_bits(got, want)
    assert raised == flagged
    if fn == "pow" and dst_format == "f16":
        assert raised  # 65504 ** 2 and the like
    for i in range(0, 4000, 40):  # one pair at a time: the flag exactly where the reference raises
        pair = slice(i, i + 1)
        assert python_and_overflow(N.sfpu_binary, a[pair], b[pair], fn, dst_format)[1] == \
            native_and_overflow(native.sfpu_binary, a[pair], b[pair], fn, dst_format)[1]


@pytest.mark.parametrize("dst_format", FORMATS)
def test_sfpu_binary_overflow_edges(dst_format):
    """pow in a Float16 Dst: a finite float32 power past 65504 overflows; one past float32's range is inf
    already (no overflow by the definition), as are the poles 0 ** -1 and inf operands; operands past
    Float16's range (not Dst values, but rounded as Dst values) overflow in their own rounding."""
    cases = [(255.875, 2.0, False), (256.0, 2.0, True), (-256.0, 2.0, True), (2.0, 15.99, False), (2.0, 16.0, True),
             (65504.0, 100.0, False), (0.0, -1.0, False), (np.inf, 2.0, False), (2.0, np.inf, False),
             (70000.0, 0.0, True), (1.0, 70000.0, True), (np.nan, 70000.0, True), (2.0**-24, -1.0, True)]
    for x, y, overflows in cases:
        a, b = np.array([x], np.float32), np.array([y], np.float32)
        want, raised = python_and_overflow(N.sfpu_binary, a, b, "pow", dst_format)
        got, flagged = native_and_overflow(native.sfpu_binary, a, b, "pow", dst_format)
        assert_same_bits(got, want)
        assert raised == flagged == (overflows and dst_format == "f16"), (x, y)
    for fn in ("where_nez", "where_eqz"):  # selects of Float16 values never overflow
        a, b = np.array([1.0, 0.0], np.float32), np.array([65504.0, -65504.0], np.float32)
        assert not native_and_overflow(native.sfpu_binary, a, b, fn, "f16")[1]


def definition_pow(x: float, y: float) -> float:
    """RN_f32 of the exact power for the finite cases with a rational result (the special cases aside)."""
    value = Fraction(x) ** int(y) if y == int(y) else None
    assert value is not None
    return rn(value, 24, -126, 127)


def test_pow_is_the_exact_power_rounded_once():
    cases = [(3.0, 6.0), (2.0, -1.0), (1.5, 20.0), (257 / 256, 3.0), (-3.0, 5.0), (0.5, 149.0), (0.5, 150.0),
             (0.5, 151.0), (2.0, 127.0), (2.0, 128.0), (1.0009765625, 3.0), (10.0, 38.0), (10.0, 39.0), (0.1, 45)]
    for x, y in cases:
        x = float(np.float32(x))
        got = N.pow_f32(np.array([x]), np.array([y]))[0]
        assert bits(got) == bits(np.float32(definition_pow(x, y))), (x, y)
    # exact ties: 11**7 = 19487171 lies halfway between float32 neighbours (to the even 19487172), and
    # (257/256)**3 = 1 + 3 * 2**-8 + 3 * 2**-16 + 2**-24 halfway between 1.01176447 and 1.01176453
    assert N.pow_f32(np.array([121.0]), np.array([3.5]))[0] == 19487172.0
    assert bits(N.pow_f32(np.array([257 / 256]), np.array([3.0]))[0]) == bits(np.float32(
        definition_pow(257 / 256, 3.0)))
    # C99's special cases
    special = [(0.0, -1.0, math.inf), (-0.0, -1.0, -math.inf), (-0.0, -2.0, math.inf), (-0.0, 3.0, -0.0),
               (0.0, 0.5, 0.0), (-1.0, math.inf, 1.0), (1.0, math.nan, 1.0), (math.nan, 0.0, 1.0),
               (0.5, math.inf, 0.0), (0.5, -math.inf, math.inf), (2.0, -math.inf, 0.0), (-math.inf, 3.0, -math.inf),
               (-math.inf, -3.0, -0.0), (-math.inf, 2.0, math.inf), (math.inf, -0.5, 0.0)]
    got = N.pow_f32(np.array([s[0] for s in special]), np.array([s[1] for s in special]))
    assert_same_bits(got, np.array([s[2] for s in special], np.float32))
    nan = N.pow_f32(np.array([-2.0, math.nan, 2.0]), np.array([0.5, 1.0, math.nan]))
    assert (bits(nan) == 0x7FC00000).all()


@pytest.mark.parametrize(("fn", "param"), [("pow_scalar", 2.0), ("pow_scalar", 0.5), ("pow_scalar", -3.0),
                                           ("rpow_scalar", 2.5), ("rpow_scalar", 1.0000001), ("pow_scalar", 7.0)])
@pytest.mark.parametrize("dst_format", FORMATS)
def test_scalar_pow_tables_are_the_definition(fn, param, dst_format):
    """The per-parameter table is the power of every input by `pow_f32`, rounded to the Dst format, and
    sfpu_unary reads it."""
    x = all_values(dst_format)
    table = N.sfpu_param_table(fn, param, dst_format)
    p = np.full_like(x, np.float32(param))
    power = N.pow_f32(x, p) if fn == "pow_scalar" else N.pow_f32(p, x)
    with unchecked_f16():
        want = N.dst_round(power, dst_format)
        assert_same_bits(N.sfpu_unary(x, fn, param, dst_format), want)
    assert_same_bits(table, want)
    marks = N.sfpu_table_overflow(fn, param, dst_format)  # finite float32 powers that round to inf
    assert np.array_equal(marks, np.isfinite(power) & np.isinf(want))
    if dst_format == "f16":  # x ** 0.5 and 1.0000001 ** x of Float16 values stay below 256
        assert marks.any() == ((fn, param) not in (("pow_scalar", 0.5), ("rpow_scalar", 1.0000001)))
    fine = x[~marks]
    with np.errstate(all="ignore"):
        assert_same_bits(N.sfpu_unary(fine, fn, param, dst_format), want[~marks])
    if marks.any() and dst_format == "f16":  # (bf16 programs never check)
        with pytest.raises(N.Float16Overflow):
            N.sfpu_unary(x[marks][:1], fn, param, dst_format)
