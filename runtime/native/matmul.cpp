// The matmul unit (matmul_block, reduce_sum_block) and the binary SFPU (sfpu_binary_tile) of the emulated
// Grayskull: the definitions of runtime/numerics.py (its module docstring states them), bit for bit.
//
// A chunk's partial is RN_f32 of the exact sum of its 16 (HiFi3: 32) fidelity products; Dst then becomes
// RN_dst(RN_f64(Dst + partial)). The kernel computes every chunk sum in float64 as a GEMM micro-kernel
// does (operands packed once per call, an MR x NR block of accumulators in vector registers) and proves,
// per block and chunk, that the float64 sum is exact (exponent spans of the operand row and column, see
// kSpanLimit). Sums it cannot prove get a rounding test with a rigorous error bound, and the rare ones
// that fail it an exact big-integer sum.
#include "numerics.h"

#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

namespace ttc {
namespace {

// ------------------------------------------------------------------------------------------ bits

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
inline uint64_t bits_of(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline double double_of(uint64_t u) {
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

constexpr uint32_t kMaskA = 0xFFF80000u;  // SrcA (in1): sign, exponent, hidden 1 + top 4 mantissa bits
constexpr uint32_t kMaskB = 0xFFFE0000u;  // SrcB (in0): sign, exponent, hidden 1 + top 6 mantissa bits
constexpr uint32_t kQuietNaN = 0x7FC00000u;  // the NaN the matmul unit makes

inline bool is_nan_bits(uint32_t u) { return (u & 0x7FFFFFFFu) > 0x7F800000u; }

// RNE to bfloat16, as float (ml_dtypes: a NaN becomes the quiet NaN with its sign; overflow gives inf).
inline float to_bf16(float x) {
  uint32_t u = bits_of(x);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  return float_of(is_nan_bits(u) ? (u & 0x80000000u) | kQuietNaN : rounded);
}

// The part of a bf16 value a fidelity split keeps (a NaN stays NaN whatever its payload).
inline float masked(float x, uint32_t mask) {
  uint32_t u = bits_of(x);
  return float_of(is_nan_bits(u) ? u : u & mask);
}

// Exponent field of a float32 magnitude, subnormals (and zero) counted as field 1: the lowest bit of a
// subnormal is that of the smallest normal binade.
inline int field_of(float x) { return std::max<int>((bits_of(x) >> 23) & 0xFF, 1); }

// ------------------------------------------------------------------------------------------ spans

// Largest exponent span (of an in0 row plus an in1 column, exponent fields of the nonzero bf16 values)
// for which every order of summing a chunk's products in float64 is exact: a product of the parts the
// fidelity multiplies has its lowest bit at or above 2**(ex + ey - d) (d = 10 LoFi, 13 HiFi2/HiFi3,
// 14 HiFi4) and every partial sum stays below 2**(ex_max + ey_max + 6) (the magnitudes sum to at most
// sum |x| |y|), so 53 bits hold them all while span_x + span_y <= 53 - 6 - d.
int span_limit(Fidelity fidelity) {
  switch (fidelity) {
    case Fidelity::LOFI: return 37;
    case Fidelity::HIFI2: return 34;
    case Fidelity::HIFI3: return 34;
    case Fidelity::HIFI4: return 33;
  }
  return 33;
}

// Magnitude statistics of 16 bf16 values (an in0 row or an in1 column of one chunk), kept as float bits:
// comparing magnitudes' bits as unsigned integers orders them, so two integer reductions give them.
struct Stat {
  uint32_t top = 0;           // the largest magnitude's bits (0: all zero; from 0x7F800000 on: an inf or NaN)
  uint32_t low = 0xFFFFFFFFu;  // the smallest nonzero magnitude's bits minus 1 (a zero wraps to all ones)

  bool special() const { return top >= 0x7F800000u; }
  // Exponent fields of the largest and smallest nonzero values, a subnormal's counted as 1 (its lowest bit
  // is that of the smallest normal binade); 0 when all are zero.
  int top_field() const { return top ? std::max<int>(static_cast<int>(top >> 23), 1) : 0; }
  int low_field() const { return top ? std::max<int>(static_cast<int>((low + 1) >> 23), 1) : 0; }
  int span() const { return top ? top_field() - low_field() : 0; }
  double largest() const { return static_cast<double>(float_of(top)); }
};

// ------------------------------------------------------------------------------------------ exact sums

// RN_f32 of an exact sum of finite float64 values that are multiples of 2**kBase below 2**300 in
// magnitude (products of bf16 values: multiples of 2**-266 below 2**257), in two's complement fixed point.
class ExactSum {
 public:
  static constexpr int kBase = -320;
  static constexpr int kLimbs = 10;  // 640 bits: up to 2**319, with the sign

  void add(double value) {
    if (value == 0) return;
    uint64_t b = bits_of(value);
    int field = static_cast<int>((b >> 52) & 0x7FF);
    uint64_t mantissa = (b & ((uint64_t{1} << 52) - 1)) | (field ? uint64_t{1} << 52 : 0);
    int exponent = (field ? field : 1) - 1075;  // value = mantissa * 2**exponent
    int position = exponent - kBase;
    unsigned __int128 shifted = static_cast<unsigned __int128>(mantissa) << (position % 64);
    int index = position / 64;
    uint64_t parts[2] = {static_cast<uint64_t>(shifted), static_cast<uint64_t>(shifted >> 64)};
    if (value > 0) {
      unsigned __int128 carry = 0;
      for (int i = index; i < kLimbs; ++i) {
        unsigned __int128 sum = static_cast<unsigned __int128>(limbs_[i]) + carry +
                                (i - index < 2 ? parts[i - index] : 0);
        limbs_[i] = static_cast<uint64_t>(sum);
        carry = sum >> 64;
        if (!carry && i - index >= 1) break;
      }
    } else {
      uint64_t borrow = 0;
      for (int i = index; i < kLimbs; ++i) {
        uint64_t sub = i - index < 2 ? parts[i - index] : 0;
        uint64_t before = limbs_[i];
        uint64_t after = before - sub - borrow;
        borrow = (before < sub) || (before - sub < borrow) ? 1 : 0;
        limbs_[i] = after;
        if (!borrow && i - index >= 1) break;
      }
    }
  }

  float rounded() const {
    uint64_t magnitude[kLimbs];
    bool negative = limbs_[kLimbs - 1] >> 63;
    uint64_t carry = 1;
    for (int i = 0; i < kLimbs; ++i) {
      if (negative) {
        uint64_t inverted = ~limbs_[i];
        magnitude[i] = inverted + carry;
        carry = (carry && magnitude[i] == 0) ? 1 : 0;
      } else {
        magnitude[i] = limbs_[i];
      }
    }
    int top_limb = kLimbs - 1;
    while (top_limb >= 0 && magnitude[top_limb] == 0) --top_limb;
    if (top_limb < 0) return 0.0f;  // an exact zero is +0
    int top_bit = top_limb * 64 + 63 - __builtin_clzll(magnitude[top_limb]);
    int exponent = std::max(top_bit + kBase, -126);  // float32 keeps 24 bits; subnormals a fixed last bit
    int last = exponent - 23;                         // exponent of the result's last bit
    int drop = last - kBase;                          // bits below it
    uint64_t significand;
    if (drop <= 0) {
      significand = magnitude[0] << -drop;  // exact: fewer than 24 bits, all in the lowest limb
    } else {
      significand = bits(magnitude, drop, std::min(top_bit + 1, drop + 25));
      bool half = bit(magnitude, drop - 1);
      bool sticky = any_below(magnitude, drop - 1);
      if (half && (sticky || (significand & 1))) ++significand;
    }
    float result = static_cast<float>(std::ldexp(static_cast<double>(significand), last));  // inf at 2**128
    return negative ? -result : result;
  }

 private:
  static bool bit(const uint64_t* m, int position) { return (m[position / 64] >> (position % 64)) & 1; }
  static uint64_t bits(const uint64_t* m, int from, int to) {  // bits [from, to), to - from <= 25
    uint64_t out = 0;
    for (int p = to - 1; p >= from; --p) out = (out << 1) | (bit(m, p) ? 1 : 0);
    return out;
  }
  static bool any_below(const uint64_t* m, int position) {
    for (int i = 0; i < position / 64; ++i)
      if (m[i]) return true;
    return position % 64 && (m[position / 64] & ((uint64_t{1} << (position % 64)) - 1));
  }
  uint64_t limbs_[kLimbs] = {};
};

// The partial of a chunk with an inf or NaN operand: IEEE products of the values the passes read (in0
// without the SrcB split's low bits at LoFi and HiFi2, in1 without the SrcA split's at LoFi; an inf stays
// inf and a NaN stays NaN), summed by IEEE rules: NaN if one is NaN or both infinities occur, else the
// infinity (finite products cannot overflow, so only products with an inf or NaN operand count).
float special_partial(const float* x, const float* y, int y_stride, Fidelity fidelity) {
  bool up = false, down = false;
  for (int k = 0; k < MVMUL_K; ++k) {
    float a = x[k], b = y[k * y_stride];
    if (std::isfinite(a) && std::isfinite(b)) continue;
    float ra = fidelity <= Fidelity::HIFI2 ? masked(a, kMaskB) : a;
    float rb = fidelity == Fidelity::LOFI ? masked(b, kMaskA) : b;
    double p = static_cast<double>(ra) * static_cast<double>(rb);
    if (std::isnan(p)) return float_of(kQuietNaN);
    (p > 0 ? up : down) = true;
  }
  if (up && down) return float_of(kQuietNaN);
  return up ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
}

// The definition's partial from the bf16 operands of one chunk: x the in0 row (16 contiguous values), y
// the in1 column (stride y_stride). Exact whatever the values.
float exact_partial(const float* x, const float* y, int y_stride, Fidelity fidelity) {
  for (int k = 0; k < MVMUL_K; ++k)
    if (!std::isfinite(x[k]) || !std::isfinite(y[k * y_stride])) return special_partial(x, y, y_stride, fidelity);
  ExactSum sum;
  for (int k = 0; k < MVMUL_K; ++k) {
    double a = x[k], b = y[k * y_stride];
    double a_hi = masked(x[k], kMaskB), b_hi = masked(y[k * y_stride], kMaskA);
    switch (fidelity) {
      case Fidelity::LOFI: sum.add(a_hi * b_hi); break;
      case Fidelity::HIFI2: sum.add(a_hi * b); break;
      case Fidelity::HIFI3: sum.add(a_hi * b); sum.add((a - a_hi) * b_hi); break;
      case Fidelity::HIFI4: sum.add(a * b); break;
    }
  }
  return sum.rounded();
}

// ------------------------------------------------------------------------------------------ Dst rounding

// RN to the Dst format of a float64 value (finite or inf; NaN is the caller's): 8 (bf16) or 11 (f16)
// significant bits, the fixed last bit of the subnormals (2**-133, 2**-24), inf past the largest value.
// A finite value that rounds to inf in Float16 sets f16_overflow (every f16 Dst value past Float16's
// normal range, in the chain and in the binary SFPU, is rounded here).
double round_to_dst(double v, DstFormat format) {
  if (!std::isfinite(v) || v == 0) return v;
  int precision = format == DstFormat::BF16 ? 8 : 11;
  int min_exponent = format == DstFormat::BF16 ? -126 : -14;
  int max_exponent = format == DstFormat::BF16 ? 127 : 15;
  int exponent = std::max(std::ilogb(v), min_exponent);
  int last = exponent - (precision - 1);
  double r = std::ldexp(std::nearbyint(std::ldexp(v, -last)), last);  // RNE in the default rounding mode
  if (std::fabs(r) >= std::ldexp(1.0, max_exponent + 1)) {
    if (format == DstFormat::F16) f16_overflow = true;
    return std::copysign(HUGE_VAL, v);
  }
  return r;
}

// The NaN a chain ends with (runtime/numerics.py _chain_nans): a chain from a NaN Dst keeps it as the
// format rounds it (bf16: the quiet NaN with its sign; f16: sign, quiet bit and the 9 payload bits
// below it); any other NaN is the positive quiet NaN.
float chain_nan(float start, DstFormat format) {
  uint32_t u = bits_of(start);
  if (!is_nan_bits(u)) return float_of(kQuietNaN);
  if (format == DstFormat::BF16) return float_of((u & 0x80000000u) | kQuietNaN);
  return float_of((u & 0x80000000u) | kQuietNaN | (u & 0x003FE000u));
}

// ------------------------------------------------------------------------------------------ kernel

#if defined(__AVX512F__)
constexpr int MR = 8;   // rows of a register block
constexpr int NR = 16;  // columns of a register block (two vectors of 8 doubles)
#else
constexpr int MR = 4;
constexpr int NR = 8;
#endif
constexpr int VL = 8;  // doubles per vector of the vector extension (a zmm, or two ymm)
constexpr int NV = NR / VL;
constexpr int HALVES = TILE / MVMUL_K;  // chunks per K tile

typedef double v8d __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef int64_t v8l __attribute__((vector_size(64)));

inline v8d load8(const double* p) {
  v8d v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(double* p, v8d v) { std::memcpy(p, &v, sizeof v); }
inline v8f load8f(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8f(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
// Exact float -> double and RN double -> float conversions of 8 lanes: one instruction each with AVX-512
// (GCC's own lowering splits them into halves).
inline v8d widen(v8f v) {
#if defined(__AVX512F__)
  return (v8d)_mm512_maskz_cvtps_pd(0xFF, (__m256)v);  // (the unmasked form trips GCC 12 warnings)
#else
  return __builtin_convertvector(v, v8d);
#endif
}
inline v8f narrow(v8d v) {
#if defined(__AVX512F__)
  return (v8f)_mm512_maskz_cvtpd_ps(0xFF, (__m512d)v);
#else
  return __builtin_convertvector(v, v8f);
#endif
}

// in0's packed parts and statistics for one call's operand tiles, kept for the next calls with the same tiles
// (matmul kernels commonly multiply one in0 block by several in1 blocks in a row: GPT-2 repeats in0's bytes in
// 85% of its matmul work within two calls). An entry is found by its key and its copy of the tiles' bytes.
struct In0Entry {
  int rows = -1, inner = -1, fidelity = -1;  // the parts depend on the fidelity's split and products per chunk
  std::vector<uint16_t> tiles;  // the bf16 tiles' bytes, tile after tile
  std::vector<double> a;  // [mb][C][MR][kc]
  std::vector<int16_t> span;  // a row block's span bound per chunk (-1: all zero), [mb][C]
  std::vector<uint8_t> special;  // [mb][C]
  std::vector<Stat> stats;  // the Stat of each row block's values, [mb]
  uint64_t used = 0;  // when last found or claimed (least recently used is claimed first)
};

// Scratch space of one thread's calls, kept between them (the executor runs cores on several threads).
struct Scratch {
  In0Entry in0[2];
  uint64_t calls = 0;
  In0Entry own;  // in0's parts when they are not kept (float operands)
  std::vector<double> b;  // in1's parts, [N / NR][C][kc][NR]: a column block's chunks in a row (kFastIn0: the
                          // one column block being computed, packed when its turn comes)
  std::vector<uint32_t> col_top, col_low;  // Stat of in1's columns, [C][N]
  std::vector<int16_t> col_block_span;  // [C][N / NR] largest span of the block's columns (-1: all zero)
  std::vector<uint8_t> col_block_special;
  // kFastIn0: per chunk of the column block being computed, whether each of its 16 columns holds at most one
  // nonzero value (pack_in1_fast), and then per column the packed position of that value and its part (0 and
  // +0 for a zero column): such a chunk's sums are single products (sparse_kernel)
  std::vector<uint8_t> sparse;  // [C]
  std::vector<int64_t> sparse_at;  // [C][NR]
  std::vector<double> sparse_part;  // [C][NR]
  std::vector<float> rounded;  // operands rounded to bf16 (when the caller does not promise bf16 values)
  std::vector<const float*> rounded_tiles;

  // Sizes in1's packed parts (kc products per chunk, `blocks` column blocks of them) and its column statistics.
  void size_in1(int chunks, int n, int nb, int kc, int blocks) {
    b.resize(static_cast<size_t>(chunks) * blocks * NR * kc);
    col_top.resize(static_cast<size_t>(chunks) * n);
    col_low.resize(static_cast<size_t>(chunks) * n);
    col_block_span.resize(static_cast<size_t>(chunks) * nb);
    col_block_special.resize(static_cast<size_t>(chunks) * nb);
    sparse.resize(chunks);
    sparse_at.resize(static_cast<size_t>(chunks) * NR);
    sparse_part.resize(static_cast<size_t>(chunks) * NR);
  }
};

// One matmul: its operand tiles (bf16 values), shape and the statistics of its operands. The operands are
// float tiles (in0, in1) or packed bf16 tiles in the device's face order (in0h, in1h: a CB's pages, read
// in place); the rare paths that need float values of packed operands make them (floats()).
struct Problem {
  const float* const* in0 = nullptr;  // [rows][inner] tiles
  const float* const* in1 = nullptr;  // [inner][cols] tiles
  const uint16_t* const* in0h = nullptr;  // the same as packed bf16 tiles, or null
  const uint16_t* const* in1h = nullptr;
  int rows, cols, inner;
  int m, n, chunks, kc, mb, nb;  // rows, columns, 16-element chunks, products per chunk (16, HiFi3 32), blocks
  Fidelity fidelity;
  int limit;
  uint32_t in1_top = 0, in1_low = 0xFFFFFFFFu;  // Stat of all of in1
  double growth = 0;  // (1 + 2**-7)**chunks: how much the chain's roundings can grow a value
  Scratch* s;

  // in0 row i of chunk c: 16 contiguous values
  const float* x(int i, int c) const {
    return in0[(i / TILE) * inner + c / HALVES] + (i % TILE) * TILE + (c % HALVES) * MVMUL_K;
  }
  // in1 column j of chunk c: 16 values, TILE apart
  const float* y(int c, int j) const {
    return in1[(c / HALVES) * cols + j / TILE] + (c % HALVES) * MVMUL_K * TILE + j % TILE;
  }
  Stat col(int c, int j) const {
    size_t at = static_cast<size_t>(c) * n + j;
    return {s->col_top[at], s->col_low[at]};
  }
  // Packed operands: in0 row i of chunk c, 16 contiguous values of one face row (the face of tile row
  // i % 32 and columns (c % 2) * 16..)
  const uint16_t* xh(int i, int c) const {
    const int r = i % TILE;
    return in0h[(i / TILE) * inner + c / HALVES] + ((r / 16) * 2 + c % HALVES) * 256 + (r % 16) * 16;
  }
  // in1 row k (0..15) of chunk c, columns j .. j + 15 (j a multiple of 16): one face row
  const uint16_t* yh(int c, int k, int j) const {
    return in1h[(c / HALVES) * cols + j / TILE] + ((c % HALVES) * 2 + (j % TILE) / 16) * 256 + k * 16;
  }
  void floats();
};

typedef uint32_t v16u __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16u load16u(const float* p) {
  v16u v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// 16 packed bf16 values as float bits
inline v16u load16h(const uint16_t* p) {
  typedef uint16_t v16h __attribute__((vector_size(32)));
  v16h h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, v16u) << 16;
}
// lanes 8 * h .. 8 * h + 7 of float bits, as floats
inline v8f half8(const v16u& v, int h) {
  v8f out;
  std::memcpy(&out, reinterpret_cast<const char*>(&v) + h * sizeof out, sizeof out);
  return out;
}

// Lane j of the result: the largest (kMax) or smallest of the 16 lanes of v[j]. A transpose-and-reduce
// butterfly: 31 shuffles and 15 operations for 16 reductions, where one reduction alone takes 4 and 4.
template <bool kMax>
inline v16u reduce16(const v16u* v) {
  auto op = [](v16u a, v16u b) { return kMax ? (a > b ? a : b) : (a < b ? a : b); };
  v16u w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i)  // 256-bit halves: 8 partials of v[i], then of v[i + 8]
    w[i] = op(__builtin_shuffle(v[i], v[i + 8], v16i{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}),
              __builtin_shuffle(v[i], v[i + 8], v16i{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}));
  for (int i = 0; i < 4; ++i)  // 128-bit quarters: 4 partials of v[i], v[i + 8], v[i + 4], v[i + 12]
    x[i] = op(__builtin_shuffle(w[i], w[i + 4], v16i{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}),
              __builtin_shuffle(w[i], w[i + 4], v16i{4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}));
  for (int i = 0; i < 2; ++i)  // 64-bit pairs: 2 partials of each
    y[i] = op(__builtin_shuffle(x[i], x[i + 2], v16i{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}),
              __builtin_shuffle(x[i], x[i + 2], v16i{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}));
  v16u z = op(__builtin_shuffle(y[0], y[1], v16i{0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30}),
              __builtin_shuffle(y[0], y[1], v16i{1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29, 31}));
  // z's lane l holds v[0 2 1 3 8 10 9 11 4 6 5 7 12 14 13 15][l] reduced (an order that is its own inverse)
  return __builtin_shuffle(z, v16i{0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15});
}

// Span statistics of 16 rows or columns from their Stat fields: Stat::span(), -1 for all zero values and
// kSpecialSpan for an inf or NaN, so that a block's largest tells all three.
constexpr int kSpecialSpan = 0x4000;
inline v16i spans16(v16u top, v16u low) {
  const v16u one = v16u{} + 1;
  v16u top_field = top >> 23, low_field = (low + 1) >> 23;
  top_field = top_field > one ? top_field : one;
  low_field = low_field > one ? low_field : one;
  v16i span = (v16i)(top_field - low_field);
  span = top == 0 ? -1 : span;
  return top >= 0x7F800000u ? kSpecialSpan : span;
}

// The block spans of 16 rows or columns: the largest span of each group of `size` (MR or NR) in
// span[0, count), into block_span and block_special from `first` on; zero groups keep -1 when `zero` is.
inline void block_spans(const int* span, int count, int size, int16_t* block_span, uint8_t* block_special,
                        int16_t zero) {
  for (int g = 0; g < count / size; ++g) {
    int largest = -1;
    for (int i = 0; i < size; ++i) largest = std::max(largest, span[g * size + i]);
    block_special[g] = largest >= kSpecialSpan;
    block_span[g] = static_cast<int16_t>(largest < 0 ? zero : largest);
  }
}

// With packed bf16 operands and 16 products per chunk, AVX-512 packs in0 two face rows at a time (pack_in0_fast):
// its unpack instructions leave a row's k in the order kPermutation (the 128-bit halves' middle quarters
// swapped), and in1 is packed in that order too. A chunk's products are the same, summed in another order:
// the sums are exact (or bounded for any order), so the bits are the same.
#if defined(__AVX512BW__)
template <int KC, bool kPacked>
constexpr bool kFastIn0 = kPacked && KC == MVMUL_K && MR == 8;
#else
template <int KC, bool kPacked>
constexpr bool kFastIn0 = false;
#endif
constexpr int kPermutation[MVMUL_K] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};  // its own inverse

// The parts each pass multiplies: in0 as SrcB (7-bit split), in1 as SrcA (5-bit split); HiFi3 forms hi(x) y
// and lo(x) hi(y), its chunks 32 products long. An inf or NaN operand never reaches the kernel's sums (its
// chunks take special_partial), so the masks ignore them.

// in1 packed for the kernel ([N / NR][C][kc][NR], one vector load per k and column vector) and measured
// (the statistics of its columns of every chunk, of their register blocks and of all of in1), in one pass
// over each tile's 16 rows of a chunk, vectorised across its 32 columns.
// kSplit: the fidelity multiplies hi(y) alone (LoFi).
template <int KC, bool kSplit, bool kPacked>
void pack_in1(Problem& p) {
  typedef uint32_t v8u __attribute__((vector_size(32)));
  Scratch& s = *p.s;
  const int n = p.n, chunks = p.chunks, nb = p.nb;
  s.size_in1(chunks, n, nb, KC, nb);
  double* const packed = s.b.data();
  uint32_t* const col_top = s.col_top.data();
  uint32_t* const col_low = s.col_low.data();
  constexpr int H = TILE / 16;  // 16-lane vectors per tile row
  v16u all_top{}, all_low = ~v16u{};
  for (int c = 0; c < chunks; ++c)
    for (int j0 = 0; j0 < n; j0 += TILE) {
      const float* rows = kPacked ? nullptr : p.y(c, j0);
      double* to[TILE / VL];  // where each 8 columns' k = 0 values go: a block's row, from its column q
      for (int e = 0; e < TILE; e += VL)
        to[e / VL] = packed + (static_cast<size_t>((j0 + e) / NR) * chunks + c) * KC * NR + (j0 + e) % NR;
      v16u top[H], low[H];
      for (int h = 0; h < H; ++h) {
        top[h] = v16u{};
        low[h] = ~v16u{};
      }
      for (int k = 0; k < MVMUL_K; ++k)
        for (int h = 0; h < H; ++h) {
          const v16u line = kPacked ? load16h(p.yh(c, k, j0 + h * 16)) : load16u(rows + k * TILE + h * 16);
          v16u u = line & 0x7FFFFFFFu;
          top[h] = top[h] > u ? top[h] : u;
          low[h] = low[h] < u - 1 ? low[h] : u - 1;  // a zero wraps to the top
          for (int e = 0; e < 16; e += VL) {
            double* block = to[(h * 16 + e) / VL] + (kFastIn0<KC, kPacked> ? kPermutation[k] : k) * NR;
            v8f v = half8(line, e / VL), part = v, hi = v;
            if constexpr (kSplit || KC == 2 * MVMUL_K) {
              v8u bits;
              std::memcpy(&bits, &v, sizeof bits);
              bits &= kMaskA;
              std::memcpy(&hi, &bits, sizeof hi);
            }
            if constexpr (kSplit) part = hi;
            store8(block, widen(part));
            if constexpr (KC == 2 * MVMUL_K) store8(block + MVMUL_K * NR, widen(hi));
          }
        }
      int spans[TILE];
      for (int h = 0; h < H; ++h) {
        const size_t at = static_cast<size_t>(c) * n + j0 + h * 16;
        std::memcpy(col_top + at, &top[h], sizeof top[h]);
        std::memcpy(col_low + at, &low[h], sizeof low[h]);
        all_top = all_top > top[h] ? all_top : top[h];
        all_low = all_low < low[h] ? all_low : low[h];
        v16i span = spans16(top[h], low[h]);
        std::memcpy(spans + h * 16, &span, sizeof span);
      }
      const size_t block = static_cast<size_t>(c) * nb + j0 / NR;
      block_spans(spans, TILE, NR, &s.col_block_span[block], &s.col_block_special[block], -1);
    }
  for (int l = 0; l < 16; ++l) {
    p.in1_top = std::max(p.in1_top, all_top[l]);
    p.in1_low = std::min(p.in1_low, all_low[l]);
  }
}

#if defined(__AVX512BW__)
// pack_in1 for packed bf16 in1 with 16 products per chunk (kFastIn0), one column block (jb) at a time into the
// start of s.b (sized by the caller), whose Stat it returns: run packs each column block just before its
// register blocks use it, so that its parts are written to and read from L1 (GPT-2's in1 parts, 96 KiB
// whole, outgrew it). A chunk's 16 rows of a face (16 columns, one register block's) are 512 contiguous bytes.
// Their statistics are taken on the bf16 bits, two rows a vector (as pack_in0_fast), and each row becomes two
// vectors of doubles (zero-extended to float bits and widened), at its place in kPermutation's k order.
template <bool kSplit>
Stat pack_in1_fast(Problem& p, int jb) {
  static_assert(NR == 16, "a register block's columns are one face's");
  Scratch& s = *p.s;
  const int n = p.n, chunks = p.chunks, nb = p.nb;
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF), one = _mm512_set1_epi16(1);
  const __m512i split = _mm512_set1_epi32(static_cast<int>(kMaskA));
  v16u all_top{}, all_low = ~v16u{};
  for (int c = 0; c < chunks; ++c) {
    {
      const uint16_t* rows = p.yh(c, 0, jb * NR);
      double* to = s.b.data() + static_cast<size_t>(c) * MVMUL_K * NR;
      __m512i top = _mm512_setzero_si512(), low = _mm512_set1_epi16(-1);
      for (int j = 0; j < MVMUL_K / 2; ++j) {  // rows 2j and 2j + 1
        const __m512i u = _mm512_and_si512(_mm512_loadu_si512(rows + 32 * j), magnitude);
        top = _mm512_max_epu16(top, u);
        low = _mm512_min_epu16(low, _mm512_sub_epi16(u, one));  // a zero wraps to the top
      }
      // the columns' nonzero values: which were seen twice, and where the last one is and its part
      __mmask16 seen = 0, twice = 0;
      __m512i where = _mm512_setzero_si512(), part = _mm512_setzero_si512();
#pragma GCC unroll 16
      for (int k = 0; k < MVMUL_K; ++k) {
        __m512i f = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + 16 * k))), 16);
        const __mmask16 nonzero = _mm512_test_epi32_mask(f, _mm512_set1_epi32(0x7FFFFFFF));
        twice |= seen & nonzero;
        seen |= nonzero;
        if constexpr (kSplit) f = _mm512_and_si512(f, split);
        where = _mm512_mask_mov_epi32(where, nonzero, _mm512_set1_epi32(kPermutation[k]));
        part = _mm512_mask_mov_epi32(part, nonzero, f);
        double* row = to + kPermutation[k] * NR;
        _mm512_storeu_pd(row, _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_castsi512_ps(f))));
        _mm512_storeu_pd(row + VL, _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(f, 1))));
      }
      s.sparse[c] = twice == 0;
      if (twice == 0) {
        int64_t* to_at = s.sparse_at.data() + static_cast<size_t>(c) * NR;
        double* to_part = s.sparse_part.data() + static_cast<size_t>(c) * NR;
        _mm512_storeu_si512(to_at, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(where)));
        _mm512_storeu_si512(to_at + VL, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(where, 1)));
        _mm512_storeu_pd(to_part, _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_castsi512_ps(part))));
        _mm512_storeu_pd(to_part + VL, _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(part, 1))));
      }
      const __m256i t16 = _mm256_max_epu16(_mm512_castsi512_si256(top), _mm512_extracti64x4_epi64(top, 1));
      const __m256i l16 = _mm256_min_epu16(_mm512_castsi512_si256(low), _mm512_extracti64x4_epi64(low, 1));
      v16u t, l;
      const __m512i t32 = _mm512_slli_epi32(_mm512_cvtepu16_epi32(t16), 16);
      const __m512i l32 = _mm512_sub_epi32(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtepu16_epi32(l16), _mm512_set1_epi32(1)), 16), _mm512_set1_epi32(1));
      std::memcpy(&t, &t32, sizeof t);
      std::memcpy(&l, &l32, sizeof l);  // as float bits: (smallest nonzero << 16) - 1, all ones for all zero
      const size_t at = static_cast<size_t>(c) * n + jb * NR;
      std::memcpy(s.col_top.data() + at, &t, sizeof t);
      std::memcpy(s.col_low.data() + at, &l, sizeof l);
      all_top = all_top > t ? all_top : t;
      all_low = all_low < l ? all_low : l;
      int spans[NR];
      const v16i span = spans16(t, l);
      std::memcpy(spans, &span, sizeof span);
      const size_t block = static_cast<size_t>(c) * nb + jb;
      block_spans(spans, NR, NR, &s.col_block_span[block], &s.col_block_special[block], -1);
    }
  }
  Stat all;
  for (int l = 0; l < 16; ++l) {
    all.top = std::max(all.top, all_top[l]);
    all.low = std::min(all.low, all_low[l]);
  }
  return all;
}
#endif

