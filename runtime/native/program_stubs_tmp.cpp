// TEMPORARY (deleted once branches native-numerics and native-matmul are merged): definitions of the
// numerics.h API so that the program executor builds and can be tested before those parts land.
//
// The element roundings are written here directly (numpy's and ml_dtypes' rules, NaN payloads included);
// every tile-level function calls back into the Python definition (runtime/numerics.py, formats.py) with
// the GIL held, so results are the reference's bits by construction, only slow.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstring>

#include "numerics.h"

namespace py = pybind11;

namespace ttc {

namespace {

uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

const char* format_name(Format f) {
  switch (f) {
    case Format::F32: return "f32";
    case Format::BF16: return "bf16";
    case Format::F16: return "f16";
    case Format::BFP8: return "bfp8_b";
    case Format::BFP4: return "bfp4_b";
    case Format::I32: return "i32";
  }
  return "?";
}

const char* dst_name(DstFormat f) { return f == DstFormat::F16 ? "f16" : "bf16"; }

const char* fidelity_name(Fidelity f) {
  switch (f) {
    case Fidelity::LOFI: return "lofi";
    case Fidelity::HIFI2: return "hifi2";
    case Fidelity::HIFI3: return "hifi3";
    case Fidelity::HIFI4: return "hifi4";
  }
  return "hifi4";
}

py::module_ numerics() { return py::module_::import("ttc.runtime.numerics"); }

py::array_t<float> tiles_array(const float* const* tiles, int n) {
  py::array_t<float> out({n, TILE, TILE});
  for (int i = 0; i < n; ++i) std::memcpy(out.mutable_data(i), tiles[i], TILE_ELEMS * 4);
  return out;
}

py::array_t<float> tile_array(const float* tile, py::ssize_t count = TILE_ELEMS) {
  py::array_t<float> out(count);
  std::memcpy(out.mutable_data(), tile, count * 4);
  return out;
}

void copy_out(const py::handle& result, float* out, py::ssize_t count) {
  auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(result);
  std::memcpy(out, arr.data(), count * 4);
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
  return 0;
}

float bf16_round(float x) {
  uint32_t b = bits_of(x);
  if (std::isnan(x)) return from_bits((b & 0x80000000u) | 0x7FC00000u);  // ml_dtypes: canonical quiet NaN
  uint32_t lsb = (b >> 16) & 1u;
  b += 0x7FFFu + lsb;
  return from_bits(b & 0xFFFF0000u);
}

float f16_round(float x) {
  uint32_t b = bits_of(x);
  if (std::isnan(x)) {  // numpy: the payload's top 10 bits, at least 1, no quiet bit forced
    uint32_t ret = 0x7C00u + ((b & 0x007FFFFFu) >> 13);
    if (ret == 0x7C00u) ret++;
    uint32_t sig = ret & 0x3FFu;
    return from_bits((b & 0x80000000u) | 0x7F800000u | (sig << 13));
  }
  return static_cast<float>(static_cast<_Float16>(x));
}

float dst_round(float x, DstFormat format) { return format == DstFormat::F16 ? f16_round(x) : bf16_round(x); }

void unpack_tile(const uint8_t* src, Format format, float* out) {
  py::gil_scoped_acquire gil;
  py::array_t<uint8_t> data(tile_bytes(format));
  std::memcpy(data.mutable_data(), src, tile_bytes(format));
  py::object tiles = py::module_::import("ttc.runtime.formats").attr("unpack_tiles")(data, format_name(format));
  py::object values = py::module_::import("numpy").attr("asarray")(tiles, "float32");
  copy_out(values, out, TILE_ELEMS);
}

void pack_tile(const float* tile, Format format, uint8_t* dst) {
  py::gil_scoped_acquire gil;
  py::array_t<float> t({TILE, TILE});
  std::memcpy(t.mutable_data(), tile, TILE_ELEMS * 4);
  auto packed = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(
      py::module_::import("ttc.runtime.formats").attr("pack_tiles")(t, format_name(format)));
  std::memcpy(dst, packed.data(), tile_bytes(format));
}

void eltwise_tile(const float* a, const float* b, BinaryOp op, Bcast bcast, DstFormat format, float* out) {
  py::gil_scoped_acquire gil;
  static const char* ops[] = {"add", "sub", "mul"};
  py::array_t<float> lhs({TILE, TILE}), rhs({TILE, TILE});
  std::memcpy(lhs.mutable_data(), a, TILE_ELEMS * 4);
  std::memcpy(rhs.mutable_data(), b, TILE_ELEMS * 4);
  py::object r = rhs;
  py::object slice_all = py::slice(py::none(), py::none(), py::none());
  py::object first = py::slice(0, 1, 1);
  if (bcast == Bcast::ROW) r = rhs[py::make_tuple(first, slice_all)];
  if (bcast == Bcast::COL) r = rhs[py::make_tuple(slice_all, first)];
  if (bcast == Bcast::SCALAR) r = rhs[py::make_tuple(first, first)];
  copy_out(numerics().attr("eltwise_binary")(lhs, r, ops[static_cast<int>(op)], dst_name(format)), out, TILE_ELEMS);
}

void matmul_block(float* const* dst, const float* const* a, const float* const* b, int rows, int cols, int inner,
                  Fidelity fidelity, DstFormat format, bool bf16_operands) {
  py::gil_scoped_acquire gil;
  py::array_t<float> acc = tiles_array(const_cast<const float* const*>(dst), rows * cols);
  py::array_t<float> lhs = tiles_array(a, rows * inner), rhs = tiles_array(b, inner * cols);
  py::object out = numerics().attr("matmul_block_accumulate")(
      acc.attr("reshape")(rows, cols, TILE, TILE), lhs.attr("reshape")(rows, inner, TILE, TILE),
      rhs.attr("reshape")(inner, cols, TILE, TILE), fidelity_name(fidelity), py::arg("bf16_operands") = bf16_operands,
      py::arg("dst_format") = dst_name(format));
  auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(out);
  for (int i = 0; i < rows * cols; ++i) std::memcpy(dst[i], arr.data() + i * TILE_ELEMS, TILE_ELEMS * 4);
}

static const char* dim_name(ReduceDim dim) {
  return dim == ReduceDim::ROW ? "row" : dim == ReduceDim::COL ? "col" : "scalar";
}

void reduce_sum_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler, Fidelity fidelity,
                      DstFormat format) {
  py::gil_scoped_acquire gil;
  py::object out = numerics().attr("reduce_block")(tile_array(dst).attr("reshape")(TILE, TILE), tiles_array(tiles, n),
                                                   dim_name(dim), "sum", scaler, fidelity_name(fidelity),
                                                   dst_name(format));
  copy_out(out, dst, TILE_ELEMS);
}

void reduce_max_block(float* dst, const float* const* tiles, int n, ReduceDim dim, float scaler, DstFormat format) {
  py::gil_scoped_acquire gil;
  py::object out = numerics().attr("reduce_block")(tile_array(dst).attr("reshape")(TILE, TILE), tiles_array(tiles, n),
                                                   dim_name(dim), "max", scaler, "hifi4", dst_name(format));
  copy_out(out, dst, TILE_ELEMS);
}

void sfpu_table_tile(float* x, int count, const float* table, DstFormat format) {
  if (format == DstFormat::F16) {
    for (int i = 0; i < count; ++i) {
      uint32_t b = bits_of(f16_round(x[i]));
      _Float16 h;
      if (std::isnan(x[i])) {
        uint16_t hb = static_cast<uint16_t>(((b >> 16) & 0x8000u) | 0x7C00u | ((b >> 13) & 0x3FFu));
        x[i] = table[hb];
        continue;
      }
      h = static_cast<_Float16>(from_bits(b));
      uint16_t hb;
      std::memcpy(&hb, &h, 2);
      x[i] = table[hb];
    }
    return;
  }
  bool exact = true;  // numerics._as_bf16: the array as it is when it holds bf16 values only
  for (int i = 0; i < count; ++i) exact = exact && (bits_of(x[i]) & 0xFFFFu) == 0;
  for (int i = 0; i < count; ++i) x[i] = table[bits_of(exact ? x[i] : bf16_round(x[i])) >> 16];
}

void sfpu_scalar_tile(float* x, int count, ScalarFn fn, float param, DstFormat format) {
  static const char* names[] = {"add_scalar", "mul_scalar", "sub_from_scalar", "max_scalar", "where_nez", "where_eqz",
                                "eq_scalar",  "ne_scalar",  "lt_scalar",       "le_scalar",  "gt_scalar", "ge_scalar"};
  py::gil_scoped_acquire gil;
  copy_out(numerics().attr("sfpu_unary")(tile_array(x, count), names[static_cast<int>(fn)], static_cast<double>(param),
                                         dst_name(format)),
           x, count);
}

void sfpu_binary_tile(float* a, const float* b, int count, SfpuBinaryFn fn, DstFormat format) {
  static const char* names[] = {"pow", "where_nez", "where_eqz"};
  py::gil_scoped_acquire gil;
  copy_out(numerics().attr("sfpu_binary")(tile_array(a, count), tile_array(b, count), names[static_cast<int>(fn)],
                                          dst_name(format)),
           a, count);
}

}  // namespace ttc
