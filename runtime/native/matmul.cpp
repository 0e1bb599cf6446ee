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

// Exponent statistics of 16 bf16 values (an in0 row or an in1 column of one chunk).
struct Stat {
  int16_t top = 0;      // largest exponent field of the nonzero values (0: all zero)
  int16_t low = 0;      // smallest
  bool special = false;  // holds an inf or NaN
  double size = 0;      // in0 rows: 16 times the largest magnitude; in1 columns: the largest magnitude
  int span() const { return top ? top - low : 0; }
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

typedef double v8d __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef int64_t v8l __attribute__((vector_size(64)));

inline v8d load8(const double* p) {
  v8d v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(double* p, v8d v) { std::memcpy(p, &v, sizeof v); }

// A buffer of trivially constructible values left uninitialised (every entry is written before use).
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> data;
  void resize(size_t count) { data.reset(new T[count]); }
  T& operator[](size_t i) { return data[i]; }
  const T& operator[](size_t i) const { return data[i]; }
  T* get() { return data.get(); }
  const T* get() const { return data.get(); }
};

// One matmul's operands, packed and measured once.
struct Problem {
  int m, n, chunks, kc;  // rows, columns, 16-element chunks, products per chunk (16, HiFi3 32)
  Fidelity fidelity;
  int limit;
  bool chain_normal = false;  // every Dst sum of every chain provably in bf16's normal range
  Buffer<float> x;        // in0 as bf16 values, [M][K]
  Buffer<float> y;        // in1 as bf16 values, [K][N]
  Buffer<double> a;       // in0 parts the passes multiply, [C][M][kc]
  Buffer<double> b;       // in1 parts, [C][N / NR][kc][NR]
  Buffer<Stat> rows;      // [C][M]
  Buffer<Stat> cols;      // [C][N]
  Buffer<int16_t> row_block_span;  // [C][M / MR] largest span of the block's rows (-1: all zero)
  Buffer<int16_t> col_block_span;  // [C][N / NR]
  Buffer<uint8_t> row_block_special, col_block_special;
};

// Exponent statistics of in0's rows, 16 values each (contiguous): from the magnitude bits, in loops over
// 16 lanes the compiler vectorises.
Stat row_stat(const float* values) {
  uint32_t top = 0, low = 0xFFFFFFFFu;
  for (int k = 0; k < MVMUL_K; ++k) {
    uint32_t u = bits_of(values[k]) & 0x7FFFFFFFu;
    top = std::max(top, u);
    low = std::min(low, u - 1);  // a zero wraps to the top
  }
  Stat s;
  s.special = top >= 0x7F800000u;
  s.top = static_cast<int16_t>(top ? std::max<uint32_t>(top >> 23, 1) : 0);
  s.low = static_cast<int16_t>(top ? std::max<uint32_t>((low + 1) >> 23, 1) : 0);
  s.size = MVMUL_K * static_cast<double>(float_of(top));  // at least the sum of the magnitudes
  return s;
}

void pack(Problem& p, const float* const* in0, const float* const* in1, int rows, int cols, int inner,
          bool bf16_operands) {
  const int m = p.m, n = p.n, k_total = inner * TILE, kc = p.kc, mb = m / MR, nb = n / NR, chunks = p.chunks;
  const Fidelity fidelity = p.fidelity;
  p.x.resize(static_cast<size_t>(m) * k_total);
  p.y.resize(static_cast<size_t>(k_total) * n);
  auto copy_row = [bf16_operands](const float* from, float* to) {
    if (bf16_operands) {
      std::memcpy(to, from, TILE * sizeof(float));  // bf16 values already: rounding would change nothing
    } else {
      for (int j = 0; j < TILE; ++j) to[j] = to_bf16(from[j]);
    }
  };
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < inner; ++k)
      for (int i = 0; i < TILE; ++i)
        copy_row(&in0[r * inner + k][i * TILE], &p.x[static_cast<size_t>(r * TILE + i) * k_total + k * TILE]);
  for (int k = 0; k < inner; ++k)
    for (int c = 0; c < cols; ++c)
      for (int i = 0; i < TILE; ++i)
        copy_row(&in1[k * cols + c][i * TILE], &p.y[static_cast<size_t>(k * TILE + i) * n + c * TILE]);

