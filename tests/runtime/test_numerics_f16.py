"""Float16 in Dst (the format of f16 results): rounding, matmul accumulation, eltwise, SFPU and reduce, bit
for bit against an independent reference."""

from fractions import Fraction

import numpy as np
import pytest

from ttc.runtime import numerics as N
from ttc.runtime.formats import DataFormat, pack_tiles, unpack_tiles
from ttc.runtime.numerics import MathFidelity

F16_MAX = 65504.0


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def ref_f16(value: Fraction | float) -> float:
    """Independent RNE of an exact value to Float16: the nearer of the neighbouring Float16 values (ties to
    the even bit pattern), inf past the largest value plus half an ulp."""
    exact = Fraction(value)
    limit = Fraction(65520)  # 65504 + half its ulp: from here RNE overflows
    if abs(exact) >= limit:
        return float("inf") if exact > 0 else float("-inf")
    guess = np.float16(float(exact))
    pattern = int(np.array(guess).view(np.uint16))
    candidates = []
    for delta in (-1, 0, 1):
        candidate = np.array((pattern + delta) & 0xFFFF, dtype=np.uint16).view(np.float16)
        if np.isfinite(candidate):
            candidates.append((abs(Fraction(float(candidate)) - exact), (pattern + delta) & 1, float(candidate)))
    return min(candidates)[2]


def reference_f16_matmul(dst: np.ndarray, a: np.ndarray, b: np.ndarray, fidelity: MathFidelity) -> np.ndarray:
    """The model spelled out per element: per 16-chunk the f32 partial of the fidelity passes (operands as
    bf16), then Dst = f16_rne(Dst + partial) in exact rational arithmetic."""
    b_hi, b_lo = N.split_operand_b(a)
    a_hi, a_lo = N.split_operand_a(b)
    passes = [(b_hi, a_hi), (b_hi, a_lo), (b_lo, a_hi), (b_lo, a_lo)][: int(fidelity)]
    out = dst.astype(np.float64).copy()
    for c in (0, 16):
        partial = sum(left[:, c:c + 16].astype(float) @ right[c:c + 16, :].astype(float) for left, right in passes)
        partial = partial.astype(np.float32)
        for index in np.ndindex(out.shape):
            if np.isfinite(out[index]):  # inf stays inf
                out[index] = ref_f16(Fraction(float(out[index])) + Fraction(float(partial[index])))
    return out.astype(np.float32)


@pytest.mark.parametrize("top", [65504.0, 64000.0])
@pytest.mark.parametrize("fidelity", [MathFidelity.LOFI, MathFidelity.HIFI4])
def test_f16_matmul_rounds_each_mvmul_once(fidelity, top):
    """Random tiles over many magnitudes, Dst values large next to their partials (the float64 sum is then
    inexact), Dst near 65504 (top 65504: some sums round past it, a Float16Overflow; else none do), subnormal
    Float16 values."""
    rng = np.random.default_rng(21)
    a = N.bf16_round(rng.standard_normal((32, 32)) * 10.0 ** rng.integers(-4, 2, (32, 32)))
    b = N.bf16_round(rng.standard_normal((32, 32)))
    dst = N.f16_round(rng.standard_normal((32, 32)) * 10.0 ** rng.integers(-6, 4, (32, 32)))
    dst[0, :] = N.f16_round(np.linspace(30000, top, 32))
    dst[1, :] = 2.0**-24 * np.arange(32)  # subnormal Float16
    a[2, :] = 2.0**-40  # partials far below Dst's ulp
    want = reference_f16_matmul(dst, a, b, fidelity)
    overflow = bool((np.isinf(want) & np.isfinite(dst)).any())
    assert overflow == (top == F16_MAX)
    if overflow:
        with pytest.raises(N.Float16Overflow):
            N.matmul_tiles_accumulate(dst, a, b, fidelity, dst_format="f16")
        return
    got = N.matmul_tiles_accumulate(dst, a, b, fidelity, dst_format="f16")
    assert np.array_equal(bits(got), bits(want))


