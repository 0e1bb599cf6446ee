"""Tests for ttc.runtime.numerics: bf16 rounding, fidelity splits, Dst accumulation, eltwise, SFPU, reduce."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ttc.runtime import numerics as N
from ttc.runtime.numerics import MathFidelity

RNG = np.random.default_rng(0)
BIG = float(np.float32(3.3e38))  # below bf16 max + half an ulp, so RNE never overflows


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def rand_bf16(*shape: int, scale: float = 1.0) -> np.ndarray:
    return N.bf16_round(RNG.standard_normal(shape) * scale)


def ref_bf16(v: np.ndarray) -> np.ndarray:
    """Independent RNE of float64 values to bf16: nearest of the neighbouring bf16 values, ties to even."""
    v = np.asarray(v, dtype=np.float64)
    hi = (v.astype(np.float32).view(np.uint32) >> 16).astype(np.int64)
    cands = np.stack([hi - 1, hi, hi + 1])
    vals = ((cands & 0xFFFF).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    dist = np.nan_to_num(np.abs(vals - v), nan=np.inf)
    best = dist.min(axis=0)
    tie_ok = (dist == best) & ((cands & 1) == 0)
    pick = np.where(tie_ok.any(axis=0), np.argmax(tie_ok, axis=0), np.argmin(dist, axis=0))
    return np.take_along_axis(vals, pick[None], axis=0)[0].astype(np.float32)


# --- rounding ------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, 64, elements=st.floats(-BIG, BIG, width=32)))
def test_bf16_round_is_rne(x):
    assert np.array_equal(bits(N.bf16_round(x)), bits(ref_bf16(x)))


def test_f64_to_bf16_rounds_once():
    v = np.array([257 + 2**-20, 257.0, 259.0, -(257 + 2**-30), 1.0 + 2**-8 + 2**-40])
    assert N._f64_to_bf16(v).tolist() == [258.0, 256.0, 260.0, -258.0, 1.0078125]
    w = RNG.standard_normal(10000) * 10.0 ** RNG.integers(-5, 5, 10000)
    assert np.array_equal(bits(N._f64_to_bf16(w)), bits(ref_bf16(w)))


# --- operand splits ------------------------------------------------------------------------------


def test_operand_splits():
    x = rand_bf16(1000)
    for split, kept in ((N.split_operand_a, 4), (N.split_operand_b, 6)):
        hi, lo = split(x)
        assert np.array_equal(hi + lo, x)
        assert not (bits(hi) & ((1 << (23 - kept)) - 1)).any()
        assert np.array_equal(np.sign(hi), np.sign(x))
        # lo holds only the bf16 mantissa bits below the kept ones
        assert (np.abs(lo) < np.ldexp(1.0, np.frexp(x)[1] - 1 - kept)).all()
    assert N.split_operand_a(np.float32(1.9921875))[0] == 1.9375  # 1.1111111b -> 1.1111b
    assert N.split_operand_b(np.float32(1.9921875))[0] == 1.984375  # -> 1.111111b


# --- matmul --------------------------------------------------------------------------------------


def reference_matmul(dst, a, b, fidelity):
    """The model spelled out: per 16-chunk, sum of the four passes' products, f32 partial, one bf16 RNE."""
    b_hi, b_lo = N.split_operand_b(a)  # in0 sits in SrcB
    a_hi, a_lo = N.split_operand_a(b)  # in1 sits in SrcA
    passes = [(b_hi, a_hi), (b_hi, a_lo), (b_lo, a_hi), (b_lo, a_lo)][: int(fidelity)]
    out = dst.astype(np.float32)
    for c in (0, 16):
        partial = np.zeros(out.shape, np.float64)
        for left, right in passes:
            partial += np.einsum(
                "...mk,...kn->...mn",
                left[..., c : c + 16].astype(float),
                right[..., c : c + 16, :].astype(float),
            )
        out = ref_bf16(out.astype(np.float64) + partial.astype(np.float32))
    return out


@pytest.mark.parametrize("fidelity", list(MathFidelity))
def test_matmul_matches_spelled_out_model(fidelity):
    dst, a, b = rand_bf16(6, 32, 32), rand_bf16(6, 32, 32), rand_bf16(6, 32, 32)
    got = N.matmul_tiles_accumulate(dst, a, b, fidelity)
    assert np.array_equal(bits(got), bits(reference_matmul(dst, a, b, fidelity)))
    assert np.array_equal(bits(dst), bits(N.bf16_round(dst)))  # input untouched