// Statistics of 16 contiguous values (an in0 row of a chunk).
inline Stat row_stat(const float* values) {
  Stat s;
  for (int k = 0; k < MVMUL_K; ++k) {
    uint32_t u = bits_of(values[k]) & 0x7FFFFFFFu;
    s.top = std::max(s.top, u);
    s.low = std::min(s.low, u - 1);  // a zero wraps to the top
  }
  return s;
}

// Statistics of 8 contiguous values (a Dst block row with AVX2's register blocks).
inline Stat row_stat8(const float* values) {
  Stat s;
  for (int k = 0; k < 8; ++k) {
    uint32_t u = bits_of(values[k]) & 0x7FFFFFFFu;
    s.top = std::max(s.top, u);
    s.low = std::min(s.low, u - 1);  // a zero wraps to the top
  }
  return s;
}

// One register block of in0's rows packed ([C][MR][kc], broadcast one element at a time) and measured: the
// Stat of each chunk's MR x 16 values together, whose span bounds every row's (into block_span and
// block_special, [C]), and of all of them (returned). A chunk's block statistics come from vertical
// maxima and minima over its rows; a butterfly then reduces 8 chunks' (their tops, and their lows
// inverted, so that one maximum serves both) at a time.
// kSplit: the fidelity multiplies hi(x) (all but HiFi4).
template <int KC, bool kSplit, bool kPacked>
Stat pack_in0_block(const Problem& p, int ib, double* packed, int16_t* block_span, uint8_t* block_special) {
  typedef uint32_t v8u __attribute__((vector_size(32)));
  Stat all;
  v16u group[16];
  for (int c = 0; c < p.chunks; ++c) {
    v16u top{}, low = ~v16u{};
    const float* first = kPacked ? nullptr : p.x(ib * MR, c);  // the block's rows lie in one tile, TILE apart
    double* to = packed + static_cast<size_t>(c) * MR * KC;
    for (int r = 0; r < MR; ++r, to += KC) {
      const v16u row = kPacked ? load16h(p.xh(ib * MR + r, c)) : load16u(first + r * TILE);
      v16u u = row & 0x7FFFFFFFu;
      top = top > u ? top : u;
      low = low < u - 1 ? low : u - 1;  // a zero wraps to the top
      for (int h = 0; h < MVMUL_K; h += VL) {
        v8f v = half8(row, h / VL), part = v;
        if constexpr (kSplit) {
          v8u bits;
          std::memcpy(&bits, &v, sizeof bits);
          bits &= kMaskB;
          std::memcpy(&part, &bits, sizeof part);
        }
        store8(to + h, widen(part));
        if constexpr (KC == 2 * MVMUL_K) {  // HiFi3: hi(x), then lo(x) = x - hi(x) (exact)
          store8(to + MVMUL_K + h, widen(v) - widen(part));
        }
      }
    }
    group[c % 8] = top;
    group[8 + c % 8] = ~low;
    if (c % 8 == 7 || c == p.chunks - 1) {
      for (int g = c % 8 + 1; g < 8; ++g) group[g] = group[8 + g] = v16u{};
      v16u reduced = reduce16<true>(group);
      for (int g = 0; g <= c % 8; ++g) {
        const Stat st{reduced[g], ~reduced[8 + g]};
        const int chunk = c - c % 8 + g;
        block_special[chunk] = st.special();
        block_span[chunk] = static_cast<int16_t>(st.top ? st.span() : -1);
        all.top = std::max(all.top, st.top);
        all.low = std::min(all.low, st.low);
      }
    }
  }
  return all;
}

