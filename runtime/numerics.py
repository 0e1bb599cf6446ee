"""The compute numerics model ttc uses for the emulated Grayskull (pure numpy, vectorised over tiles).

docs/grayskull.md section 4 "The numerics model ttc uses" fixes the rules; this module is their single implementation:
- Dst holds bfloat16 (or Float16 for f16 results).  A matmul adds one MVMUL (16 elements of K) at a time:
  ``Dst = RN_dst(Dst + partial)``, partial = the float32 rounding of the exact sum of that chunk's products
  over the math-fidelity passes (stated exactly below).  ``Dst[4x16] += SrcB[4x16] @ SrcA[16x16]``: SrcA holds in1 (K x N)
  and gets the 5-bit split, SrcB holds rows of in0 (M x K) and gets the 7-bit split.
- Eltwise FPU add/sub/mul: bf16 operands, result rounded once to bf16 (RNE).
- SFPU: computed in float32 then rounded to bf16 on write-back.  The Grayskull SFPU really works on
  19-bit floats (1+8+10); ttc deliberately models it as float32-then-bf16.
- Float16 overflow: in a Float16 Dst, every rounding of a finite value that gives +-inf (a magnitude of
  at least 65520, where RNE leaves 65504) raises `Float16Overflow`, a device fault, never a silent inf:
  operands and datacopies rounded into Dst, eltwise results (the exact value), SFPU results (the float32
  value; table entries are marked), fill values, reduce max and sum, every step of the matmul chain. An
  inf the rounding is given is none: an inf operand, an IEEE pole (recip(0), log(0)), a float32 result
  or matmul partial that is inf already.

The matmul unit, exactly (the definition the native core matches bit for bit).  x is in0 (SrcB) and y
in1 (SrcA), bf16 values (operands are rounded to bf16 first); hiB(x) keeps sign, exponent and the top 6
mantissa bits (the 7-bit split), loB(x) = x - hiB(x) its last bit, hiA(y) the top 4 (the 5-bit split).
A chunk's products per k are: LoFi hiB(x) hiA(y); HiFi2 hiB(x) y; HiFi3 hiB(x) y and loB(x) hiA(y) (32
products); HiFi4 x y, all exact reals.
- partial = RN_f32(the exact real sum of the chunk's products): one rounding to nearest, ties to even;
  exact sums from 2**128 - 2**103 on round to inf; below 2**-126 the float32 subnormal grid applies, and
  a nonzero sum that rounds to 0 keeps its sign; an exact sum of 0 is +0 (even if every product is -0).
- A chunk with an inf or NaN operand: its products are the IEEE products of the values the passes read
  (x as hiB(x) at LoFi and HiFi2, y as hiA(y) at LoFi, else as they are; an inf stays inf and a NaN stays
  NaN), so finite operands give finite products and inf * 0 gives NaN. The partial is NaN if a product
  is NaN or both +inf and -inf occur, else the infinity that occurs. (Before this definition HiFi3 took
  loB(inf) = inf - inf = NaN, which made an inf operand NaN depending on the other operand's last bit.)
- Dst = RN_dst(RN_f64(Dst + partial)) chunk after chunk, RN_dst rounding to bf16 (8 significant bits) or
  Float16 (11), ties to even, inf past the format's largest value, the format's subnormal grid below its
  normal range. The float64 sum is exact unless |Dst| < 2**-45 |partial| (f16: 2**-42) or
  |partial| < 2**-29 |Dst|. In the second case both sums lie far inside Dst's rounding interval and round
  to Dst alike; in the first, RN_f64 may drop a Dst that would break a tie of the partial at the Dst
  format's precision: that double rounding is part of the definition.
- NaN: a chain from a NaN Dst keeps that NaN as the format rounds it (bf16: the quiet NaN with its sign;
  f16: its sign and top 9 payload bits, made quiet); any other NaN result (a NaN partial, inf + -inf)
  is the positive quiet NaN (bf16 0x7FC0, f16 0x7E00).
Reduce "sum" is this matmul with a scaler-row tile (see reduce_tiles); reduce "scalar" is the row
reduction then the column reduction of its sums.

How the reference computes it fast.  The products of bf16 values (or their split parts) are exact in
float64, and so is every order of summing a chunk's products when the exponent fields of the nonzero
operands of the in0 row and the in1 column span at most `_SPAN_LIMIT` binades together (33 HiFi4,
34 HiFi2/HiFi3, 37 LoFi): then one float64 matrix product per fidelity term (grouped as in
`_fidelity_terms`; a dgemm may sum in any order) and numpy's RNE cast to float32 give the definition.
`_ChunkChecks` proves that cheaply for ordinary data and lists the few sums it cannot prove; those, and
all sums of operands with wide spans (softmax rows of attention), are checked against a rigorous error
bound (`_rounding_test`) and the rare failures summed exactly (`_exact_partials`). Since every chunk
sum is exact, the same matmul computed over different tile blocks (same K order) gives identical bits.
``Dst + partial`` is formed in float64 and rounded once to bf16 via round-to-odd at float32 precision
(``_f64_to_bf16``); ml_dtypes' own float64 -> bfloat16 cast rounds twice (through float32), which
differs, e.g. 257 + 2**-20 -> 256 instead of 258.
The chain runs over cache-sized blocks of Dst; a block whose every step provably stays in bf16's normal
range rounds with Veltkamp's split (`_accumulate_bf16_normal`), any other block with the general bit
rounding (`_accumulate_bf16`): the same bits either way.

pow (binary `pow`, `pow_scalar` x ** p, `rpow_scalar` p ** x, with x the Dst-format value and p the
float32 parameter): RN_dst(RN_f32(the exact real power)) with C99's special cases (`pow_f32`).
"""

from __future__ import annotations

import decimal
import functools
import math
from collections.abc import Callable, Iterator
from enum import IntEnum
from fractions import Fraction

import ml_dtypes
import numpy as np

TILE = 32
MVMUL_K = 16  # K elements consumed by one MVMUL

_bf16 = ml_dtypes.bfloat16

# float32 bit masks keeping sign + exponent + the mantissa bits one multiplier pass sees.
_MASK_A = np.uint32(0xFFF80000)  # SrcA: hidden 1 + top 4 mantissa bits
_MASK_B = np.uint32(0xFFFE0000)  # SrcB: hidden 1 + top 6 mantissa bits


class MathFidelity(IntEnum):
    """Math fidelity; the value is the number of multiplier passes (phases)."""

    LOFI = 1
    HIFI2 = 2
    HIFI3 = 3
    HIFI4 = 4

    @classmethod
    def parse(cls, value: str | int | MathFidelity) -> MathFidelity:
        """Accept the enum, its phase count, or a name like "lofi" / "HiFi4"."""
        if isinstance(value, str):
            return cls[value.strip().upper()]
        return cls(value)

    @property
    def phases(self) -> int:
        return int(self)


# --------------------------------------------------------------------------- rounding


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 values of x rounded to bfloat16 (RNE), returned as float32."""
    return np.asarray(x, dtype=np.float32).astype(_bf16).astype(np.float32)


DST_FORMATS = ("bf16", "f16")  # Float16_b, Float16: what Dst holds (the 16-bit type of the result's format)


def f16_round(x: np.ndarray) -> np.ndarray:
    """float32 values of x rounded to Float16 (IEEE half, RNE; inf past 65504), returned as float32. The plain
    rounding: the roundings of Dst values (`dst_round`, `as_f16`) also check for a `Float16Overflow`."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


class Float16Overflow(ArithmeticError):
    """A finite value rounded to Float16 gave +-inf (its magnitude is at least 65520, where Float16's rounding
    goes to inf): a device fault in a program that holds Float16 in Dst, never a silent inf.

    Raised by every rounding of a value to Float16 in Dst (`dst_round`, `as_f16`, the float64 roundings of
    eltwise and of the matmul chain, the SFPU tables' entries and operands). An inf that the rounding is given
    (an inf operand, an IEEE pole such as recip(0) or log(0), a float32 result that is inf already) is no
    overflow: the rounding did not make it."""


