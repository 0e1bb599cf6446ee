"""The native numerics primitives (runtime/native: formats.cpp, eltwise.cpp) against the Python emulator
(runtime/formats.py, runtime/numerics.py, the interpreter's row helpers), byte for byte.

Floats are compared as their uint32 bits, so NaN payloads and -0.0 count. In a Float16 Dst the Python raises
numerics.Float16Overflow where a finite value rounds to inf, and the native primitives set a per-thread flag:
each comparison checks that the flag is set exactly when the Python raises, and compares the results with
the Python's without the check (`python_and_overflow`). The one place the Python is not a
function of the values is an operation on two NaN operands (numpy's choice of whose bits survive depends on
its loop, i.e. on array sizes and strides): there the tests require a NaN and check the native rule apart.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_helpers import native_and_overflow, python_and_overflow

from ttc.runtime import compute as interpreter  # the Python emulator's row helpers and broadcasts
from ttc.runtime import formats as F
from ttc.runtime import numerics
from ttc.runtime.formats import DataFormat
from ttc.runtime.native_core import native as N

VECTORS = np.load(Path(__file__).resolve().parents[1] / "data" / "bfp_tiles.npz")
FORMATS = list(DataFormat)
DSTS = list(numerics.DST_FORMATS)
SETTINGS = settings(max_examples=100, deadline=None)

NANS = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FA00000, 0x7F810000, 0xFFFFFFFF,
                 0x7FC12000, 0x7F802000], dtype=np.uint32).view(np.float32)
SPECIALS = np.array([
    0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 0.5, 3.0, -7.25,
    65504.0, -65504.0, 65519.99, 65520.0, -65520.0, 65536.0, 2.0**-14, 2.0**-24, -(2.0**-24), 2.0**-25,
    3 * 2.0**-26, 2.0**-26, 6e-8, 1e-30, -1e-38, 1e-45, -1e-45, 2.0**-126, 2.0**-133, 2.0**-134,
    3.3895314e38, 3.4028235e38, -3.4028235e38, 2147483520.0, 2147483648.0, -2147483648.0, -2147483904.0,
    3e9, -3e9, 1.9999999, 2.5, -2.5, 0.99999994,
], dtype=np.float32)
SPECIALS = np.concatenate([SPECIALS, NANS, np.array([0x7F7F8000, 0x7F7F7FFF, 0x00018000, 0x80008000, 0x477FEFFF,
                                                     0x38800000, 0x387FF000, 0x33000000, 0x33000001],
                                                    dtype=np.uint32).view(np.float32)])
KINDS = ["bits", "mixed", "bf16", "f16", "zeros"]


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def values(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """float32 test data of a kind: "bits" any bit pattern; "mixed" normal values of random scales with
    specials, subnormals and NaNs mixed in; "bf16" / "f16" mixed rounded to that format (Dst contents);
    "zeros" mostly +-0.0 with a few NaNs and negatives (what orders of max operations show)."""
    size = int(np.prod(shape))
    if kind == "bits":
        return rng.integers(0, 1 << 32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    if kind == "zeros":  # NaNs rare enough that most rows of a tile hold none
        x = np.where(rng.random(size) < 0.5, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
        pick = rng.random(size)
        x[pick < 0.05] = -1.0
        x[pick < 0.02] = -np.inf
        x[pick < 0.01] = NANS[rng.integers(0, len(NANS), size=int((pick < 0.01).sum()))]
        return x.reshape(shape)
    scale = np.float32(2.0) ** rng.integers(-30, 30, size=size).astype(np.float32)
    x = (rng.standard_normal(size).astype(np.float32) * scale).astype(np.float32)
    special = rng.random(size) < 0.15
    x[special] = SPECIALS[rng.integers(0, len(SPECIALS), size=int(special.sum()))]
    x = x.reshape(shape)
    with np.errstate(all="ignore"):
        if kind == "bf16":
            return numerics.bf16_round(x)
        if kind == "f16":
            return numerics.f16_round(x)
    return x


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    got, want = bits(got), bits(want)
    assert got.shape == want.shape
    wrong = np.flatnonzero(got.ravel() != want.ravel())
    assert not wrong.size, f"{wrong.size} differ, first at {wrong[0]}: {got.ravel()[wrong[0]]:#010x} " \
                           f"!= {want.ravel()[wrong[0]]:#010x}"


def code(fmt: DataFormat) -> int:
    return N.FORMAT_CODES[fmt.value]


# ---------------------------------------------------------------------------------------- formats


def test_codes_and_tile_bytes():
    assert set(N.FORMAT_CODES) == {f.value for f in DataFormat}
    for fmt in FORMATS:
        assert N.tile_bytes(code(fmt)) == fmt.tile_bytes
    assert set(N.DST_FORMAT_CODES) == set(DSTS)
    assert set(N.SFPU_SCALAR_CODES) == set(numerics.SFPU_SCALAR_FUNCTIONS) - {"pow_scalar", "rpow_scalar"}
    assert set(N.BCAST_CODES) == set(interpreter._BROADCAST)
    with pytest.raises(ValueError):
        N.tile_bytes(6)
    with pytest.raises(ValueError):
        N.pack_tiles(np.zeros((1, 32, 32), np.float32), -1)
    with pytest.raises(ValueError):
        N.unpack_tiles(np.zeros((1, 100), np.uint8), code(DataFormat.BFLOAT16))


def test_face_order():
    t = np.arange(1024, dtype=np.float32).reshape(1, 32, 32)
    packed = N.pack_tiles(t, code(DataFormat.FLOAT32)).view(np.float32)[0]
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    assert np.array_equal(packed[(i // 16 * 2 + j // 16) * 256 + (i % 16) * 16 + (j % 16)], t[0])


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(KINDS), st.sampled_from(FORMATS), st.integers(1, 3))
def test_pack_tiles(seed: int, kind: str, fmt: DataFormat, n: int):
    tiles = values(np.random.default_rng(seed), (n, 32, 32), kind)
    with np.errstate(all="ignore"):
        want = F.pack_tiles(tiles, fmt)
    got = N.pack_tiles(tiles, code(fmt))
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(FORMATS), st.integers(1, 3))
def test_unpack_tiles(seed: int, fmt: DataFormat, n: int):
    """Random bytes: every code, exponent, NaN and (block float) sign-on-zero pattern."""
    data = np.random.default_rng(seed).integers(0, 256, size=(n, fmt.tile_bytes), dtype=np.uint8)
    with np.errstate(over="ignore"):  # block float: a shared exponent of 255 and a large code overflow
        want = F.unpack_tiles(data, fmt).astype(np.float32)  # i32: the float32 (RNE) of each integer
    same_bits(N.unpack_tiles(data, code(fmt)), want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_specials(fmt: DataFormat):
    tiles = np.resize(SPECIALS, (2, 32, 32)).astype(np.float32)
    tiles[1] = -tiles[1]
    with np.errstate(all="ignore"):
        packed = F.pack_tiles(tiles, fmt)
    assert np.array_equal(N.pack_tiles(tiles, code(fmt)), packed)
    with np.errstate(over="ignore"):
        want = F.unpack_tiles(packed, fmt).astype(np.float32)
    same_bits(N.unpack_tiles(packed, code(fmt)), want)


@pytest.mark.parametrize("fmt", [DataFormat.BFP8_B, DataFormat.BFP4_B])
def test_block_float_hardware_vectors(fmt: DataFormat):
    assert np.array_equal(N.pack_tiles(VECTORS["input"], code(fmt)), VECTORS[fmt.value])
    same_bits(N.unpack_tiles(VECTORS[fmt.value], code(fmt)), VECTORS[f"{fmt.value}_decoded"])


def test_i32_pack_is_numpy_cast():
    """Truncation toward zero; NaN, inf and everything outside [-2**31, 2**31) give INT32_MIN."""
    x = np.resize(SPECIALS, (1, 32, 32)).astype(np.float32)
    got = N.pack_tiles(x, code(DataFormat.INT32)).view(np.int32)
    with np.errstate(invalid="ignore"):
        assert np.array_equal(got, F.pack_tiles(x, DataFormat.INT32).view(np.int32))
    packed = N.pack_tiles(np.full((1, 32, 32), np.nan, np.float32), code(DataFormat.INT32)).view(np.int32)
    assert (packed == np.iinfo(np.int32).min).all()


def test_roundings_sweep():
    """A stride through every float32 bit pattern (plus all 65536 high halves with random low halves)."""
    u = np.arange(0, 1 << 32, 4093, dtype=np.uint64).astype(np.uint32)
    high = np.arange(1 << 16, dtype=np.uint32) << 16
    low = np.random.default_rng(0).integers(0, 1 << 16, size=1 << 16, dtype=np.uint32)
    x = np.concatenate([u, high, high | low, high | 0x8000, high | 0x7FFF, high | 0x1000]).view(np.float32)
    for dst in DSTS:
        want, raised = python_and_overflow(numerics.dst_round, x, dst)
        got, flagged = native_and_overflow(N.dst_round, x, N.DST_FORMAT_CODES[dst])
        same_bits(got, want)
        assert raised == flagged == (dst == "f16")
        for value in x[:: 1 << 12]:  # one value at a time: the flag exactly where the Python raises
            one = np.array([value], np.float32)
            assert python_and_overflow(numerics.dst_round, one, dst)[1] == \
                native_and_overflow(N.dst_round, one, N.DST_FORMAT_CODES[dst])[1]


@pytest.mark.parametrize("dst", DSTS)
def test_dst_round_overflow_edges(dst: str):
    """Float16 overflow: a finite value at or past 65520 (where RNE goes to inf), of either sign; not 65519.99,
    not inf, not NaN. A bf16 Dst never flags."""
    for value, overflows in ((65504.0, False), (65519.99, False), (np.float32(65520.0) * (1 - 2**-24), False),
                             (65520.0, True), (-65520.0, True), (65536.0, True), (1e10, True), (-3.4028235e38, True),
                             (np.inf, False), (-np.inf, False), (np.nan, False), (NANS[2], False), (0.0, False),
                             (2.0**-25, False)):
        x = np.array([1.0, value], np.float32)
        want, raised = python_and_overflow(numerics.dst_round, x, dst)
        got, flagged = native_and_overflow(N.dst_round, x, N.DST_FORMAT_CODES[dst])
        same_bits(got, want)
        assert raised == flagged == (overflows and dst == "f16"), value


def test_f16_round_is_the_packed_round_trip():
    """The native f16 rounding (computed in float32 bits) against its Float16 pack and unpack, which match numpy
    (test_pack_tiles, test_unpack_tiles), over one in 61 of all float32 bit patterns."""
    f16 = code(DataFormat.FLOAT16)
    for low in range(0, 1 << 32, 1 << 28):
        u = np.arange(low, low + (1 << 28), 61, dtype=np.uint64).astype(np.uint32)
        x = u[: u.size // 1024 * 1024].view(np.float32).reshape(-1, 32, 32)
        same_bits(N.dst_round(x, N.DST_FORMAT_CODES["f16"]), N.unpack_tiles(N.pack_tiles(x, f16), f16))


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(KINDS), st.sampled_from([DataFormat.BFLOAT16,
                                                                            DataFormat.FLOAT32]))
def test_rows(seed: int, kind: str, fmt: DataFormat):
    """interpreter.pack_row_values / unpack_rows (row-major CB pages for pack_rows and tilize_tiles)."""
    rng = np.random.default_rng(seed)
    cb = SimpleNamespace(format=fmt, index=0)
    rows = values(rng, (3, int(rng.integers(1, 100))), kind)
    with np.errstate(all="ignore"):
        want = interpreter.pack_row_values(rows, cb)
    assert np.array_equal(N.pack_rows(rows, code(fmt)), want)
    pages = rng.integers(0, 256, size=(2, 5, 64), dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        want = interpreter.unpack_rows(pages, cb)
    same_bits(N.unpack_rows(pages, code(fmt)), want)
    with pytest.raises(ValueError):
        N.pack_rows(rows, code(DataFormat.FLOAT16))


# ---------------------------------------------------------------------------------------- eltwise


def both_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.isnan(a) & np.isnan(b)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(KINDS), st.sampled_from(KINDS),
       st.sampled_from(["add", "sub", "mul"]), st.sampled_from(list(interpreter._BROADCAST)),
       st.sampled_from(DSTS), st.integers(1, 3))
def test_eltwise(seed: int, kind_a: str, kind_b: str, op: str, bcast: str, dst: str, n: int):
    rng = np.random.default_rng(seed)
    a, b = values(rng, (n, 32, 32), kind_a), values(rng, (n, 32, 32), kind_b)
    rhs = b[interpreter._BROADCAST[bcast]]
    want, raised = python_and_overflow(numerics.eltwise_binary, a, rhs, op, dst)
    got, flagged = native_and_overflow(N.eltwise, a, b, N.BINARY_OP_CODES[op], N.BCAST_CODES[bcast],
                                       N.DST_FORMAT_CODES[dst])
    assert raised == flagged
    undefined = both_nan(a, np.broadcast_to(rhs, a.shape))
    assert np.isnan(got[undefined]).all()
    same_bits(np.where(undefined, 0, got), np.where(undefined, 0, want))


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(["add", "sub", "mul"]),
       st.sampled_from(list(interpreter._BROADCAST)), st.integers(1, 3))
def test_eltwise_bf16_pages(seed: int, op: str, bcast: str, n: int):
    """The executor's binary_tiles on bf16 CB pages read in place (a bf16 Dst): every bf16 bit pattern can occur
    (NaNs, infs, subnormals), the same bits as unpacking the pages and then eltwise (the definition's operands)."""
    rng = np.random.default_rng(seed)
    bf16 = code(DataFormat.BFLOAT16)
    pages = [rng.integers(0, 256, size=(n, 2048), dtype=np.uint8) for _ in range(2)]
    if rng.random() < 0.5:  # mostly ordinary values: exponents near 1
        for p in pages:
            p[:, 1::2] = rng.integers(0x3C, 0x42, size=(n, 1024), dtype=np.uint8) | (p[:, 1::2] & 0x80)
    a, b = (N.unpack_tiles(p, bf16) for p in pages)
    got = N.eltwise_bf16_pages(pages[0], pages[1], N.BINARY_OP_CODES[op], N.BCAST_CODES[bcast])
    same_bits(got, N.eltwise(a, b, N.BINARY_OP_CODES[op], N.BCAST_CODES[bcast], N.DST_FORMAT_CODES["bf16"]))
    rhs = b[interpreter._BROADCAST[bcast]]
    with np.errstate(all="ignore"):
        want = numerics.eltwise_binary(a, rhs, op, "bf16")
    undefined = both_nan(a, np.broadcast_to(rhs, a.shape))
    same_bits(np.where(undefined, 0, got), np.where(undefined, 0, want))


@pytest.mark.parametrize("dst", DSTS)
def test_eltwise_two_nans_take_the_first(dst: str):
    """Both operands NaN: the first one's bits (quieted, then rounded), as x86 and numpy's same-shape tiles."""
    a = np.full((1, 32, 32), NANS[7], np.float32)  # 0x7FC12000
    a[0, 0] = NANS[1]  # 0xFFC00000
    b = np.full((1, 32, 32), NANS[2], np.float32)  # 0x7F800001
    for op in ("add", "sub", "mul"):
        got = N.eltwise(a, b, N.BINARY_OP_CODES[op], N.BCAST_CODES["none"], N.DST_FORMAT_CODES[dst])
        same_bits(got, numerics.dst_round(a, dst))
        same_bits(got, numerics.eltwise_binary(a, b, op, dst))


def test_eltwise_f16_every_value_against_a_few():
    """Every Float16 value against operands of every binade: the float32 arithmetic of the native f16 path
    rounds like the Python's exact float64 one."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32).reshape(64, 32, 32)
    for b in (np.float32(2.0**-24), np.float32(-3.0517578e-05), np.float32(0.33325195), np.float32(-1.0009766),
              np.float32(255.875), np.float32(-65504.0), np.float32(np.inf)):
        rhs = np.full_like(every, b)
        for op in ("add", "sub", "mul"):
            want, raised = python_and_overflow(numerics.eltwise_binary, every, rhs, op, "f16")
            got, flagged = native_and_overflow(N.eltwise, every, rhs, N.BINARY_OP_CODES[op], 0,
                                               N.DST_FORMAT_CODES["f16"])
            same_bits(got, want)
            assert raised == flagged
            for t in range(64):  # tile by tile: the flag exactly where the Python raises
                assert python_and_overflow(numerics.eltwise_binary, every[t], rhs[t], op, "f16")[1] == \
                    native_and_overflow(N.eltwise, every[t:t + 1], rhs[t:t + 1], N.BINARY_OP_CODES[op], 0,
                                        N.DST_FORMAT_CODES["f16"])[1]


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("dst", DSTS)
def test_eltwise_overflow_edges(op: str, dst: str):
    """An eltwise result just below, at and past Float16's rounding threshold 65520, an operand past it (bf16
    values from a CB), and inf operands (no overflow: the rounding is given an inf)."""
    cases = {"add": [(65504.0, 15.0, False), (65504.0, 16.0, True), (-65504.0, -16.0, True), (65504.0, np.inf, False),
                     (np.inf, -1.0, False), (np.nan, 65504.0, False), (65536.0, -32.0, True), (1.0, 1e9, True)],
             "sub": [(65504.0, -15.0, False), (65504.0, -16.0, True), (-np.inf, 65504.0, False)],
             "mul": [(256.0, 255.875, False), (256.0, 256.0, True), (65504.0, 1.0, False), (-65504.0, 2.0, True),
                     (np.inf, 0.5, False), (0.0, np.inf, False), (65536.0, 0.5, True)]}[op]
    for x, y, overflows in cases:
        a, b = np.full((1, 32, 32), 1.0, np.float32), np.full((1, 32, 32), 1.0, np.float32)
        a[0, 3, 5], b[0, 3, 5] = x, y
        want, raised = python_and_overflow(numerics.eltwise_binary, a, b, op, dst)
        got, flagged = native_and_overflow(N.eltwise, a, b, N.BINARY_OP_CODES[op], 0, N.DST_FORMAT_CODES[dst])
        same_bits(got, want)
        assert raised == flagged == (overflows and dst == "f16"), (x, y)


# ---------------------------------------------------------------------------------------- reduce max


def numpy_uses_avx512() -> bool:
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get("AVX512_SKX"))


@functools.cache
def reduce_kinds() -> list[str]:
    # Which of 0.0 / -0.0 and which NaN a max returns follows numpy's SIMD order, which the native core
    # copies for AVX-512: the "zeros" data only agree where numpy runs those kernels.
    return ["mixed", "bf16", "f16", "zeros"] if numpy_uses_avx512() else ["mixed", "bf16", "f16"]


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.data(), st.sampled_from(["row", "col", "scalar"]), st.sampled_from(DSTS),
       st.integers(1, 5), st.sampled_from([1.0, -1.0, 0.5, 3.0, 0.0, -0.0, 1e-30, 7e4, np.inf]))
def test_reduce_max(seed: int, data: st.DataObject, dim: str, dst_format: str, n: int, scaler: float):
    rng = np.random.default_rng(seed)
    kind = data.draw(st.sampled_from(reduce_kinds()))
    tiles = values(rng, (n, 32, 32), kind)
    if kind == "mixed":  # the Dst entries themselves are not order-sensitive: keep ties of zeros out of them
        dst = values(rng, (32, 32), "mixed")
    else:
        dst = values(rng, (32, 32), data.draw(st.sampled_from(reduce_kinds())))
    dst[rng.random((32, 32)) < 0.3] = -np.inf
    want, raised = python_and_overflow(numerics.reduce_block, dst, tiles, dim, "max", scaler, dst_format=dst_format)
    got, flagged = native_and_overflow(N.reduce_max, dst, tiles, N.REDUCE_DIM_CODES[dim], scaler,
                                       N.DST_FORMAT_CODES[dst_format])
    same_bits(got, want)
    assert raised == flagged


@pytest.mark.skipif(not numpy_uses_avx512(), reason="numpy's max order without AVX-512 differs in +-0 and NaN")
@pytest.mark.parametrize("dim", ["row", "col", "scalar"])
def test_reduce_max_signed_zeros_and_nans(dim: str):
    rng = np.random.default_rng(7)
    for trial in range(60):
        tiles = values(rng, (3, 32, 32), "zeros")
        if trial % 2:  # nothing above zero past column 16 and many negatives before: the lane reduction's
            tiles[..., 17:] = np.minimum(tiles[..., 17:], -1.0)  # order decides the zero's sign
            tiles[rng.random(tiles.shape) < rng.uniform(0.3, 0.9)] = -2.0
        dst = values(rng, (32, 32), "zeros")
        for dst_format in DSTS:
            with np.errstate(all="ignore"):
                want = numerics.reduce_block(dst, tiles, dim, "max", 1.0, dst_format=dst_format)
            got = N.reduce_max(dst, tiles, N.REDUCE_DIM_CODES[dim], 1.0, N.DST_FORMAT_CODES[dst_format])
            same_bits(got, want)


# ---------------------------------------------------------------------------------------- SFPU

TABLE_FUNCTIONS = ["exp", "recip", "neg", "abs", "relu", "sqrt", "isnan", "eqz", "floor", "sigmoid"]


@functools.cache
def table(name: str, dst: str) -> np.ndarray:
    return numerics._sfpu_table(numerics.SFPU_FUNCTIONS[name], dst)


def marks(name: str, dst: str) -> np.ndarray | None:
    """The table's Float16 overflow marks, as an f16 program passes them (none for bf16)."""
    return numerics.sfpu_table_overflow(name, 0.0, dst).view(np.uint8) if dst == "f16" else None


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(KINDS), st.sampled_from(TABLE_FUNCTIONS), st.sampled_from(DSTS))
def test_sfpu_table(seed: int, kind: str, name: str, dst: str):
    x = values(np.random.default_rng(seed), (2, 32, 32), kind)
    want, raised = python_and_overflow(numerics.sfpu_unary, x, name, 0.0, dst)
    got, flagged = native_and_overflow(N.sfpu_table, x, table(name, dst), N.DST_FORMAT_CODES[dst], marks(name, dst))
    assert raised == flagged
    if dst == "bf16":
        # numerics._as_bf16 rounds the whole array or none of it: a NaN with a zero low half indexes by its
        # own bits only when the array holds no other value with low bits (a Dst never does)
        u = bits(x)
        mixed = np.isnan(x) & ((u & 0xFFFF) == 0) & bool((u & 0xFFFF).any())
        got, want = np.where(mixed, 0, got), np.where(mixed, 0, want)
    same_bits(got, want)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["bits", "bf16", "f16"]), st.sampled_from(DSTS))