def test_f16_dst_keeps_three_more_bits_than_bf16():
    """Each MVMUL adds 0.5: bf16 (ulp 2 at 256) stays at 256, Float16 (ulp 0.25) reaches 264 exactly."""
    dst = np.full((1, 1, 32, 32), 256.0, np.float32)
    a = np.full((1, 8, 32, 32), 1 / 32, np.float32)
    b = np.ones((8, 1, 32, 32), np.float32)
    assert (N.matmul_block_accumulate(dst, a, b, dst_format="bf16") == 256.0).all()
    assert (N.matmul_block_accumulate(dst, a, b, dst_format="f16") == 264.0).all()


def test_f16_dst_overflow_past_65504_raises():
    dst = np.full((32, 32), F16_MAX, np.float32)
    a = np.zeros((32, 32), np.float32)
    b = np.ones((32, 32), np.float32)
    a[:, 0] = 15.0  # 65519 rounds back to 65504
    assert (N.matmul_tiles_accumulate(dst, a, b, dst_format="f16") == F16_MAX).all()
    a[:, 0] = 16.0  # 65520: a tie, to even, past the range: an overflow
    with pytest.raises(N.Float16Overflow):
        N.matmul_tiles_accumulate(dst, a, b, dst_format="f16")
    dst[5, 7] = -np.inf  # an inf Dst stays inf: no overflow
    a[:, 0] = 1.0
    out = N.matmul_tiles_accumulate(dst, a, b, dst_format="f16")
    assert out[5, 7] == -np.inf and (np.delete(out.ravel(), 5 * 32 + 7) == F16_MAX).all()


def test_f16_operands_enter_the_multiplier_as_bf16():
    """An f16 operand with bits below bf16's precision multiplies as its bf16 rounding."""
    a = np.zeros((32, 32), np.float32)
    a[:, 0] = 1.0 + 2.0**-10  # an f16 value; bf16 rounds it to 1.0
    b = np.ones((32, 32), np.float32)
    out = N.matmul_tiles_accumulate(np.zeros((32, 32), np.float32), a, b, dst_format="f16")
    assert (out == 1.0).all()


@pytest.mark.parametrize(("op", "fn"), [("add", np.add), ("sub", np.subtract), ("mul", np.multiply)])
def test_f16_eltwise_rounds_the_exact_result_once(op, fn):
    rng = np.random.default_rng(22)
    a = N.f16_round(rng.standard_normal(4000) * 10.0 ** rng.integers(-5, 3, 4000))
    b = N.f16_round(rng.standard_normal(4000) * 10.0 ** rng.integers(-5, 3, 4000))
    got = N.eltwise_binary(a, b, op, dst_format="f16")
    want = np.array([ref_f16(fn(Fraction(float(x)), Fraction(float(y)))) for x, y in zip(a, b, strict=True)],
                    np.float32)
    assert np.array_equal(got, want)  # equal values (the rational reference drops the sign of zero)
    nonzero = want != 0
    assert np.array_equal(bits(got[nonzero]), bits(want[nonzero]))