def _check_f16(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """after (the Float16 rounding of before), or Float16Overflow where a finite value became inf."""
    inf = np.isinf(after)
    if inf.any() and (inf & np.isfinite(before)).any():
        raise Float16Overflow("a finite value rounded to Float16 exceeds 65504")
    return after


def _check_marks(marks: np.ndarray) -> None:
    """Float16Overflow if a looked-up SFPU table entry is marked as one (`sfpu_table_overflow`)."""
    if marks.any():
        raise Float16Overflow("an SFPU result rounded to Float16 exceeds 65504")


def _f16_dst(x: np.ndarray) -> np.ndarray:
    """f16_round of values in (or entering) a Float16 Dst: raises Float16Overflow on overflow."""
    x = np.asarray(x, dtype=np.float32)
    return _check_f16(x, f16_round(x))


def as_f16(x: np.ndarray) -> np.ndarray:
    """x rounded to Float16, as float32, for reading only. Values with no mantissa bits below Float16's 10
    (bf16, block-float and Float16 values) are exact unless outside Float16's normal range: then only the
    values past 65504 or below 2**-14 are rounded (f16_round), the rest is x as it is. A finite value that
    rounds to inf raises Float16Overflow."""
    x = np.asarray(x, dtype=np.float32)
    magnitude = x.view(np.uint32) & np.uint32(0x7FFF_FFFF)
    if not x.size or (magnitude & np.uint32(0x1FFF)).any():
        return _f16_dst(x)
    outside = (magnitude > _F16_MAX_BITS) | ((magnitude < _F16_MIN_NORMAL_BITS) & (magnitude != 0))
    if not outside.any():
        return x
    rounded = x.copy()
    rounded[outside] = _f16_dst(x[outside])
    return rounded


_F16_MAX_BITS = np.float32(65504.0).view(np.uint32)
_F16_MIN_NORMAL_BITS = np.float32(2.0**-14).view(np.uint32)


def dst_round(x: np.ndarray, dst: str = "bf16") -> np.ndarray:
    """float32 values of x rounded once (RNE) to the Dst format `dst` (bf16 or f16), as float32. f16: a finite
    value that rounds to inf raises Float16Overflow (a bf16 Dst's range is float32's: no check)."""
    if dst == "bf16":
        return bf16_round(x)
    if dst == "f16":
        return _f16_dst(x)
    raise ValueError(f"unknown Dst format {dst!r} (one of {', '.join(DST_FORMATS)})")


def _round_quiet(x: np.ndarray, dst: str) -> np.ndarray:
    """dst_round without the overflow check (the SFPU tables round every entry and mark the overflows)."""
    return f16_round(x) if dst == "f16" else dst_round(x, dst)


def _f64_to_f16(v: np.ndarray) -> np.ndarray:
    """Round exact float64 values once to Float16 (RNE), as float64: numpy's float64 -> float16 cast rounds
    directly from the float64 bits (subnormals, overflow to inf and NaN included). A finite value that rounds
    to inf raises Float16Overflow."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore"):
        return _check_f16(v, v.astype(np.float16).astype(np.float64))


_BF16_HALF_ULP_BELOW = np.uint64((1 << 44) - 1)  # in float64 bits: half a bf16 ulp, minus one
_BF16_KEEP = np.uint64(~((1 << 45) - 1) & 0xFFFF_FFFF_FFFF_FFFF)  # sign, exponent, 7 mantissa bits
_F32_MIN_NORMAL = 2.0**-126


def _f64_to_bf16(v: np.ndarray) -> np.ndarray:
    """Round float64 v once to bf16 (RNE), as float32.

    Fast path: Veltkamp's split rounds to the top 8 significant bits (see `_accumulate_bf16_normal`), and
    the cast to float32 is then exact, or inf past bf16's range. That is bf16's rounding unless v is below
    float32's normal range (the cast gives a subnormal) or is inf or NaN (the split gives NaN); then the
    whole array takes `_round_bf16_f64`. (A value that rounds up to exactly 2**-126 gets the same bf16
    either way, and one so small that the cast gives 0 rounds to 0 in bf16 too.)
    """
    v = np.atleast_1d(np.asarray(v, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = v * _VELTKAMP_BF16
        rounded = scaled - v
        np.subtract(scaled, rounded, out=rounded)
        out = rounded.astype(np.float32)
        if not out.size:
            return out
        doubled = out.view(np.uint32) << np.uint32(1)  # magnitude bits, sign shifted out
        if doubled.max() <= _INF_F32_DOUBLED:
            np.subtract(doubled, np.uint32(1), out=doubled)  # zero wraps to the top
            if doubled.min() >= _NORMAL_F32_DOUBLED - np.uint32(1):
                return out
        return _round_bf16_f64(v).astype(np.float32)


def _round_bf16_f64(v: np.ndarray) -> np.ndarray:
    """Round float64 v once to bf16 (RNE), staying in float64 (bf16 values are exact float64 values).

    The hot path of every emulated accumulation, so it works on the float64 bits: add half an ulp of
    the 8-bit significand (plus the kept LSB, for ties to even) and clear the 45 dropped bits; a carry
    into the exponent is the right result. Results beyond bf16's range become inf (overflow). Below
    float32's normal range bf16 has fewer significant bits; those values (and NaN) take
    `_f64_to_bf16_slow`.
    """
    v = np.atleast_1d(np.asarray(v, dtype=np.float64))
    bits = np.ascontiguousarray(v).view(np.uint64)
    out = ((bits + (_BF16_HALF_ULP_BELOW + ((bits >> np.uint64(45)) & np.uint64(1)))) & _BF16_KEEP).view(np.float64)
    overflow = np.abs(out) >= 2.0**128
    if overflow.any():
        out[overflow] = np.copysign(np.inf, out[overflow])
    special = ~(np.abs(v) >= _F32_MIN_NORMAL) & (v != 0)  # subnormal or NaN
    if special.any():
        out[special] = _f64_to_bf16_slow(v[special])
    return out


def _f64_to_bf16_slow(v: np.ndarray) -> np.ndarray:
    """Round float64 v once to bf16 (RNE), as float32, for any value.

    Rounds to float32 with round-to-odd first (truncate toward zero, set the last bit if inexact):
    with 16 spare bits this makes the following float32 -> bf16 RNE equal a direct rounding.
    """
    with np.errstate(over="ignore"):
        f = v.astype(np.float32)
    f = np.where(np.abs(f.astype(np.float64)) > np.abs(v), np.nextafter(f, np.float32(0)), f)
    sticky = (f.astype(np.float64) != v).astype(np.uint32)
    return (f.view(np.uint32) | sticky).view(np.float32).astype(_bf16).astype(np.float32)


def _split(x: np.ndarray, mask: np.uint32) -> tuple[np.ndarray, np.ndarray]:
    hi = (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) & mask).view(np.float32)
    return hi, x - hi  # exact: lo is the masked-off low bits of a bf16 value


def split_operand_a(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SrcA split of bf16(x): hi = sign, exponent, hidden 1 + top 4 mantissa bits; lo = x - hi (3 bits)."""
    return _split(bf16_round(x), _MASK_A)


def split_operand_b(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SrcB split of bf16(x): hi = sign, exponent, hidden 1 + top 6 mantissa bits; lo = x - hi (last bit)."""
    return _split(bf16_round(x), _MASK_B)


# --------------------------------------------------------------------------- matmul


def _fidelity_terms(
    in0: np.ndarray, in1: np.ndarray, fidelity: MathFidelity
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(left, right) float64 operand pairs whose products sum to the fidelity passes.

    in0 sits in SrcB (7-bit split), in1 in SrcA (5-bit split).  Passes: 0 A_hi*B_hi, 1 A_lo*B_hi,
    2 A_hi*B_lo, 3 A_lo*B_lo; so passes 0+1 = A*B_hi and 0..3 = A*B exactly.
    """
    def f64(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float64)

    if fidelity is MathFidelity.HIFI4:
        return [(f64(in0), f64(in1))]
    b_hi, b_lo = _split(in0, _MASK_B)
    a_hi, _ = _split(in1, _MASK_A)
    if fidelity is MathFidelity.LOFI:
        return [(f64(b_hi), f64(a_hi))]
    if fidelity is MathFidelity.HIFI2:
        return [(f64(b_hi), f64(in1))]
    if fidelity is MathFidelity.HIFI3:
        return [(f64(b_hi), f64(in1)), (f64(b_lo), f64(a_hi))]
    return [(f64(in0), f64(in1))]


def _matmul_accumulate(
    dst: np.ndarray, in0: np.ndarray, in1: np.ndarray, fidelity: MathFidelity | str | int, dst_format: str = "bf16"
) -> np.ndarray:
    """Matrices dst [..., M, N] += in0 [..., M, K] @ in1 [..., K, N], one K chunk of 16 at a time.

    Each chunk's product is exact in float64 and rounded to float32 (the multiplier array's output);
    Dst adds it and rounds to its format (bf16 or f16), chunk after chunk. The chunk products are computed together as one
    batched product; only the rounding chain is sequential.
    """
    fidelity = MathFidelity.parse(fidelity)
    k = in0.shape[-1]
    if k % MVMUL_K or in1.shape[-2] != k:
        raise ValueError(f"K mismatch or not a multiple of {MVMUL_K}: {in0.shape} @ {in1.shape}")
    chunks, m, n = k // MVMUL_K, in0.shape[-2], in1.shape[-1]
    lead = np.broadcast_shapes(in0.shape[:-2], in1.shape[:-2], np.shape(dst)[:-2])
    lhs = np.broadcast_to(in0.reshape(*in0.shape[:-1], chunks, MVMUL_K), (*lead, m, chunks, MVMUL_K))
    rhs = np.broadcast_to(in1.reshape(*in1.shape[:-2], chunks, MVMUL_K, n), (*lead, chunks, MVMUL_K, n))
    acc = np.broadcast_to(dst, (*lead, m, n))
    out = _accumulate_chunks(acc, np.moveaxis(lhs, -2, 0), np.moveaxis(rhs, -3, 0), (chunks, m, n), fidelity,
                             dst_format=dst_format)
    with np.errstate(over="ignore"):
        return out.reshape(acc.shape).astype(np.float32)


def _as_bf16(x: np.ndarray) -> np.ndarray:
    """x as float32 bf16 values, for reading only: x itself when it holds bf16 values already (as
    unpacked CB tiles do), else bf16_round(x). Checking the low bits costs less than rounding again."""
    x = np.asarray(x, dtype=np.float32)
    if (x.view(np.uint32) & np.uint32(0xFFFF)).any():
        return bf16_round(x)
    return x


def _accumulate_chunks(dst: np.ndarray, lhs: np.ndarray, rhs: np.ndarray, shape: tuple[int, int, int],
                       fidelity: MathFidelity, bf16_operands: bool = False, dst_format: str = "bf16") -> np.ndarray:
    """Dst [L, M, N] += lhs[c] @ rhs[c] for chunks c in order, Dst rounded to its format (bf16 or f16) after
    each. The operands enter the multiplier as bf16 whatever the Dst format.

    shape is (C, M, N). The arguments may be any views whose elements in C order are those of dst
    [L, M, N], lhs [C, L, M, 16] and rhs [C, L, 16, N] (so callers pass transposed views, copied once
    here). lhs and rhs are rounded to bf16 first unless `bf16_operands` says they hold bf16 values.
    Returns the new Dst: float64 values of the Dst format [L, M, N].

    Elements of Dst are independent, so the work runs block by block over rows of Dst, sized so that a
    block's chunk products stay in the core's cache: the batched float64 product of the block's chunks,
    its rounding to float32 partials (exact, see `_round_partials`), and the chain (`_accumulate_bf16_block`).
    """
    chunks, m, n = shape
    if not bf16_operands:
        lhs, rhs = _as_bf16(lhs), _as_bf16(rhs)
    lhs, rhs = np.asarray(lhs, dtype=np.float32), np.asarray(rhs, dtype=np.float32)
    terms = [(left.reshape(chunks, -1, m, MVMUL_K), right.reshape(chunks, -1, MVMUL_K, n))
             for left, right in _fidelity_terms(lhs, rhs, fidelity)]
    checks = _ChunkChecks(lhs, rhs, shape, fidelity, terms)
    acc = np.empty((terms[0][0].shape[1], m, n))
    acc.reshape(dst.shape)[...] = dst
    dst_bound = _dst_bound(np.asarray(dst))
    # else each block's partials are checked
    normal = _ranges_keep_normal(dst_bound, checks.lhs_range, checks.rhs_range, chunks)
    rows = min(max(_CHAIN_PRODUCTS // (chunks * n), 1), m * len(acc))  # Dst rows per block
    scratch = np.empty(rows * n)
    for index, first, last in _row_blocks(len(acc), m, rows):
        block_index = slice(index, index + 1) if isinstance(index, int) else index
        partials = None
        for left, right in terms:
            product = left[:, index, first:last] @ right[:, index]
            partials = product if partials is None else partials + product
        assert partials is not None
        block = acc[index, first:last].reshape(-1)  # a view: whole rows of contiguous Dst
        partials = partials.reshape(chunks, -1, *partials.shape[-2:])  # [C, Lb, R, N]
        rounded = _round_partials(partials, checks, block_index, first or 0).reshape(chunks, -1)
        if dst_format == "f16":
            _accumulate_f16(block, rounded)
        else:
            _accumulate_bf16_block(block, rounded, scratch[: block.size], dst_bound, normal)
    return acc


# --------------------------------------------------------------------------- matmul: exact float32 partials

# Largest exponent span (of an in0 row plus an in1 column) for which every float64 chunk sum is exact, and
# the same for a row of `_exact_partials`' products (16-bit significands, at most 32 of them).
_SPAN_LIMIT = {MathFidelity.LOFI: 37, MathFidelity.HIFI2: 34, MathFidelity.HIFI3: 34, MathFidelity.HIFI4: 33}
_SPAN_EXACT = 32
_ROUNDING_SLACK = 2.0**-47  # bound on a float64 chunk sum's error, relative to sum |in0 row| * max |in1 column|
_NAN_F32 = np.float32(np.nan)  # the quiet NaN 0x7FC00000: every NaN the matmul unit makes
_MAX_DOUBLED = 0xFFFF_FFFF  # doubled magnitude bits of zero after subtracting 1 (it wraps)


class _ChunkChecks:
    """Which chunk sums of a product may not be exact in float64, and their partials done another way.

    A chunk's float64 sum is exact (so its float32 rounding is the definition's) whenever the exponent
    fields of the nonzero bf16 values of the in0 row and of the in1 column it multiplies span at most
    `_SPAN_LIMIT` binades together (module docstring). The reference tests that cheaply and conservatively
    from the operands' bits, in the passes that also find the ranges `_ranges_keep_normal` needs: if the
    two operands' spans sum to at most the limit, every sum is exact. Else, with t_a + t_b = the limit,
    values more than t_a (t_b) binades below in0's (in1's) largest are "small": rows of in0 and columns of
    in1 without one span at most t_a and t_b, and only the sums of the "suspect" rows and columns (holding
    a small value) may be inexact. In ordinary data (a Gaussian's rare values near 0) they are few: `fixes`
    holds their partials, made once by `_exact_partials`. When they are many (over a quarter of the rows or
    columns), or an operand holds an inf or NaN, every block's sums get `_rounding_test` instead ("dense").

    lhs [C, L, M, 16] and rhs [C, L, 16, N] are float32 bf16 values, any views of those elements in C order.
    """

    def __init__(self, lhs: np.ndarray, rhs: np.ndarray, shape: tuple[int, int, int], fidelity: MathFidelity,
                 terms: list[tuple[np.ndarray, np.ndarray]]) -> None:
        chunks, m, n = shape
        self.lhs, self.rhs, self.chunks, self.m, self.n, self.fidelity = lhs, rhs, chunks, m, n, fidelity
        # magnitude bits, sign shifted out (laid out as the views are: a C-order copy costs a gather)
        a = lhs.view(np.uint32) << np.uint32(1)
        b = rhs.view(np.uint32) << np.uint32(1)
        matrices = a.size // (chunks * m * MVMUL_K)
        one = np.uint32(1)
        a_large, b_large = int(a.max(initial=0)), int(b.max(initial=0))
        np.subtract(a, one, out=a)  # zero wraps to the top
        np.subtract(b, one, out=b)
        a_small, b_small = int(a.min(initial=_MAX_DOUBLED)) + 1, int(b.min(initial=_MAX_DOUBLED)) + 1
        self.lhs_range, self.rhs_range = _range_of(a_small, a_large), _range_of(b_small, b_large)
        self.exact, self.dense = False, True
        if a_large < _INF_F32_DOUBLED and b_large < _INF_F32_DOUBLED:
            limit = _SPAN_LIMIT[fidelity]
            span_a, span_b = _span(a_large, a_small), _span(b_large, b_small)
            if span_a + span_b <= limit:
                self.exact, self.dense = True, False
                return
            # thresholds: all of an operand's span when it fits in its half or leaves room, else half the limit
            t_b = min(span_b, max(limit // 2, limit - span_a))
            col_top = _column_reduce(np.maximum, b + one, (chunks, matrices, n))  # + 1: a zero back to 0
            col_span = _spans(col_top, _column_reduce(np.minimum, b, (chunks, matrices, n)) + one)  # [C * L * N]
            rows = _suspects(a, _field(a_large) - (limit - t_b), MVMUL_K, 1, chunks * matrices * m // 4)
            cols = np.flatnonzero(col_span > t_b)  # flat [C, L, N]: with any row (spanning up to limit - t_b)
            if rows is not None and 4 * len(cols) <= len(col_span):
                self.dense = False
                # a suspect row's sums with the columns its measured span overspans
                k = np.arange(MVMUL_K)
                x = a[np.unravel_index(rows[:, None] * MVMUL_K + k, a.shape)]  # [S, 16], decremented
                row_span = _spans((x + one).max(axis=1, initial=0), x.min(axis=1, initial=_MAX_DOUBLED) + one)
                chunk_matrix = rows // m
                which, column = np.nonzero(row_span[:, None] + col_span.reshape(-1, n)[chunk_matrix] > limit)
                chunk, matrix, row = np.unravel_index(rows[which], (chunks, matrices, m))
                by_rows = chunk, matrix, row, column
                chunk, matrix, column = np.unravel_index(cols, (chunks, matrices, n))
                by_cols = (np.repeat(chunk, m), np.repeat(matrix, m), np.tile(np.arange(m), len(cols)),
                           np.repeat(column, m))
                chunk, matrix, row, column = (np.concatenate(pair) for pair in zip(by_rows, by_cols, strict=True))
                if not len(chunk):  # the measured spans prove every sum exact
                    self.exact = True
                    return
                keys = matrix * m + row
                order = np.argsort(keys, kind="stable")
                self.fix_keys = keys[order]
                self.fix_places = (chunk[order], matrix[order], row[order], column[order])
                self.terms = terms
                self.fixes = self.exact_sums(*self.fix_places)
                return
        # dense: the rounding test's bound is 2**-47 * sum |x| * max |y| for row x and column y (see
        # `_round_partials`): the magnitude sums of in0's rows, the magnitude maxima of in1's columns
        one = np.uint32(1)  # undoes the decrement: a zero wraps back to 0
        a = np.ascontiguousarray(a).reshape(-1, MVMUL_K)
        a += one
        magnitudes = _doubled_value(a)
        total = magnitudes[:, 0].copy()
        for k in range(1, MVMUL_K):  # faster than a reduction over 16 contiguous values
            total += magnitudes[:, k]
        self.row_bound = total.reshape(chunks, matrices, m) * _ROUNDING_SLACK
        b = np.ascontiguousarray(b).reshape(chunks, matrices, MVMUL_K, n)
        b += one
        self.col_max = _doubled_value(b.max(axis=-2))  # [C, L, N]
        self.finite = a_large < _INF_F32_DOUBLED and b_large < _INF_F32_DOUBLED
        self.terms = terms
        self._scratch: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def dense_round(self, partials: np.ndarray, index: slice, first: int) -> np.ndarray:
        """`_round_partials` of a dense check: every sum gets `_rounding_test`'s test (in place, in scratch
        arrays kept per block shape), and the sums that fail `exact_partials`."""
        count = partials.shape[2]
        if partials.shape not in self._scratch:
            self._scratch[partials.shape] = (np.empty(partials.shape), np.empty(partials.shape),
                                             np.empty(partials.shape, dtype=np.float32))
        bound, shifted, high = self._scratch[partials.shape]
        np.multiply(self.row_bound[:, index, first:first + count, None], self.col_max[:, index, None, :], out=bound)
        with np.errstate(over="ignore", invalid="ignore"):
            np.subtract(partials, bound, out=shifted)
            low = shifted.astype(np.float32)
            np.add(partials, bound, out=shifted)
            np.copyto(high, shifted, casting="unsafe")
            failed = low.view(np.uint32) != high.view(np.uint32)
            if not self.finite:
                failed |= ~np.isfinite(bound)
        chunk, matrix, row, column = np.unravel_index(np.flatnonzero(failed), partials.shape)
        if len(chunk):
            place = chunk, matrix + index.start, row + first, column
            low[chunk, matrix, row, column] = self.exact_sums(*place) if self.finite else self.exact_partials(*place)
        return low

    def exact_partials(self, chunk: np.ndarray, matrix: np.ndarray, row: np.ndarray,
                       column: np.ndarray) -> np.ndarray:
        """`_exact_partials` of the sums at (chunk, matrix, row, column)."""
        m, n = self.m, self.n
        matrices = self.lhs.size // (self.chunks * m * MVMUL_K)
        k = np.arange(MVMUL_K)
        x_flat = ((chunk * matrices + matrix) * m + row)[:, None] * MVMUL_K + k  # [F, 16], C order of lhs
        y_flat = ((chunk * matrices + matrix)[:, None] * MVMUL_K + k) * n + column[:, None]
        x = self.lhs[np.unravel_index(x_flat, self.lhs.shape)]
        y = self.rhs[np.unravel_index(y_flat, self.rhs.shape)]
        return _exact_partials(x, y, self.fidelity)

    def exact_sums(self, chunk: np.ndarray, matrix: np.ndarray, row: np.ndarray, column: np.ndarray) -> np.ndarray:
        """`_exact_sums` of the sums at (chunk, matrix, row, column) of finite operands: their fidelity
        products are those of the fidelity terms, gathered from their contiguous copies."""
        return _exact_sums(np.concatenate(
            [left[chunk, matrix, row] * right[chunk, matrix, :, column] for left, right in self.terms], axis=1))

def _field(doubled: int) -> int:
    """Exponent field of a float32 magnitude given as doubled bits, subnormals counted as field 1 (their
    lowest bit is that of the smallest normal binade)."""
    return max(doubled >> 24, 1)


def _spans(top: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Exponent spans (int64) of value sets given by their largest and smallest nonzero doubled magnitude
    bits (0 and 0 for a set of zeros), subnormals counted as field 1."""
    one = np.uint32(1)
    fields = [np.maximum(np.asarray(v, dtype=np.uint32) >> np.uint32(24), one).astype(np.int64) for v in (top, low)]
    return np.where(top == 0, 0, fields[0] - fields[1])


def _span(large: int, small: int) -> int:
    """Exponent span of the nonzero values between two doubled magnitudes (small past 2**32 - 1: none)."""
    return _field(large) - _field(small) if small <= _MAX_DOUBLED else 0


def _suspects(decremented: np.ndarray, threshold: int, group: int, keep: int, most: int) -> np.ndarray | None:
    """Sorted flat C-order indices of the rows (columns) holding a nonzero value (doubled magnitude bits
    minus 1, zero wrapped; elements in C order [C, L, M, 16] or [C, L, 16, N]) with an exponent field
    below `threshold`: with group 16 and keep 1 the index of [C, L, M]; with group 16 * N and keep N,
    of [C, L, N]. None when there are (or may be) more than `most`."""
    if threshold <= 1:
        return np.empty(0, dtype=np.intp)
    small = decremented < np.uint32((threshold << 24) - 1)
    count = np.count_nonzero(small)
    if not count:
        return np.empty(0, dtype=np.intp)
    if count > 4 * most:  # surely many (each row or column holds at most 16 values): skip the search
        return None
    flat = _flat_nonzero(small)
    found = np.unique(flat // group * keep + flat % keep)
    return found if len(found) <= most else None


def _column_reduce(ufunc: np.ufunc, x: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """ufunc's reduction over the 16 rows of each chunk's column of in1 (x: elements in C order
    [C, L, 16, N], laid out as the caller's view), flat [C * L * N]: over the view's axis of 16 when its
    shape splits there (the views callers pass do), else over a C-order copy."""
    chunks, matrices, n = shape
    product = 1
    for axis, size in enumerate(x.shape):
        if product == chunks * matrices and size == MVMUL_K and math.prod(x.shape[axis + 1:]) == n:
            return ufunc.reduce(x, axis=axis).reshape(-1)
        product *= size
    return ufunc.reduce(np.ascontiguousarray(x).reshape(chunks, matrices, MVMUL_K, n), axis=2).reshape(-1)


def _flat_nonzero(mask: np.ndarray) -> np.ndarray:
    """np.flatnonzero(mask) (C-order indices), read in memory order: mask may be laid out as a transposed
    view is (a ufunc keeps its input's layout), where reading in C order is a slow gather."""
    axes = np.argsort([-stride for stride in mask.strides], kind="stable")
    memory = mask.transpose(axes)
    if mask.flags.c_contiguous or not memory.flags.c_contiguous:
        return np.flatnonzero(mask)
    index = [np.empty(0, dtype=np.intp)] * mask.ndim
    for axis, values in zip(axes, np.unravel_index(np.flatnonzero(memory), memory.shape), strict=True):
        index[axis] = values
    return np.sort(np.ravel_multi_index(tuple(index), mask.shape))


def _doubled_value(doubled: np.ndarray) -> np.ndarray:
    """float64 magnitudes of float32 doubled magnitude bits."""
    return (np.asarray(doubled, dtype=np.uint32) >> np.uint32(1)).view(np.float32).astype(np.float64)


def _range_of(small: int, large: int) -> tuple[float, float]:
    """(smallest nonzero, largest) magnitude from doubled bits, as `_magnitude_range` gives them."""
    def value(doubled: int) -> float:
        return float(np.array(doubled >> 1, dtype=np.uint32).view(np.float32))

    smallest = math.inf if small > _MAX_DOUBLED else value(small)
    return smallest, (math.inf if large >= _INF_F32_DOUBLED else value(large))


def _rounding_test(sums: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 roundings, flags): where a flag is set the exact sum, within `bound` of the float64 `sums`,
    has that float32 rounding. RN_f32 is monotonic, so if sums - bound and sums + bound round alike (bit for
    bit: the sign of a zero counts), so does everything between; a bound that is not finite fails."""
    with np.errstate(over="ignore", invalid="ignore"):
        shifted = np.subtract(sums, bound)
        low = shifted.astype(np.float32)
        np.add(sums, bound, out=shifted)
        high = shifted.astype(np.float32)
        ok = low.view(np.uint32) == high.view(np.uint32)
        if not np.isfinite(bound).all():
            ok &= np.isfinite(bound)
    return low, ok


def _round_partials(partials: np.ndarray, checks: _ChunkChecks, index: slice, first: int) -> np.ndarray:
    """float32 partials [C, Lb, R, N] of a block (matrices `index`, rows from `first`), the definition's
    RN_f32 of each exact chunk sum, from the float64 sums `partials` of the block.

    Exact sums are rounded; the suspect sums of a sparse check take their `fixes`. In a dense check every
    sum gets `_rounding_test`'s test with the bound 2**-47 * sum |x| * max |y| (x the in0 row, y the in1
    column): a float64 dot product of 16 exact products, in any order and with or without fused
    multiply-adds, is off by at most gamma_15 = 15u / (1 - 15u) (u = 2**-53) times the sum of the products'
    magnitudes; HiFi3 adds two such sums (one more rounding: gamma_16 < 2**-48.99), and its 32 products'
    magnitudes still sum to at most sum |x| |y| (a SrcB split's parts have x's sign), at most
    sum |x| * max |y|. The test's own roundings of sums -/+ bound add less than 2**-52.9 of that, and the
    float64 sum |x| of 16 values errs by less than 2**-48 of itself: 2**-47 covers all three. The few sums
    that fail get `_exact_partials`.
    """
    if checks.exact:
        return partials.astype(np.float32)
    matrices, count = partials.shape[1:3]
    if checks.dense:
        return checks.dense_round(partials, index, first)
    out = partials.astype(np.float32)
    start = index.start * checks.m + first
    items = slice(*np.searchsorted(checks.fix_keys, (start, start + (matrices - 1) * checks.m + count)))
    if items.start < items.stop:
        chunk, matrix, row, column = (v[items] for v in checks.fix_places)
        out[chunk, matrix - index.start, row - first, column] = checks.fixes[items]
    return out


def _fidelity_products(x: np.ndarray, y: np.ndarray, fidelity: MathFidelity) -> np.ndarray:
    """The exact float64 products [F, 16 or 32] that the fidelity passes add for in0 rows x [F, 16] and in1
    columns y [F, 16] (finite bf16 values; see `_fidelity_terms`)."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if fidelity is MathFidelity.HIFI4:
        return x64 * y64
    x_hi, x_lo = (part.astype(np.float64) for part in _split(x, _MASK_B))
    if fidelity is MathFidelity.HIFI2:
        return x_hi * y64
    y_hi = _split(y, _MASK_A)[0].astype(np.float64)
    if fidelity is MathFidelity.LOFI:
        return x_hi * y_hi
    return np.concatenate([x_hi * y64, x_lo * y_hi], axis=1)


def _exact_partials(x: np.ndarray, y: np.ndarray, fidelity: MathFidelity) -> np.ndarray:
    """The definition's partials for in0 rows x [F, 16] and in1 columns y [F, 16] (float32 bf16 values).

    `_special_partials` where an operand is inf or NaN. Else RN_f32 of the exact sum of the fidelity
    products p, proven in tiers: numpy's sum s when `_rounding_test` with the bound 2**-47 * sum |p| proves
    its rounding (a pairwise sum of at most 32 terms errs by at most gamma_31 < 2**-48 of sum |p|, and the
    test's own roundings by less than 2**-52 of it); else s itself when the products span at most 32
    binades (then every order is exact, as in `_ChunkChecks`: a nonzero product has at most 16 significant
    bits, so it is a multiple of 2**(e - 16) where |p| < 2**e, and 32 of them stay below 2**(e_max + 5));
    else `_sum2_partials`; else (an exact tie that nothing breaks, a sum near 0 or past 2**127) in
    integer arithmetic."""
    out = np.empty(len(x), dtype=np.float32)
    special = ~(np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1))
    if special.any():
        out[special] = _special_partials(x[special], y[special], fidelity)
    finite = ~special
    out[finite] = _exact_sums(_fidelity_products(x[finite], y[finite], fidelity))
    return out


def _exact_sums(products: np.ndarray) -> np.ndarray:
    """RN_f32 of the exact sum of each row of finite products [F, K] (the tiers of `_exact_partials`)."""
    sums = products.sum(axis=1) + 0.0  # + 0.0: an exact 0 is +0
    out, ok = _rounding_test(sums, np.abs(products).sum(axis=1) * 2.0**-47)
    rest = np.flatnonzero(~ok)
    if not len(rest):
        return out
    products, sums = products[rest], sums[rest]
    exponents = np.frexp(products)[1]
    nonzero = products != 0
    top = np.where(nonzero, exponents, -(1 << 20)).max(axis=1, initial=-(1 << 20))
    low = np.where(nonzero, exponents, 1 << 20).min(axis=1, initial=1 << 20)
    exact = top - low <= _SPAN_EXACT
    with np.errstate(over="ignore"):
        out[rest[exact]] = sums[exact].astype(np.float32)
    inexact = np.flatnonzero(~exact)
    rounded, ok = _sum2_partials(products[inexact])
    out[rest[inexact[ok]]] = rounded[ok]
    hard = inexact[~ok]
    # products are multiples of 2**-266 below 2**257: scaled by 2**300 they are exact float64 integers
    for position, scaled in zip(hard, (products[hard] * 2.0**300).tolist(), strict=True):
        out[rest[position]] = _rn_f32_scaled(sum(map(int, scaled)), -300)
    return out


def _sum2_partials(products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RN_f32 of each row's exact sum, flags of the rows where it is proven) for finite products [F, K].

    Ogita, Rump and Oishi's Sum2 ("Accurate sum and dot product", 2005) keeps each addition's error
    (TwoSum, exact) and sums the errors: s + c differs from the exact sum by at most gamma_{K-2} gamma_{K-1}
    sum |p| < 2**-96 sum |p| (K <= 32); a final TwoSum makes hi + lo = s + c exactly. The exact sum is then
    within `bound` = 2**-95 sum |p| of hi + lo. f = RN_f32(hi) is the answer when the nearest float32
    rounding boundary (the midpoints next to f) is farther from hi than |lo| + bound; when hi is itself a
    midpoint and |lo| > bound, lo's sign picks the side. Unproven: the rest, results that round to 0 (their
    sign) and magnitudes from 2**127 (overflow)."""
    if not len(products):
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=bool)
    total = products[:, 0].copy()
    errors = np.zeros_like(total)
    for term in products.T[1:]:
        total, error = _two_sum(total, term)
        errors += error
    hi, lo = _two_sum(total, errors)
    bound = np.abs(products).sum(axis=1) * 2.0**-95
    with np.errstate(over="ignore", invalid="ignore"):
        nearest = hi.astype(np.float32)
        f = nearest.astype(np.float64)
        up = np.nextafter(nearest, np.float32(np.inf)).astype(np.float64)
        down = np.nextafter(nearest, np.float32(-np.inf)).astype(np.float64)
        off = hi - f  # exact
        above, below = (up - f) / 2 - off, (f - down) / 2 + off  # distances to the midpoints around f
        margin = np.abs(lo) + bound
        far = np.minimum(above, below) > margin
        decided = np.abs(lo) > bound
        # hi on the midpoint above (below) f: the exact sum is past it when lo is positive (negative)
        result = np.where(far, f, np.where((above == 0) & (lo > 0), up, np.where((below == 0) & (lo < 0), down, f)))
        ok = (far | (((above == 0) | (below == 0)) & decided)) & (nearest != 0) & (np.abs(hi) < 2.0**127)
    return result.astype(np.float32), ok


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: (fl(a + b), the exact error a + b - fl(a + b)), elementwise in float64."""
    total = a + b
    virtual = total - a
    return total, (a - (total - virtual)) + (b - virtual)


def _special_partials(x: np.ndarray, y: np.ndarray, fidelity: MathFidelity) -> np.ndarray:
    """Partials of chunks with an inf or NaN operand: IEEE products of the values the passes read (x with
    the SrcB split's low bits dropped at LoFi and HiFi2, y with the SrcA split's at LoFi; an inf stays inf,
    a NaN stays NaN), summed by IEEE rules: NaN if a product is NaN or both infinities occur, else the
    infinity. (Every such chunk has an infinite or NaN product; finite products cannot overflow.)"""
    read_x = _split(x, _MASK_B)[0] if fidelity in (MathFidelity.LOFI, MathFidelity.HIFI2) else x
    read_y = _split(y, _MASK_A)[0] if fidelity is MathFidelity.LOFI else y
    read_x, read_y = np.where(np.isnan(x), x, read_x), np.where(np.isnan(y), y, read_y)
    with np.errstate(invalid="ignore"):
        products = read_x.astype(np.float64) * read_y.astype(np.float64)
    nan = np.isnan(products).any(axis=1)
    up, down = (products == np.inf).any(axis=1), (products == -np.inf).any(axis=1)
    return np.where(nan | (up & down), _NAN_F32, np.where(up, np.float32(np.inf), np.float32(-np.inf)))


def _rn_f32_scaled(integer: int, exponent: int) -> np.float32:
    """RN_f32 of integer * 2**exponent (as `rn_f32_exact`), in integer arithmetic."""
    if integer == 0:
        return np.float32(0.0)
    magnitude = abs(integer)
    ulp = max(magnitude.bit_length() - 1 + exponent, -126) - 23  # exponent of the result's last bit
    drop = ulp - exponent
    if drop <= 0:
        significand = magnitude << -drop
    else:
        significand, remainder = magnitude >> drop, magnitude & ((1 << drop) - 1)
        half = 1 << (drop - 1)
        if remainder > half or (remainder == half and significand & 1):
            significand += 1
    with np.errstate(over="ignore"):
        result = np.float32(math.ldexp(significand, ulp))  # exact, or inf at 2**128
    return -result if integer < 0 else result


def rn_f32_exact(value: Fraction) -> np.float32:
    """RN_f32 of an exact rational: the nearest float32, ties to the even significand, inf from
    2**128 - 2**103 on (as if the next binade existed), subnormals with their fixed ulp 2**-149; an exact 0
    gives +0 and a nonzero value that rounds to 0 keeps its sign."""
    if value == 0:
        return np.float32(0.0)
    magnitude = abs(value)
    num, den = magnitude.numerator, magnitude.denominator
    exponent = num.bit_length() - den.bit_length()  # floor(log2 |value|) is this or one less
    if (num << max(-exponent, 0)) < (den << max(exponent, 0)):
        exponent -= 1
    ulp = max(exponent, -126) - 23  # float32 keeps 24 significant bits; subnormals a fixed last bit
    if ulp >= 0:
        den <<= ulp
    else:
        num <<= -ulp
    significand, remainder = divmod(num, den)
    if 2 * remainder > den or (2 * remainder == den and significand & 1):
        significand += 1
    with np.errstate(over="ignore"):
        result = np.float32(math.ldexp(significand, ulp))  # exact, or inf at 2**128
    return -result if value < 0 else result


def _row_blocks(count: int, m: int, rows: int) -> Iterator[tuple[int | slice, int | None, int | None]]:
    """(matrix index, first row, last row) of the blocks of `rows` rows covering `count` matrices of m rows:
    several whole matrices per block when rows >= m, else parts of one matrix."""
    if rows >= m:
        per_block = rows // m
        for start in range(0, count, per_block):
            yield slice(start, start + per_block), None, None
        return
    for index in range(count):
        for first in range(0, m, rows):
            yield index, first, first + rows


_CHAIN_PRODUCTS = 1 << 17  # float64 chunk products per block (1 MiB): they stay in the core's cache
_VELTKAMP_BF16 = np.float64(2.0**45 + 1)  # Veltkamp's splitter for the top 53 - 45 = 8 significant bits
_TINY_F32_DOUBLED = np.uint32((127 - 103) << 24)  # float32 magnitude bits of 2**-103, shifted left once
_INF_F32_DOUBLED = np.uint32(0xFF << 24)  # float32 magnitude bits of inf, shifted left once
_NORMAL_F32_DOUBLED = np.uint32(1 << 24)  # float32 magnitude bits of 2**-126, shifted left once


def _accumulate_bf16_block(out: np.ndarray, partials: np.ndarray, scratch: np.ndarray, dst_bound: float,
                           normal: bool = False) -> None:
    """In place on out [E] (float64): out = bf16_rne(out + partials[c]) for c in order; partials [C, E].

    A block whose chain provably stays in bf16's normal range (`normal`, known from the operands, or
    `_stays_normal` of the partials) takes the fast `_accumulate_bf16_normal`; any other block the
    general `_accumulate_bf16`. Both give the same bits as rounding every step with `_round_bf16_f64`.
    dst_bound is `_dst_bound` of the initial Dst (or of a larger array holding it).
    """
    if normal or _stays_normal(dst_bound, partials):
        _accumulate_bf16_normal(out, partials, scratch)
    else:
        out[...] = _accumulate_bf16(out, partials)


def _dst_bound(dst: np.ndarray) -> float:
    """max |dst| when every element of Dst is a finite multiple of 2**-126 (see `_stays_normal`), else inf.

    float32 Dst (the emulator's): from the bits, as for partials; a float32 that is 0 or at least 2**-103
    is a multiple of 2**-126, and any other gives inf (conservative).
    """
    if dst.dtype == np.float32:
        doubled = dst.view(np.uint32) << np.uint32(1)  # magnitude bits, sign shifted out
        largest = doubled.max(initial=0)
        np.subtract(doubled, np.uint32(1), out=doubled)  # zero wraps to the top
        if largest >= _INF_F32_DOUBLED or doubled.min(initial=_INF_F32_DOUBLED) < _TINY_F32_DOUBLED - 1:
            return math.inf
        return float(np.array(largest >> np.uint32(1), dtype=np.uint32).view(np.float32))
    scaled = dst * 2.0**126
    if not np.array_equal(np.floor(scaled), scaled):  # NaN and inf fail here too
        return math.inf
    return float(np.max(np.abs(dst), initial=0.0))


_OPERAND_FLOOR_DOUBLED = np.uint32((127 - 44) << 24)  # float32 magnitude bits of 2**-44, shifted left once


def _magnitude_range(x: np.ndarray) -> tuple[float, float]:
    """(smallest non-zero, largest) magnitude of float32 x from its bits; inf for an empty or all-zero
    x's smallest; a NaN or inf makes the largest inf."""
    doubled = np.asarray(x, dtype=np.float32).view(np.uint32) << np.uint32(1)  # sign shifted out
    largest = doubled.max(initial=0)
    np.subtract(doubled, np.uint32(1), out=doubled)  # zero wraps to the top
    smallest = doubled.min(initial=_INF_F32_DOUBLED - np.uint32(1)) + np.uint32(1)

    def value(bits: np.uint32) -> float:
        return float(np.array(bits >> np.uint32(1), dtype=np.uint32).view(np.float32))

    return value(smallest), (math.inf if largest >= _INF_F32_DOUBLED else value(largest))


def _operands_keep_normal(dst_bound: float, lhs: np.ndarray, rhs: np.ndarray, chunks: int) -> bool:
    """Whether every chain of the product stays in bf16's normal range, judged from the bf16 operands
    (cheaper than `_stays_normal` on every block's partials, which are N / 16 times larger)."""
    return _ranges_keep_normal(dst_bound, _magnitude_range(lhs), _magnitude_range(rhs), chunks)


def _ranges_keep_normal(dst_bound: float, lhs_range: tuple[float, float], rhs_range: tuple[float, float],
                        chunks: int) -> bool:
    """`_operands_keep_normal` from the operands' (smallest nonzero, largest) magnitudes.

    Low end: a non-zero bf16 value of magnitude at least 2**-44 is a multiple of 2**-51, and so are the
    hi and lo parts of the fidelity splits; a chunk's exact sum is then a multiple of 2**-102, so its
    float32 partial is 0 or at least 2**-102, the condition `_stays_normal` needs. High end: a partial
    is at most 16 * max|lhs| * max|rhs| (times 1 + 2**-24 for its rounding)."""
    (lhs_small, lhs_large), (rhs_small, rhs_large) = lhs_range, rhs_range
    if min(lhs_small, rhs_small) < 2.0**-44 or not math.isfinite(dst_bound):
        return False
    largest_partial = MVMUL_K * lhs_large * rhs_large * (1.0 + 2.0**-23)
    return (dst_bound + chunks * largest_partial) * (1.0 + 2.0**-7) ** chunks < 2.0**126


def _stays_normal(dst_bound: float, partials: np.ndarray) -> bool:
    """Whether every sum of a chain from Dst (`_dst_bound` dst_bound) through float32 partials [C, E] is 0
    or in [2**-126, 2**127), where rounding to the top 8 significant bits is bf16's rounding.

    Low end: Dst is a multiple of 2**-126 and each partial is 0 or at least 2**-103 (a float32 that size
    is a multiple of its ulp >= 2**-126); sums and their roundings to bf16 then stay multiples of
    2**-126, so each is 0 or at least 2**-126. High end: each step adds at most the largest partial and
    rounding grows a value by at most 2**-8 (float64 addition by 2**-53), bounded with margin below.
    """
    doubled = partials.view(np.uint32) << np.uint32(1)  # magnitude bits, sign shifted out
    largest = doubled.max()
    if largest >= _INF_F32_DOUBLED:  # inf or NaN
        return False
    np.subtract(doubled, np.uint32(1), out=doubled)  # zero wraps to the top
    if doubled.min() < _TINY_F32_DOUBLED - np.uint32(1):
        return False
    largest_partial = float(np.array(largest >> np.uint32(1), dtype=np.uint32).view(np.float32))
    chunks = len(partials)
    return (dst_bound + chunks * largest_partial) * (1.0 + 2.0**-7) ** chunks < 2.0**126


def _accumulate_bf16_normal(out: np.ndarray, partials: np.ndarray, scratch: np.ndarray) -> None:
    """In place: out = bf16_rne(out + partials[c]) for c in order, for chains that `_stays_normal`.

    Rounds with Veltkamp's split (t = x * (2**45 + 1); hi = t - (t - x)), which in float64's
    round-to-nearest-even arithmetic is x rounded to its top 8 significant bits, ties to even (Boldo,
    "Pitfalls of a full floating-point proof", 2006): bf16's rounding for normal values. Four ufunc
    passes a step instead of the bit rounding's ten.
    """
    for partial in partials:
        np.add(out, partial, out=out)
        np.multiply(out, _VELTKAMP_BF16, out=scratch)
        np.subtract(scratch, out, out=out)
        np.subtract(scratch, out, out=out)


_EXPONENT = np.uint64(0x7FF << 52)
_EXPONENT_ONE = np.uint64(1 << 52)
_F32_NORMAL_EXPONENT = np.uint64((1023 - 126) << 52)
_BF16_NEAR_OVERFLOW = np.uint64((1023 + 127) << 52)


def _accumulate_bf16(dst: np.ndarray, partials: np.ndarray) -> np.ndarray:
    """Dst = bf16_rne(Dst + partials[c]) for c in order; float64 in, float64 (bf16 values) out.

    The emulator's innermost loop, written for speed: in-place bit rounding with no temporaries. The
    values the bit rounding cannot take (below float32's normal range at some step, near or past bf16's
    largest value, inf or NaN) are found afterwards, from the smallest non-zero and the largest exponent
    seen per element, and their whole chain is redone by `_round_bf16_f64`. Flagging is conservative:
    the redo is exact for any value.
    """
    out = np.array(np.broadcast_to(dst, np.broadcast_shapes(dst.shape, partials.shape[1:])), dtype=np.float64)
    bits = out.view(np.uint64)
    tmp = np.empty_like(bits)
    low = np.full_like(bits, np.uint64(0xFFFF_FFFF_FFFF_FFFF))
    high = np.zeros_like(bits)
    one = np.uint64(1)
    for partial in partials:
        np.add(out, partial, out=out)
        np.bitwise_and(bits, _EXPONENT, out=tmp)  # exponent before rounding
        np.maximum(high, tmp, out=high)
        np.subtract(tmp, _EXPONENT_ONE, out=tmp)  # a zero exponent wraps to the top: zeros are fine
        np.minimum(low, tmp, out=low)
        np.right_shift(bits, np.uint64(45), out=tmp)
        np.bitwise_and(tmp, one, out=tmp)
        np.add(tmp, _BF16_HALF_ULP_BELOW, out=tmp)
        np.add(bits, tmp, out=bits)
        np.bitwise_and(bits, _BF16_KEEP, out=bits)
    # tiny at some step, or at least 2**127 (may round past bf16's range; inf and NaN included)
    redo = (low < _F32_NORMAL_EXPONENT - _EXPONENT_ONE) | (high >= _BF16_NEAR_OVERFLOW)
    if redo.any():
        start = np.array(np.broadcast_to(dst, out.shape), dtype=np.float64)[redo]
        exact = start
        for partial in partials:
            exact = _round_bf16_f64(exact + np.broadcast_to(partial, out.shape)[redo])
        out[redo] = _chain_nans(start, exact, "bf16")
    return out


_F64_QUIET = np.uint64(1 << 51)
_F16_NAN_KEEP = np.uint64(0xFFF8_0000_0000_0000 | (0x1FF << 42))  # sign, exponent, quiet bit, Float16 payload


def _chain_nans(start: np.ndarray, end: np.ndarray, dst_format: str) -> np.ndarray:
    """The NaNs at the end of Dst chains (float64), made as the definition says: a chain that starts from a
    NaN Dst keeps that NaN as the Dst format rounds it (bf16: the quiet NaN with its sign; Float16: its sign
    and the top 9 payload bits below the quiet bit, made quiet); any other NaN (from a NaN partial, or
    inf + -inf) is the positive quiet NaN. (The payload a float64 addition of two NaNs keeps, and the sign
    of x86's inf - inf, are not part of the definition.)"""
    nan = np.isnan(end)
    if not nan.any():
        return end
    end = end.copy()
    own = start[nan]
    if dst_format == "f16":
        kept = ((own.view(np.uint64) & _F16_NAN_KEEP) | _F64_QUIET).view(np.float64)
    else:
        kept = np.copysign(np.nan, own)
    end[nan] = np.where(np.isnan(own), kept, np.nan)
    return end


def _accumulate_f16(out: np.ndarray, partials: np.ndarray) -> None:
    """In place on out [E] (float64 Float16 values): out = f16_rne(out + partials[c]) for c in order.

    One rounding of the exact sum per step: Dst d is a Float16 value (11 significant bits, lowest bit 2**e)
    and the partial p a float32 (24 bits). Their float64 sum is exact unless p < 2**(e - 17); then it lies
    within |p| of d, far inside the interval of values that round to d (half an ulp, 2**(e - 1), or 2**(e - 2)
    below a power of two), and so does the exact sum: both round to d.

    Rounding is Veltkamp's split to 11 significant bits (as `_accumulate_bf16_normal` does for 8), which is
    Float16's RNE in its normal range. The exponents seen before rounding are tracked per element; a chain
    that met a value below 2**-14 (Float16 subnormals have fewer bits), one at or above 2**15 (may round past
    65504), inf or NaN is redone step by step with numpy's float64 -> float16 cast.
    """
    start = out.copy()
    bits = out.view(np.uint64)
    scratch = np.empty_like(out)
    exponent = np.empty_like(bits)
    low = np.full_like(bits, np.uint64(0xFFFF_FFFF_FFFF_FFFF))
    high = np.zeros_like(bits)
    with np.errstate(invalid="ignore", over="ignore"):
        for partial in partials:
            np.add(out, partial, out=out)
            np.bitwise_and(bits, _EXPONENT, out=exponent)
            np.maximum(high, exponent, out=high)
            np.subtract(exponent, _EXPONENT_ONE, out=exponent)  # a zero exponent wraps to the top: zeros are fine
            np.minimum(low, exponent, out=low)
            np.multiply(out, _VELTKAMP_F16, out=scratch)
            np.subtract(scratch, out, out=out)
            np.subtract(scratch, out, out=out)
        redo = (low < _F16_NORMAL_EXPONENT - _EXPONENT_ONE) | (high >= _F16_NEAR_OVERFLOW)
        if redo.any():
            exact, steps = start[redo], partials[:, redo].astype(np.float64)
            for step in steps:
                exact = _f64_to_f16(exact + step)
            out[redo] = _chain_nans(start[redo], exact, "f16")


_VELTKAMP_F16 = np.float64(2.0**42 + 1)  # Veltkamp's splitter for the top 53 - 42 = 11 significant bits
_F16_NORMAL_EXPONENT = np.uint64((1023 - 14) << 52)  # float64 exponent bits of 2**-14
_F16_NEAR_OVERFLOW = np.uint64((1023 + 15) << 52)  # float64 exponent bits of 2**15


def matmul_tiles_accumulate(
    dst: np.ndarray, a: np.ndarray, b: np.ndarray, fidelity: MathFidelity | str | int = MathFidelity.HIFI4,
    dst_format: str = "bf16",
) -> np.ndarray:
    """matmul_tiles: Dst tiles [..., 32, 32] += a [..., 32, 32] (in0, M x K) @ b (in1, K x N).

    Leading dims broadcast.  a and b are rounded to bf16 first (a no-op for bf16 and block-float
    values).  Returns the new Dst tiles (values of the Dst format, bf16 or f16, in float32); dst is not
    modified.
    """
    return _matmul_accumulate(dst, np.asarray(a), np.asarray(b), fidelity, dst_format)


def matmul_block_accumulate(
    dst: np.ndarray, a: np.ndarray, b: np.ndarray, fidelity: MathFidelity | str | int = MathFidelity.HIFI4,
    bf16_operands: bool = False, dst_format: str = "bf16",
) -> np.ndarray:
    """A block of matmul_tiles calls, K tiles in order: dst [..., Mt, Nt, 32, 32] +=
    a [..., Mt, Kt, 32, 32] @ b [..., Kt, Nt, 32, 32].

    Bit-identical to calling matmul_tiles_accumulate for k = 0..Kt-1, but computed as one matrix
    product per 16-element K chunk (fast for the emulator's in0_block_w x subblock loops).
    `bf16_operands=True` promises that a and b hold bf16 values (unpacked CB tiles do), which skips
    checking them.
    """
    dst, a, b = np.asarray(dst), np.asarray(a), np.asarray(b)
    fidelity = MathFidelity.parse(fidelity)
    (mt, kt), nt = a.shape[-4:-2], b.shape[-3]
    if b.shape[-4] != kt:
        raise ValueError(f"K tiles mismatch: {a.shape} @ {b.shape}")
    lead = np.broadcast_shapes(a.shape[:-4], b.shape[:-4], dst.shape[:-4])
    halves = TILE // MVMUL_K
    # chunk c = (k tile, half of the tile's K): lhs [C, ..., Mt, 32, 16] and rhs [C, ..., 16, Nt, 32]
    lhs = np.broadcast_to(a.reshape(*a.shape[:-1], halves, MVMUL_K), (*lead, mt, kt, TILE, halves, MVMUL_K))
    lhs = np.moveaxis(lhs, (-4, -2), (0, 1))
    rhs = np.broadcast_to(b.reshape(*b.shape[:-2], halves, MVMUL_K, TILE), (*lead, kt, nt, halves, MVMUL_K, TILE))
    rhs = np.moveaxis(rhs, (-5, -3, -4), (0, 1, -2))
    acc = np.broadcast_to(dst, (*lead, mt, nt, TILE, TILE)).swapaxes(-3, -2)  # [..., Mt, 32, Nt, 32]
    out = _accumulate_chunks(acc, lhs, rhs, (kt * halves, mt * TILE, nt * TILE), fidelity, bf16_operands,
                             dst_format)
    tiles = np.empty((*lead, mt, nt, TILE, TILE), dtype=np.float32)
    with np.errstate(over="ignore"):
        tiles[...] = out.reshape(acc.shape).swapaxes(-3, -2)
    return tiles


# --------------------------------------------------------------------------- eltwise FPU

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
}


def eltwise_binary(a: np.ndarray, b: np.ndarray, op: str, dst_format: str = "bf16") -> np.ndarray:
    """add_tiles / sub_tiles / mul_tiles: operands in the Dst format (bf16 or f16), exact result rounded once
    to it.

    Every result is computed in float32 and rounded to bf16 from there, which gives the bits of rounding
    the exact result once:
    - A product of two bf16 values has at most 16 significant bits, so float32 holds it exactly unless its
      low bits fall below 2**-149, i.e. it is below 2**-135; such a value and its float32 rounding are both
      under half of bf16's smallest subnormal (2**-134) and round to zero either way.
    - A sum or difference of two bf16 values (8 significant bits each, lowest bit at least 2**-133) is exact
      in float32 unless it spans more than 24 bits, which needs |b| < 2**-15 * |a| for the smaller operand
      b. Then the exact result and its float32 rounding both lie within 2**-14 ulp(a) of a, far inside the
      interval of values that round to a (half an ulp either side, a quarter below a power of two): both
      round to a.
    - Overflow: float32 overflows only past 2**128 - 2**103, beyond bf16's rounding threshold to inf
      (2**128 - 2**119), so both give inf; inf and NaN operands follow IEEE rules in either width.

    Elementwise, so it runs over cache-sized blocks along the leading axis (the float64 temporaries of a
    block stay in cache).
    """
    fn = _BINARY[op]
    if dst_format == "f16":  # sums and products of two Float16 values are exact in float64
        with np.errstate(invalid="ignore", over="ignore"):
            exact = fn(as_f16(a).astype(np.float64), as_f16(b).astype(np.float64))
        return _f64_to_f16(exact).astype(np.float32)
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    if not shape:
        with np.errstate(invalid="ignore", over="ignore"):  # IEEE results (inf * 0 = NaN) are the device's too
            return _f64_to_bf16(fn(bf16_round(a).astype(np.float64), bf16_round(b).astype(np.float64)))
    a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    out = np.empty(shape, dtype=np.float32)
    rows = max(1, _ELTWISE_BLOCK // max(1, math.prod(shape[1:])))
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        for start in range(0, shape[0], rows):
            block = slice(start, start + rows)
            # see eltwise_binary's doc: rounding from float32 is rounding the exact result
            out[block] = bf16_round(fn(_as_bf16(a[block]), _as_bf16(b[block])))
    return out


_ELTWISE_BLOCK = 32768  # elements per block of an eltwise op


# --------------------------------------------------------------------------- SFPU

_SQRT1_2 = 0.7071067811865476
_SQRT_2_PI = 0.7978845608028654  # sqrt(2/pi)
_TWO_SQRT_PI = 1.1283791670955126  # 2/sqrt(pi)


def _erf_taylor(z: np.ndarray) -> np.ndarray:
    """erf(z) for |z| < 2.5 by its Maclaurin series (40 terms: error < 1e-14)."""
    term, total, z2 = z.copy(), z.copy(), z * z
    for n in range(1, 40):
        term = term * (-z2 / n)
        total = total + term / (2 * n + 1)
    return _TWO_SQRT_PI * total


def _erfc_fraction(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 2.5 by its continued fraction, evaluated backwards (32 terms: rel. error < 1e-13)."""
    k = z.copy()
    for n in range(32, 0, -1):
        k = z + (n / 2.0) / k
    return np.exp(-z * z) / (np.sqrt(np.pi) * k)


def _erf_erfc(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(erf(x), erfc(x)) in float64, accurate far beyond float32 (numpy has no erf)."""
    z = np.abs(x)
    small = z < 2.5
    erf_pos, erfc_pos = np.empty_like(z), np.empty_like(z)
    erf_pos[small] = _erf_taylor(z[small])
    erfc_pos[small] = 1.0 - erf_pos[small]
    erfc_pos[~small] = _erfc_fraction(z[~small])
    erf_pos[~small] = 1.0 - erfc_pos[~small]
    neg = x < 0
    return np.where(neg, -erf_pos, erf_pos), np.where(neg, 2.0 - erfc_pos, erfc_pos)


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (numpy has none); the SFPU "erf" rounds this to float32, then bf16."""
    return _erf_erfc(np.asarray(x, dtype=np.float64))[0]


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * _erf_erfc(-x * _SQRT1_2)[1]  # erfc(-x/sqrt2) = 1 + erf(x/sqrt2), no cancellation


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_PI * (x + 0.044715 * x**3)))


SFPU_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "recip": lambda x: 1.0 / x,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "erf": erf,
    "relu": lambda x: np.maximum(x, 0.0),
    "neg": np.negative,
    "log": np.log,
    "square": np.square,
    "abs": np.abs,
    # Sign tests (tt-metal's eqz/nez/ltz/lez/gtz/gez_tile and isnan_tile): 1.0 where true, else 0.0.
    # NaN fails every ordered test and is != 0.
    "eqz": lambda x: (x == 0).astype(np.float64),
    "nez": lambda x: (x != 0).astype(np.float64),
    "ltz": lambda x: (x < 0).astype(np.float64),
    "lez": lambda x: (x <= 0).astype(np.float64),
    "gtz": lambda x: (x > 0).astype(np.float64),
    "gez": lambda x: (x >= 0).astype(np.float64),
    "isnan": lambda x: np.isnan(x).astype(np.float64),
    "isinf": lambda x: np.isinf(x).astype(np.float64),
    # Rounding (tt-metal's floor/ceil/trunc/round tiles; round is half to even, as ONNX Round).
    "floor": np.floor,
    "ceil": np.ceil,
    "trunc": np.trunc,
    "round": np.rint,
    # Trigonometric and hyperbolic functions (tt-metal's sin/cos/tan/asin/acos/atan... tiles).
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    # log(1 + e^x) without overflow (tt-metal's softplus_tile), and mish = x * tanh(softplus(x)) in one pass.
    "softplus": lambda x: np.logaddexp(0.0, x),
    "mish": lambda x: x * np.tanh(np.logaddexp(0.0, x)),
    # x * relu6(x + 3) / 6 (ONNX HardSwish, tt-metal's hardswish) in one pass: one rounding where the spelt-out
    # chain (add, clamp, a bf16 1/6, mul) rounds four times
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
}


# The *_scalar forms take a parameter p; they compute in float32 (x is bf16, p is rounded to float32).
SFPU_SCALAR_FUNCTIONS: dict[str, Callable[[np.ndarray, np.float32], np.ndarray]] = {
    "add_scalar": lambda x, p: x + p,
    "mul_scalar": lambda x, p: x * p,
    "sub_from_scalar": lambda x, p: p - x,
    # x ** p and p ** x (tt-metal's power and rpow_tile): RN_f32 of the exact power (`pow_f32`); sfpu_unary
    # looks them up in a table per parameter (`sfpu_param_table`)
    "pow_scalar": lambda x, p: pow_f32(x, p),
    "rpow_scalar": lambda x, p: pow_f32(p, x),
    "max_scalar": np.maximum,
    # Selects (a where with a scalar branch): p where x != 0 (== 0), else 0; never p * 0, so an infinite p
    # (a -inf attention mask) selects cleanly instead of turning into NaN.
    "where_nez": lambda x, p: np.where(x != 0, p, np.float32(0)),
    "where_eqz": lambda x, p: np.where(x == 0, p, np.float32(0)),
    # Comparisons with p (tt-metal's unary_eq/ne/lt/gt... tiles): 1.0 where true, else 0.0; NaN is only != p.
    "eq_scalar": lambda x, p: (x == p).astype(np.float32),
    "ne_scalar": lambda x, p: (x != p).astype(np.float32),
    "lt_scalar": lambda x, p: (x < p).astype(np.float32),
    "le_scalar": lambda x, p: (x <= p).astype(np.float32),
    "gt_scalar": lambda x, p: (x > p).astype(np.float32),
    "ge_scalar": lambda x, p: (x >= p).astype(np.float32),
}


def sfpu_unary(x: np.ndarray, fn_name: str, param: float = 0.0, dst_format: str = "bf16") -> np.ndarray:
    """SFPU op on x in the Dst format (bf16 or f16): evaluated in float64, rounded to the float32 result, then
    to the Dst format (RNE).

    The *_scalar forms (SFPU_SCALAR_FUNCTIONS) use `param` and compute in float32 arithmetic, but for
    pow_scalar and rpow_scalar (RN_f32 of the exact power, `pow_f32`, tabulated per parameter:
    `sfpu_param_table`). Out-of-domain inputs give IEEE results (log(0) = -inf, sqrt(-1) = nan, recip(0) = inf).
    The other forms are looked up in a table of their results for all 16-bit inputs (`_sfpu_table`).
    f16: Float16Overflow where a finite float32 result rounds to inf (`sfpu_table_overflow` marks the
    table entries), or where x itself does.
    """
    if fn_name not in SFPU_SCALAR_FUNCTIONS or fn_name in _PARAM_TABLES:
        if fn_name in _PARAM_TABLES:
            table, overflow = _param_tables(fn_name, _f32_bits(param), dst_format)
        else:
            table, overflow = _sfpu_tables(SFPU_FUNCTIONS[fn_name], dst_format)
        if dst_format == "f16":
            index = _f16_dst(x).astype(np.float16).view(np.uint16)
            _check_marks(overflow[index])
            return np.asarray(table[index])
        return np.asarray(table[_as_bf16(x).view(np.uint32) >> np.uint32(16)])
    with np.errstate(all="ignore"):
        y = SFPU_SCALAR_FUNCTIONS[fn_name](dst_round(x, dst_format), np.float32(param))
        y = np.asarray(y).astype(np.float32)
    return dst_round(y, dst_format)


# Binary SFPU functions (tt-metal's binary SFPU ops, e.g. power_binary_tile): both operands are Dst slots.
# Evaluated like the unary table functions: in float64 on the Dst-format operands, rounded to float32, then
# once to the Dst format.
SFPU_BINARY_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    # a ** b: RN_f32 of the exact power with C99's special cases (`pow_f32`)
    "pow": lambda a, b: pow_f32(a, b),
    # Selects of a tile: b where a != 0 (== 0), else 0. No arithmetic touches b, so an infinite or NaN b
    # in a position that is not selected leaves no trace (0 * inf would be NaN).
    "where_nez": lambda a, b: np.where(a != 0, b, 0.0),
    "where_eqz": lambda a, b: np.where(a == 0, b, 0.0),
}


def sfpu_binary(a: np.ndarray, b: np.ndarray, fn_name: str, dst_format: str = "bf16") -> np.ndarray:
    """Binary SFPU op on two Dst slots (values in the Dst format): evaluated in float64, rounded to the
    float32 result, then once to the Dst format (RNE). IEEE results out of the domain (0 ** -1 = inf)."""
    with np.errstate(all="ignore"):  # a signalling NaN's cast raises the invalid flag
        lhs = dst_round(np.asarray(a, dtype=np.float32), dst_format).astype(np.float64)
        rhs = dst_round(np.asarray(b, dtype=np.float32), dst_format).astype(np.float64)
        y = np.asarray(SFPU_BINARY_FUNCTIONS[fn_name](lhs, rhs)).astype(np.float32)
    return dst_round(y, dst_format)


def _sfpu_table(fn: Callable[[np.ndarray], np.ndarray], dst_format: str = "bf16") -> np.ndarray:
    """fn's SFPU result for each of the 65536 inputs of the Dst format, indexed by their bits: a unary SFPU
    function of a 16-bit value is a function of its 16 bits, so it is evaluated once per bit pattern (the
    same float64 evaluation, float32 and Dst roundings) and looked up after that."""
    return _sfpu_tables(fn, dst_format)[0]


def _table_inputs(dst_format: str) -> np.ndarray:
    """The 65536 values of the Dst format as float32, indexed by their bits."""
    if dst_format == "f16":
        return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return (np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)).view(np.float32)


def _rounded_table(y: np.ndarray, dst_format: str) -> tuple[np.ndarray, np.ndarray]:
    """(the float32 results y rounded to the Dst format, the overflow marks: a finite result that rounds to
    inf), both read-only. The marks say where a lookup is a Float16Overflow (bf16: where float32's largest
    values round past bf16's, which no program checks)."""
    table = _round_quiet(y, dst_format)
    overflow = np.isfinite(y) & np.isinf(table)
    table.flags.writeable = False
    overflow.flags.writeable = False
    return table, overflow


@functools.cache
def _sfpu_tables(fn: Callable[[np.ndarray], np.ndarray], dst_format: str) -> tuple[np.ndarray, np.ndarray]:
    """(`_sfpu_table`, its overflow marks), built once per function and Dst format."""
    with np.errstate(all="ignore"):
        y = np.asarray(fn(_table_inputs(dst_format).astype(np.float64))).astype(np.float32)
    return _rounded_table(y, dst_format)


_PARAM_TABLES = ("pow_scalar", "rpow_scalar")  # scalar forms looked up in a table per parameter


def _f32_bits(param: float) -> int:
    return int(np.array(param, dtype=np.float32).view(np.uint32))


def sfpu_param_table(fn_name: str, param: float, dst_format: str = "bf16") -> np.ndarray:
    """The 65536 results (float32 values of the Dst format) of a tabulated scalar SFPU form (pow_scalar,
    rpow_scalar) with parameter `param` (rounded to float32), indexed by the input's bits in the Dst format,
    as `_sfpu_table` does for unary functions. Built once per (fn, parameter, Dst format)."""
    if fn_name not in _PARAM_TABLES:
        raise ValueError(f"{fn_name!r} is not tabulated per parameter (one of {', '.join(_PARAM_TABLES)})")
    return _param_tables(fn_name, _f32_bits(param), dst_format)[0]


def sfpu_table_overflow(fn_name: str, param: float = 0.0, dst_format: str = "f16") -> np.ndarray:
    """The overflow marks (bool [65536]) of a tabulated SFPU function (a unary function, or pow_scalar /
    rpow_scalar with `param`): True where the entry's float32 result is finite and its rounding to the Dst
    format is inf, so that looking it up is a Float16Overflow."""
    if fn_name in _PARAM_TABLES:
        return _param_tables(fn_name, _f32_bits(param), dst_format)[1]
    return _sfpu_tables(SFPU_FUNCTIONS[fn_name], dst_format)[1]


@functools.lru_cache(maxsize=64)
def _param_tables(fn_name: str, param_bits: int, dst_format: str) -> tuple[np.ndarray, np.ndarray]:
    param = np.array(param_bits, dtype=np.uint32).view(np.float32)[()]
    y = np.asarray(SFPU_SCALAR_FUNCTIONS[fn_name](_table_inputs(dst_format), param)).astype(np.float32)
    return _rounded_table(y, dst_format)


_POW_WINDOW = 2.0**-40  # numpy's float64 power is within this (relative) of the exact power (libm: < 1 ulp)


def pow_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a ** b for float32 values: RN_f32 of the exact real power, with C99's special cases (Annex F.10.4.4:
    pow(x, +-0) = 1 and pow(1, y) = 1 even for NaN; pow(-1, +-inf) = 1; pow(+-0, y) = +-inf / +inf for a
    negative odd integer / other negative y, +-0 / +0 for a positive odd integer / other positive y;
    pow(x, +-inf) by |x| < 1 or > 1; pow(+-inf, y) by the sign and oddness of y; a negative finite x with a
    finite non-integral y is NaN; else NaN if x or y is NaN). A negative x with an integral y gives
    (-1)**y |x|**y. The exact power is rounded once: overflow gives inf, results below 2**-150 a zero of the
    power's sign. Every NaN result is the quiet NaN 0x7FC00000.

    numpy's float64 power decides the rounding unless it lies within `_POW_WINDOW` (relative) of a float32
    rounding boundary; those few are resolved exactly (`_pow_exact`)."""
    with np.errstate(all="ignore"):  # a signalling NaN's cast raises the invalid flag
        a64, b64 = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        out = np.full(a64.shape, _NAN_F32, dtype=np.float32)
        integral = np.isfinite(b64) & (b64 == np.floor(b64))
        odd = integral & (np.fmod(b64, 2.0) != 0)
        nan_in = np.isnan(a64) | np.isnan(b64)
        one = (b64 == 0) | (a64 == 1) | ((a64 == -1) & np.isinf(b64))
        inf_b = np.isinf(b64) & ~nan_in
        inf_a = np.isinf(a64) & ~nan_in
        zero_a = (a64 == 0) & ~nan_in
        big = np.abs(a64) > 1
        cases = [
            (one, np.float32(1.0)),
            (nan_in, _NAN_F32),
            (zero_a & (b64 < 0), np.where(odd, np.copysign(np.inf, a64), np.inf)),
            (zero_a & (b64 > 0), np.where(odd, a64, 0.0)),
            (inf_b, np.where(big == (b64 > 0), np.inf, 0.0)),
            (inf_a & (a64 > 0), np.where(b64 > 0, np.inf, 0.0)),
            (inf_a & (a64 < 0), np.where(odd, -1.0, 1.0) * np.where(b64 > 0, np.inf, 0.0)),
            ((a64 < 0) & ~integral, _NAN_F32),
        ]
        done = np.zeros(a64.shape, dtype=bool)
        for where, value in cases:
            now = where & ~done
            out[now] = np.broadcast_to(np.asarray(value, dtype=np.float32), a64.shape)[now]
            done |= where
        regular = ~done  # finite, nonzero, x != 1 (x > 0, or x < 0 with y integral), y finite and nonzero
        base, exponent = np.abs(a64[regular]), b64[regular]
        power = np.power(base, exponent)
        low = (power * (1 - _POW_WINDOW)).astype(np.float32)
        high = (power * (1 + _POW_WINDOW)).astype(np.float32)
        magnitude = low
        for position in np.flatnonzero(low.view(np.uint32) != high.view(np.uint32)):
            magnitude[position] = _pow_exact(float(base[position]), float(exponent[position]))
        out[regular] = np.where(odd[regular] & (a64[regular] < 0), -magnitude, magnitude)
    return out


def _pow_exact(base: float, exponent: float) -> np.float32:
    """RN_f32 of base ** exponent for a finite base > 0, base != 1, and a finite nonzero exponent: exact
    rational arithmetic when the power is rational and of modest size (an integral exponent, or k / 2**j
    with the base a perfect 2**j-th power; at most `_POW_EXACT_BITS` bits), else the power to 80
    significant digits (`decimal`). Such a power is irrational, or a rational of more than 4096 bits, so
    not a rounding boundary (those have 25 significant bits): 80 digits put it on the right side unless it
    lies closer than 10**-75 (relative) to one."""
    numerator, denominator = exponent.as_integer_ratio()  # denominator 2**j
    root = _dyadic_root(Fraction(base), denominator)
    if root is not None:
        odd = root.numerator >> ((root.numerator & -root.numerator).bit_length() - 1)
        odd = max(odd, root.denominator >> ((root.denominator & -root.denominator).bit_length() - 1))
        if odd.bit_length() * abs(numerator) <= _POW_EXACT_BITS:
            return rn_f32_exact(root ** numerator)
    with decimal.localcontext() as context:
        context.prec = 80
        value = (decimal.Decimal(exponent) * decimal.Decimal(base).ln()).exp()
    return rn_f32_exact(Fraction(value))


_POW_EXACT_BITS = 4096


def _dyadic_root(value: Fraction, degree: int) -> Fraction | None:
    """The exact degree-th root of a positive dyadic rational (degree a power of two), or None if it is
    irrational."""
    while degree > 1:
        numerator, denominator = value.numerator, value.denominator
        num_root, den_root = math.isqrt(numerator), math.isqrt(denominator)
        if num_root * num_root != numerator or den_root * den_root != denominator:
            return None
        value, degree = Fraction(num_root, den_root), degree // 2
    return value


# --------------------------------------------------------------------------- reduce


def _scaler_row(scaler: float) -> np.ndarray:
    """The SrcB tile of a reduce: scaler in row 0, zeros elsewhere."""
    tile = np.zeros((TILE, TILE), dtype=np.float32)
    tile[0, :] = scaler
    return tile


def reduce_tiles(
    dst: np.ndarray,
    x: np.ndarray,
    dim: str,
    kind: str = "sum",
    scaler: float = 1.0,
    fidelity: MathFidelity | str | int = MathFidelity.HIFI4,
    dst_format: str = "bf16",
) -> np.ndarray:
    """reduce_tile: accumulate the reduction of tiles x [..., 32, 32] into Dst tiles; returns new Dst.

    dim follows tt-metal: "row" (REDUCE_ROW) reduces each row into column 0, "col" (REDUCE_COL)
    each column into row 0, "scalar" everything into [0, 0].  Other Dst entries are left unchanged.
    kind "sum" goes through the matmul path with x in SrcA and a scaler tile in SrcB (bf16 per
    16-element chunk, fidelity applies): col = S @ x, row = (S @ x^T)^T, scalar = col of row with the
    scaler applied once, in the row step.  kind "max": Dst = max(Dst, max of bf16(x * scaler)); start
    Dst at -inf for a plain max. Roundings are to the Dst format `dst_format` (bf16 or f16).
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.array(np.broadcast_to(dst, np.broadcast_shapes(np.shape(dst), x.shape)), dtype=np.float32)
    if kind == "max":
        vals = eltwise_binary(x, np.float32(scaler), "mul", dst_format)
        if dim == "row":
            out[..., :, 0] = np.maximum(out[..., :, 0], vals.max(axis=-1))
        elif dim == "col":
            out[..., 0, :] = np.maximum(out[..., 0, :], vals.max(axis=-2))
        elif dim == "scalar":
            out[..., 0, 0] = np.maximum(out[..., 0, 0], vals.max(axis=(-2, -1)))
        else:
            raise ValueError(f"unknown reduce dim {dim!r}")
        return out
    if kind != "sum":
        raise ValueError(f"unknown reduce kind {kind!r}")
    s = _scaler_row(scaler)
    if dim == "col":
        return matmul_tiles_accumulate(out, s, x, fidelity, dst_format)
    if dim == "row":
        return matmul_tiles_accumulate(out.swapaxes(-1, -2), s, x.swapaxes(-1, -2), fidelity,
                                       dst_format).swapaxes(-1, -2)
    if dim == "scalar":
        rows = reduce_tiles(np.zeros_like(x), x, "row", "sum", scaler, fidelity, dst_format)
        return matmul_tiles_accumulate(out, _scaler_row(1.0), rows, fidelity, dst_format)
    raise ValueError(f"unknown reduce dim {dim!r}")


def reduce_block(
    dst: np.ndarray,
    x: np.ndarray,
    dim: str,
    kind: str = "sum",
    scaler: float = 1.0,
    fidelity: MathFidelity | str | int = MathFidelity.HIFI4,
    dst_format: str = "bf16",
) -> np.ndarray:
    """reduce_tiles over a block: Dst tiles [..., 32, 32] accumulate tiles x [..., n, 32, 32] in order.

    Bit-identical to n successive reduce_tiles calls (t = 0..n-1) but vectorised: a sum of n tiles
    is one matrix product whose K runs over the tiles in order (n scaler tiles side by side times
    the n tiles stacked), so the 16-element chunks are added to Dst in the same order.
    """
    x = np.asarray(x, dtype=np.float32)
    dst = np.asarray(dst, dtype=np.float32)
    n = x.shape[-3]
    if kind == "max":
        # max is order-free: the elementwise max over the tiles, then one tile's reduce (x * 1 is exact)
        vals = eltwise_binary(x, np.float32(scaler), "mul", dst_format)
        return reduce_tiles(dst, vals.max(axis=-3), dim, "max", dst_format=dst_format)
    if kind != "sum":
        raise ValueError(f"unknown reduce kind {kind!r}")

    def stacked(tiles: np.ndarray) -> np.ndarray:  # [..., n, 32, 32] -> [..., n*32, 32]
        return tiles.reshape(*tiles.shape[:-3], n * TILE, TILE)

    out = np.array(np.broadcast_to(dst, np.broadcast_shapes(dst.shape, (*x.shape[:-3], TILE, TILE))))
    if dim == "col":
        return _matmul_accumulate(out, np.tile(_scaler_row(scaler), n), stacked(x), fidelity, dst_format)
    if dim == "row":
        flipped = _matmul_accumulate(out.swapaxes(-1, -2), np.tile(_scaler_row(scaler), n),
                                     stacked(x.swapaxes(-1, -2)), fidelity, dst_format)
        return flipped.swapaxes(-1, -2)
    if dim == "scalar":
        rows = reduce_tiles(np.zeros_like(x), x, "row", "sum", scaler, fidelity, dst_format)
        return _matmul_accumulate(out, np.tile(_scaler_row(1.0), n), stacked(rows), fidelity, dst_format)
    raise ValueError(f"unknown reduce dim {dim!r}")