#if defined(__AVX512BW__)
// pack_in0_block for packed bf16 in0 with 16 products per chunk (kFastIn0): a register block's 8 rows of a
// chunk are 8 consecutive face rows, 256 contiguous bytes. Their statistics are taken on the bf16 bits (32 lanes
// of 16 bits: a magnitude's bf16 bits order it as its float bits do), and each 2 rows become doubles by
// unpacking them with zeros below (float bits) and widening, in kPermutation's order.
template <bool kSplit>
Stat pack_in0_fast(const Problem& p, int ib, double* packed, int16_t* block_span, uint8_t* block_special) {
  Stat all;
  v16u group[16];
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF), one = _mm512_set1_epi16(1), zero = _mm512_setzero_si512();
  const __m512i split = _mm512_set1_epi16(static_cast<short>(kMaskB >> 16));
  for (int c = 0; c < p.chunks; ++c) {
    const uint16_t* rows = p.xh(ib * MR, c);
    double* to = packed + static_cast<size_t>(c) * MR * MVMUL_K;
    __m512i top = zero, low = _mm512_set1_epi16(-1);
    for (int j = 0; j < MR / 2; ++j, to += 2 * MVMUL_K) {
      const __m512i pair = _mm512_loadu_si512(rows + 32 * j);  // rows 2j and 2j + 1
      const __m512i u = _mm512_and_si512(pair, magnitude);
      top = _mm512_max_epu16(top, u);
      low = _mm512_min_epu16(low, _mm512_sub_epi16(u, one));  // a zero wraps to the top
      const __m512i x = kSplit ? _mm512_and_si512(pair, split) : pair;
      const __m512i lo = _mm512_unpacklo_epi16(zero, x), hi = _mm512_unpackhi_epi16(zero, x);  // float bits
      _mm512_storeu_pd(to, _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_castsi512_ps(lo))));
      _mm512_storeu_pd(to + 8, _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_castsi512_ps(hi))));
      _mm512_storeu_pd(to + 16, _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(lo, 1))));
      _mm512_storeu_pd(to + 24, _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(hi, 1))));
    }
    // 16 lanes each: the largest magnitude and the inverted smallest (so that one maximum reduces both)
    const __m256i t = _mm256_max_epu16(_mm512_castsi512_si256(top), _mm512_extracti64x4_epi64(top, 1));
    const __m256i l = _mm256_min_epu16(_mm512_castsi512_si256(low), _mm512_extracti64x4_epi64(low, 1));
    const __m512i t32 = _mm512_cvtepu16_epi32(t);
    const __m512i l32 = _mm512_cvtepu16_epi32(_mm256_xor_si256(l, _mm256_set1_epi16(-1)));
    std::memcpy(&group[c % 8], &t32, sizeof t32);
    std::memcpy(&group[8 + c % 8], &l32, sizeof l32);
    if (c % 8 == 7 || c == p.chunks - 1) {
      for (int g = c % 8 + 1; g < 8; ++g) group[g] = group[8 + g] = v16u{};
      v16u reduced = reduce16<true>(group);
      for (int g = 0; g <= c % 8; ++g) {
        const uint32_t low16 = 0xFFFFu ^ reduced[8 + g];  // the smallest nonzero magnitude's bits minus 1
        const Stat st{reduced[g] << 16, ((low16 + 1) << 16) - 1};  // as float bits (0xFFFF: all zero)
        const int chunk = c - c % 8 + g;
        block_special[chunk] = st.special();
        block_span[chunk] = static_cast<int16_t>(st.top ? st.span() : -1);
        all.top = std::max(all.top, st.top);
        all.low = std::min(all.low, st.low);
      }
    }
  }
  return all;
}
#endif

