// Tile data formats: roundings and packed bytes, bit for bit as runtime/formats.py (see convert.h for whose
// conversions the roundings copy).
//
// Packed tiles are in face order: 64 runs of 16 values, run r = face f (r / 16) row r % 16, holding tile row
// (f / 2) * 16 + r % 16, columns (f % 2) * 16 .. + 15. Every format below goes run by run, so the inner loops
// are 16 contiguous values on both sides.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "convert.h"
#include "numerics.h"

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
  return (x >= -2147483648.0f && x < 2147483648.0f) ? static_cast<int32_t>(x) : INT32_MIN;
}

// ---------------------------------------------------------------------------------------- block float
//
// formats.py `_bfp_encode` / `_bfp_decode`: each run (a face row) shares the largest float32 biased exponent
// of its 16 values; a value's magnitude (hidden 1 explicit; float32 subnormals count as zero) is shifted
// right by its distance to the shared exponent (truncating), then rounded half up to bits-1 magnitude bits
// and saturated; a zero code has sign 0.

template <int BITS>
void encode_run(const float* values, uint8_t* shared_out, uint8_t codes[RUN]) {
  constexpr uint32_t DROP = 24 - (BITS - 1);  // float32 significand bits (24) minus the kept ones
  constexpr uint32_t QMAX = (1u << (BITS - 1)) - 1;
  uint32_t u[RUN], exp[RUN];
  uint32_t shared = 0;
  for (int k = 0; k < RUN; ++k) {
    u[k] = conv::bits(values[k]);
    exp[k] = (u[k] >> 23) & 0xFFu;
    shared = std::max(shared, exp[k]);
  }
  for (int k = 0; k < RUN; ++k) {
    const uint32_t mag = exp[k] > 0 ? ((u[k] & 0x7FFFFFu) | 0x800000u) : 0u;
    const uint32_t shift = std::min(shared - exp[k], 31u);  // mag < 2**24: any shift >= 24 gives 0
    const uint32_t q = std::min(((mag >> shift) + (1u << (DROP - 1))) >> DROP, QMAX);
    const uint32_t sign = q == 0 ? 0u : u[k] >> 31;
    codes[k] = static_cast<uint8_t>((sign << (BITS - 1)) | q);
  }
  *shared_out = static_cast<uint8_t>(shared);
}

template <int BITS>
void pack_bfp(const float* tile, uint8_t* dst) {
  uint8_t* body = dst + BFP_EXP_BYTES;
  for (int run = 0; run < RUNS; ++run) {
    uint8_t codes[RUN];
    encode_run<BITS>(tile + run_offset(run), dst + run, codes);
    if constexpr (BITS == 8) {
      std::memcpy(body + run * RUN, codes, RUN);
    } else {  // two codes a byte, the earlier one in the low nibble
      for (int k = 0; k < RUN / 2; ++k) {
        body[run * (RUN / 2) + k] = static_cast<uint8_t>(codes[2 * k] | (codes[2 * k + 1] << 4));
      }
    }
  }
}

template <int BITS>
void unpack_bfp(const uint8_t* src, float* tile) {
  constexpr int MBITS = BITS - 1;
  constexpr uint32_t MMASK = (1u << MBITS) - 1;
  const uint8_t* body = src + BFP_EXP_BYTES;
  for (int run = 0; run < RUNS; ++run) {
    // value = (-1)**sign * q * 2**(shared - 127 - (MBITS - 1)): the scale is a power of two in float32's
    // range (2**-133 .. 2**126, subnormal at the bottom), and q * scale is exact or overflows to inf, as
    // numpy's ldexp does. A sign bit on a zero code gives -0.0.
    const float scale = std::ldexp(1.0f, static_cast<int>(src[run]) - 127 - (MBITS - 1));
    float* out = tile + run_offset(run);
    for (int k = 0; k < RUN; ++k) {
      uint32_t code;
      if constexpr (BITS == 8) {
        code = body[run * RUN + k];
      } else {
        code = (body[run * (RUN / 2) + k / 2] >> ((k % 2) * 4)) & 0xFu;
      }
      const float v = static_cast<float>(code & MMASK) * scale;
      out[k] = (code >> MBITS) ? -v : v;
    }
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

float bf16_round(float x) { return conv::bf16_round(x); }
float f16_round(float x) { return conv::f16_round(x); }
float dst_round(float x, DstFormat format) {
  return format == DstFormat::F16 ? conv::f16_round(x) : conv::bf16_round(x);
}

void unpack_tile(const uint8_t* src, Format format, float* out) {
  switch (format) {
    case Format::F32:
      for (int run = 0; run < RUNS; ++run) std::memcpy(out + run_offset(run), src + run * RUN * 4, RUN * 4);
      return;
    case Format::BF16:
    case Format::F16:
      for (int run = 0; run < RUNS; ++run) {
        uint16_t h[RUN];
        std::memcpy(h, src + run * RUN * 2, sizeof h);
        float* o = out + run_offset(run);
        if (format == Format::BF16) {
          for (int k = 0; k < RUN; ++k) o[k] = conv::bf16_value(h[k]);
        } else {
          for (int k = 0; k < RUN; ++k) o[k] = conv::f16_value(h[k]);
        }
      }
      return;
    case Format::BFP8: unpack_bfp<8>(src, out); return;
    case Format::BFP4: unpack_bfp<4>(src, out); return;
    case Format::I32:
      for (int run = 0; run < RUNS; ++run) {
        int32_t v[RUN];
        std::memcpy(v, src + run * RUN * 4, sizeof v);
        float* o = out + run_offset(run);
        for (int k = 0; k < RUN; ++k) o[k] = static_cast<float>(v[k]);  // RNE (cvtdq2ps)
      }
      return;
  }
  bad_format(format);
}

void pack_tile(const float* tile, Format format, uint8_t* dst) {
  switch (format) {
    case Format::F32:
      for (int run = 0; run < RUNS; ++run) std::memcpy(dst + run * RUN * 4, tile + run_offset(run), RUN * 4);
      return;
    case Format::BF16:
    case Format::F16:
      for (int run = 0; run < RUNS; ++run) {
        const float* t = tile + run_offset(run);
        uint16_t h[RUN];
        if (format == Format::BF16) {
          for (int k = 0; k < RUN; ++k) h[k] = conv::bf16_bits(t[k]);
        } else {
          for (int k = 0; k < RUN; ++k) h[k] = conv::f16_bits(t[k]);
        }
        std::memcpy(dst + run * RUN * 2, h, sizeof h);
      }
      return;
    case Format::BFP8: pack_bfp<8>(tile, dst); return;
    case Format::BFP4: pack_bfp<4>(tile, dst); return;
    case Format::I32:
      for (int run = 0; run < RUNS; ++run) {
        const float* t = tile + run_offset(run);
        int32_t v[RUN];
        for (int k = 0; k < RUN; ++k) v[k] = to_int32(t[k]);
        std::memcpy(dst + run * RUN * 4, v, sizeof v);
      }
      return;
  }
  bad_format(format);
}

void dst_round_values(float* x, int count, DstFormat format) {
  if (format == DstFormat::F16) {
    for (int i = 0; i < count; ++i) x[i] = conv::f16_round(x[i]);
  } else {
    for (int i = 0; i < count; ++i) x[i] = conv::bf16_round(x[i]);
  }
}

// ---------------------------------------------------------------------------------------- row-major rows

void pack_row_values(const float* values, int count, Format format, uint8_t* dst) {
  if (format == Format::F32) {
    std::memcpy(dst, values, static_cast<size_t>(count) * 4);
  } else if (format == Format::BF16) {
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
