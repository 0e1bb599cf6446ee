// FPU eltwise, reduce-max and the SFPU table / scalar functions, bit for bit as runtime/numerics.py
// (eltwise_binary, reduce_block with kind "max", sfpu_unary) computes them with numpy on x86-64.
//
// NaNs. x86 arithmetic returns a NaN operand quieted (the first one when both are NaN) and the default NaN
// 0xFFC00000 for an invalid operation; numpy uses the same instructions. Where both operands are NaN, numpy's
// choice of which one's bits survive depends on its loop (array sizes and strides): the rules below take the
// one numpy gives for tiles (see each function) and write it as a select, because a compiler may swap the
// operands of a commutative add or multiply.
#include <cstring>
#include <stdexcept>
#include <string>

#include "convert.h"
#include "numerics.h"

namespace ttc {

namespace {

using conv::is_nan;
using conv::quiet;

// ---------------------------------------------------------------------------------------- eltwise

template <BinaryOp OP>
inline float apply(float x, float y) {
  if constexpr (OP == BinaryOp::ADD) {
    return x + y;
  } else if constexpr (OP == BinaryOp::SUB) {
    return x - y;
  } else {
    return x * y;
  }
}

// numerics.eltwise_binary on one element: operands rounded to the Dst format, the result rounded once to it.
//
// bf16: computed in float32 and rounded to bf16, as the Python does (its doc shows this is the single rounding
// of the exact result).
// f16: the Python computes exactly in float64 and rounds once to Float16. Here float32 does the arithmetic:
// a product of two Float16 values (11-bit significands, magnitudes 2**-48 .. 2**32) is exact in float32, and
// a sum or difference rounded to float32 (24 bits >= 2 * 11 + 2) and then to Float16 rounds like the exact
// value (double rounding is innocuous at that width, Figueroa 1995); a sum below 2**-14 is a multiple of 2**-24
// under 2**-14, exact in float32. NaNs match too: float64's quiet payload, cut to Float16's 10 bits, is the
// float32 payload cut to them.
//
// Both operands NaN: the first's bits (x86's rule, which numpy follows for tiles except a broadcast scalar
// operand of a single tile). As the final rounding to bf16 keeps only a NaN's sign, only f16 sees the payload.
//
// ROUND_OPERANDS false: the caller knows both operands hold bf16 values already (their low halves are zero),
// so rounding them could only canonicalise a NaN, which the final rounding does anyway (keeping its sign).
//
// F16: `over` collects the Float16 overflows of the three roundings (f16_overflow). The float32 result is
// finite exactly when the exact one is (products of Float16 values stay below 2**32), and it rounds to inf
// exactly when the exact result does (the double rounding above), so the flag is the Python's. bf16 leaves
// `over` alone.
template <BinaryOp OP, bool F16, bool ROUND_OPERANDS = true>
inline float binary(float a, float b, uint32_t& over) {
  const float x = ROUND_OPERANDS ? conv::dst_round<F16>(a) : a;
  const float y = ROUND_OPERANDS ? conv::dst_round<F16>(b) : b;
  const float r = apply<OP>(x, y);
  if constexpr (F16) over |= conv::f16_overflows(a) | conv::f16_overflows(b) | conv::f16_overflows(r);
  return conv::dst_round<F16>(conv::select(is_nan(x), quiet(x), r));
}

template <BinaryOp OP, Bcast BC, bool F16, bool ROUND_OPERANDS>
void eltwise_loop(const float* a, const float* b, float* out) {
  // A broadcast B's row / column is copied first, so that `out` may be B itself (or A) without the loop
  // reading what it wrote.
  float line[TILE];
  if constexpr (BC == Bcast::ROW) {
    std::memcpy(line, b, sizeof line);
  } else if constexpr (BC == Bcast::COL) {
    for (int i = 0; i < TILE; ++i) line[i] = b[i * TILE];
  }
  const float corner = b[0];
  uint32_t over = 0;
  for (int i = 0; i < TILE; ++i) {
    for (int j = 0; j < TILE; ++j) {
      float bv;
      if constexpr (BC == Bcast::NONE) {
        bv = b[i * TILE + j];
      } else if constexpr (BC == Bcast::ROW) {  // B's row 0 to every row
        bv = line[j];
      } else if constexpr (BC == Bcast::COL) {  // B's column 0 to every column
        bv = line[i];
      } else {
        bv = corner;
      }
      out[i * TILE + j] = binary<OP, F16, ROUND_OPERANDS>(a[i * TILE + j], bv, over);
    }
  }
  if constexpr (F16) {
    if (over) f16_overflow = true;
  }
}

// Whether every value of the tiles has a zero low half (is a bf16 value, as unpacked bf16 and block-float
// tiles and a bf16 Dst hold): one OR over both tiles, cheaper than rounding them.
inline bool all_bf16(const float* a, const float* b) {
  uint32_t low = 0;
  for (int e = 0; e < TILE_ELEMS; ++e) low |= (conv::bits(a[e]) | conv::bits(b[e])) & 0xFFFFu;
  return low == 0;
}

template <BinaryOp OP, Bcast BC, bool F16>
void eltwise_impl(const float* a, const float* b, float* out) {
  if constexpr (!F16) {
    if (all_bf16(a, b)) return eltwise_loop<OP, BC, false, false>(a, b, out);
  }
  eltwise_loop<OP, BC, F16, true>(a, b, out);
}

template <BinaryOp OP, bool F16>
void eltwise_bcast(const float* a, const float* b, Bcast bcast, float* out) {
  switch (bcast) {
    case Bcast::NONE: return eltwise_impl<OP, Bcast::NONE, F16>(a, b, out);
    case Bcast::ROW: return eltwise_impl<OP, Bcast::ROW, F16>(a, b, out);
    case Bcast::COL: return eltwise_impl<OP, Bcast::COL, F16>(a, b, out);
    case Bcast::SCALAR: return eltwise_impl<OP, Bcast::SCALAR, F16>(a, b, out);
  }
  throw std::invalid_argument("unknown broadcast " + std::to_string(static_cast<int>(bcast)));
}

template <bool F16>
void eltwise_op(const float* a, const float* b, BinaryOp op, Bcast bcast, float* out) {
  switch (op) {
    case BinaryOp::ADD: return eltwise_bcast<BinaryOp::ADD, F16>(a, b, bcast, out);
    case BinaryOp::SUB: return eltwise_bcast<BinaryOp::SUB, F16>(a, b, bcast, out);
    case BinaryOp::MUL: return eltwise_bcast<BinaryOp::MUL, F16>(a, b, bcast, out);
  }
  throw std::invalid_argument("unknown binary op " + std::to_string(static_cast<int>(op)));
}

// eltwise_loop<OP, BC, false, false> on two packed bf16 tiles (face order: formats.cpp) read in place, for a bf16
// Dst: unpacking a bf16 value only widens it (its low half zero, as all_bf16 asks), so every element gets the same
// operands and operations as `binary` gives it, here on 16 lanes at a time (one face row, written to its tile-order
// place): the IEEE operation per lane, a NaN x quieted (x86's rule for a first NaN operand), bf16_bits' rounding.
template <BinaryOp OP, Bcast BC>
void eltwise_pages_loop(const uint8_t* a, const uint8_t* b, float* out) {
  typedef float v16f __attribute__((vector_size(64)));
  typedef uint32_t v16u __attribute__((vector_size(64)));
  typedef uint16_t v16h __attribute__((vector_size(32)));
  constexpr int RUN = 16;  // a face row
  auto widen = [](const uint8_t* page, int run) {
    v16h h;
    std::memcpy(&h, page + run * RUN * 2, sizeof h);
    return __builtin_convertvector(h, v16u) << 16;
  };
  auto value = [](const uint8_t* page, int run, int k) {
    uint16_t h;
    std::memcpy(&h, page + (run * RUN + k) * 2, 2);
    return conv::bf16_value(h);
  };
  float line[TILE];  // B's row 0 (Bcast::ROW) or column 0 (Bcast::COL) in tile order
  if constexpr (BC == Bcast::ROW) {  // tile row 0: face 0's and face 1's first rows
    for (int k = 0; k < RUN; ++k) line[k] = value(b, 0, k), line[RUN + k] = value(b, RUN, k);
  } else if constexpr (BC == Bcast::COL) {  // tile column 0: the first value of face 0's and face 2's rows
    for (int i = 0; i < RUN; ++i) line[i] = value(b, i, 0), line[RUN + i] = value(b, 2 * RUN + i, 0);
  }
  const float corner = value(b, 0, 0);
#pragma GCC unroll 4
  for (int run = 0; run < 4 * RUN; ++run) {
    const int face = run / RUN, row = (face / 2) * RUN + run % RUN, col = (face % 2) * RUN;
    const v16u ua = widen(a, run);
    v16f y;
    if constexpr (BC == Bcast::NONE) {
      y = reinterpret_cast<v16f>(widen(b, run));
    } else if constexpr (BC == Bcast::ROW) {
      std::memcpy(&y, line + col, sizeof y);
    } else if constexpr (BC == Bcast::COL) {
      y = v16f{} + line[row];
    } else {
      y = v16f{} + corner;
    }
    const v16f x = reinterpret_cast<v16f>(ua);
    v16f r;
    if constexpr (OP == BinaryOp::ADD) {
      r = x + y;
    } else if constexpr (OP == BinaryOp::SUB) {
      r = x - y;
    } else {
      r = x * y;
    }
    v16u u = reinterpret_cast<v16u>(r);
    const v16u x_nan = reinterpret_cast<v16u>((ua & 0x7FFFFFFFu) > 0x7F800000u);  // all ones where x is NaN
    u = (u & ~x_nan) | ((ua | 0x00400000u) & x_nan);
    // conv::bf16_bits, lane by lane
    const v16u rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const v16u nan = ((u >> 16) & 0x8000u) | 0x7FC0u;
    const v16u is_nan = reinterpret_cast<v16u>((u & 0x7FFFFFFFu) > 0x7F800000u);
    const v16u h = (rounded & ~is_nan) | (nan & is_nan);
    const v16u result = h << 16;
    std::memcpy(out + row * TILE + col, &result, sizeof result);
  }
}

template <BinaryOp OP>
void eltwise_pages_bcast(const uint8_t* a, const uint8_t* b, Bcast bcast, float* out) {
  switch (bcast) {
    case Bcast::NONE: return eltwise_pages_loop<OP, Bcast::NONE>(a, b, out);
    case Bcast::ROW: return eltwise_pages_loop<OP, Bcast::ROW>(a, b, out);
    case Bcast::COL: return eltwise_pages_loop<OP, Bcast::COL>(a, b, out);
    case Bcast::SCALAR: return eltwise_pages_loop<OP, Bcast::SCALAR>(a, b, out);
  }
  throw std::invalid_argument("unknown broadcast " + std::to_string(static_cast<int>(bcast)));
}

// ---------------------------------------------------------------------------------------- max

// np.maximum(a, b) on x86-64 (numpy's maxps-based kernels, scalar and SIMD alike): a if a is NaN, else
// a if a > b, else b. So a NaN a is kept as it is (not quieted), b wins ties (0.0 vs -0.0), and a NaN b
// wins over a number.
inline float maximum(float a, float b) { return is_nan(a) ? a : (a > b ? a : b); }

// maxps alone (a > b ? a : b): the lane reduction's step.
inline float maxps(float a, float b) { return a > b ? a : b; }

constexpr int LANES = 16;  // numpy's AVX-512 float32 vector

// x.max() of a contiguous float32 array as numpy computes it with its AVX-512 kernels (simd_reduce_c_max_f32):
// the first element seeds 16 lane accumulators; blocks of 8 vectors are combined pairwise and then into
// the accumulators, remaining whole vectors one by one (all with `maximum`); the 16 lanes are then reduced
// by GCC's _mm512_reduce_max_ps tree (upper half against lower half, 8 -> 4 -> 2 -> 1), unless a lane holds
// NaN, which gives the canonical NaN 0x7FC00000; the last n - 1 mod 16 elements follow one at a time.
// The order only shows in which of 0.0 / -0.0 and which NaN come out.
float numpy_max(const float* x, int n) {
  float acc[LANES];
  for (int l = 0; l < LANES; ++l) acc[l] = x[0];
  int i = 1;
  for (; n - i >= 8 * LANES; i += 8 * LANES) {
    float block[LANES];
    for (int l = 0; l < LANES; ++l) {
      const float* v = x + i + l;
      const float r01 = maximum(v[0 * LANES], v[1 * LANES]);
      const float r23 = maximum(v[2 * LANES], v[3 * LANES]);
      const float r45 = maximum(v[4 * LANES], v[5 * LANES]);
      const float r67 = maximum(v[6 * LANES], v[7 * LANES]);
      block[l] = maximum(maximum(r01, r23), maximum(r45, r67));
    }
    for (int l = 0; l < LANES; ++l) acc[l] = maximum(acc[l], block[l]);
  }
  for (; n - i >= LANES; i += LANES) {
    for (int l = 0; l < LANES; ++l) acc[l] = maximum(acc[l], x[i + l]);
  }
  bool any_nan = false;
  for (int l = 0; l < LANES; ++l) any_nan |= is_nan(acc[l]);
  float r;
  if (any_nan) {
    r = conv::from_bits(0x7FC00000u);
  } else {
    float t8[8], t4[4];
    for (int l = 0; l < 8; ++l) t8[l] = maxps(acc[8 + l], acc[l]);
    for (int l = 0; l < 4; ++l) t4[l] = maxps(t8[4 + l], t8[l]);
    const float t2[2] = {maxps(t4[0], t4[2]), maxps(t4[1], t4[3])};
    r = maxps(t2[0], t2[1]);
  }
  for (; i < n; ++i) r = maximum(r, x[i]);
  return r;
}

template <bool F16>
void reduce_max_impl(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler) {
  // vals = eltwise mul of each tile by the scaler (the Dst-format rounding of both, as eltwise_tile), then
  // the elementwise max over the block's tiles in order (numpy's max over that axis: `maximum` tile after
  // tile). The Python then multiplies the result by 1.0 once more, which changes no bits (it is already a
  // Dst-format value, NaNs included), so that is left out.
  const float s = conv::dst_round<F16>(scaler);
  uint32_t over = F16 ? conv::f16_overflows(scaler) : 0;
  float m[TILE_ELEMS];
  for (int k = 0; k < n; ++k) {
    const float* t = tiles[k];
    float v[TILE_ELEMS];
    if (!F16 && all_bf16(t, t)) {  // bf16 values already: skip the operand rounding (see binary)
      for (int e = 0; e < TILE_ELEMS; ++e) v[e] = binary<BinaryOp::MUL, F16, false>(t[e], s, over);
    } else {
      for (int e = 0; e < TILE_ELEMS; ++e) v[e] = binary<BinaryOp::MUL, F16>(t[e], s, over);
    }
    if (k == 0) {
      std::memcpy(m, v, sizeof m);
    } else {
      for (int e = 0; e < TILE_ELEMS; ++e) m[e] = maximum(m[e], v[e]);
    }
  }
  if constexpr (F16) {
    if (over) f16_overflow = true;
  }
  switch (dim) {
    case ReduceDim::ROW:  // each row into column 0 (numpy's contiguous max over a row)
      for (int i = 0; i < TILE; ++i) dst[i * TILE] = maximum(dst[i * TILE], numpy_max(m + i * TILE, TILE));
      return;
    case ReduceDim::COL: {  // each column into row 0 (numpy's max over rows: `maximum` row after row)
      float col[TILE];
      std::memcpy(col, m, sizeof col);
      for (int i = 1; i < TILE; ++i) {
        for (int j = 0; j < TILE; ++j) col[j] = maximum(col[j], m[i * TILE + j]);
      }
      for (int j = 0; j < TILE; ++j) dst[j] = maximum(dst[j], col[j]);
      return;
    }
    case ReduceDim::SCALAR:  // everything into [0, 0] (numpy's contiguous max over the whole tile)
      dst[0] = maximum(dst[0], numpy_max(m, TILE_ELEMS));
      return;
  }
  throw std::invalid_argument("unknown reduce dim " + std::to_string(static_cast<int>(dim)));
}

// ---------------------------------------------------------------------------------------- SFPU

// The *_scalar functions in float32 on x = dst_round(x), p = float32(param), as numpy evaluates
// SFPU_SCALAR_FUNCTIONS; the result is rounded to the Dst format afterwards.
template <ScalarFn FN>
inline float scalar_fn(float x, float p) {
  if constexpr (FN == ScalarFn::ADD) {
    return x + p;
  } else if constexpr (FN == ScalarFn::MUL) {
    return x * p;
  } else if constexpr (FN == ScalarFn::SUB_FROM) {
    return p - x;
  } else if constexpr (FN == ScalarFn::MAX) {
    return maximum(x, p);
  } else if constexpr (FN == ScalarFn::WHERE_NEZ) {  // a select: p as it is, never p * 0
    return x != 0.0f ? p : 0.0f;
  } else if constexpr (FN == ScalarFn::WHERE_EQZ) {
    return x == 0.0f ? p : 0.0f;
  } else if constexpr (FN == ScalarFn::EQ) {  // comparisons: 1.0 / 0.0; NaN is only != p
    return x == p ? 1.0f : 0.0f;
  } else if constexpr (FN == ScalarFn::NE) {
    return x != p ? 1.0f : 0.0f;
  } else if constexpr (FN == ScalarFn::LT) {
    return x < p ? 1.0f : 0.0f;
  } else if constexpr (FN == ScalarFn::LE) {
    return x <= p ? 1.0f : 0.0f;
  } else if constexpr (FN == ScalarFn::GT) {
    return x > p ? 1.0f : 0.0f;
  } else {
    return x >= p ? 1.0f : 0.0f;
  }
}

// F16: a Float16 overflow where x's rounding or the float32 result's rounding gives inf from a finite value
// (f16_overflow; a result that float32 arithmetic made inf already is none, as in the Python).
template <ScalarFn FN, bool F16>
void scalar_impl(float* x, int count, float p) {
  uint32_t over = 0;
  if constexpr (FN == ScalarFn::ADD || FN == ScalarFn::MUL || FN == ScalarFn::SUB_FROM) {
    // A NaN parameter wins even over a NaN x: numpy's loops with a scalar operand return its bits for
    // tiles (for p - x it is the first operand anyway).
    if (is_nan(p)) {
      const float r = conv::dst_round<F16>(quiet(p));
      for (int i = 0; i < count; ++i) {
        if constexpr (F16) over |= conv::f16_overflows(x[i]);  // x is still rounded first
        x[i] = r;
      }
      if (over) f16_overflow = true;
      return;
    }
  }
  for (int i = 0; i < count; ++i) {
    const float y = scalar_fn<FN>(conv::dst_round<F16>(x[i]), p);
    if constexpr (F16) over |= conv::f16_overflows(x[i]) | conv::f16_overflows(y);
    x[i] = conv::dst_round<F16>(y);
  }
  if (over) f16_overflow = true;
}

template <bool F16>
void scalar_dispatch(float* x, int count, ScalarFn fn, float p) {
  switch (fn) {
    case ScalarFn::ADD: return scalar_impl<ScalarFn::ADD, F16>(x, count, p);
    case ScalarFn::MUL: return scalar_impl<ScalarFn::MUL, F16>(x, count, p);
    case ScalarFn::SUB_FROM: return scalar_impl<ScalarFn::SUB_FROM, F16>(x, count, p);
    case ScalarFn::MAX: return scalar_impl<ScalarFn::MAX, F16>(x, count, p);
    case ScalarFn::WHERE_NEZ: return scalar_impl<ScalarFn::WHERE_NEZ, F16>(x, count, p);
    case ScalarFn::WHERE_EQZ: return scalar_impl<ScalarFn::WHERE_EQZ, F16>(x, count, p);
    case ScalarFn::EQ: return scalar_impl<ScalarFn::EQ, F16>(x, count, p);
    case ScalarFn::NE: return scalar_impl<ScalarFn::NE, F16>(x, count, p);
    case ScalarFn::LT: return scalar_impl<ScalarFn::LT, F16>(x, count, p);
    case ScalarFn::LE: return scalar_impl<ScalarFn::LE, F16>(x, count, p);
    case ScalarFn::GT: return scalar_impl<ScalarFn::GT, F16>(x, count, p);
    case ScalarFn::GE: return scalar_impl<ScalarFn::GE, F16>(x, count, p);
  }
  throw std::invalid_argument("unknown SFPU scalar function " + std::to_string(static_cast<int>(fn)));
}

}  // namespace

void eltwise_tile(const float* a, const float* b, BinaryOp op, Bcast bcast, DstFormat format, float* out) {
  if (format == DstFormat::F16) {
    eltwise_op<true>(a, b, op, bcast, out);
  } else {
    eltwise_op<false>(a, b, op, bcast, out);
  }
}

void eltwise_bf16_pages(const uint8_t* a, const uint8_t* b, BinaryOp op, Bcast bcast, float* out) {
  switch (op) {
    case BinaryOp::ADD: return eltwise_pages_bcast<BinaryOp::ADD>(a, b, bcast, out);
    case BinaryOp::SUB: return eltwise_pages_bcast<BinaryOp::SUB>(a, b, bcast, out);
    case BinaryOp::MUL: return eltwise_pages_bcast<BinaryOp::MUL>(a, b, bcast, out);
  }
  throw std::invalid_argument("unknown binary op " + std::to_string(static_cast<int>(op)));
}

void reduce_max_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler,
                      DstFormat format) {
  if (n <= 0) return;
  if (format == DstFormat::F16) {
    reduce_max_impl<true>(dst, tiles, n, dim, scaler);
  } else {
    reduce_max_impl<false>(dst, tiles, n, dim, scaler);
  }
}