def test_srca_holds_in1():
    """in1 (SrcA) keeps 4 mantissa bits at LoFi, in0 (SrcB) keeps 6."""
    four = N.split_operand_a(rand_bf16(32, 32))[0]
    six = N.split_operand_b(rand_bf16(32, 32))[0]
    zero = np.zeros((32, 32), np.float32)
    exact = N.matmul_tiles_accumulate(zero, six, four, "hifi4")
    assert np.array_equal(N.matmul_tiles_accumulate(zero, six, four, "lofi"), exact)
    swapped = N.matmul_tiles_accumulate(zero, four.T.copy(), six.T.copy(), "hifi4")
    assert not np.array_equal(N.matmul_tiles_accumulate(zero, four.T.copy(), six.T.copy(), "lofi"), swapped)


def test_bf16_stagnation_at_256():
    """Each MVMUL adds 0.5 (half an ulp of 256 in bf16): Dst stays 256.0 over 8 K tiles."""
    dst = np.full((1, 1, 32, 32), 256.0, np.float32)
    a = np.full((1, 8, 32, 32), 1 / 32, np.float32)  # 16 * (1/32) * 1 = 0.5 per chunk
    b = np.ones((8, 1, 32, 32), np.float32)
    out = N.matmul_block_accumulate(dst, a, b, MathFidelity.HIFI4)
    assert (out == 256.0).all()
    exact = 256.0 + np.einsum("mkij,knjl->mnil", a.astype(float), b.astype(float))
    assert (exact == 264.0).all()  # float32 accumulation would have reached 264


def test_dst_plus_partial_rounds_once():
    a = np.zeros((32, 32), np.float32)
    a[:, 0], a[:, 1] = 1.0, 2.0**-20
    b = np.ones((32, 32), np.float32)
    out = N.matmul_tiles_accumulate(np.full((32, 32), 256.0, np.float32), a, b)
    assert (out == 258.0).all()  # 257 + 2**-20 -> 258; rounding through float32 would give 256


def test_lofi_and_hifi4_differ_and_hifi4_is_closer():
    """More phases, less error: LoFi >> HiFi2 > HiFi3 ~ HiFi4 (the fourth phase only adds the product of
    the two low mantissa halves, whose effect is below bf16 rounding noise). Own RNG: the module's shared
    one would make the inputs depend on which tests ran before on the same worker."""
    rng = np.random.default_rng(7)
    a, b = (N.bf16_round(rng.standard_normal((16, 32, 32))) for _ in range(2))
    zero = np.zeros((16, 32, 32), np.float32)
    ref = np.einsum("tmk,tkn->tmn", a.astype(float), b.astype(float))
    results = {f: N.matmul_tiles_accumulate(zero, a, b, f) for f in MathFidelity}
    assert not np.array_equal(bits(results[MathFidelity.LOFI]), bits(results[MathFidelity.HIFI4]))
    errors = {f: np.abs(r - ref).mean() for f, r in results.items()}
    assert errors[MathFidelity.HIFI3] < errors[MathFidelity.HIFI2] / 2 < errors[MathFidelity.LOFI] / 10
    assert errors[MathFidelity.HIFI4] == pytest.approx(errors[MathFidelity.HIFI3], rel=0.02)


@pytest.mark.parametrize("fidelity", [MathFidelity.LOFI, MathFidelity.HIFI4])
def test_same_matmul_over_different_blocks_gives_same_bits(fidelity):
    mt, kt, nt = 4, 5, 6
    a, b = rand_bf16(mt, kt, 32, 32), rand_bf16(kt, nt, 32, 32)
    whole = N.matmul_block_accumulate(np.zeros((mt, nt, 32, 32), np.float32), a, b, fidelity)

    # 2 x 3 grid of cores, each a 2 x 2 output block, K fed 2 tiles then 3 tiles (in0_block_w varies)
    grid = np.zeros_like(whole)
    for i in range(0, mt, 2):
        for j in range(0, nt, 2):
            acc = np.zeros((2, 2, 32, 32), np.float32)
            for k0, k1 in ((0, 2), (2, 5)):
                acc = N.matmul_block_accumulate(acc, a[i : i + 2, k0:k1], b[k0:k1, j : j + 2], fidelity)
            grid[i : i + 2, j : j + 2] = acc

    # one matmul_tiles call per (m, n, k), vectorised over all output tiles
    tiles = np.zeros_like(whole)
    for k in range(kt):
        tiles = N.matmul_tiles_accumulate(tiles, a[:, k, None], b[None, k], fidelity)

    assert np.array_equal(bits(grid), bits(whole))
    assert np.array_equal(bits(tiles), bits(whole))


# --- eltwise and SFPU ----------------------------------------------------------------------------