// float32 partials of one register block and chunk from its float64 sums, when the block is not proven
// exact: sums proven exact element by element are rounded; others get the rounding test (bound 2**-46 * sum |x| * max |y|: the kernel sums at most 32 exact products in
// sequence, off by at most gamma_31 < 2**-48 of the sum of their magnitudes, itself at most
// sum |x| * max |y| (a SrcB split's parts have x's sign), plus the test's own roundings), and the few that
// fail it, and chunks with an inf or NaN operand, the exact path.
void block_partials(Problem& p, int c, int i0, int j0, const double* sums, float* out) {
  p.floats();
  for (int r = 0; r < MR; ++r) {
    const Stat row = row_stat(p.x(i0 + r, c));
    for (int q = 0; q < NR; ++q) {
      const Stat col = p.col(c, j0 + q);
      double s = sums[r * NR + q];
      float& partial = out[r * NR + q];
      const float* x = p.x(i0 + r, c);
      const float* y = p.y(c, j0 + q);
      if (row.special() || col.special()) {
        partial = special_partial(x, y, TILE, p.fidelity);
      } else if (row.span() + col.span() <= p.limit) {
        partial = static_cast<float>(s);
      } else {
        double bound = 0x1p-46 * (MVMUL_K * row.largest() * col.largest());
        float low = static_cast<float>(s - bound), high = static_cast<float>(s + bound);
        partial = bits_of(low) == bits_of(high) ? low : exact_partial(x, y, TILE, p.fidelity);
      }
    }
  }
}