@pytest.mark.parametrize("name", ["exp", "recip", "sqrt", "relu", "gelu", "neg", "square", "log"])
def test_f16_sfpu_is_the_function_rounded_to_float32_then_f16(name):
    """Every finite input: the table's result, or a Float16Overflow exactly where the float32 result is finite
    and rounds to inf (exp past 11.09, recip of tiny values, square past 256; not recip(0) or log(0))."""
    inputs = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    inputs = inputs[np.isfinite(inputs)]
    with np.errstate(all="ignore"):
        y = np.asarray(N.SFPU_FUNCTIONS[name](inputs.astype(np.float64))).astype(np.float32)
    want = N.f16_round(y)
    overflow = np.isfinite(y) & np.isinf(want)
    assert overflow.any() == (name in ("exp", "recip", "square"))
    marks = N.sfpu_table_overflow(name, dst_format="f16")
    assert np.array_equal(marks[inputs.astype(np.float16).view(np.uint16)], overflow)
    fine = inputs[~overflow]
    got = N.sfpu_unary(fine, name, dst_format="f16")
    assert np.array_equal(np.isnan(got), np.isnan(want[~overflow]))
    assert np.array_equal(bits(got[~np.isnan(got)]), bits(want[~overflow][~np.isnan(got)]))
    for x in inputs[overflow][:: max(1, int(overflow.sum()) // 7)]:
        with pytest.raises(N.Float16Overflow):
            N.sfpu_unary(np.array([1.0, x], np.float32), name, dst_format="f16")


def test_f16_sfpu_scalar_forms_round_to_f16():
    x = np.array([1.0, 1000.0, 65408.0], np.float32)
    assert list(N.sfpu_unary(x, "mul_scalar", 1.0009765625, dst_format="f16")) == [1.0009765625, 1001.0, 65472.0]
    with pytest.raises(N.Float16Overflow):  # 65504 * 1.0009765625 = 65567.96875
        N.sfpu_unary(np.float32(65504.0), "mul_scalar", 1.0009765625, dst_format="f16")
    assert N.sfpu_unary(np.float32(np.inf), "mul_scalar", 2.0, dst_format="f16") == np.inf  # an inf operand


def test_f16_reduce_max_and_sum():
    x = N.f16_round(np.random.default_rng(23).standard_normal((3, 32, 32)) * 100)
    start = np.full((32, 32), -np.inf, np.float32)
    got = N.reduce_block(start, x, "row", "max", dst_format="f16")
    assert np.array_equal(got[:, 0], x.max(axis=(0, 2)))
    total = N.reduce_block(np.zeros((32, 32), np.float32), np.ones((3, 32, 32), np.float32) * 0.125, "row",
                           dst_format="f16")
    assert (total[:, 0] == 12.0).all()


def test_dst_round_formats():
    assert N.dst_round(np.float32(1 + 2.0**-10), "f16") == 1 + 2.0**-10
    assert N.dst_round(np.float32(1 + 2.0**-10), "bf16") == 1.0
    with pytest.raises(ValueError, match="unknown Dst format"):
        N.dst_round(np.float32(1.0), "f8")


def test_float16_tiles_pack_as_ieee_half_in_face_order():
    rng = np.random.default_rng(24)
    tile = rng.standard_normal((2, 32, 32)).astype(np.float32) * 1000
    tile[0, 0, 0], tile[0, 0, 1] = 70000.0, 2.0**-25 * 3  # overflow to inf, a subnormal
    data = pack_tiles(tile, DataFormat.FLOAT16)
    assert data.shape == (2, 2048) and DataFormat.parse("Float16") is DataFormat.FLOAT16
    halves = data.view("<f2")
    assert halves[1, 1] == np.float16(tile[1, 0, 1]) and halves[1, 16] == np.float16(tile[1, 1, 0])
    assert halves[1, 256] == np.float16(tile[1, 0, 16])  # face 1 starts at row 0, column 16
    back = unpack_tiles(data, DataFormat.FLOAT16)
    assert np.array_equal(back, N.f16_round(tile))
    assert np.isposinf(back[0, 0, 0]) and back[0, 0, 1] == 2.0**-23


def test_as_f16_rounds_only_what_float16_cannot_hold():
    """bf16 values inside Float16's normal range come back as they are; tiny and huge ones are rounded, and
    values with bits below Float16's mantissa take the full rounding; huge finite ones are a Float16Overflow
    (inf stays inf)."""
    x = N.bf16_round(np.array([1.5, -3.0e-6, 65280.0, 0.0, -2.0, 2.0**-14, 2.0**-30, -np.inf], np.float32))
    got = N.as_f16(x)
    assert np.array_equal(bits(got), bits(N.f16_round(x)))
    for huge in (70000.0, -65536.0, 65520.0):
        with pytest.raises(N.Float16Overflow):
            N.as_f16(np.array([1.0, huge], np.float32))
    with pytest.raises(N.Float16Overflow):  # with bits below Float16's mantissa: the full rounding's check
        N.as_f16(np.array([1.0 + 2.0**-12, 65520.0], np.float32))
    assert N.as_f16(np.array([1.0 + 2.0**-12, 65519.0], np.float32))[1] == 65504.0
    inside = N.bf16_round(np.array([1.5, -2.0, 0.0, 300.0], np.float32))
    assert np.array_equal(N.as_f16(inside), inside)
    fine = np.array([1.0 + 2.0**-12, 3.0], np.float32)  # 13 significant bits: rounded
    assert np.array_equal(N.as_f16(fine), N.f16_round(fine))