@pytest.mark.parametrize(("op", "fn"), [("add", np.add), ("sub", np.subtract), ("mul", np.multiply)])
def test_eltwise_binary_rounds_exact_result_once(op, fn):
    a, b = rand_bf16(8, 32, 32), rand_bf16(8, 32, 32, scale=0.01)
    got = N.eltwise_binary(a, b, op)
    assert np.array_equal(bits(got), bits(ref_bf16(fn(a.astype(float), b.astype(float)))))


@pytest.mark.parametrize("op", ["mul", "add"])
@pytest.mark.parametrize("exponent", [-140, -134, -130, -126, -70, -63, 0, 60, 64, 127])
def test_eltwise_binary_near_the_ends_of_the_range(op, exponent):
    """Products into float32's subnormal range, to zero and past bf16's largest value round as the exact
    result does (the float32 product shortcut must step aside there)."""
    a = rand_bf16(4, 32, 32) * np.float32(2.0 ** (exponent // 2))
    b = rand_bf16(4, 32, 32) * np.float32(2.0 ** (exponent - exponent // 2))
    a, b = N.bf16_round(a), N.bf16_round(b)
    fn = np.multiply if op == "mul" else np.add
    exact = fn(a.astype(float), b.astype(float))
    overflow = np.abs(exact) >= 2.0**128 - 2.0**119  # bf16's largest value plus half an ulp
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.where(overflow, np.copysign(np.inf, exact), ref_bf16(np.where(overflow, 0, exact)))
    assert np.array_equal(bits(N.eltwise_binary(a, b, op)), bits(want))


@pytest.mark.parametrize("op", ["add", "sub"])
@pytest.mark.parametrize("gap", [0, 7, 8, 9, 14, 15, 16, 17, 24, 40])
def test_eltwise_sum_across_exponent_gaps_rounds_exact_result_once(op, gap):
    """Sums and differences are computed in float32: where the operands' exponents are far apart that sum
    is inexact, and rounding it to bf16 must still give the exact result's rounding (also for operands
    that are halfway patterns after the shift, for subnormals and at the top of the range)."""
    rng = np.random.default_rng(gap)
    for scale in (1.0, 2.0**-120, 2.0**-133, 2.0**120):
        a = N.bf16_round((rng.standard_normal((4, 32, 32)) * scale).astype(np.float32))
        mantissa = rng.integers(128, 256, size=a.shape) * rng.choice([-1, 1], size=a.shape)
        b = N.bf16_round(np.ldexp(mantissa * np.abs(a).astype(float) / 128, -gap - 1).astype(np.float32))
        exact = (np.add if op == "add" else np.subtract)(a.astype(float), b.astype(float))
        assert np.array_equal(bits(N.eltwise_binary(a, b, op)), bits(ref_bf16(exact)))


REFERENCE = {
    "exp": np.exp,
    "recip": lambda x: 1 / x,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "gelu": lambda x: np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.ravel()]).reshape(x.shape),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "erf": lambda x: np.array([math.erf(v) for v in x.ravel()]).reshape(x.shape),
    "relu": lambda x: np.maximum(x, 0),
    "neg": np.negative,
    "log": np.log,
    "square": np.square,
    "abs": np.abs,
    "eqz": lambda x: (x == 0).astype(np.float64),
    "nez": lambda x: (x != 0).astype(np.float64),
    "ltz": lambda x: (x < 0).astype(np.float64),
    "lez": lambda x: (x <= 0).astype(np.float64),
    "gtz": lambda x: (x > 0).astype(np.float64),
    "gez": lambda x: (x >= 0).astype(np.float64),
    "isnan": lambda x: np.isnan(x).astype(np.float64),
    "isinf": lambda x: np.isinf(x).astype(np.float64),
    "floor": np.floor, "ceil": np.ceil, "trunc": np.trunc, "round": np.rint,
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
    "softplus": lambda x: np.log1p(np.exp(x)),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "hardswish": lambda x: x * np.minimum(np.maximum(x + 3, 0), 6) / 6,
}
DOMAINS = {"asin": lambda x: np.clip(x, -0.99, 0.99), "acos": lambda x: np.clip(x, -0.99, 0.99),
           "atanh": lambda x: np.clip(x, -0.99, 0.99), "acosh": lambda x: np.abs(x) + 1.0}


@pytest.mark.parametrize("name", sorted(N.SFPU_FUNCTIONS))
def test_sfpu_close_to_reference_and_bf16(name):
    x = rand_bf16(2, 32, 32, scale=2.0)
    if name in ("sqrt", "rsqrt", "log"):
        x = N.bf16_round(np.abs(x) + 0.125)
    if name in DOMAINS:
        x = N.bf16_round(DOMAINS[name](x))
    got = N.sfpu_unary(x, name)
    assert np.array_equal(bits(got), bits(N.bf16_round(got)))
    ref = REFERENCE[name](x.astype(np.float64))
    assert np.allclose(got, ref, rtol=2**-8, atol=1e-30)
    assert np.array_equal(bits(got), bits(N.bf16_round(ref.astype(np.float32))))


def test_erf_accuracy():
    x = np.linspace(-8, 8, 4001)
    ref = np.array([math.erf(v) for v in x])
    assert np.abs(N.erf(x) - ref).max() < 1e-13


def test_sfpu_edge_values():
    x = np.array([0.0, -1.0, np.inf], np.float32)
    assert np.isinf(N.sfpu_unary(x, "log")[0])
    assert np.isnan(N.sfpu_unary(x, "sqrt")[1])
    assert N.sfpu_unary(x, "recip")[2] == 0.0
    assert N.sfpu_unary(np.float32(300.0), "exp") == np.inf
    assert N.sfpu_unary(np.float32(-30.0), "gelu") == 0.0


def test_softplus_and_mish_keep_the_tail_a_bf16_chain_loses():
    """Where 1 + e^x rounds to 1 in bf16 (x < -5.5), a chain log(1 + exp(x)) gives 0; the SFPU function
    keeps e^x, and mish keeps x * e^x."""
    x = np.array([-5.625, -9.0, -30.0, 0.0, 20.0], np.float32)
    chain = N.sfpu_unary(N.eltwise_binary(N.sfpu_unary(x, "exp"), np.float32(1.0), "add"), "log")
    assert chain[0] == 0.0
    assert np.array_equal(bits(N.sfpu_unary(x, "softplus")), bits(ref_bf16(np.log1p(np.exp(x.astype(np.float64))))))
    want = x * np.tanh(np.log1p(np.exp(x.astype(np.float64))))
    assert np.array_equal(bits(N.sfpu_unary(x, "mish")), bits(ref_bf16(want)))
    assert N.sfpu_unary(np.float32(-5.625), "mish") < -0.02


# --- binary SFPU ---------------------------------------------------------------------------------


def test_sfpu_binary_pow_rounds_the_float32_power_once():
    """3 ** 6 = 729 rounds once to 728; exp(log(3) * 6) with a bf16 rounding after each step gives 752."""
    a = np.array([3.0, 24.0, 2.0, 0.0, 0.0, 5.0], np.float32)
    b = np.array([6.0, 2.265625, -1.0, 0.0, -1.0, 0.5], np.float32)
    got = N.sfpu_binary(a, b, "pow")
    with np.errstate(divide="ignore"):
        want = N.bf16_round(np.power(a.astype(np.float64), b.astype(np.float64)).astype(np.float32))
    assert np.array_equal(bits(got), bits(want))
    assert got[0] == 728.0 and got[3] == 1.0 and got[4] == np.inf
    chain = N.sfpu_unary(N.eltwise_binary(N.sfpu_unary(a[:1], "log"), b[:1], "mul"), "exp")
    assert chain[0] == 752.0


def test_sfpu_binary_pow_of_a_negative_base():
    """C's pow: a real value for an integral exponent, NaN otherwise (exp(log(x) * y) is NaN for both)."""
    got = N.sfpu_binary(np.array([-2.0, -2.0, -0.5], np.float32), np.array([3.0, 2.0, 0.5], np.float32), "pow")
    assert got[0] == -8.0 and got[1] == 4.0 and np.isnan(got[2])


def test_sfpu_binary_operands_are_in_the_dst_format():
    """The operands are Dst values: a float32 operand is read as its bf16 (or f16) rounding."""
    a, b = np.float32(1.0 + 2**-9), np.float32(3.0)  # below half a bf16 ulp of 1, a Float16 value
    assert N.sfpu_binary(a, b, "pow") == 1.0
    assert N.sfpu_binary(a, b, "pow", dst_format="f16") == N.f16_round(np.float32((1.0 + 2**-9) ** 3))


def test_sfpu_binary_selects_leave_no_trace_of_the_branch_not_taken():
    c = np.array([1.0, 0.0, 1.0, 0.0, 0.0], np.float32)
    x = np.array([-np.inf, np.nan, 2.5, np.inf, 7.0], np.float32)
    assert N.sfpu_binary(c, x, "where_nez").tolist()[:4] == [-np.inf, 0.0, 2.5, 0.0]
    picked = N.sfpu_binary(c, x, "where_eqz")
    assert np.isnan(picked[1]) and picked[[0, 2, 3, 4]].tolist() == [0.0, 0.0, np.inf, 7.0]
    # the where form sums the two selects, one of which is 0: exact, and NaN only where NaN is picked
    y = np.full(5, -np.inf, np.float32)
    where = N.eltwise_binary(N.sfpu_binary(c, x, "where_nez"), N.sfpu_binary(c, y, "where_eqz"), "add")
    assert where.tolist() == [-np.inf, -np.inf, 2.5, -np.inf, -np.inf]


def test_scalar_comparisons_hold_for_infinities():
    """x op p directly: x - p would be inf - inf = NaN where x equals an infinite p."""
    x = np.array([-np.inf, -3.0, 0.0, np.inf, np.nan], np.float32)
    assert N.sfpu_unary(x, "eq_scalar", -np.inf).tolist() == [1, 0, 0, 0, 0]
    assert N.sfpu_unary(x, "ne_scalar", np.inf).tolist() == [1, 1, 1, 0, 1]
    assert N.sfpu_unary(x, "lt_scalar", -3.0).tolist() == [1, 0, 0, 0, 0]
    assert N.sfpu_unary(x, "le_scalar", -3.0).tolist() == [1, 1, 0, 0, 0]
    assert N.sfpu_unary(x, "gt_scalar", 0.0).tolist() == [0, 0, 0, 1, 0]
    assert N.sfpu_unary(x, "ge_scalar", np.inf).tolist() == [0, 0, 0, 1, 0]


def test_rpow_scalar_is_the_float32_power_of_the_parameter():
    x = np.array([0.5, 3.0, -1.0, 10.0], np.float32)
    want = ref_bf16(np.power(np.float32(2.5), x).astype(np.float32))
    assert np.array_equal(bits(N.sfpu_unary(x, "rpow_scalar", 2.5)), bits(want))


# --- reduce --------------------------------------------------------------------------------------


def test_reduce_sum_positions_and_exactness():
    x = RNG.integers(-1, 2, (3, 32, 32)).astype(np.float32)  # all partial sums exact in bf16
    dst = np.full((3, 32, 32), 7.0, np.float32)
    row = N.reduce_tiles(dst, x, "row", "sum")
    col = N.reduce_tiles(dst, x, "col", "sum")
    scalar = N.reduce_tiles(dst, x, "scalar", "sum")
    assert np.array_equal(row[..., :, 0], 7 + x.sum(-1))
    assert np.array_equal(row[..., :, 1:], dst[..., :, 1:])
    assert np.array_equal(col[..., 0, :], 7 + x.sum(-2))
    assert np.array_equal(col[..., 1:, :], dst[..., 1:, :])
    assert np.array_equal(scalar[..., 0, 0], 7 + x.sum((-2, -1)))
    assert np.array_equal(scalar[..., 0, 1:], dst[..., 0, 1:])


def test_reduce_sum_goes_through_matmul():
    x = rand_bf16(2, 32, 32)
    scaler_tile = np.zeros((32, 32), np.float32)
    scaler_tile[0] = 1 / 3
    zero = np.zeros((2, 32, 32), np.float32)
    for fidelity in ("lofi", "hifi4"):
        col = N.reduce_tiles(zero, x, "col", "sum", 1 / 3, fidelity)
        assert np.array_equal(col, N.matmul_tiles_accumulate(zero, scaler_tile, x, fidelity))
        row = N.reduce_tiles(zero, x, "row", "sum", 1 / 3, fidelity)
        expect = N.matmul_tiles_accumulate(zero, scaler_tile, x.swapaxes(1, 2), fidelity).swapaxes(1, 2)
        assert np.array_equal(row, expect)
    mean = N.reduce_tiles(zero, x, "row", "sum", 1 / 32)[..., 0]
    assert np.allclose(mean, x.mean(-1), atol=2**-7)


def test_reduce_max():
    x = rand_bf16(2, 32, 32)
    start = np.full((2, 32, 32), -np.inf, np.float32)
    assert np.array_equal(N.reduce_tiles(start, x, "row", "max")[..., 0], x.max(-1))
    assert np.array_equal(N.reduce_tiles(start, x, "col", "max")[..., 0, :], x.max(-2))
    assert np.array_equal(N.reduce_tiles(start, x, "scalar", "max")[..., 0, 0], x.max((-2, -1)))
    big = np.full((2, 32, 32), 100.0, np.float32)
    assert (N.reduce_tiles(big, x, "scalar", "max")[..., 0, 0] == 100.0).all()
    with pytest.raises(ValueError):
        N.reduce_tiles(start, x, "diag", "max")


def test_fidelity_parse():
    assert MathFidelity.parse("HiFi2") is MathFidelity.HIFI2
    assert MathFidelity.parse(1) is MathFidelity.LOFI
    assert MathFidelity.HIFI4.phases == 4


def test_fast_bf16_rounding_equals_the_round_to_odd_reference():
    """The bit-trick rounding of float64 matches the round-to-odd path everywhere: random magnitudes over
    the whole range, values next to bf16 ties, overflow to inf, subnormals, signed zeros, inf and NaN."""
    rng = np.random.default_rng(11)
    spread = rng.standard_normal(200_000) * 10.0 ** rng.integers(-45, 40, 200_000)
    grid = (rng.integers(0, 1 << 16, 50_000).astype(np.uint32) << 16).view(np.float32)
    grid = grid[np.isfinite(grid)].astype(np.float64)
    near_ties = grid * (1 + rng.choice([0.0, 2**-9, -(2**-9), 2**-8, 2**-30], grid.size))
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.3895e38, 3.3896e38, 3.4e38, 1e39, -1e39,
                      2.0**-126, 2.0**-127, 1e-40, -1e-45, 1e-50])
    v = np.concatenate([spread, near_ties, edges])
    fast, slow = N._f64_to_bf16(v), N._f64_to_bf16_slow(v)
    same = (bits(fast) == bits(slow)) | (np.isnan(fast) & np.isnan(slow))
    assert same.all(), v[~same][:5]


