// Tile data formats: roundings and packed bytes, bit for bit as runtime/formats.py (see convert.h for whose
// conversions the roundings copy).
//
// Packed tiles are in face order: 64 runs of 16 values, run r = face f (r / 16) row r % 16, holding tile row
// (f / 2) * 16 + r % 16, columns (f % 2) * 16 .. + 15. The conversions run over whole tiles in tile order
// (loops that vectorise) and 64 copies of a run each put the values in face order.
#include <algorithm>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>

#include "convert.h"
#include "numerics.h"

// Whole-tile loops in 512-bit vectors where the machine has them (GCC prefers 256 bits by default).
#pragma GCC target("prefer-vector-width=512")

namespace ttc {

namespace {

constexpr int RUNS = 64;
constexpr int RUN = 16;
constexpr int BFP_EXP_BYTES = 64;

// Offset in the tile (row-major) of the first value of packed run `run`.
inline int run_offset(int run) {
  const int face = run / RUN;
  return ((face / 2) * RUN + run % RUN) * TILE + (face % 2) * RUN;
}

[[noreturn]] void bad_format(Format format) {
  throw std::invalid_argument("unknown tile format " + std::to_string(static_cast<int>(format)));
}

// float32 -> int32 as numpy's astype does on x86-64 (cvttps2dq): truncation toward zero; NaN, inf and values
// outside [-2**31, 2**31) give INT32_MIN (the instruction's "integer indefinite").
inline int32_t to_int32(float x) {
  const bool in_range = x >= -2147483648.0f && x < 2147483648.0f;
  const int32_t t = static_cast<int32_t>(in_range ? x : 0.0f);  // only in-range values are converted
  return in_range ? t : INT32_MIN;
}

// Face order <-> tile order for 16-value runs of T: the conversions work on whole tiles in tile order (loops
// of 1024 that vectorise), these copies do the permutation.
// The run loops are unrolled whole: each run's offset in the tile is then a constant (computing it took more
// instructions than a run's copy or conversion).
template <typename T>
void to_face_order(const T* tile_order, uint8_t* dst) {
#pragma GCC unroll 64
  for (int run = 0; run < RUNS; ++run) std::memcpy(dst + run * RUN * sizeof(T), tile_order + run_offset(run), RUN * sizeof(T));
}

template <typename T>
void from_face_order(const uint8_t* src, T* tile_order) {
#pragma GCC unroll 64
  for (int run = 0; run < RUNS; ++run) std::memcpy(tile_order + run_offset(run), src + run * RUN * sizeof(T), RUN * sizeof(T));
}

// 16-bit tiles (bf16, Float16) converted run by run, each packed run straight from or to its place in the tile:
// one pass, no face-order copy in between (the inner loops are one vector of 16 lanes each).
template <bool F16>
void convert_runs_in(const uint8_t* src, float* tile) {
  typedef uint32_t v16u __attribute__((vector_size(64)));
  typedef uint16_t v16h __attribute__((vector_size(32)));
#pragma GCC unroll 64
  for (int run = 0; run < RUNS; ++run) {
    float* to = tile + run_offset(run);
    if constexpr (F16) {
      uint16_t h[RUN];
      std::memcpy(h, src + run * RUN * 2, sizeof h);
      for (int k = 0; k < RUN; ++k) to[k] = conv::f16_value(h[k]);
    } else {  // conv::bf16_value on 16 lanes
      v16h h;
      std::memcpy(&h, src + run * RUN * 2, sizeof h);
      const v16u u = __builtin_convertvector(h, v16u) << 16;
      std::memcpy(to, &u, sizeof u);
    }
  }
}

template <bool F16>
void convert_runs_out(const float* tile, uint8_t* dst) {
  typedef uint32_t v16u __attribute__((vector_size(64)));
  typedef uint16_t v16h __attribute__((vector_size(32)));
#pragma GCC unroll 64
  for (int run = 0; run < RUNS; ++run) {
    const float* from = tile + run_offset(run);
    if constexpr (F16) {
      uint16_t h[RUN];
      for (int k = 0; k < RUN; ++k) h[k] = conv::f16_bits(from[k]);
      std::memcpy(dst + run * RUN * 2, h, sizeof h);
    } else {  // conv::bf16_bits on 16 lanes, written out (GCC's own vectorisation of it narrows the masks)
      v16u u;
      std::memcpy(&u, from, sizeof u);
      const v16u rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
      const v16u nan = ((u >> 16) & 0x8000u) | 0x7FC0u;
      const v16h h = __builtin_convertvector((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded, v16h);
      std::memcpy(dst + run * RUN * 2, &h, sizeof h);
    }
  }
}

// ---------------------------------------------------------------------------------------- block float
//
// formats.py `_bfp_encode` / `_bfp_decode`: each run (a face row) shares the largest float32 biased exponent
// of its 16 values; a value's magnitude (hidden 1 explicit; float32 subnormals count as zero) is shifted
// right by its distance to the shared exponent (truncating), then rounded half up to bits-1 magnitude bits
// and saturated; a zero code has sign 0.

template <int BITS>
void pack_bfp(const float* tile, uint8_t* dst) {
  constexpr uint32_t DROP = 24 - (BITS - 1);  // float32 significand bits (24) minus the kept ones
  constexpr uint32_t QMAX = (1u << (BITS - 1)) - 1;
  uint32_t exp[TILE_ELEMS], shared[TILE_ELEMS];
  for (int e = 0; e < TILE_ELEMS; ++e) exp[e] = (conv::bits(tile[e]) >> 23) & 0xFFu;
  for (int run = 0; run < RUNS; ++run) {
    const uint32_t* x = exp + run_offset(run);
    uint32_t m = 0;
    for (int k = 0; k < RUN; ++k) m = std::max(m, x[k]);
    dst[run] = static_cast<uint8_t>(m);
    std::fill(shared + run_offset(run), shared + run_offset(run) + RUN, m);
  }
  uint8_t codes[TILE_ELEMS];
  for (int e = 0; e < TILE_ELEMS; ++e) {
    const uint32_t u = conv::bits(tile[e]);
    const uint32_t mag = exp[e] > 0 ? ((u & 0x7FFFFFu) | 0x800000u) : 0u;
    const uint32_t shift = std::min(shared[e] - exp[e], 31u);  // mag < 2**24: any shift >= 24 gives 0
    const uint32_t q = std::min(((mag >> shift) + (1u << (DROP - 1))) >> DROP, QMAX);
    const uint32_t sign = q == 0 ? 0u : u >> 31;
    codes[e] = static_cast<uint8_t>((sign << (BITS - 1)) | q);
  }
  uint8_t* body = dst + BFP_EXP_BYTES;
  if constexpr (BITS == 8) {
    to_face_order(codes, body);
  } else {  // two codes a byte, the earlier one in the low nibble
    uint8_t face_codes[TILE_ELEMS];
    to_face_order(codes, face_codes);
    for (int k = 0; k < TILE_ELEMS / 2; ++k) {
      body[k] = static_cast<uint8_t>(face_codes[2 * k] | (face_codes[2 * k + 1] << 4));
    }
  }
}

template <int BITS>
void unpack_bfp(const uint8_t* src, float* tile) {
  constexpr int MBITS = BITS - 1;
  constexpr uint32_t MMASK = (1u << MBITS) - 1;
  const uint8_t* body = src + BFP_EXP_BYTES;
  uint8_t codes[TILE_ELEMS];
  if constexpr (BITS == 8) {
    from_face_order(body, codes);
  } else {
    uint8_t face_codes[TILE_ELEMS];
    for (int k = 0; k < TILE_ELEMS / 2; ++k) {  // the earlier code in the low nibble
      face_codes[2 * k] = body[k] & 0xFu;
      face_codes[2 * k + 1] = body[k] >> 4;
    }
    from_face_order(face_codes, codes);
  }
  float scale[TILE_ELEMS];
  for (int run = 0; run < RUNS; ++run) {
    // value = (-1)**sign * q * 2**(shared - 127 - (MBITS - 1)): the scale is a power of two in float32's
    // range (2**-133 .. 2**126, subnormal at the bottom), and q * scale is exact or overflows to inf, as
    // numpy's ldexp does.
    const int e = static_cast<int>(src[run]) - 127 - (MBITS - 1);
    const float s = conv::from_bits(e >= -126 ? static_cast<uint32_t>(e + 127) << 23 : 1u << (e + 149));
    std::fill(scale + run_offset(run), scale + run_offset(run) + RUN, s);
  }
  for (int e = 0; e < TILE_ELEMS; ++e) {
    const uint32_t code = codes[e];
    const float v = static_cast<float>(code & MMASK) * scale[e];
    tile[e] = conv::from_bits(conv::bits(v) ^ ((code >> MBITS) << 31));  // the sign bit: -0.0 included
  }
}

}  // namespace

int tile_bytes(Format format) {
  switch (format) {
    case Format::F32: return 4096;
    case Format::BF16: return 2048;
    case Format::F16: return 2048;
    case Format::BFP8: return 1088;
    case Format::BFP4: return 576;
    case Format::I32: return 4096;
  }
  bad_format(format);
}

thread_local bool f16_overflow = false;

float bf16_round(float x) { return conv::bf16_round(x); }
float f16_round(float x) { return conv::f16_round(x); }
float dst_round(float x, DstFormat format) {
  if (format == DstFormat::F16) {
    if (conv::f16_overflows(x)) f16_overflow = true;
    return conv::f16_round(x);
  }
  return conv::bf16_round(x);
}

void unpack_tile(const uint8_t* src, Format format, float* out) {
  switch (format) {
    case Format::F32:
      from_face_order(src, out);
      return;
    case Format::BF16: convert_runs_in<false>(src, out); return;
    case Format::F16: convert_runs_in<true>(src, out); return;
    case Format::BFP8: unpack_bfp<8>(src, out); return;
    case Format::BFP4: unpack_bfp<4>(src, out); return;
    case Format::I32: {
      int32_t v[TILE_ELEMS];
      from_face_order(src, v);
      for (int e = 0; e < TILE_ELEMS; ++e) out[e] = static_cast<float>(v[e]);  // RNE (cvtdq2ps)
      return;
    }
  }
  bad_format(format);
}

void pack_tile(const float* tile, Format format, uint8_t* dst) {
  switch (format) {
    case Format::F32:
      to_face_order(tile, dst);
      return;
    case Format::BF16: convert_runs_out<false>(tile, dst); return;
    case Format::F16: convert_runs_out<true>(tile, dst); return;
    case Format::BFP8: pack_bfp<8>(tile, dst); return;
    case Format::BFP4: pack_bfp<4>(tile, dst); return;
    case Format::I32: {
      int32_t v[TILE_ELEMS];
      for (int e = 0; e < TILE_ELEMS; ++e) v[e] = to_int32(tile[e]);
      to_face_order(v, dst);
      return;
    }
  }
  bad_format(format);
}

void dst_round_values(float* x, int count, DstFormat format) {
  if (format == DstFormat::F16) {
    uint32_t over = 0;
    for (int i = 0; i < count; ++i) {
      over |= conv::f16_overflows(x[i]);
      x[i] = conv::f16_round(x[i]);
    }
    if (over) f16_overflow = true;
  } else {
    for (int i = 0; i < count; ++i) x[i] = conv::bf16_round(x[i]);
  }
}

// ---------------------------------------------------------------------------------------- row-major rows

void pack_row_values(const float* values, int count, Format format, uint8_t* dst) {
  if (format == Format::F32) {
    std::memcpy(dst, values, static_cast<size_t>(count) * 4);
  } else if (format == Format::BF16) {
    if (count == TILE) {  // a whole tile row (the common case): a fixed trip count the compiler vectorises
      uint16_t h[TILE];
      for (int k = 0; k < TILE; ++k) h[k] = conv::bf16_bits(values[k]);
      std::memcpy(dst, h, sizeof h);
      return;
    }
    constexpr int CHUNK = 64;
    for (int start = 0; start < count; start += CHUNK) {
      const int n = std::min(CHUNK, count - start);
      uint16_t h[CHUNK];
      for (int k = 0; k < n; ++k) h[k] = conv::bf16_bits(values[start + k]);
      std::memcpy(dst + static_cast<size_t>(start) * 2, h, static_cast<size_t>(n) * 2);
    }
  } else {
    throw std::invalid_argument("row-major rows are bf16 or f32, not format " +
                                std::to_string(static_cast<int>(format)));
  }
}

void unpack_row_values(const uint8_t* src, int count, Format format, float* out) {
  if (format == Format::F32) {
    std::memcpy(out, src, static_cast<size_t>(count) * 4);
    for (int k = 0; k < count; ++k) out[k] = conv::bf16_round(out[k]);
  } else if (format == Format::BF16) {
    if (count == TILE) {  // a whole tile row
      uint16_t h[TILE];
      std::memcpy(h, src, sizeof h);
      for (int k = 0; k < TILE; ++k) out[k] = conv::bf16_value(h[k]);
      return;
    }
    constexpr int CHUNK = 64;
    for (int start = 0; start < count; start += CHUNK) {
      const int n = std::min(CHUNK, count - start);
      uint16_t h[CHUNK];
      std::memcpy(h, src + static_cast<size_t>(start) * 2, static_cast<size_t>(n) * 2);
      for (int k = 0; k < n; ++k) out[start + k] = conv::bf16_value(h[k]);
    }
  } else {
    throw std::invalid_argument("row-major rows are bf16 or f32, not format " +
                                std::to_string(static_cast<int>(format)));
  }
}

}  // namespace ttc