void sfpu_table_tile(float* x, int count, const float* table, DstFormat format, const uint8_t* overflow) {
  // The indices first (a loop that vectorises), then the lookups, a block at a time.
  constexpr int BLOCK = 256;
  uint32_t index[BLOCK];
  uint32_t over = 0;  // F16: an operand or a looked-up entry overflows (f16_overflow)
  for (int start = 0; start < count; start += BLOCK) {
    const int n = count - start < BLOCK ? count - start : BLOCK;
    float* v = x + start;
    if (format == DstFormat::F16) {
      // the Float16 bits of f16_round(x)
      for (int i = 0; i < n; ++i) {
        over |= conv::f16_overflows(v[i]);
        index[i] = conv::f16_bits(v[i]);
      }
      if (overflow != nullptr) {
        for (int i = 0; i < n; ++i) over |= overflow[index[i]];
      }
    } else {
      // the bf16 bits of numerics._as_bf16(x): x's upper half when its lower half is zero, else the bits of
      // bf16_round(x). (The two differ only for a NaN with a zero lower half, which _as_bf16 keeps as it is
      // when the whole array holds bf16 values: a Dst always does.)
      for (int i = 0; i < n; ++i) {
        const uint32_t u = conv::bits(v[i]);
        index[i] = conv::select((u & 0xFFFFu) == 0, u >> 16, conv::bf16_bits(v[i]));
      }
    }
    for (int i = 0; i < n; ++i) v[i] = table[index[i]];
  }
  if (over) f16_overflow = true;
}

void sfpu_scalar_tile(float* x, int count, ScalarFn fn, float param, DstFormat format) {
  if (format == DstFormat::F16) {
    scalar_dispatch<true>(x, count, fn, param);
  } else {
    scalar_dispatch<false>(x, count, fn, param);
  }
}

}  // namespace ttc