  // the parts each pass multiplies: in0 as SrcB (7-bit split), in1 as SrcA (5-bit split); an inf or NaN
  // operand never reaches the kernel's sums (its chunks take special_partial), so the masks ignore them
  const bool a_high = fidelity != Fidelity::HIFI4, b_high = fidelity == Fidelity::LOFI;
  const bool two = fidelity == Fidelity::HIFI3;  // HiFi3: hi(x) * y, then lo(x) * hi(y)
  p.a.resize(static_cast<size_t>(chunks) * m * kc);
  p.b.resize(static_cast<size_t>(chunks) * n * kc);
  for (int c = 0; c < chunks; ++c) {
    for (int i = 0; i < m; ++i) {
      double* to = &p.a[(static_cast<size_t>(c) * m + i) * kc];
      const float* row = &p.x[static_cast<size_t>(i) * k_total + c * MVMUL_K];
      for (int k = 0; k < MVMUL_K; ++k) {
        float hi = float_of(bits_of(row[k]) & kMaskB);
        to[k] = a_high ? hi : row[k];
        if (two) to[MVMUL_K + k] = static_cast<double>(row[k]) - static_cast<double>(hi);
      }
    }
    for (int k = 0; k < MVMUL_K; ++k) {
      const float* line = &p.y[static_cast<size_t>(c * MVMUL_K + k) * n];
      for (int jb = 0; jb < nb; ++jb) {
        double* block = &p.b[((static_cast<size_t>(c) * nb + jb) * kc) * NR];
        for (int q = 0; q < NR; ++q) {
          float v = line[jb * NR + q];
          float hi = float_of(bits_of(v) & kMaskA);
          block[k * NR + q] = b_high ? hi : v;
          if (two) block[(MVMUL_K + k) * NR + q] = hi;
        }
      }
    }
  }

  p.rows.resize(static_cast<size_t>(chunks) * m);
  p.cols.resize(static_cast<size_t>(chunks) * n);
  p.row_block_span.resize(static_cast<size_t>(chunks) * mb);
  p.col_block_span.resize(static_cast<size_t>(chunks) * nb);
  p.row_block_special.resize(static_cast<size_t>(chunks) * mb);
  p.col_block_special.resize(static_cast<size_t>(chunks) * nb);
  std::vector<uint32_t> top(n), low(n);
  for (int c = 0; c < chunks; ++c) {
    for (int ib = 0; ib < mb; ++ib) {
      int16_t span = -1;
      uint8_t special = 0;
      for (int i = ib * MR; i < ib * MR + MR; ++i) {
        Stat s = row_stat(&p.x[static_cast<size_t>(i) * k_total + c * MVMUL_K]);
        p.rows[static_cast<size_t>(c) * m + i] = s;
        if (s.top) span = std::max<int16_t>(span, static_cast<int16_t>(s.span()));
        special |= s.special;
      }
      p.row_block_span[static_cast<size_t>(c) * mb + ib] = span;
      p.row_block_special[static_cast<size_t>(c) * mb + ib] = special;
    }
    // in1's columns: the same statistics, vectorised across columns
    std::fill(top.begin(), top.end(), 0u);
    std::fill(low.begin(), low.end(), 0xFFFFFFFFu);
    for (int k = 0; k < MVMUL_K; ++k) {
      const float* line = &p.y[static_cast<size_t>(c * MVMUL_K + k) * n];
      for (int j = 0; j < n; ++j) {
        uint32_t u = bits_of(line[j]) & 0x7FFFFFFFu;
        top[j] = std::max(top[j], u);
        low[j] = std::min(low[j], u - 1);
      }
    }
    for (int jb = 0; jb < nb; ++jb) {
      int16_t span = 0;
      uint8_t special = 0;
      for (int j = jb * NR; j < jb * NR + NR; ++j) {
        Stat s;
        s.special = top[j] >= 0x7F800000u;
        s.top = static_cast<int16_t>(top[j] ? std::max<uint32_t>(top[j] >> 23, 1) : 0);
        s.low = static_cast<int16_t>(top[j] ? std::max<uint32_t>((low[j] + 1) >> 23, 1) : 0);
        s.size = static_cast<double>(float_of(top[j]));
        p.cols[static_cast<size_t>(c) * n + j] = s;
        span = std::max<int16_t>(span, static_cast<int16_t>(s.span()));
        special |= s.special;
      }
      p.col_block_span[static_cast<size_t>(c) * nb + jb] = span;
      p.col_block_special[static_cast<size_t>(c) * nb + jb] = special;
    }
  }
}