def test_sfpu_table_index(seed: int, kind: str, dst: str):
    """The input bits a table is indexed by (table[i] = i makes every index visible, NaNs included)."""
    x = values(np.random.default_rng(seed), (2, 32, 32), kind)
    nans = NANS[(bits(NANS) & 0xFFFF) == 0] if kind == "bf16" else NANS  # "bf16": Dst contents, NaNs included
    x.reshape(-1)[:len(nans)] = nans
    index_table = np.arange(1 << 16, dtype=np.float32)
    with np.errstate(all="ignore"):
        if dst == "f16":
            want = numerics.f16_round(x).astype(np.float16).view(np.uint16)
        else:
            want = numerics._as_bf16(x).view(np.uint32) >> 16
    got = N.sfpu_table(x, index_table, N.DST_FORMAT_CODES[dst])
    if dst == "bf16":  # where _as_bf16 rounds the whole array, the native core still keeps a NaN with a zero
        u = bits(x)     # low half as it is (as a Dst holds it: see test_sfpu_table)
        keep = np.isnan(x) & ((u & 0xFFFF) == 0) & bool((u & 0xFFFF).any())
        assert np.array_equal(got[keep], (u[keep] >> 16).astype(np.float32))
        got, want = got[~keep], want[~keep]
    assert np.array_equal(got, want.astype(np.float32))