// Dst = RN_dst(Dst + partial) for a register block, in place on d (float64 Dst values, MR x NR), the
// partials given as float32 values or (kSums) as float64 sums to round to float32 first. Veltkamp's split
// rounds to the top 8 (11) significant bits, ties to even, in the format's normal range; sums outside it
// (0 excepted: it stays 0) take round_to_dst, and a NaN stays NaN (made the definition's NaN at the end).
// kCheck false: the caller proved every sum of the chain normal (Problem::chain_normal).
template <bool kSums, bool kCheck>
void block_chain(double* d, const double* sums, const float* partials, DstFormat format) {
  const bool bf16 = format == DstFormat::BF16;
  const double splitter = bf16 ? 0x1p45 + 1 : 0x1p42 + 1;
  const double lowest = bf16 ? 0x1p-126 : 0x1p-14;
  const double highest = bf16 ? 0x1p127 : 0x1p15;
  alignas(64) double before[MR * NR];
  v8l fine_all = ~v8l{};
  for (int e = 0; e < MR * NR; e += VL) {
    v8f pf;
    if constexpr (kSums) {
      pf = narrow(load8(sums + e));
    } else {
      std::memcpy(&pf, partials + e, sizeof pf);
    }
    v8d v = load8(d + e) + widen(pf);
    v8d t = v * splitter;
    store8(d + e, t - (t - v));
    if constexpr (kCheck) {
      store8(before + e, v);
      v8d magnitude = v < 0 ? -v : v;
      fine_all &= ((magnitude >= lowest) & (magnitude < highest)) | (v == 0);
    }
  }
  if constexpr (kCheck) {
    int64_t lanes[VL];
    std::memcpy(lanes, &fine_all, sizeof lanes);
    if (lanes[0] & lanes[1] & lanes[2] & lanes[3] & lanes[4] & lanes[5] & lanes[6] & lanes[7]) return;
    for (int e = 0; e < MR * NR; ++e) {
      double v = before[e], magnitude = std::fabs(v);
      if (!(v == 0 || (magnitude >= lowest && magnitude < highest)))
        d[e] = std::isnan(v) ? v : round_to_dst(v, format);
    }
  }
}

// acc + a * b. A fused multiply-add where the machine has one, on purpose (the project's code otherwise
// never fuses): the result is the same. Every product the kernel forms (of bf16 values or their split
// parts) is exact in float64, so rounding it before the addition changes nothing: a fused and an unfused
// step both give RN(acc + a * b), and a chunk sum is bit-identical either way (the error bounds of the
// rounding tests count one rounding per step in both cases).
inline v8d multiply_add(double a, v8d b, v8d acc) {
#if defined(__AVX512F__)
  return (v8d)_mm512_fmadd_pd(_mm512_set1_pd(a), (__m512d)b, (__m512d)acc);
#else
  return acc + a * b;
#endif
}

// v rounded to 53 - kShift significant bits, ties to even, for a float64 v that is 0 or normal: v + M with
// M = 1.5 * 2**(e + kShift) (2**e: v's binade) stays in M's binade (kShift >= 2), so the addition rounds v to a
// multiple of 2**(e + kShift - 52), and subtracting M again is exact. M is v's exponent bits plus a constant:
// two integer operations, so that the rounding takes no multiplication (the multiply-add pipes bound the
// micro-kernel; Veltkamp's split takes one multiplication per rounding). A zero gives +0.
template <int kShift>
inline v8d round_bits(v8d v) {
  const v8l magic = ((v8l)v & int64_t{0x7FF0000000000000}) + ((int64_t{kShift} << 52) | (int64_t{1} << 51));
  const v8d m = (v8d)magic;
  return (v + m) - m;
}

// The Dst step of one vector of a block whose sums are exact and whose chain provably stays normal (bf16):
// at = RN_bf16(RN_f64(at + RN_f32(sum))). There the sums are 0 or in [2**-102, 2**126) (float32's normal
// range) and the Dst sums 0 or in [2**-126, 2**127) (bf16's): RN_f32 is the conversion to float32 and back
// (the hardware's RNE; two conversions cost the multiply-add pipes less than round_bits's integer operations),
// RN_bf16 round_bits's (8 significant bits). round_bits makes a -0 +0, which changes nothing here: a chunk sum
// starts from +0 and adds exact products, so it is never -0 (an exact 0 is +0), and Dst + partial is -0 only
// when both are.
inline void chain_vector(double* at, v8d sum) {
  v8d next = load8(at) + widen(narrow(sum));  // Dst + RN_f32(chunk sum), exact or RN_f64
  store8(at, round_bits<45>(next));  // RN_bf16
}