// float32 partials of one register block and chunk from its float64 sums, when the block is not proven
// exact: sums proven exact element by element are rounded; others get the rounding test (bound 2**-46 * sum |x| * max |y|: the kernel sums at most 32 exact products in
// sequence, off by at most gamma_31 < 2**-48 of the sum of their magnitudes, itself at most
// sum |x| * max |y| (a SrcB split's parts have x's sign), plus the test's own roundings), and the few that
// fail it, and chunks with an inf or NaN operand, the exact path.
void block_partials(const Problem& p, int c, int i0, int j0, const double* sums, float* out) {
  const int k_total = p.chunks * MVMUL_K;
  for (int r = 0; r < MR; ++r) {
    const Stat& row = p.rows[static_cast<size_t>(c) * p.m + i0 + r];
    for (int q = 0; q < NR; ++q) {
      const Stat& col = p.cols[static_cast<size_t>(c) * p.n + j0 + q];
      double s = sums[r * NR + q];
      float& partial = out[r * NR + q];
      const float* x = &p.x[static_cast<size_t>(i0 + r) * k_total + c * MVMUL_K];
      const float* y = &p.y[static_cast<size_t>(c * MVMUL_K) * p.n + j0 + q];
      if (row.special || col.special) {
        partial = special_partial(x, y, p.n, p.fidelity);
      } else if (row.span() + col.span() <= p.limit) {
        partial = static_cast<float>(s);
      } else {
        double bound = 0x1p-46 * (row.size * col.size);
        float low = static_cast<float>(s - bound), high = static_cast<float>(s + bound);
        partial = bits_of(low) == bits_of(high) ? low : exact_partial(x, y, p.n, p.fidelity);
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
      pf = __builtin_convertvector(load8(sums + e), v8f);
    } else {
      std::memcpy(&pf, partials + e, sizeof pf);
    }
    v8d v = load8(d + e) + __builtin_convertvector(pf, v8d);
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

// The register-block GEMM step: sums[r][q] = sum over kc of a[r][k] * b[k][q], in float64. kChain: the
// sums are exact and every chain step provably normal (bf16): round them to float32 and do the Dst step
// (block_chain<true, false>) on d in registers, without storing them.
template <bool kChain>
inline void micro_kernel(const double* __restrict a, const double* __restrict b, int kc, double* __restrict out,
                         double splitter = 0) {
  v8d acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = v8d{};
  for (int k = 0; k < kc; ++k, b += NR) {
    v8d bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load8(b + v * VL);
    for (int r = 0; r < MR; ++r) {
      const double av = a[r * kc + k];
      for (int v = 0; v < NV; ++v) acc[r][v] = multiply_add(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      double* at = out + r * NR + v * VL;
      if constexpr (kChain) {
        v8d sum = load8(at) + __builtin_convertvector(__builtin_convertvector(acc[r][v], v8f), v8d);
        v8d t = sum * splitter;
        store8(at, t - (t - sum));
      } else {
        store8(at, acc[r][v]);
      }
    }
}

void run(Problem& p, float* const* dst, int rows, int cols, DstFormat format) {
  const int mb = p.m / MR, nb = p.n / NR, kc = p.kc;
  alignas(64) double d[MR * NR];
  alignas(64) double sums[MR * NR];
  alignas(64) float start[MR * NR];
  alignas(64) float partials[MR * NR];
  for (int jb = 0; jb < nb; ++jb) {
    for (int ib = 0; ib < mb; ++ib) {
      const int i0 = ib * MR, j0 = jb * NR;
      for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NR; ++q) {
          int i = i0 + r, j = j0 + q;
          start[r * NR + q] = dst[(i / TILE) * cols + j / TILE][(i % TILE) * TILE + j % TILE];
          d[r * NR + q] = start[r * NR + q];
        }
      for (int c = 0; c < p.chunks; ++c) {
        const size_t rb = static_cast<size_t>(c) * mb + ib, cb = static_cast<size_t>(c) * nb + jb;
        const int row_span = p.row_block_span[rb];
        const bool special = p.row_block_special[rb] || p.col_block_special[cb];
        if (row_span < 0 && !special) {
          std::fill(sums, sums + MR * NR, 0.0);  // rows of zeros: exact +0 partials
        } else {
          const double* a_block = &p.a[(static_cast<size_t>(c) * p.m + i0) * kc];
          const bool exact = !special && row_span + p.col_block_span[cb] <= p.limit;
          if (exact && p.chain_normal) {
            micro_kernel<true>(a_block, &p.b[cb * kc * NR], kc, d, 0x1p45 + 1);
            continue;
          }
          micro_kernel<false>(a_block, &p.b[cb * kc * NR], kc, sums);
          if (!exact) {
            block_partials(p, c, i0, j0, sums, partials);
            block_chain<false, true>(d, sums, partials, format);
            continue;
          }
        }
        if (p.chain_normal) {
          block_chain<true, false>(d, sums, partials, format);
        } else {
          block_chain<true, true>(d, sums, partials, format);
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NR; ++q) {
          int i = i0 + r, j = j0 + q;
          double v = d[r * NR + q];
          dst[(i / TILE) * cols + j / TILE][(i % TILE) * TILE + j % TILE] =
              std::isnan(v) ? chain_nan(start[r * NR + q], format) : static_cast<float>(v);
        }
    }
  }
}

// Whether every Dst sum of every chain provably stays 0 or in [2**-126, 2**127), where Veltkamp's split is
// bf16's rounding (runtime/numerics.py _ranges_keep_normal and _stays_normal, the same argument): Dst
// holds 0 or multiples of 2**-126 (finite values that are 0 or at least 2**-103); nonzero operands of at
// least 2**-44 make every chunk sum a multiple of 2**-102, so every partial is 0 or at least 2**-102; sums
// of such values and their bf16 roundings stay multiples of 2**-126. High end: each step adds at most
// 16 max|x| max|y| (times 1 + 2**-23 for the partial's rounding) and rounding grows a value by at most
// 2**-8 (float64's addition by 2**-53).
bool chain_stays_normal(const Problem& p, float* const* dst, int tiles) {
  uint32_t x_top = 0, y_top = 0;
  int low = 255;
  for (size_t i = 0, count = static_cast<size_t>(p.chunks) * p.m; i < count; ++i) {
    const Stat& s = p.rows[i];
    if (s.special) return false;
    if (s.top) low = std::min<int>(low, s.low);
  }
  for (size_t i = 0, count = static_cast<size_t>(p.chunks) * p.n; i < count; ++i) {
    const Stat& s = p.cols[i];
    if (s.special) return false;
    if (s.top) low = std::min<int>(low, s.low);
    y_top = std::max(y_top, bits_of(static_cast<float>(s.size)));
  }
  for (size_t i = 0, count = static_cast<size_t>(p.chunks) * p.m; i < count; ++i)
    x_top = std::max(x_top, bits_of(static_cast<float>(p.rows[i].size / MVMUL_K)));
  if (low < 127 - 44) return false;
  double dst_max = 0;
  for (int t = 0; t < tiles; ++t)
    for (int e = 0; e < TILE_ELEMS; ++e) {
      double v = std::fabs(static_cast<double>(dst[t][e]));
      if (!(v == 0 || (v >= 0x1p-103 && v < HUGE_VAL))) return false;
      dst_max = std::max(dst_max, v);
    }
  double largest_partial = MVMUL_K * static_cast<double>(float_of(x_top)) * float_of(y_top) * (1 + 0x1p-23);
  return (dst_max + p.chunks * largest_partial) * std::pow(1 + 0x1p-7, p.chunks) < 0x1p126;
}

}  // namespace

void matmul_block(float* const* dst, const float* const* a, const float* const* b, int rows, int cols,
                  int inner, Fidelity fidelity, DstFormat format, bool bf16_operands) {
  Problem p;
  p.m = rows * TILE;
  p.n = cols * TILE;
  p.chunks = inner * TILE / MVMUL_K;
  p.kc = fidelity == Fidelity::HIFI3 ? 2 * MVMUL_K : MVMUL_K;
  p.fidelity = fidelity;
  p.limit = span_limit(fidelity);
  pack(p, a, b, rows, cols, inner, bf16_operands);
  if (format == DstFormat::BF16) p.chain_normal = chain_stays_normal(p, dst, rows * cols);
  run(p, dst, rows, cols, format);
}

void reduce_sum_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler,
                      Fidelity fidelity, DstFormat format) {
  // numerics.reduce_block: col = S @ x, row = (S @ x^T)^T, scalar = col (scaler 1) of each tile's row
  // reduction (scaler applied there, into a zero Dst); S holds the scaler in row 0, zeros elsewhere.
  std::vector<float> scaler_tile(TILE_ELEMS, 0.0f);
  std::vector<float> ones_tile(TILE_ELEMS, 0.0f);
  for (int j = 0; j < TILE; ++j) {
    scaler_tile[j] = scaler;
    ones_tile[j] = 1.0f;
  }
  std::vector<const float*> lhs(n, scaler_tile.data());
  auto transposed = [](const float* tile, float* out) {
    for (int i = 0; i < TILE; ++i)
      for (int j = 0; j < TILE; ++j) out[j * TILE + i] = tile[i * TILE + j];
  };
  if (dim == ReduceDim::COL) {
    float* out[1] = {dst};
    matmul_block(out, lhs.data(), tiles, 1, 1, n, fidelity, format, false);
    return;
  }
  std::vector<float> flipped(static_cast<size_t>(n) * TILE_ELEMS);
  std::vector<const float*> rhs(n);
  for (int t = 0; t < n; ++t) {
    transposed(tiles[t], &flipped[static_cast<size_t>(t) * TILE_ELEMS]);
    rhs[t] = &flipped[static_cast<size_t>(t) * TILE_ELEMS];
  }
  if (dim == ReduceDim::ROW) {
    std::vector<float> acc(TILE_ELEMS);
    transposed(dst, acc.data());
    float* out[1] = {acc.data()};
    matmul_block(out, lhs.data(), rhs.data(), 1, 1, n, fidelity, format, false);
    transposed(acc.data(), dst);
    return;
  }
  // scalar: each tile's row reduction into a zero Dst (one tile each), then their column reduction
  std::vector<float> sums(static_cast<size_t>(n) * TILE_ELEMS);
  std::vector<const float*> sum_tiles(n);
  for (int t = 0; t < n; ++t) {
    std::vector<float> acc(TILE_ELEMS, 0.0f);
    float* out[1] = {acc.data()};
    matmul_block(out, lhs.data(), &rhs[t], 1, 1, 1, fidelity, format, false);
    transposed(acc.data(), &sums[static_cast<size_t>(t) * TILE_ELEMS]);
    sum_tiles[t] = &sums[static_cast<size_t>(t) * TILE_ELEMS];
  }
  std::vector<const float*> ones(n, ones_tile.data());
  float* out[1] = {dst};
  matmul_block(out, ones.data(), sum_tiles.data(), 1, 1, n, fidelity, format, false);
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