SCALAR_FUNCTIONS = list(N.SFPU_SCALAR_CODES)
PARAMS = [0.0, -0.0, 1.0, -2.5, 0.1, 3e38, 1e-40, 65504.0, 70000.0, np.inf, -np.inf, np.nan, -np.nan, 1e300]


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(KINDS), st.sampled_from(SCALAR_FUNCTIONS),
       st.sampled_from(PARAMS), st.sampled_from(DSTS), st.integers(1, 2))
def test_sfpu_scalar(seed: int, kind: str, name: str, param: float, dst: str, n: int):
    x = values(np.random.default_rng(seed), (n, 32, 32), kind)
    want, raised = python_and_overflow(numerics.sfpu_unary, x, name, param, dst)
    got, flagged = native_and_overflow(N.sfpu_scalar, x, N.SFPU_SCALAR_CODES[name], param, N.DST_FORMAT_CODES[dst])
    same_bits(got, want)
    assert raised == flagged


@pytest.mark.parametrize("dst", DSTS)
@pytest.mark.parametrize("name", SCALAR_FUNCTIONS)
def test_sfpu_scalar_specials(name: str, dst: str):
    x = np.resize(SPECIALS, (2, 32, 32)).astype(np.float32)
    x[1] = -x[1]
    for param in PARAMS:
        want, raised = python_and_overflow(numerics.sfpu_unary, x, name, param, dst)
        got, flagged = native_and_overflow(N.sfpu_scalar, x, N.SFPU_SCALAR_CODES[name], param, N.DST_FORMAT_CODES[dst])
        same_bits(got, want)
        assert raised == flagged
        for value in x.reshape(-1)[:80]:  # one operand at a time: the flag exactly where the Python raises
            one = np.full((1, 1), value, np.float32)
            assert python_and_overflow(numerics.sfpu_unary, one, name, param, dst)[1] == \
                native_and_overflow(N.sfpu_scalar, one, N.SFPU_SCALAR_CODES[name], param, N.DST_FORMAT_CODES[dst])[1]