// The register-block GEMM step: out[r][q] = sum over KC of a[r][k] * b[k][q], in float64. kPending: the Dst
// steps (chain_vector) of the previous chunk's exact sums `pending` on d are done one vector per k between the
// multiply-adds, so that their dependent chains overlap this chunk's multiply-adds instead of waiting for them
// (the same operations on every value, in the same order, as stepping after each chunk).
template <int KC, bool kPending>
inline void micro_kernel(const double* __restrict a, const double* __restrict b, double* __restrict out,
                         double* __restrict d, const double* __restrict pending) {
  static_assert(KC >= MR * NV, "one pending vector per k");
  v8d acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = v8d{};
#pragma GCC unroll 32
  for (int k = 0; k < KC; ++k) {
    v8d bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load8(b + k * NR + v * VL);
    for (int r = 0; r < MR; ++r) {
      const double av = a[r * KC + k];
      for (int v = 0; v < NV; ++v) acc[r][v] = multiply_add(av, bv[v], acc[r][v]);
    }
    if constexpr (kPending) {
      if (k < MR * NV) chain_vector(d + k * VL, load8(pending + k * VL));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store8(out + r * NR + v * VL, acc[r][v]);
}

#if defined(__AVX512BW__)
// micro_kernel's sums for a chunk whose in1 columns each hold at most one nonzero value (Scratch::sparse, with no
// inf or NaN operand): +0 plus the one product, in the packed (kPermutation) order of pack_in0_fast's rows. The
// kernel's sum of products +0, +-0 ... is the same: +0 plus an exact product and zeros, never -0.
inline void sparse_kernel(const double* __restrict a, const int64_t* __restrict at, const double* __restrict part,
                          double* __restrict out) {
  static_assert(NR == 2 * VL && MR == 8, "a register block's columns are one face's");
  const __m512i at0 = _mm512_loadu_si512(at), at1 = _mm512_loadu_si512(at + VL);
  const __m512d part0 = _mm512_loadu_pd(part), part1 = _mm512_loadu_pd(part + VL), zero = _mm512_setzero_pd();
  for (int r = 0; r < MR; ++r) {
    const __m512d lo = _mm512_loadu_pd(a + r * MVMUL_K), hi = _mm512_loadu_pd(a + r * MVMUL_K + VL);
    _mm512_storeu_pd(out + r * NR, _mm512_add_pd(zero, _mm512_mul_pd(_mm512_permutex2var_pd(lo, at0, hi), part0)));
    _mm512_storeu_pd(out + r * NR + VL,
                     _mm512_add_pd(zero, _mm512_mul_pd(_mm512_permutex2var_pd(lo, at1, hi), part1)));
  }
}
#else
// (kFastIn0 is AVX-512 only, so nothing calls this; the same definition, portable)
inline void sparse_kernel(const double* a, const int64_t* at, const double* part, double* out) {
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NR; ++q) out[r * NR + q] = 0.0 + a[r * MVMUL_K + at[q]] * part[q];
}
#endif

// The Dst steps of pending exact sums (micro_kernel's), at once.
inline void chain_pending(double* d, const double* pending) {
  for (int e = 0; e < MR * NR; e += VL) chain_vector(d + e, load8(pending + e));
}

// Whether every Dst sum of the chains of a register block (its in0 rows' Stat `rows`, its in1 columns' `cols`:
// all of in1's or its column block's, its Dst values' `dst`) provably stays 0 or in
// [2**-126, 2**127), where Veltkamp's split is
// bf16's rounding (runtime/numerics.py _ranges_keep_normal and _stays_normal, the same argument): Dst
// holds 0 or multiples of 2**-126 (finite values that are 0 or at least 2**-103); nonzero operands of at
// least 2**-44 make every chunk sum a multiple of 2**-102, so every partial is 0 or at least 2**-102; sums
// of such values and their bf16 roundings stay multiples of 2**-126. High end: each step adds at most
// 16 max|x| max|y| (times 1 + 2**-23 for the partial's rounding) and rounding grows a value by at most
// 2**-8 (float64's addition by 2**-53).
bool chain_stays_normal(const Problem& p, const Stat& rows, const Stat& cols, const Stat& dst) {
  // every Dst value 0 or finite and at least 2**-103
  if (dst.top >= 0x7F800000u || dst.low < bits_of(0x1p-103f) - 1) return false;
  const uint32_t x_top = rows.top, y_top = cols.top, low = std::min(rows.low, cols.low);
  if (x_top >= 0x7F800000u || y_top >= 0x7F800000u) return false;  // an inf or NaN operand
  // the smallest nonzero operand (a subnormal's exponent field counts as 1) at least 2**-44
  if (low != 0xFFFFFFFFu && std::max<int>(static_cast<int>((low + 1) >> 23), 1) < 127 - 44) return false;
  double largest_partial =
      MVMUL_K * static_cast<double>(float_of(x_top)) * float_of(y_top) * (1 + 0x1p-23);
  return (dst.largest() + p.chunks * largest_partial) * p.growth < 0x1p126;
}

// (1 + 2**-7)**chunks, std::pow's value, from a table for the usual chunk counts (a pow per call cost as much
// as a small block's arithmetic).
double growth_of(int chunks) {
  constexpr int kTable = 1024;
  static const std::vector<double> table = [] {
    std::vector<double> t(kTable);
    for (int c = 0; c < kTable; ++c) t[c] = std::pow(1 + 0x1p-7, c);
    return t;
  }();
  return chunks >= 0 && chunks < kTable ? table[chunks] : std::pow(1 + 0x1p-7, chunks);
}

// The Dst block (MR x NR) at element (i0, j0): row r is NR contiguous floats of one tile.
inline float* dst_row(float* const* dst, int cols, int i, int j0) {
  return dst[(i / TILE) * cols + j0 / TILE] + (i % TILE) * TILE + j0 % TILE;
}

// An entry sized for in0's parts (all row blocks).
void size_entry(In0Entry& e, const Problem& p, int kc) {
  e.a.resize(static_cast<size_t>(p.mb) * p.chunks * MR * kc);
  e.span.resize(static_cast<size_t>(p.mb) * p.chunks);
  e.special.resize(static_cast<size_t>(p.mb) * p.chunks);
  e.stats.resize(p.mb);
}

// The cache entry for packed bf16 in0 tiles: the one holding the same key and bytes (found), else the least
// recently used one, claimed for them (their bytes copied, the parts sized; run packs into it, every block).
In0Entry& in0_entry(const Problem& p, int kc, bool& found) {
  Scratch& s = *p.s;
  const int count = p.rows * p.inner;
  const size_t bytes = static_cast<size_t>(TILE_ELEMS) * sizeof(uint16_t);
  In0Entry* oldest = &s.in0[0];
  for (In0Entry& e : s.in0) {
    if (e.used < oldest->used) oldest = &e;
    if (e.rows != p.rows || e.inner != p.inner || e.fidelity != static_cast<int>(p.fidelity)) continue;
    bool same = true;
    for (int t = 0; t < count && same; ++t) same = std::memcmp(p.in0h[t], &e.tiles[static_cast<size_t>(t) * TILE_ELEMS], bytes) == 0;
    if (same) {
      e.used = ++s.calls;
      found = true;
      return e;
    }
  }
  In0Entry& e = *oldest;
  e.rows = p.rows;
  e.inner = p.inner;
  e.fidelity = static_cast<int>(p.fidelity);
  e.tiles.resize(static_cast<size_t>(count) * TILE_ELEMS);
  for (int t = 0; t < count; ++t) std::memcpy(&e.tiles[static_cast<size_t>(t) * TILE_ELEMS], p.in0h[t], bytes);
  size_entry(e, p, kc);
  e.used = ++s.calls;
  found = false;
  return e;
}

// Column block after column block (kFastIn0: each packed just before its turn, see pack_in1_fast), row block after
// row block: in0's parts are packed whole first (into a kept entry for packed bf16 in0, unless found there).
template <int KC, bool kPacked>
void run(Problem& p, float* const* dst, DstFormat format) {
  Scratch& s = *p.s;
  const int mb = p.mb, nb = p.nb;
  const size_t block_parts = static_cast<size_t>(p.chunks) * MR * KC;
  bool found = false;
  In0Entry* entry = &s.own;
  if constexpr (kPacked) {
    entry = &in0_entry(p, KC, found);
  } else {
    size_entry(s.own, p, KC);
  }
  if (!found)
    for (int ib = 0; ib < mb; ++ib) {
      double* const a_parts = entry->a.data() + ib * block_parts;
      int16_t* const span = entry->span.data() + static_cast<size_t>(ib) * p.chunks;
      uint8_t* const special = entry->special.data() + static_cast<size_t>(ib) * p.chunks;
      Stat& rows = entry->stats[ib];
#if defined(__AVX512BW__)
      if constexpr (kFastIn0<KC, kPacked>) {
        rows = p.fidelity == Fidelity::HIFI4 ? pack_in0_fast<false>(p, ib, a_parts, span, special)
                                             : pack_in0_fast<true>(p, ib, a_parts, span, special);
      } else
#endif
      {
        rows = p.fidelity == Fidelity::HIFI4 ? pack_in0_block<KC, false, kPacked>(p, ib, a_parts, span, special)
                                             : pack_in0_block<KC, true, kPacked>(p, ib, a_parts, span, special);
      }
    }
  alignas(64) double d[MR * NR];
  alignas(64) double sums[MR * NR];
  alignas(64) double pipe[2][MR * NR];  // exact sums whose Dst steps are pending (micro_kernel)
  alignas(64) float start[MR * NR];
  alignas(64) float partials[MR * NR];
  for (int jb = 0; jb < nb; ++jb) {
    Stat cols{p.in1_top, p.in1_low};
    const double* b_parts = s.b.data() + static_cast<size_t>(jb) * p.chunks * KC * NR;
#if defined(__AVX512BW__)
    if constexpr (kFastIn0<KC, kPacked>) {
      cols = p.fidelity == Fidelity::LOFI ? pack_in1_fast<true>(p, jb) : pack_in1_fast<false>(p, jb);
      b_parts = s.b.data();
    }
#endif
    for (int ib = 0; ib < mb; ++ib) {
      const double* const a_parts = entry->a.data() + ib * block_parts;
      const int16_t* const row_block_span = entry->span.data() + static_cast<size_t>(ib) * p.chunks;
      const uint8_t* const row_block_special = entry->special.data() + static_cast<size_t>(ib) * p.chunks;
    {
      const int i0 = ib * MR, j0 = jb * NR;
      v16u top{}, low = ~v16u{};  // the block's Dst values' Stat (chain_stays_normal)
      for (int r = 0; r < MR; ++r) {
        const float* from = dst_row(dst, p.cols, i0 + r, j0);
        static_assert(NR == 16 || NR == 8, "a Dst block row is 16 or 8 floats");
        v16u u = (NR == 16 ? load16u(from) : v16u{}) & 0x7FFFFFFFu;
        top = top > u ? top : u;
        low = low < u - 1 ? low : u - 1;  // a zero wraps to the top
        for (int v = 0; v < NV; ++v) {
          v8f f = load8f(from + v * VL);
          store8f(start + r * NR + v * VL, f);
          store8(d + r * NR + v * VL, widen(f));
        }
      }
      bool chain_normal = false;
      if (format == DstFormat::BF16) {
        Stat block;
        if (NR == 16) {
          for (int l = 0; l < 16; ++l) {
            block.top = std::max(block.top, top[l]);
            block.low = std::min(block.low, low[l]);
          }
        } else {
          for (int r = 0; r < MR; ++r) {
            const Stat row = row_stat8(dst_row(dst, p.cols, i0 + r, j0));
            block.top = std::max(block.top, row.top);
            block.low = std::min(block.low, row.low);
          }
        }
        chain_normal = chain_stays_normal(p, entry->stats[ib], cols, block);
      }
      const double* pending = nullptr;  // pipe[0] or pipe[1]: a chunk's exact sums whose Dst steps are not done yet
      bool stepped = false;  // a chain step was made: d holds Dst values (0, finite in the format, inf or NaN)
      bool signed_zeros = false;  // the last step added nonzero partials: d may hold -0
      for (int c = 0; c < p.chunks; ++c) {
        const size_t cb = static_cast<size_t>(c) * nb + jb;
        const int row_span = row_block_span[c];
        const bool special = row_block_special[c] || s.col_block_special[cb];
        if ((row_span < 0 || s.col_block_span[cb] < 0) && !special) {
          // rows or columns of zeros (and no inf or NaN among the other operand): exact +0 partials. After a
          // first step, RN_dst(Dst + 0) is Dst itself but for -0, which becomes +0: Dst + 0 in float64 (no
          // rounding can occur); and once done, again nothing. The first step is the whole one (Dst may
          // still hold values the format does not).
          if (pending) chain_pending(d, pending), pending = nullptr;
          if (stepped) {
            if (signed_zeros)
              for (int e = 0; e < MR * NR; e += VL) store8(d + e, load8(d + e) + 0.0);
            signed_zeros = false;
            continue;
          }
          stepped = true;
          std::fill(sums, sums + MR * NR, 0.0);
        } else {
          stepped = signed_zeros = true;
          const double* a_block = a_parts + static_cast<size_t>(c) * MR * KC;
          const double* b_block = b_parts + static_cast<size_t>(c) * KC * NR;
          bool sparse = false;  // single products (sparse_kernel): exact whatever the spans
          if constexpr (kFastIn0<KC, kPacked>) sparse = !special && s.sparse[c];
          const int64_t* sparse_at = s.sparse_at.data() + static_cast<size_t>(c) * NR;
          const double* sparse_part = s.sparse_part.data() + static_cast<size_t>(c) * NR;
          const bool exact = sparse || (!special && row_span + s.col_block_span[cb] <= p.limit);
          if (exact && chain_normal) {
            double* out = pending == pipe[0] ? pipe[1] : pipe[0];
            if (sparse) {
              sparse_kernel(a_block, sparse_at, sparse_part, out);
              if (pending) chain_pending(d, pending);
            } else if (pending) {
              micro_kernel<KC, true>(a_block, b_block, out, d, pending);
            } else {
              micro_kernel<KC, false>(a_block, b_block, out, d, nullptr);
            }
            pending = out;
            continue;
          }
          if (pending) chain_pending(d, pending), pending = nullptr;
          if (sparse)
            sparse_kernel(a_block, sparse_at, sparse_part, sums);
          else
            micro_kernel<KC, false>(a_block, b_block, sums, d, nullptr);
          if (!exact) {
            block_partials(p, c, i0, j0, sums, partials);
            block_chain<false, true>(d, sums, partials, format);
            continue;
          }
        }
        if (chain_normal) {
          block_chain<true, false>(d, sums, partials, format);
        } else {
          block_chain<true, true>(d, sums, partials, format);
        }
      }
      if (pending) chain_pending(d, pending);
      for (int r = 0; r < MR; ++r) {
        float* to = dst_row(dst, p.cols, i0 + r, j0);
        for (int v = 0; v < NV; ++v) {
          v8d value = load8(d + r * NR + v * VL);
          store8f(to + v * VL, narrow(value));
          if (!chain_normal)  // a NaN result is the definition's NaN for its chain
            for (int q = 0; q < VL; ++q)
              if (std::isnan(value[q])) to[v * VL + q] = chain_nan(start[r * NR + v * VL + q], format);
        }
      }
    }
  }
  }
}

// A caller's operand tiles rounded to bf16 (an f16 or float32 operand), in the scratch space.
const float* const* rounded_tiles(Scratch& s, const float* const* tiles, int count, size_t first) {
  for (int t = 0; t < count; ++t) {
    float* to = &s.rounded[(first + t) * TILE_ELEMS];
    for (int e = 0; e < TILE_ELEMS; ++e) to[e] = to_bf16(tiles[t][e]);
    s.rounded_tiles[first + t] = to;
  }
  return &s.rounded_tiles[first];
}

// The packed operands as float tiles (for the rare paths that read values one by one), made once per call.
void Problem::floats() {
  if (in0 || !in0h) return;
  const int count0 = rows * inner, count1 = inner * cols;
  s->rounded.resize(static_cast<size_t>(count0 + count1) * TILE_ELEMS);
  s->rounded_tiles.resize(count0 + count1);
  for (int t = 0; t < count0 + count1; ++t) {
    const uint16_t* from = t < count0 ? in0h[t] : in1h[t - count0];
    float* to = &s->rounded[static_cast<size_t>(t) * TILE_ELEMS];
    for (int face = 0; face < 4; ++face)
      for (int r = 0; r < 16; ++r)
        for (int q = 0; q < 16; ++q)
          to[((face / 2) * 16 + r) * TILE + (face % 2) * 16 + q] = float_of(uint32_t{from[face * 256 + r * 16 + q]} << 16);
    s->rounded_tiles[t] = to;
  }
  in0 = &s->rounded_tiles[0];
  in1 = &s->rounded_tiles[count0];
}

// The operands are set (float or packed tiles): measure, pack and run.
template <bool kPacked>
void solve(Problem& p, float* const* dst, int rows, int cols, int inner, Fidelity fidelity, DstFormat format) {
  p.rows = rows;
  p.cols = cols;
  p.inner = inner;
  p.m = rows * TILE;
  p.n = cols * TILE;
  p.mb = p.m / MR;
  p.nb = p.n / NR;
  p.chunks = inner * HALVES;
  p.kc = fidelity == Fidelity::HIFI3 ? 2 * MVMUL_K : MVMUL_K;
  p.fidelity = fidelity;
  p.limit = span_limit(fidelity);
  if (fidelity == Fidelity::HIFI3) {
    pack_in1<2 * MVMUL_K, false, kPacked>(p);
  } else if (fidelity == Fidelity::LOFI) {
#if defined(__AVX512BW__)
    if constexpr (kFastIn0<MVMUL_K, kPacked>) {
      p.s->size_in1(p.chunks, p.n, p.nb, MVMUL_K, 1);  // run packs each column block (pack_in1_fast)
    } else
#endif
      pack_in1<MVMUL_K, true, kPacked>(p);
  } else {
#if defined(__AVX512BW__)
    if constexpr (kFastIn0<MVMUL_K, kPacked>) {
      p.s->size_in1(p.chunks, p.n, p.nb, MVMUL_K, 1);
    } else
#endif
      pack_in1<MVMUL_K, false, kPacked>(p);
  }
  p.growth = growth_of(p.chunks);
  if (p.kc == MVMUL_K) {
    run<MVMUL_K, kPacked>(p, dst, format);
  } else {
    run<2 * MVMUL_K, kPacked>(p, dst, format);
  }
}

}  // namespace