def test_fast_accumulation_chain_equals_the_step_by_step_rounding():
    """`_accumulate_bf16` (in-place bit rounding, exceptional chains redone) against rounding every step
    with `_f64_to_bf16_slow`: ordinary values, cancellation into float32's subnormal range, sums that
    overflow bf16 and come back, inf and NaN partials, NaN and zero in Dst."""
    rng = np.random.default_rng(5)
    chunks, n = 12, 4000
    partials = (rng.standard_normal((chunks, n)) * 10.0 ** rng.integers(-3, 3, (chunks, n))).astype(np.float32)
    dst = N.bf16_round(rng.standard_normal(n)).astype(np.float64)
    partials[:, :50] = np.float32(1e-39)  # subnormal steps
    partials[0, 50:100], partials[1, 50:100] = np.float32(3e38), np.float32(3e38)  # overflow...
    partials[2, 50:100] = np.float32(-3e38)  # ...and back
    partials[3, 100:110] = np.inf
    partials[4, 110:120] = np.nan
    dst[120:130], dst[130:140] = np.nan, 0.0
    partials[:, 140:150] = 0.0
    dst[150:160] = 2.0**-120
    partials[0, 150:160] = np.float32(-(2.0**-120) + 2.0**-140)  # cancellation to a tiny value
    expected = dst.copy()
    for partial in partials:
        expected = N._f64_to_bf16_slow(expected + partial).astype(np.float64)
    got = N._accumulate_bf16(dst, partials)
    same = (bits(got.astype(np.float32)) == bits(expected.astype(np.float32))) | (np.isnan(got) & np.isnan(expected))
    assert same.all(), np.nonzero(~same)[0][:10]