@pytest.mark.parametrize("dst", DSTS)
def test_sfpu_scalar_nan_param_wins(dst: str):
    """A NaN parameter of add / mul / sub_from gives its own bits even where x is NaN (numpy's loops with a
    scalar operand, for whole tiles); max keeps a NaN x."""
    x = np.full((1, 32, 32), NANS[7], np.float32)  # 0x7FC12000
    for name in ("add_scalar", "mul_scalar", "sub_from_scalar", "max_scalar"):
        for param in (-np.nan, float(NANS[2])):
            want = numerics.sfpu_unary(x, name, param, dst)
            same_bits(N.sfpu_scalar(x, N.SFPU_SCALAR_CODES[name], param, N.DST_FORMAT_CODES[dst]), want)
            # an operand past Float16's range still overflows in its own rounding, whatever the parameter
            big = np.full((1, 32, 32), 70000.0, np.float32)
            raised = python_and_overflow(numerics.sfpu_unary, big, name, param, dst)[1]
            flagged = native_and_overflow(N.sfpu_scalar, big, N.SFPU_SCALAR_CODES[name], param,
                                          N.DST_FORMAT_CODES[dst])[1]
            assert raised == flagged == (dst == "f16")


@pytest.mark.parametrize("name", ["exp", "recip", "log", "square", "rsqrt", "sigmoid"])
def test_sfpu_table_overflow_edges(name: str):
    """Every Float16 input, one at a time in groups: a lookup flags exactly the entries the Python marks (a
    finite float32 result past 65504: exp from 11.09, recip of tiny values, square from 256; not
    the poles recip(0), rsqrt(0), log(0), nor inf inputs), and an operand past Float16's range flags too."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    mark = numerics.sfpu_table_overflow(name, 0.0, "f16")
    with np.errstate(all="ignore"):
        y = np.asarray(numerics.SFPU_FUNCTIONS[name](every.astype(np.float64))).astype(np.float32)
    assert np.array_equal(mark, np.isfinite(y) & np.isinf(numerics.f16_round(y)))
    assert not mark[np.isinf(every) | np.isnan(every) | (every == 0)].any()
    assert mark.any() == (name in ("exp", "recip", "square"))  # rsqrt(2**-24) is only 4096
    for group in np.array_split(np.arange(1 << 16), 512):
        x = every[group]
        raised = python_and_overflow(numerics.sfpu_unary, x, name, 0.0, "f16")[1]
        flagged = native_and_overflow(N.sfpu_table, x, table(name, "f16"), N.DST_FORMAT_CODES["f16"],
                                      marks(name, "f16"))[1]
        assert raised == flagged == bool(mark[group].any())
    # 65519 rounds to 65504: its square is a finite float32 past Float16's range, its exp an inf already in
    # float32 (no overflow by the definition: the Float16 rounding is given an inf)
    for operand, overflows in ((70000.0, True), (-65520.0, True), (65519.0, name == "square"), (np.inf, False)):
        x = np.array([0.5, operand], np.float32)
        raised = python_and_overflow(numerics.sfpu_unary, x, name, 0.0, "f16")[1]
        flagged = native_and_overflow(N.sfpu_table, x, table(name, "f16"), N.DST_FORMAT_CODES["f16"],
                                      marks(name, "f16"))[1]
        assert raised == flagged == overflows, operand