void matmul_block(float* const* dst, const float* const* a, const float* const* b, int rows, int cols,
                  int inner, Fidelity fidelity, DstFormat format, bool bf16_operands) {
  thread_local Scratch scratch;
  Problem p;
  p.s = &scratch;
  p.in0 = a;
  p.in1 = b;
  if (!bf16_operands) {
    size_t count = static_cast<size_t>(rows) * inner + static_cast<size_t>(inner) * cols;
    scratch.rounded.resize(count * TILE_ELEMS);
    scratch.rounded_tiles.resize(count);
    p.in0 = rounded_tiles(scratch, a, rows * inner, 0);
    p.in1 = rounded_tiles(scratch, b, inner * cols, static_cast<size_t>(rows) * inner);
  }
  solve<false>(p, dst, rows, cols, inner, fidelity, format);
}

void matmul_block_bf16(float* const* dst, const uint16_t* const* a, const uint16_t* const* b, int rows, int cols,
                       int inner, Fidelity fidelity, DstFormat format) {
  thread_local Scratch scratch;
  Problem p;
  p.s = &scratch;
  p.in0h = a;
  p.in1h = b;
  solve<true>(p, dst, rows, cols, inner, fidelity, format);
}

void reduce_sum_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler,
                      Fidelity fidelity, DstFormat format) {
  // numerics.reduce_block: col = S @ x, row = (S @ x^T)^T, scalar = col (scaler 1) of each tile's row
  // reduction (scaler applied there, into a zero Dst); S holds the scaler in row 0, zeros elsewhere.
  // The tiles and pointer lists are the thread's, kept between calls (allocating and zeroing them per call cost
  // a small reduce a third of its time); every value read is written first.
  struct Temps {
    std::vector<float> scaler_tile = std::vector<float>(TILE_ELEMS, 0.0f), ones_tile = std::vector<float>(TILE_ELEMS, 0.0f);
    std::vector<float> flipped, sums, acc = std::vector<float>(TILE_ELEMS);
    std::vector<const float*> lhs, rhs, sum_tiles, ones;
  };
  thread_local Temps t;
  for (int j = 0; j < TILE; ++j) {  // rows 1.. stay zero
    t.scaler_tile[j] = scaler;
    t.ones_tile[j] = 1.0f;
  }
  t.lhs.assign(n, t.scaler_tile.data());
  auto transposed = [](const float* tile, float* out) {
    for (int i = 0; i < TILE; ++i)
      for (int j = 0; j < TILE; ++j) out[j * TILE + i] = tile[i * TILE + j];
  };
  if (dim == ReduceDim::COL) {
    float* out[1] = {dst};
    matmul_block(out, t.lhs.data(), tiles, 1, 1, n, fidelity, format, false);
    return;
  }
  if (t.flipped.size() < static_cast<size_t>(n) * TILE_ELEMS) t.flipped.resize(static_cast<size_t>(n) * TILE_ELEMS);
  t.rhs.resize(n);
  for (int i = 0; i < n; ++i) {
    transposed(tiles[i], &t.flipped[static_cast<size_t>(i) * TILE_ELEMS]);
    t.rhs[i] = &t.flipped[static_cast<size_t>(i) * TILE_ELEMS];
  }
  if (dim == ReduceDim::ROW) {
    transposed(dst, t.acc.data());
    float* out[1] = {t.acc.data()};
    matmul_block(out, t.lhs.data(), t.rhs.data(), 1, 1, n, fidelity, format, false);
    transposed(t.acc.data(), dst);
    return;
  }
  // scalar: each tile's row reduction into a zero Dst (one tile each), then their column reduction
  if (t.sums.size() < static_cast<size_t>(n) * TILE_ELEMS) t.sums.resize(static_cast<size_t>(n) * TILE_ELEMS);
  t.sum_tiles.resize(n);
  for (int i = 0; i < n; ++i) {
    std::fill(t.acc.begin(), t.acc.end(), 0.0f);
    float* out[1] = {t.acc.data()};
    matmul_block(out, t.lhs.data(), &t.rhs[i], 1, 1, 1, fidelity, format, false);
    transposed(t.acc.data(), &t.sums[static_cast<size_t>(i) * TILE_ELEMS]);
    t.sum_tiles[i] = &t.sums[static_cast<size_t>(i) * TILE_ELEMS];
  }
  t.ones.assign(n, t.ones_tile.data());
  float* out[1] = {dst};
  matmul_block(out, t.ones.data(), t.sum_tiles.data(), 1, 1, n, fidelity, format, false);
}

}  // namespace ttc

// ------------------------------------------------------------------------------------------ binary SFPU