def test_veltkamp_rounding_equals_bf16_rne_in_the_normal_range():
    """`_accumulate_bf16_normal` rounds with Veltkamp's split (four ufunc passes a step): against
    `_round_bf16_f64` on 53-bit values across bf16's normal range, on exact ties and their neighbours."""
    rng = np.random.default_rng(12)
    n = 200_000
    mantissas = rng.integers(2**52, 2**53, n, dtype=np.int64).astype(np.float64)
    values = np.ldexp(mantissas, rng.integers(-126 - 52, 127 - 52, n)) * rng.choice([-1.0, 1.0], n)
    nine_bits = np.arange(2**8, 2**9, dtype=np.float64)  # the odd ones lie halfway between bf16 neighbours
    for exponent in (-126, -60, -1, 0, 7, 100, 126):
        ties = np.ldexp(nine_bits, exponent - 8)
        values = np.concatenate([values, ties, -ties, np.nextafter(ties, np.inf), np.nextafter(ties, 0)])
    values = np.concatenate([values, [0.0]])
    out = np.zeros_like(values)
    N._accumulate_bf16_normal(out, values[None], np.empty_like(values))
    assert np.array_equal(out.view(np.uint64), N._round_bf16_f64(values).view(np.uint64))


def chunk_by_chunk(dst, a, b, fidelity):
    """Matrices dst [..., M, N] += a [..., M, K] @ b [..., K, N] spelled out: per 16-chunk the fidelity passes'
    products summed exactly, rounded to float32, added to Dst and rounded to bf16 (`_f64_to_bf16_slow`)."""
    b_hi, b_lo = N.split_operand_b(a)  # in0 sits in SrcB
    a_hi, a_lo = N.split_operand_a(b)  # in1 sits in SrcA
    passes = [(b_hi, a_hi), (b_hi, a_lo), (b_lo, a_hi), (b_lo, a_lo)][: int(fidelity)]
    out = np.asarray(dst, np.float64)
    with np.errstate(all="ignore"):
        for c in range(0, a.shape[-1], 16):
            partial = sum(left[..., c : c + 16].astype(float) @ right[..., c : c + 16, :].astype(float)
                          for left, right in passes)
            out = N._f64_to_bf16_slow(out + partial.astype(np.float32)).astype(np.float64)
    return out.astype(np.float32)


