// Inline scalar conversions behind formats.cpp and eltwise.cpp: the float32 <-> bfloat16 / Float16 roundings
// exactly as the Python emulator's libraries do them on x86-64, written as bit operations and selects so that
// loops over a tile vectorise. Private to the numerics part (namespace ttc::conv).
//
// Whose bits these are:
// - float32 -> bfloat16: ml_dtypes' cast (round to nearest even; every NaN becomes 0x7FC0 with the NaN's sign).
// - float32 -> Float16: numpy's cast (npy_floatbits_to_halfbits, done in software: round to nearest even,
//   subnormals kept, inf from 65520 up; a NaN keeps its sign and the top 10 payload bits, and becomes 0x7C01
//   if those are all zero; it is not quieted).
// - Float16 -> float32: numpy's cast (software, exact; a NaN's payload moves up 13 bits, not quieted).
#pragma once

#include <cstdint>
#include <cstring>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the native core reads and writes tile bytes as little-endian words"
#endif

namespace ttc::conv {

inline uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// c ? a : b as mask arithmetic: the ternaries of a conversion stay branch-free, so the loops around them
// vectorise (GCC turns a chain of ternaries over these into branches otherwise).
inline uint32_t select(bool c, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return (a & mask) | (b & ~mask);
}

inline float select(bool c, float a, float b) { return from_bits(select(c, bits(a), bits(b))); }

inline bool is_nan(float x) { return (bits(x) & 0x7FFFFFFFu) > 0x7F800000u; }

// A NaN as an x86 arithmetic instruction returns it: with the quiet bit set.
inline float quiet(float x) { return from_bits(bits(x) | 0x00400000u); }

// ---------------------------------------------------------------------------------------- bfloat16

inline uint16_t bf16_bits(float x) {
  const uint32_t u = bits(x);
  // RNE on the bits: add half an ulp minus one, plus the kept LSB (ties to even). A carry into the exponent
  // is right, including the overflow of the largest finite values to inf; subnormals round the same way.
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = ((u >> 16) & 0x8000u) | 0x7FC0u;
  return static_cast<uint16_t>(select((u & 0x7FFFFFFFu) > 0x7F800000u, nan, rounded));
}

inline float bf16_value(uint16_t h) { return from_bits(static_cast<uint32_t>(h) << 16); }

inline float bf16_round(float x) { return bf16_value(bf16_bits(x)); }

// ---------------------------------------------------------------------------------------- Float16

inline uint16_t f16_bits(float x) {
  const uint32_t u = bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal results (|x| >= 2**-14): rebias the exponent (127 -> 15) and round the 13 dropped bits to
  // nearest even; a carry into the exponent is right. Only valid below the overflow threshold.
  const uint32_t normal = (a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  // Subnormal results (|x| < 2**-14): |x| + 0.5 rounds |x| to a multiple of 2**-24 (the ulp of 0.5, and
  // Float16's subnormal step) in hardware, RNE; the low bits of the sum are the code. A value that rounds up
  // to 2**-14 gives 0x400, the smallest normal: right too.
  const uint32_t subnormal = bits(from_bits(a) + 0.5f) - 0x3F000000u;
  const uint32_t payload = (a >> 13) & 0x3FFu;
  const uint32_t nan = 0x7C00u | payload | static_cast<uint32_t>(payload == 0);  // payload 0 -> 1
  uint32_t h = select(a >= 0x38800000u, normal, subnormal);
  h = select(a >= 0x477FF000u, 0x7C00u, h);  // from 65520 (the tie above 65504) up: inf
  h = select(a > 0x7F800000u, nan, h);
  return static_cast<uint16_t>(sign | h);
}

inline float f16_value(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t a = h & 0x7FFFu;
  const uint32_t normal = (a << 13) + 0x38000000u;  // rebias 15 -> 127
  const uint32_t special = (a << 13) | 0x7F800000u;  // inf, or NaN with its payload as it is
  // subnormal (and zero): a * 2**-24, exact
  const uint32_t subnormal = bits(from_bits(0x3F000000u + a) - 0.5f);
  const uint32_t u = select(a >= 0x7C00u, special, select(a >= 0x0400u, normal, subnormal));
  return from_bits(sign | u);
}

// f16_value(f16_bits(x)) without the trip through 16 bits: equal for every float32 (checked exhaustively while
// writing it; test_native_numerics sweeps a sample against the packed form).
inline float f16_round(float x) {
  const uint32_t u = bits(x);
  const uint32_t sign = u & 0x80000000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // normal range: RNE to 11 significant bits in place (a carry into the exponent is right)
  const uint32_t normal = (a + 0xFFFu + ((a >> 13) & 1u)) & 0xFFFFE000u;
  // subnormal range: |x| + 0.5 rounds to a multiple of 2**-24 (RNE); taking 0.5 away again is exact
  const uint32_t subnormal = bits((from_bits(a) + 0.5f) - 0.5f);
  // NaN: the top 10 payload bits, or the lowest of them if those are all zero (f16_bits' 0x7C01)
  const uint32_t nan = (a & 0xFFFFE000u) | (static_cast<uint32_t>((a & 0x007FE000u) == 0) << 13);
  uint32_t r = select(a >= 0x38800000u, normal, subnormal);
  r = select(a >= 0x477FF000u, 0x7F800000u, r);  // from 65520 up: inf
  r = select(a > 0x7F800000u, nan, r);
  return from_bits(sign | r);
}

// Whether rounding x to Float16 is an overflow (numerics.Float16Overflow): x is finite and rounds to +-inf,
// i.e. its magnitude is at least 65520 (the tie above 65504, which rounds to even: inf). 1 or 0, so that
// loops OR it into an accumulator without branches. NaN and inf are no overflow.
inline uint32_t f16_overflows(float x) {
  const uint32_t a = bits(x) & 0x7FFFFFFFu;
  return static_cast<uint32_t>(a - 0x477FF000u < 0x7F800000u - 0x477FF000u);  // one unsigned range test
}

// ---------------------------------------------------------------------------------------- Dst format

template <bool F16>
inline float dst_round(float x) {
  if constexpr (F16) {
    return f16_round(x);
  } else {
    return bf16_round(x);
  }
}

}  // namespace ttc::conv