namespace ttc {
namespace {

// Unsigned big integers (32-bit limbs, little end first), for exact comparisons of powers.
class BigUint {
 public:
  explicit BigUint(uint64_t v = 0) {
    while (v) {
      limbs_.push_back(static_cast<uint32_t>(v));
      v >>= 32;
    }
  }
  BigUint operator*(const BigUint& o) const {
    BigUint out;
    if (limbs_.empty() || o.limbs_.empty()) return out;
    out.limbs_.assign(limbs_.size() + o.limbs_.size(), 0);
    for (size_t i = 0; i < limbs_.size(); ++i) {
      uint64_t carry = 0;
      for (size_t j = 0; j < o.limbs_.size(); ++j) {
        uint64_t t = static_cast<uint64_t>(limbs_[i]) * o.limbs_[j] + out.limbs_[i + j] + carry;
        out.limbs_[i + j] = static_cast<uint32_t>(t);
        carry = t >> 32;
      }
      out.limbs_[i + o.limbs_.size()] = static_cast<uint32_t>(carry);
    }
    out.trim();
    return out;
  }
  BigUint shifted(int64_t bits) const {  // * 2**bits, bits >= 0
    BigUint out;
    if (limbs_.empty()) return out;
    size_t words = static_cast<size_t>(bits / 32);
    int rest = static_cast<int>(bits % 32);
    out.limbs_.assign(words, 0);
    uint32_t carry = 0;
    for (uint32_t limb : limbs_) {
      out.limbs_.push_back(rest ? (limb << rest) | carry : limb);
      carry = rest ? limb >> (32 - rest) : 0;
    }
    if (carry) out.limbs_.push_back(carry);
    return out;
  }
  static BigUint power(uint64_t base, uint64_t n) {  // base**n by squaring
    BigUint result(1), square(base);
    while (n) {
      if (n & 1) result = result * square;
      n >>= 1;
      if (n) square = square * square;
    }
    return result;
  }
  friend int compare(const BigUint& a, const BigUint& b) {
    if (a.limbs_.size() != b.limbs_.size()) return a.limbs_.size() < b.limbs_.size() ? -1 : 1;
    for (size_t i = a.limbs_.size(); i-- > 0;)
      if (a.limbs_[i] != b.limbs_[i]) return a.limbs_[i] < b.limbs_[i] ? -1 : 1;
    return 0;
  }

 private:
  void trim() {
    while (!limbs_.empty() && !limbs_.back()) limbs_.pop_back();
  }
  std::vector<uint32_t> limbs_;
};

// odd * 2**exponent of a positive finite double.
void split_odd(double v, uint64_t& odd, int64_t& exponent) {
  int e;
  double fraction = std::frexp(v, &e);
  odd = static_cast<uint64_t>(std::ldexp(fraction, 53));
  exponent = e - 53;
  int zeros = __builtin_ctzll(odd);
  odd >>= zeros;
  exponent += zeros;
}

constexpr int kPowExactBits = 16384;  // largest odd part (bits) of a rational power compared exactly

// Sign of base**exponent - m (base > 0, != 1; exponent finite, nonzero; m > 0) where the power is
// rational: an integral exponent n, or k / 2**j with base a perfect 2**j-th power. Returns false (and
// leaves sign) when the power is irrational or its odd part has more than kPowExactBits bits.
bool rational_power_sign(double base, double exponent, double m, int& sign) {
  uint64_t odd;
  int64_t e;
  split_odd(base, odd, e);
  uint64_t k_odd;
  int64_t k_exp;
  split_odd(std::fabs(exponent), k_odd, k_exp);  // |exponent| = k_odd * 2**k_exp
  if (k_exp < 0) {  // exponent k / 2**j: the 2**j-th root of base must be rational
    if (-k_exp > 62 || e % (int64_t{1} << -k_exp)) return false;
    for (int64_t t = 0; t < -k_exp; ++t) {
      uint64_t root = static_cast<uint64_t>(std::sqrt(static_cast<double>(odd)));
      while (root * root > odd) --root;
      while ((root + 1) * (root + 1) <= odd) ++root;
      if (root * root != odd) return false;
      odd = root;
    }
    e >>= -k_exp;
  } else if (k_exp > 20) {
    return false;
  } else {
    k_odd <<= k_exp;
  }
  // base' = odd * 2**e, power n = +-k_odd
  int bits = 64 - __builtin_clzll(odd);
  if (static_cast<double>(bits) * static_cast<double>(k_odd) > kPowExactBits || k_odd > (uint64_t{1} << 40)) return false;
  uint64_t m_odd;
  int64_t m_exp;
  split_odd(m, m_odd, m_exp);
  BigUint power = BigUint::power(odd, k_odd);
  int64_t scale = e * static_cast<int64_t>(k_odd);  // 2**scale goes with odd**k
  int c;
  if (exponent > 0) {  // odd**k * 2**scale vs m_odd * 2**m_exp
    int64_t shift = scale - m_exp;
    c = compare(power.shifted(std::max<int64_t>(shift, 0)), BigUint(m_odd).shifted(std::max<int64_t>(-shift, 0)));
  } else {  // 2**-scale / odd**k vs m_odd * 2**m_exp  <=>  2**(-scale - m_exp) vs m_odd * odd**k
    int64_t shift = -scale - m_exp;
    BigUint right = BigUint(m_odd) * power;
    c = compare(BigUint(1).shifted(std::max<int64_t>(shift, 0)), right.shifted(std::max<int64_t>(-shift, 0)));
  }
  sign = c;
  return true;
}

// RN_f32 of base**exponent (base > 0, != 1, finite; exponent finite, nonzero): glibc's pow (error below
// 1 ulp) decides unless it lies within 2**-40 (relative) of a float32 rounding boundary; then the
// boundary is compared with the exact power: exactly (rational_power_sign) when the power is rational and
// of modest size, else with an 80-bit long double power (within 2**-56 of it) -- such a power cannot be a
// boundary, and lies closer to one than that in no case we know of; then the long double decides.
float pow_magnitude(double base, double exponent) {
  double r = std::pow(base, exponent);
  float low = static_cast<float>(r * (1 - 0x1p-40)), high = static_cast<float>(r * (1 + 0x1p-40));
  if (bits_of(low) == bits_of(high)) return low;
  double m = std::isinf(high) ? static_cast<double>(low) + 0x1p103
                              : (static_cast<double>(low) + static_cast<double>(high)) / 2;  // the boundary
  int sign;
  if (!rational_power_sign(base, exponent, m, sign)) {
    long double precise = std::pow(static_cast<long double>(base), static_cast<long double>(exponent));
    long double margin = precise * 0x1p-56L;
    sign = precise - margin > m ? 1 : precise + margin < m ? -1 : (precise > m) - (precise < m);
  }
  if (sign > 0) return high;
  if (sign < 0) return low;
  return bits_of(low) & 1 ? high : low;  // a tie: the even one (inf past the largest float)
}

// a ** b for Dst values (runtime/numerics.py pow_f32): RN_f32 of the exact power with C99's special cases;
// every NaN result is the quiet NaN.
float pow_f32(double a, double b) {
  const double inf = HUGE_VAL;
  bool integral = std::isfinite(b) && b == std::floor(b);
  bool odd = integral && std::fmod(b, 2.0) != 0;
  if (b == 0 || a == 1 || (a == -1 && std::isinf(b))) return 1.0f;
  if (std::isnan(a) || std::isnan(b)) return float_of(kQuietNaN);
  if (a == 0) {
    if (b < 0) return static_cast<float>(odd ? std::copysign(inf, a) : inf);
    return static_cast<float>(odd ? a : 0.0);
  }
  if (std::isinf(b)) return static_cast<float>((std::fabs(a) > 1) == (b > 0) ? inf : 0.0);
  if (std::isinf(a)) {
    double magnitude = b > 0 ? inf : 0.0;
    return static_cast<float>(a < 0 && odd ? -magnitude : magnitude);
  }
  if (a < 0 && !integral) return float_of(kQuietNaN);
  float magnitude = pow_magnitude(std::fabs(a), b);
  return a < 0 && odd ? -magnitude : magnitude;
}

// Float32 rounded to the Dst format as numerics.dst_round does (ml_dtypes' bf16: a NaN becomes the quiet
// NaN with its sign; numpy's float16: a NaN keeps its sign and top 10 payload bits, 1 if they are 0).
float dst_round_f32(float x, DstFormat format) {
  if (format == DstFormat::BF16) return to_bf16(x);
  uint32_t u = bits_of(x);
  if (is_nan_bits(u)) {
    uint32_t payload = std::max<uint32_t>((u & 0x007FFFFFu) >> 13, 1);
    return float_of((u & 0x80000000u) | 0x7F800000u | (payload << 13));
  }
  uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude >= 0x38800000u && magnitude < 0x477FF000u) {  // [2**-14, 65520): Float16's normal range
    return float_of((u + 0xFFFu + ((u >> 13) & 1u)) & 0xFFFFE000u);  // RNE to 11 significant bits
  }
  return static_cast<float>(round_to_dst(static_cast<double>(x), DstFormat::F16));
}

}  // namespace

void sfpu_binary_tile(float* a, const float* b, int count, SfpuBinaryFn fn, DstFormat format) {
  for (int i = 0; i < count; ++i) {
    float x = dst_round_f32(a[i], format), y = dst_round_f32(b[i], format);
    float result;
    if (fn == SfpuBinaryFn::POW) {
      result = pow_f32(x, y);
    } else {
      bool take = fn == SfpuBinaryFn::WHERE_NEZ ? x != 0 : x == 0;  // a NaN is != 0
      result = take ? y : 0.0f;
      // numerics.sfpu_binary passes the operands through float64, which makes a NaN quiet
      if (is_nan_bits(bits_of(result))) result = float_of(bits_of(result) | 0x00400000u);
    }
    a[i] = dst_round_f32(result, format);
  }
}

}  // namespace ttc