def as_tiles(matrix):
    *lead, rows, cols = matrix.shape
    return matrix.reshape(*lead, rows // 32, 32, cols // 32, 32).swapaxes(-3, -2)


@pytest.mark.parametrize("products", [64, 2048, 1 << 17])  # Dst rows per block: parts of a matrix .. many
@pytest.mark.parametrize("fidelity", list(MathFidelity))
def test_blocked_matmul_equals_the_chunk_by_chunk_model(monkeypatch, products, fidelity):
    """The emulator's matmul (operands copied chunk-major once, then block by block: batched chunk
    products, float32 partials, the fast chain where `_stays_normal` proves it exact, else the general
    one) gives the bits of the model spelled out chunk by chunk, for ordinary data and for blocks with
    tiny, huge, infinite and NaN values; with and without the promise that operands are bf16."""
    monkeypatch.setattr(N, "_CHAIN_PRODUCTS", products)
    rng = np.random.default_rng(int(fidelity))
    a = N.bf16_round(rng.standard_normal((3, 64, 160)))
    b = N.bf16_round(rng.standard_normal((3, 160, 64)) * 4)
    dst = N.bf16_round(rng.standard_normal((3, 64, 64)))
    a[0, :4, :20] = 2.0**-70  # products below float32's normal range, in some blocks only
    a[1, 40:44] *= 2.0**125  # sums past bf16's range (to inf)
    a[2, 9, 100], dst[2, 10, 10] = np.nan, 2.0**-100
    want = chunk_by_chunk(dst, a, b, fidelity)
    for promise in (False, True):
        with np.errstate(all="ignore"):
            got = N.matmul_block_accumulate(as_tiles(dst), as_tiles(a), as_tiles(b), fidelity,
                                            bf16_operands=promise)
        same = (bits(got) == bits(as_tiles(want))) | (np.isnan(got) & np.isnan(as_tiles(want)))
        assert same.all()
    # matrices, broadcasting a weight and Dst, non-bf16 operands and a float64 Dst
    x, d64 = rng.standard_normal((3, 64, 160)), rng.standard_normal((64, 64))
    got = N._matmul_accumulate(d64, x, b[0], fidelity)
    want = chunk_by_chunk(np.broadcast_to(d64, (3, 64, 64)), N.bf16_round(x), np.broadcast_to(b[0], (3, 160, 64)),
                          fidelity)
    assert np.array_equal(bits(got), bits(want))


@pytest.mark.parametrize("fidelity", list(MathFidelity))
def test_operand_range_proves_the_fast_chain(fidelity):
    """Operands no smaller than 2**-44 (but for zeros) let every block take the fast chain without looking
    at its partials; with magnitudes spread over 2**-44 .. 2**40 and sums cancelling to tiny values it
    still gives the chunk-by-chunk bits. A smaller operand, an inf or a huge product disables the proof."""
    rng = np.random.default_rng(40 + int(fidelity))
    def spread(*shape: int) -> np.ndarray:
        signs = rng.choice([-1.0, 1.0], shape)
        return N.bf16_round(signs * (1 + rng.random(shape)) * 2.0 ** rng.integers(-44, 20, shape))

    a, b = spread(2, 64, 96), spread(2, 96, 64)
    a[:, :, :16] = 2.0**-44  # equal products of opposite signs: chunk sums of exactly 0 and tiny ones
    b[:, :8, :], b[:, 8:16, :] = 2.0**-44, -(2.0**-44)
    b[0, 15, 3] = -(2.0**-44) * 1.0078125
    a[1, 5, 40:50] = 0.0
    dst = N.bf16_round(rng.standard_normal((2, 64, 64)))
    assert N._operands_keep_normal(N._dst_bound(dst), a, b, 6)
    with np.errstate(all="ignore"):
        got = N.matmul_block_accumulate(as_tiles(dst), as_tiles(a), as_tiles(b), fidelity)
    assert np.array_equal(bits(got), bits(as_tiles(chunk_by_chunk(dst, a, b, fidelity))))
    small, huge, infinite = a.copy(), a.copy(), a.copy()
    small[0, 0, 0], huge[0, 0, 0], infinite[0, 0, 0] = 2.0**-45, 2.0**120, np.inf
    for operand in (small, huge, infinite):
        assert not N._operands_keep_normal(N._dst_bound(dst), operand, b, 6)


@pytest.mark.parametrize("name", sorted(N.SFPU_FUNCTIONS))
def test_sfpu_table_equals_evaluating_the_function(name):
    """sfpu_unary looks unary SFPU results up in a table of all 65536 bf16 inputs: the same bits as
    evaluating the function on the tile (float64, then float32, then bf16), for every bit pattern in a
    shuffled tile layout (no dependence on position), NaN payloads included, and for float32 inputs that
    are not bf16 values."""
    rng = np.random.default_rng(3)
    patterns = (rng.permutation(1 << 16).astype(np.uint32) << 16).view(np.float32).reshape(4, 16, 32, 32)
    unrounded = rng.standard_normal((3, 32, 32)).astype(np.float32) * 4
    for x in (patterns, unrounded):
        with np.errstate(all="ignore"):
            direct = N.SFPU_FUNCTIONS[name](N.bf16_round(x).astype(np.float64))
            direct = N.bf16_round(np.asarray(direct).astype(np.float32))
        got = N.sfpu_unary(x, name)
        assert got.shape == x.shape and got.dtype == np.float32
        assert np.array_equal(bits(got), bits(direct))


def test_veltkamp_f64_to_bf16_equals_the_round_to_odd_reference():
    """`_f64_to_bf16`'s fast path (Veltkamp split + exact cast) on arrays of ordinary values, and its fallback
    for arrays holding a value below float32's normal range, inf or NaN (each tried alone and among
    ordinary values), against `_f64_to_bf16_slow`."""
    rng = np.random.default_rng(13)
    ordinary = rng.standard_normal(100_000) * 10.0 ** rng.integers(-37, 38, 100_000)
    grid = (rng.integers(0x0080, 0x7F80, 20_000).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    near_ties = grid * (1 + rng.choice([0.0, 2**-9, -(2**-9), 2**-30], grid.size))
    fast = np.concatenate([ordinary, near_ties, [0.0, -0.0, 3.3895e38, 3.4e38, 1e300, 2.0**-126 - 2.0**-136]])
    assert np.array_equal(bits(N._f64_to_bf16(fast)), bits(N._f64_to_bf16_slow(fast)))
    for special in (np.inf, -np.inf, np.nan, 2.0**-127, 2.0**-126 - 2.0**-134, -1e-40, 1e-45, 1e-50):
        for v in (np.array([special]), np.append(ordinary[:1000], special)):
            got, want = N._f64_to_bf16(v), N._f64_to_bf16_slow(v)
            assert np.array_equal(bits(got), bits(want)) or np.isnan(special), special
            assert (np.isnan(got) == np.isnan(want)).all()


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_blocked_eltwise_equals_rounding_each_result(monkeypatch, op):
    """eltwise_binary runs over blocks of the leading axis: the same bits as rounding each exact result once,
    for broadcast operands (row, column, scalar) and across many blocks."""
    monkeypatch.setattr(N, "_ELTWISE_BLOCK", 2048)
    rng = np.random.default_rng(14)
    a = N.bf16_round(rng.standard_normal((9, 3, 32, 32)) * 10.0 ** rng.integers(-20, 20, (9, 3, 32, 32)))
    b = N.bf16_round(rng.standard_normal((9, 3, 32, 32)))
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply}[op]
    for rhs in (b, b[..., 0:1, :], b[..., :, 0:1], b[..., 0:1, 0:1], np.float32(0.3)):
        rounded = np.broadcast_to(N.bf16_round(rhs), a.shape).astype(np.float64)  # operands enter as bf16
        want = N._f64_to_bf16_slow(fn(a.astype(np.float64), rounded))
        assert np.array_equal(bits(N.eltwise_binary(a, rhs, op)), bits(want))


def test_dst_bound_of_float32_dst_from_its_bits():
    """`_dst_bound` of a float32 Dst (from its bits) is max |Dst| where the float64 form proves the same
    (values 0 or at least 2**-103), and inf for NaN, inf, and values below 2**-103 (conservative)."""
    rng = np.random.default_rng(15)
    dst = N.bf16_round(rng.standard_normal((4, 64, 64)) * 10.0 ** rng.integers(-25, 25, (4, 64, 64)))
    dst[0, 0, :5] = 0.0, -0.0, 2.0**-103, -(2.0**-100), 3.3e38
    assert N._dst_bound(dst) == N._dst_bound(dst.astype(np.float64)) == np.abs(dst).max()
    for special in (np.nan, np.inf, -np.inf, 2.0**-104, -1e-38, 1e-45):
        tainted = dst.copy()
        tainted[3, 5, 7] = special
        assert N._dst_bound(tainted) == np.inf
    assert N._dst_bound(np.zeros((0, 32), np.float32)) == 0.0
