// The numerics of the emulated Grayskull in native code: the same definitions as runtime/numerics.py and
// runtime/formats.py (the executable specification), bit for bit. See DESIGN.md.
//
// Tiles are 32x32 floats in tile order (row-major, element (i, j) at i * 32 + j), as the Python emulator
// holds them after unpacking; packed bytes are in the device's face order.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ttc {

constexpr int TILE = 32;
constexpr int TILE_ELEMS = TILE * TILE;
constexpr int MVMUL_K = 16;  // K elements one MVMUL consumes

// What Dst holds: Float16_b (bf16) or Float16.
enum class DstFormat : int { BF16 = 0, F16 = 1 };

// Tile data formats (runtime/formats.py DataFormat).
enum class Format : int { F32 = 0, BF16 = 1, F16 = 2, BFP8 = 3, BFP4 = 4, I32 = 5 };

enum class Fidelity : int { LOFI = 1, HIFI2 = 2, HIFI3 = 3, HIFI4 = 4 };  // value = multiplier passes

int tile_bytes(Format format);

// ---------------------------------------------------------------------------------------- rounding

float bf16_round(float x);                   // RNE to bfloat16 (NaN stays NaN)
float f16_round(float x);                    // RNE to IEEE half (inf past 65504, subnormals kept)
float dst_round(float x, DstFormat format);  // the one of the two above

// ---------------------------------------------------------------------------------------- formats

// Packed tile bytes -> float tile (tile order). I32 gives the float32 (RNE) of each integer.
void unpack_tile(const uint8_t* src, Format format, float* out);
// Float tile -> packed bytes (bf16/f16 RNE, block floats as formats.py encodes, I32 truncates toward zero
// with NaN and out-of-range values giving INT32_MIN, as numpy's cast does on x86-64).
void pack_tile(const float* tile, Format format, uint8_t* dst);

// ---------------------------------------------------------------------------------------- FPU eltwise

enum class BinaryOp : int { ADD = 0, SUB = 1, MUL = 2 };
enum class Bcast : int { NONE = 0, ROW = 1, COL = 2, SCALAR = 3 };

// out = a op b on the FPU (numerics.eltwise_binary), b broadcast inside its tile per bcast.
void eltwise_tile(const float* a, const float* b, BinaryOp op, Bcast bcast, DstFormat format, float* out);

// ---------------------------------------------------------------------------------------- matmul / reduce

// Dst tiles dst[r * cols + c] += sum over k of a[r * inner + k] @ b[k * cols + c]
// (numerics.matmul_block_accumulate): one 16-element K chunk at a time, Dst rounded to its format after each.
// `a` and `b` point at tiles holding bf16 (or block-float) values unless bf16_operands is false (then they
// are rounded to bf16 first).
void matmul_block(float* const* dst, const float* const* a, const float* const* b, int rows, int cols,
                  int inner, Fidelity fidelity, DstFormat format, bool bf16_operands);
// The same with packed bf16 operand tiles (the device's face order, as a CB holds them), read in place.
void matmul_block_bf16(float* const* dst, const uint16_t* const* a, const uint16_t* const* b, int rows, int cols,
                       int inner, Fidelity fidelity, DstFormat format);

enum class ReduceDim : int { ROW = 0, COL = 1, SCALAR = 2 };

// Dst tile dst accumulates the sum (through the matmul unit) of tiles[0..n) along dim, times scaler
// (numerics.reduce_block with kind "sum").
void reduce_sum_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler,
                      Fidelity fidelity, DstFormat format);
// The same with kind "max".
void reduce_max_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler,
                      DstFormat format);

// ---------------------------------------------------------------------------------------- SFPU

// x[i] = table[bits of x[i] in the Dst format] for a tabulated unary function (numerics._sfpu_table:
// the 65536 results by input bit pattern, built once by the Python definition). F16: `overflow` (65536
// marks, numerics.sfpu_table_overflow, or null for none) says which entries are a Float16 overflow.
void sfpu_table_tile(float* x, int count, const float* table, DstFormat format, const uint8_t* overflow = nullptr);

// The *_scalar forms, computed in float32 (numerics.SFPU_SCALAR_FUNCTIONS); pow_scalar and rpow_scalar
// are tabulated per parameter instead and use sfpu_table_tile.
enum class ScalarFn : int {
  ADD = 0, MUL = 1, SUB_FROM = 2, MAX = 3, WHERE_NEZ = 4, WHERE_EQZ = 5,
  EQ = 6, NE = 7, LT = 8, LE = 9, GT = 10, GE = 11,
};
void sfpu_scalar_tile(float* x, int count, ScalarFn fn, float param, DstFormat format);

enum class SfpuBinaryFn : int { POW = 0, WHERE_NEZ = 1, WHERE_EQZ = 2 };
// a[i] = fn(a[i], b[i]) (numerics.sfpu_binary).
void sfpu_binary_tile(float* a, const float* b, int count, SfpuBinaryFn fn, DstFormat format);

}  // namespace ttc

// ---------------------------------------------------------------------------------------- formats: row-major rows
// (added by the numerics part, implemented in formats.cpp)

namespace ttc {

// interpreter.pack_row_values: `count` float values -> the bytes of a row-major CB page (BF16: RNE bf16, 2 bytes
// each; F32: the float32 values, 4 bytes each). Other formats throw std::invalid_argument.
void pack_row_values(const float* values, int count, Format format, uint8_t* dst);
// interpreter.unpack_rows: the bytes of `count` row-major values -> floats (BF16: exact; F32: rounded to bf16,
// RNE). Other formats throw std::invalid_argument.
void unpack_row_values(const uint8_t* src, int count, Format format, float* out);

// x[0..count) = dst_round(x[i], format): the array form of dst_round, for loops the compiler vectorises (a
// datacopy into Dst, an f32 / i32 operand unpacked for the FPU).
void dst_round_values(float* x, int count, DstFormat format);

}  // namespace ttc

// ---------------------------------------------------------------------------------------- Float16 overflow

namespace ttc {

// Set when a primitive working on a Float16 Dst rounds a finite value to Float16 and gets +-inf (a magnitude
// of at least 65520): numerics.Float16Overflow, a device fault. Every f16 rounding of a Dst value sets it
// (dst_round and dst_round_values with F16, eltwise_tile, reduce_max_block, the SFPU forms, the matmul chain
// and reduce_sum_block); the results are those of the plain rounding (inf). Per thread, so that the loops
// need no exceptions: the program executor clears it when a core starts and checks it after each compute op
// of an f16 program; the bindings read it with `take_f16_overflow`. bf16 paths never touch it.
extern thread_local bool f16_overflow;

}  // namespace ttc
